"""How many simulated recordings each split gets, and with which speaker counts.

Conversations exist for train (the segmentation stage and the PLDA back end: TRAIN speakers only),
dev (model selection and tuning of the diarizer, every K the test set has) and test (scoring);
mixtures exist for train (the routing stage), dev (model selection) and test (scoring).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from echo.config import check_fields, need, rule
from echo.simulate.channels import KINDS, check_channel_kinds

__all__ = ["SetSpec", "SimulationSets"]


@dataclass(frozen=True)
class SetSpec:
    """Speaker counts and recordings per count of one simulated set.

    Attributes:
        k: speaker counts to simulate (each >= 1).
        n_per_k: recordings per speaker count (>= 1).
        channel_prob: share of the recordings passed, whole, through a random transmission channel
            (:func:`echo.simulate.channels.draw_channel`); conversations only (training augmentation
            for the segmentation stage and the PLDA: a real recording's channel is one for all of it).
        channels: the channel kinds drawn from.
    """

    k: tuple[int, ...] = field(default=(1, 2, 3, 4), metadata=rule(ge=1, nonempty=True))
    n_per_k: int = field(default=2, metadata=rule(ge=1))
    channel_prob: float = field(default=0.0, metadata=rule(ge=0.0, le=1.0))
    channels: tuple[str, ...] = field(default=KINDS, metadata=rule(nonempty=True))

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(self.k))
        object.__setattr__(self, "channels", tuple(self.channels))
        check_fields(self)
        check_channel_kinds(self)


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
        real_dev, real_test: conversations of the real recorded voices (:mod:`echo.corpus.real_voices`):
            the real-voice dev set (decisions) and evaluation set; never used for training.
    """

    conversations_train: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 40))
    conversations_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 5))
    conversations_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4, 5), 10))
    mixtures_train: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 300))
    mixtures_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 20))
    mixtures_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 50))
    real_dev: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3), 4))
    real_test: SetSpec = field(default_factory=lambda: SetSpec((1, 2, 3, 4), 8))

    def __post_init__(self) -> None:
        for name in ("mixtures_train", "mixtures_dev", "mixtures_test"):
            need(self, getattr(self, name).channel_prob == 0, f"{name}.channel_prob",
                 "0 (channels are simulated for conversations only)", getattr(self, name).channel_prob)

    def spec(self, kind: str, split: str) -> SetSpec:
        """The set ``<kind>_<split>`` (``kind`` is ``conversations``, ``mixtures`` or ``real``)."""
        return getattr(self, f"{kind}_{split}")
