"""Staged specialisation of the ONE shared encoder: speaker -> phonetic -> routing.

Each stage loads the previous stage's model (the pretrained ``encoder.pt`` for stage 1, a bundle
directory afterwards), trains its heads and the encoder parameters that ``trainable`` allows,
guards what the earlier stages built (``guard``: distillation to the frozen incoming encoder,
L2-SP, freezing; replay of the earlier heads' losses), keeps the step with the best dev metric and
writes it as an :class:`echo.models.bundle.EchoModel` bundle, so every stage can be evaluated.

- :mod:`echo.stages.speaker`: :func:`train_speaker_stage` (ArcFace on the train speakers).
- :mod:`echo.stages.phonetic`: :func:`train_phonetic_stage` (continuous CTC + VQ-CTC heads).
- :mod:`echo.stages.routing`: :func:`train_routing_stage` (null-target K-set prediction).
- :mod:`echo.stages.common`: configs, the guard, dev metrics and the shared training loop.
- :mod:`echo.stages.batches`: crops, dev sets and mixture features.
"""
from echo.stages.common import StageConfig, StageGuardConfig
from echo.stages.phonetic import PhoneticStageConfig, train_phonetic_stage
from echo.stages.routing import RoutingStageConfig, train_routing_stage
from echo.stages.speaker import SpeakerStageConfig, train_speaker_stage

__all__ = ["StageConfig", "StageGuardConfig", "SpeakerStageConfig", "PhoneticStageConfig", "RoutingStageConfig",
           "train_speaker_stage", "train_phonetic_stage", "train_routing_stage"]
