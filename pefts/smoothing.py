"""Cohen et al.'s public API, kept where their users import it from:
``from pefts.smoothing import Smooth``."""

from pefts.certification.smoothing import Certificate, Smooth, lower_confidence_bound, radius_cap

__all__ = ["Certificate", "Smooth", "lower_confidence_bound", "radius_cap"]
