"""What every method trains with: the loop, its checkpoints, its keyed noise streams
and its curves."""
