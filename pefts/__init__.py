"""pefts: PEFTSmoothing fine-tuning and randomized-smoothing certification.

``pefts.certify(model, images, labels, sigma=...)`` certifies any torch classifier
(``pefts.api``); it is imported on first use, so the command line starts without torch,
and listed by ``dir(pefts)`` (tab completion) all the same.
"""

__version__ = "0.1.0"

_LAZY = ("certify",)


def __getattr__(name: str):
    if name == "certify":
        from pefts.api import certify

        return certify
    raise AttributeError(f"module 'pefts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
