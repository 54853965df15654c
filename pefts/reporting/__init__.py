"""From certified rows to what a paper shows: tables, plots, parameter counts, the
comparison with the paper's cells."""
