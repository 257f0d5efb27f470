"""How many simulated recordings each split gets, and with which speaker counts.

Conversations exist for dev (tuning the diarization back end) and test (scoring, with K up to 5 so
a count never seen in training is measured); mixtures exist for train (the routing stage), dev
(model selection) and test (scoring).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from echo.errors import ConfigError

__all__ = ["SetSpec", "SimulationSets"]


@dataclass(frozen=True)
class SetSpec:
    """Speaker counts and recordings per count of one simulated set.

    Attributes:
        k: speaker counts to simulate (each >= 1).
        n_per_k: recordings per speaker count (>= 1).
    """

    k: tuple[int, ...] = (1, 2, 3, 4)
    n_per_k: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(self.k))
        if not self.k or any(not isinstance(x, int) or x < 1 for x in self.k):
            raise ConfigError(f"sets.k: expected a non-empty list of integers >= 1, got {list(self.k)}")
        if not isinstance(self.n_per_k, int) or self.n_per_k < 1:
            raise ConfigError(f"sets.n_per_k: expected an integer >= 1, got {self.n_per_k!r}")


@dataclass(frozen=True)
class SimulationSets:
    """Which simulated sets the workflow builds.

    Attributes:
        conversations_dev: dev conversations (diarization back-end tuning).
        conversations_test: test conversations (DER by K; include a K above the training maximum).
        mixtures_train: routing-stage training mixtures.
        mixtures_dev: routing-stage model selection.
        mixtures_test: separation/routing scoring.
    """

    conversations_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 2))
    conversations_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 4))
    mixtures_train: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 300))
    mixtures_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 20))
    mixtures_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 50))

    def spec(self, kind: str, split: str) -> SetSpec:
        return getattr(self, f"{kind}_{split}")
