import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from echo.errors import ConfigError
from echo.heads.router import RouterConfig
from echo.models.bundle import EchoModel
from echo.models.vit import Encoder
from echo.simulate.mixtures import MixtureSet
from echo.stages.common import StageGuardConfig
from echo.stages.routing import RoutingStage, RoutingStageConfig, train_routing_stage

from tests.stages.helpers import build_mixtures, build_world, pretrained_encoder, stage_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("world"))
    w["encoder"] = pretrained_encoder(w["train"], w["root"] / "encoder.pt", seed=1)
    w["stage2"] = stage_bundle(w["train"], pretrained_encoder(w["train"], w["root"] / "enc2.pt", seed=2),
                               w["root"] / "stage2", heads="phonetic")
    w["mix_train"] = MixtureSet(build_mixtures(w, "train", k_max=3, n_per_k=4))
    w["mix_dev"] = MixtureSet(build_mixtures(w, "dev", k_max=3, n_per_k=2))
    return w


ROUTER = RouterConfig(k_max=4, width=16, num_heads=2, num_layers=1)


def _cfg(**kw) -> RoutingStageConfig:
    base = RoutingStageConfig(steps=30, batch_size=4, crop_s=1.0, lr=1e-2, encoder_lr=1e-3, warmup_steps=0,
                              eval_every=10, checkpoint_every=10, log_every=1, router=ROUTER, clean_batch_size=4, trainable="top1",
                              guard=StageGuardConfig(kind="distill", weight=1.0, replay_speaker=0.1, replay_ctc=0.1))
    return dataclasses.replace(base, **kw)


def _trainer(world, tmp_path, **kw) -> RoutingStage:
    return RoutingStage(_cfg(**kw), world["stage2"], world["mix_train"], world["mix_dev"], world["train"], tmp_path,
                        dev_cache=world["dev"], pretrained_encoder=world["encoder"])


def test_null_slots_have_existence_target_zero(world, tmp_path):
    trainer = _trainer(world, tmp_path)
    feats = trainer.train_mix
    rows = np.array([int(np.flatnonzero(feats.k == k)[0]) for k in (1, 2, 3)])
    batch = trainer.mixture_batch(feats, trainer.train_targets, rows)
    assert batch.targets.shape[:2] == (3, 4) and batch.target_mask.sum(1).tolist() == [1, 2, 3]
    assert not batch.targets[~batch.target_mask].any()  # absent sources are zero-padded
    with torch.no_grad():
        res, r, mask = trainer.routing_loss(batch)
    assert r.slots.shape == (3, 4, batch.targets.shape[2], 32) and r.exist_logits.shape == (3, 4)
    ex = res.exist_targets
    assert ex.sum(1).tolist() == [1.0, 2.0, 3.0] and set(ex.unique().tolist()) <= {0.0, 1.0}
    for i in range(3):
        matched = set(res.assignment[i][res.assignment[i] >= 0].tolist())
        assert len(matched) == i + 1
        for s in range(4):
            assert ex[i, s] == (1.0 if s in matched else 0.0)  # unmatched = null slot -> target 0
    torch.testing.assert_close(res.existence, F.binary_cross_entropy_with_logits(r.exist_logits, ex))


def test_targets_come_from_the_frozen_target_encoder(world, tmp_path):
    for target, enc in (("stage2", EchoModel.load(world["stage2"]).encoder), ("pretrain", Encoder.load(world["encoder"]))):
        trainer = _trainer(world, tmp_path / target, target=target, steps=2)
        feats_src = trainer.train_mix.source_mels[:5].float()
        with torch.no_grad():
            ref = enc(feats_src).features
        torch.testing.assert_close(trainer.train_targets[:5].float(), ref, atol=2e-2, rtol=1e-2)
        trainer.run()  # the encoder trains; precomputed targets stay the frozen encoder's
        with torch.no_grad():
            torch.testing.assert_close(trainer.train_targets[:5].float(), ref, atol=2e-2, rtol=1e-2)
    with pytest.raises(ConfigError, match="pretrained_encoder"):
        RoutingStage(_cfg(target="pretrain"), world["stage2"], world["mix_train"], world["mix_dev"], world["train"],
                     tmp_path / "x")


def test_routing_learns_and_writes_the_full_bundle(world, tmp_path):
    logs = []
    out = train_routing_stage(_cfg(), world["stage2"], world["mix_train"], world["mix_dev"], world["train"], tmp_path,
                              lambda m, s: logs.append((s, m)), dev_cache=world["dev"])
    train = [m for _, m in logs if "kset_regression" in m]
    reg = [m["kset_regression"] for m in train]
    ex = [m["kset_existence"] for m in train]
    assert len(reg) == 30 and np.mean(reg[-6:]) < 0.8 * np.mean(reg[:6]) and np.mean(ex[-6:]) < np.mean(ex[:6])
    assert all(m["replay_ctc"] > 0 and m["replay_arcface"] > 0 for m in train)
    dev = pd.read_parquet(tmp_path / "dev.parquet")
    assert {"exist_acc", "count_acc", "slot_cosine", "slot_cosine_mixture", "combined", "per_ctc", "speaker_eer"} <= set(dev.columns)
    model = EchoModel.load(out)
    assert model.stage == "routing" and model.components == ["encoder", "speaker", "arcface", "ctc", "vq_ctc", "router"]
    assert model.meta["routing_target"] == "stage2"
    item = world["mix_dev"][0]
    mels = torch.from_numpy(model.frontend.compute(item.mixture))[None]
    z = model.latents(mels)
    r = model.route(z.features, z.mask)
    assert r.slots.shape == (1, 4, z.features.shape[1], 32) and r.count.shape == (1,)
    assert 0 <= int(r.count) <= 4


def test_k_max_must_cover_the_mixtures(world, tmp_path):
    with pytest.raises(ConfigError, match="k_max"):
        _trainer(world, tmp_path, router=dataclasses.replace(ROUTER, k_max=2))
    with pytest.raises(ConfigError, match="clean_batch_size"):
        _cfg(clean_batch_size=0)
