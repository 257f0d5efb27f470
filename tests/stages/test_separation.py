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
from echo.stages.separation import SeparationStageConfig, route_mixtures, train_separation_stage
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
    w["mix_train"] = MixtureSet(build_mixtures(w, "train", k_max=3, n_per_k=4))
    w["mix_dev"] = MixtureSet(build_mixtures(w, "dev", k_max=3, n_per_k=2))
    return w


SEP = SeparatorConfig(width=16, hidden=32, num_blocks=2, slot_attention_every=1, num_heads=2)


def _cfg(**kw) -> SeparationStageConfig:
    base = SeparationStageConfig(steps=12, batch_size=4, crop_s=0.5, lr=5e-3, warmup_steps=0, eval_every=6,
                                 log_every=1, separator=SEP)
    return dataclasses.replace(base, **kw)


def test_routed_mixtures_match_each_source_to_a_slot(world):
    model = EchoModel.load(world["routing"])
    data = route_mixtures(model, world["mix_dev"])
    n = len(world["mix_dev"])
    assert data.mixture.shape[0] == n and data.slots.shape[:2] == (n, 3) and data.exist.shape == (n, 3)
    assert data.slots.shape[2] == data.latent.shape[1]
    for so, src in zip(data.slot_of, data.sources):
        assert len(so) == len(src) and len(set(so.tolist())) == len(so) and so.min() >= 0  # k <= k_max: all matched


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
    assert module_sha(model.encoder) == module_sha(before.encoder) and module_sha(model.router) == module_sha(before.router)
    item = world["mix_dev"][3]
    waves, r = model.separate(torch.from_numpy(item.mixture)[None])
    assert waves.shape == (1, 3, len(item.mixture)) and int(r.count) >= 1
    np.testing.assert_allclose(waves.sum(1)[0].numpy(), item.mixture, atol=1e-4)


def test_bad_settings_and_inputs(world, tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps"):
        SeparationStageConfig(steps=5, warmup_steps=6)
    with pytest.raises(EchoError, match="no router"):
        train_separation_stage(_cfg(), world["root"] / "stage2", world["mix_train"], world["mix_dev"], tmp_path)
    with pytest.raises(EchoError, match="also in the train mixtures"):
        train_separation_stage(_cfg(), world["routing"], world["mix_train"], world["mix_train"], tmp_path)
    singles = [world["mix_train"][i] for i in range(len(world["mix_train"])) if len(world["mix_train"][i].sources) == 1]
    short = dataclasses.replace(singles[0], mixture=singles[0].mixture[:-160], sources=singles[0].sources[:, :-160])
    with pytest.raises(EchoError, match="mixtures of different lengths"):
        route_mixtures(EchoModel.load(world["routing"]), [singles[0], short])
    with pytest.raises(EchoError, match="no mixtures"):
        route_mixtures(EchoModel.load(world["routing"]), [])
