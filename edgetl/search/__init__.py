"""`edgetl search`: the best deployable artifact per target, found on Ray (see ``driver``)."""

from .driver import SearchResult, Trial, search
from .pareto import front, halving, winner
from .results import require_winners
from .space import Point, SearchConfig
from .stages import target_resource

__all__ = ["SearchConfig", "SearchResult", "Point", "Trial", "search", "front", "halving", "winner",
           "require_winners", "target_resource"]
