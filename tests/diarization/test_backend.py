import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from pyannote.core import Annotation, Segment

from echo.diarization.backend import BackendConfig, fit_backend
from echo.diarization.diarizer import DiarizerConfig
from echo.diarization.plda import PLDAConfig
from echo.errors import ConfigError, EchoError
from echo.features import FrontEnd
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.models.bundle import EchoModel
from echo.models.vit import Encoder, EncoderConfig


@dataclasses.dataclass
class Item:
    rec_id: str
    audio: np.ndarray
    annotation: Annotation
    k: int


class Convs(list):
    def __init__(self, items, split):
        super().__init__(items)
        self.table = pd.DataFrame({"split": [split] * len(items)})


def _conversations(split="train", n=4):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        wave = 1e-3 * rng.standard_normal(16000 * 12)
        ann = Annotation(uri=f"c{i}")
        for j in range(2):  # two speakers per conversation, 6 s each, tones per speaker
            spk = (2 * i + j) % 5
            t = np.arange(16000 * 6) / 16000
            wave[j * 96000:(j + 1) * 96000] += 0.2 * np.sin(2 * np.pi * (150 + 90 * spk) * t)
            ann[Segment(6.0 * j, 6.0 * (j + 1))] = f"S{spk}"
        items.append(Item(f"c{i}", wave.astype(np.float32), ann, 2))
    return Convs(items, split)


def test_fit_backend_embeds_each_speakers_clean_chunks():
    torch.manual_seed(0)
    model = EchoModel(Encoder(EncoderConfig(n_mels=80, dim=16, depth=1, heads=2, mlp_dim=32)), FrontEnd(), "routing",
                      speaker=SpeakerHead(SpeakerConfig(d_model=16, emb_dim=8, attention_dim=4))).eval()
    cfg = BackendConfig(plda=PLDAConfig(lda_dim=3), step_s=2.5, max_per_speaker=3)
    plda = fit_backend(model, _conversations(), DiarizerConfig(segment_s=5.0), cfg)
    assert plda.input_dim == 8 and plda.dim == 3
    with pytest.raises(EchoError, match="DEV conversations"):
        fit_backend(model, _conversations("dev"), DiarizerConfig(segment_s=5.0), cfg)
    with pytest.raises(ConfigError, match="BackendConfig.max_per_speaker"):
        BackendConfig(max_per_speaker=1)
