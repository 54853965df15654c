"""The study as the pipeline runs it: its config and checks, its runs and shards, the
weights it fetches, and what it costs before it runs (pefts plan)."""
