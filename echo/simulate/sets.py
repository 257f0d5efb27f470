"""How many simulated recordings each split gets, and with which speaker counts.

Conversations exist for train (the segmentation stage and the PLDA back end: TRAIN speakers only),
dev (model selection and tuning of the diarizer, every K the test set has) and test (scoring);
mixtures exist for train (the routing stage), dev (model selection) and test (scoring).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from echo.config import check_fields, rule

__all__ = ["SetSpec", "SimulationSets"]


@dataclass(frozen=True)
class SetSpec:
    """Speaker counts and recordings per count of one simulated set.

    Attributes:
        k: speaker counts to simulate (each >= 1).
        n_per_k: recordings per speaker count (>= 1).
    """

    k: tuple[int, ...] = field(default=(1, 2, 3, 4), metadata=rule(ge=1, nonempty=True))
    n_per_k: int = field(default=2, metadata=rule(ge=1))

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(self.k))
        check_fields(self)


@dataclass(frozen=True)
class SimulationSets:
    """Which simulated sets the workflow builds.

    Attributes:
        conversations_train: training conversations (segmentation stage, PLDA back end).
        conversations_dev: dev conversations (segmentation model selection, diarizer tuning).
        conversations_test: test conversations (DER by K).
        mixtures_train: routing-stage training mixtures.
        mixtures_dev: routing-stage model selection.
        mixtures_test: separation/routing scoring.
    """

    conversations_train: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 40))
    conversations_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 5))
    conversations_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 10))
    mixtures_train: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 300))
    mixtures_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 20))
    mixtures_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 50))

    def spec(self, kind: str, split: str) -> SetSpec:
        return getattr(self, f"{kind}_{split}")
