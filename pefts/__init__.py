"""pefts: PEFTSmoothing fine-tuning and randomized-smoothing certification."""

__version__ = "0.1.0"
