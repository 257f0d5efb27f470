import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from echo.errors import ConfigError, EchoError
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.separator import SeparatorConfig
from echo.models.bundle import EchoModel
from echo.simulate.mixtures import MixtureSet
from echo.stages.separation import (SeparationStageConfig, encode_mixtures, pooling_masks, token_activity,
                                    train_separation_stage)
from echo.train.trainer import module_sha

from tests.stages.helpers import build_mixtures, build_world, pretrained_encoder, stage_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("world"), train_speakers=4, dev_speakers=3, utts=3)
    stage2 = stage_bundle(w["train"], pretrained_encoder(w["train"], w["root"] / "enc.pt", seed=2),
                          w["root"] / "stage2", heads="phonetic")
    m = EchoModel.load(stage2)
    torch.manual_seed(0)
    router = SourceRouter(RouterConfig(d_model=32, k_max=3, width=16, num_heads=2, num_layers=1))
    w["routing"] = EchoModel(m.encoder, m.frontend, "routing", speaker=m.speaker, ctc=m.ctc, vq_ctc=m.vq_ctc,
                             router=router, meta={"stages": {"routing": {"config": {"exist_threshold": 0.5}}}}
                             ).save(w["root"] / "routing")
    w["no_speaker"] = EchoModel(m.encoder, m.frontend, "routing", router=router).save(w["root"] / "no_speaker")
    w["mix_train"] = MixtureSet(build_mixtures(w, "train", k_max=3, n_per_k=4))
    w["mix_dev"] = MixtureSet(build_mixtures(w, "dev", k_max=3, n_per_k=2))
    return w


SEP = SeparatorConfig(width=16, hidden=32, num_blocks=2, slot_attention_every=1, num_heads=2)


def _cfg(**kw) -> SeparationStageConfig:
    base = SeparationStageConfig(steps=12, batch_size=4, crop_s=0.5, lr=5e-3, warmup_steps=0, eval_every=6,
                                 log_every=1, separator=SEP)
    return dataclasses.replace(base, **kw)


def test_token_activity_and_the_pooled_tokens_on_constructed_sources():
    patch = 4
    src = np.zeros((2, 6 * patch + 2), np.float32)  # 6 whole tokens and a partial one
    src[0, :3 * patch] = 0.1        # A talks in tokens 0-2
    src[1, 2 * patch:5 * patch] = 0.1  # B in tokens 2-4; token 2 is overlap, token 5 silence
    src[1, 5 * patch:5 * patch + 1] = 0.5  # one loud sample: token 5's RMS is 0.5 / 2 = 0.25
    act = token_activity(src, patch, 8, active_rms=0.05)
    assert act.tolist() == [[True, True, True, False, False, False, False, False],
                            [False, False, True, True, True, True, False, False]]
    # A alone in 0-1 (2 tokens), B alone in 3-5 (3 tokens): with at least 3 required, A pools
    # every token it talks in, B only its single-speaker ones
    use = pooling_masks(act, min_solo_tokens=3)
    assert use.tolist() == [[True, True, True, False, False, False, False, False],
                            [False, False, False, True, True, True, False, False]]
    assert pooling_masks(np.zeros((1, 4), bool), 3).tolist() == [[True] * 4]  # silent: every token


def test_encoded_mixtures_give_each_source_a_unit_identity(world):
    model = EchoModel.load(world["routing"])
    data = encode_mixtures(model, world["mix_dev"], active_rms=0.01, min_solo_tokens=3)
    n = len(world["mix_dev"])
    assert data.mixture.shape[0] == n and data.latent.shape[0] == n and len(data.identity) == n
    for ident, src in zip(data.identity, data.sources):
        assert ident.shape == (len(src), model.speaker.config.emb_dim)
        assert torch.allclose(ident.norm(dim=1), torch.ones(len(src)), atol=1e-4)
    two = next(i for i, s in enumerate(data.sources) if len(s) == 2)
    assert float(data.identity[two][0] @ data.identity[two][1]) < 0.9999  # two sources, two identities


def test_separation_stage_trains_the_head_only_and_writes_the_bundle(world, tmp_path):
    logs = []
    out = train_separation_stage(_cfg(), world["routing"], world["mix_train"], world["mix_dev"], tmp_path,
                                 lambda m, s: logs.append((s, m)))
    losses = [m["loss"] for _, m in logs if "loss" in m]
    assert len(losses) == 12 and all(np.isfinite(losses))
    summary = pd.read_json(tmp_path / "summary.json", typ="series")
    assert summary["sha256_before"] == summary["sha256_after"]
    dev = pd.read_parquet(tmp_path / "dev.parquet")
    assert list(dev["step"]) == [6, 12] and {"si_sdri", "missed", "extra", "si_sdri_k2"} <= set(dev.columns)
    assert summary["best_step"] in (6, 12)
    model = EchoModel.load(out)
    before = EchoModel.load(world["routing"])
    assert model.stage == "separation" and model.components[-1] == "separator"
    assert module_sha(model.encoder) == module_sha(before.encoder) and module_sha(model.speaker) == module_sha(before.speaker)
    assert module_sha(model.router) == module_sha(before.router)
    item = world["mix_dev"][3]
    ident = torch.randn(1, 3, model.speaker.config.emb_dim)
    waves = model.separate(torch.from_numpy(item.mixture)[None], ident, torch.tensor([[True, True, False]]))
    assert waves.shape == (1, 3, len(item.mixture)) and torch.all(waves[0, 2] == 0)
    np.testing.assert_allclose(waves.sum(1)[0].numpy(), item.mixture, atol=1e-4)


def test_bad_settings_and_inputs(world, tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps"):
        SeparationStageConfig(steps=5, warmup_steps=6)
    with pytest.raises(EchoError, match="no speaker head"):
        train_separation_stage(_cfg(), world["no_speaker"], world["mix_train"], world["mix_dev"], tmp_path)
    with pytest.raises(EchoError, match="also in the train mixtures"):
        train_separation_stage(_cfg(), world["routing"], world["mix_train"], world["mix_train"], tmp_path)
    singles = [world["mix_train"][i] for i in range(len(world["mix_train"])) if len(world["mix_train"][i].sources) == 1]
    short = dataclasses.replace(singles[0], mixture=singles[0].mixture[:-160], sources=singles[0].sources[:, :-160])
    with pytest.raises(EchoError, match="mixtures of different lengths"):
        encode_mixtures(EchoModel.load(world["routing"]), [singles[0], short], 0.01, 3)
    with pytest.raises(EchoError, match="no mixtures"):
        encode_mixtures(EchoModel.load(world["routing"]), [], 0.01, 3)
