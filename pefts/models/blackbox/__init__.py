"""Black-box visual prompting (BlackVIP, Oh et al. 2023): the base classifier is only
reachable through a query interface, and a small coordinator network that writes an
input-dependent pixel prompt is trained by zeroth-order SPSA-GC."""

from pefts.models.blackbox.coordinator import Coordinator, PromptedClassifier
from pefts.models.blackbox.query import QueryModel
from pefts.models.blackbox.spsa import SPSA, SPSAConfig, minimize

__all__ = ["SPSA", "Coordinator", "PromptedClassifier", "QueryModel", "SPSAConfig", "minimize"]
