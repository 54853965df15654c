"""pefts: PEFTSmoothing fine-tuning and randomized-smoothing certification.

``pefts.certify(model, images, labels, sigma=...)`` certifies any torch classifier
(``pefts.api``); it is imported on first use, so the command line starts without torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "certify":
        from pefts.api import certify

        return certify
    raise AttributeError(f"module 'pefts' has no attribute {name!r}")
