import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from echo.errors import ConfigError
from echo.heads.guard import latent_distillation_loss
from echo.models.bundle import EchoModel
from echo.stages.batches import SpecAugmentConfig
from echo.stages.common import StageGuardConfig
from echo.stages.phonetic import PhoneticStage, PhoneticStageConfig

from tests.stages.helpers import build_world, pretrained_encoder, stage_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("world"))
    enc = pretrained_encoder(w["train"], w["root"] / "encoder.pt")
    w["stage1"] = stage_bundle(w["train"], enc, w["root"] / "stage1", heads="speaker")
    return w


def _cfg(**kw) -> PhoneticStageConfig:
    base = PhoneticStageConfig(steps=30, batch_size=8, crop_s=1.0, lr=1e-2, encoder_lr=1e-3, warmup_steps=0,
                               eval_every=10, checkpoint_every=10, log_every=1, ctc_hidden_dim=32, ctc_dropout=0.0,
                               codebook_size=16, vq_dead_code_steps=5, trainable="top1",
                               guard=StageGuardConfig(kind="distill", weight=1.0, replay_speaker=0.1))
    return dataclasses.replace(base, **kw)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_both_ctc_paths_learn_and_earlier_heads_are_kept(world, tmp_path):
    logs = []
    trainer = PhoneticStage(_cfg(), world["stage1"], world["train"], world["dev"], tmp_path,
                            lambda m, s: logs.append((s, m)))
    out = trainer.run()
    train = [m for _, m in logs if "ctc" in m]
    for key in ("ctc", "vq_ctc"):
        v = [m[key] for m in train]
        assert np.mean(v[-6:]) < 0.8 * np.mean(v[:6]), key
    assert all(m["replay_arcface"] > 0 for m in train)
    assert all(1.0 <= m["vq_perplexity"] <= 16 and 0 < m["vq_usage"] <= 1 for m in train)
    dev = pd.read_parquet(tmp_path / "dev.parquet")
    assert {"per_ctc", "per_vq", "vq_perplexity", "vq_usage", "speaker_eer", "speaker_knn_acc"} <= set(dev.columns)
    assert dev["step"].tolist() == [0, 10, 20, 30] and (dev["per_ctc"] >= 0).all() and (dev["per_vq"] >= 0).all()
    best = int(dev.loc[dev["per_ctc"].idxmin(), "step"])  # model selection: lowest dev PER (continuous)

    model = EchoModel.load(out)
    assert model.stage == "phonetic"
    assert model.components == ["encoder", "speaker", "arcface", "ctc", "vq_ctc"]
    assert model.inventory.phones == ("a", "b", "c", "d")
    assert set(model.meta["stages"]) == {"phonetic"} and model.meta["train_speakers"]
    assert model.meta["stages"]["phonetic"]["selected_step"] == best
    # replayed heads are frozen by default: bit-identical to stage 1's
    for name in ("speaker.pt", "arcface.pt"):
        assert _digest(out / name) == _digest(world["stage1"] / name)
    z = model.latents(torch.from_numpy(world["dev"].get(world["dev"].index.utt_id[0]))[None])
    for vq in (False, True):
        (t,) = model.transcribe(z.features, z.mask, vq=vq)
        assert set(t.phones) <= {"a", "b", "c", "d"} and len(t.start_s) == len(t.phones)


def test_guard_and_replay_are_computed_against_stage_one(world, tmp_path):
    trainer = PhoneticStage(_cfg(trainable="all"), world["stage1"], world["train"], world["dev"], tmp_path)
    stage1 = EchoModel.load(world["stage1"])
    batch = trainer.sampler.batch(50)
    with torch.no_grad():
        out = trainer.encoder(batch.mels, batch.lengths)
        assert float(trainer.guard_loss(out.features, batch.mels, batch.lengths, out.mask)) == 0.0
    for _ in range(5):
        trainer.train_step()
    trainer.models.eval()
    with torch.no_grad():
        out = trainer.encoder(batch.mels, batch.lengths)
        g = trainer.guard_loss(out.features, batch.mels, batch.lengths, out.mask)
        ref = latent_distillation_loss(out.features, stage1.encoder(batch.mels, batch.lengths).features, out.mask)
        assert float(g) > 0 and float(g) == pytest.approx(float(ref), rel=1e-5)
        replay, parts = trainer.replay_loss(out.features, out.mask, batch, 0)
        arc = stage1.arcface(stage1.speaker(out.features, out.mask), batch.speakers)
        assert float(parts["replay_arcface"]) == pytest.approx(float(arc.loss), rel=1e-5)
        assert float(replay) == pytest.approx(0.1 * float(arc.loss), rel=1e-5)
    # the frozen stage-1 heads did not move, the encoder did
    for name in ("speaker", "arcface"):
        for k, v in stage1.get_submodule(name).state_dict().items():
            assert torch.equal(v, trainer.models[name].state_dict()[k]), (name, k)
    assert not torch.equal(stage1.encoder.blocks[0].mlp.fc1.weight, trainer.encoder.blocks[0].mlp.fc1.weight)


def test_spec_augment_masks_training_crops_with_the_encoder_mean(world, tmp_path):
    plain = PhoneticStage(_cfg(), world["stage1"], world["train"], world["dev"], tmp_path / "plain")
    masked = PhoneticStage(_cfg(spec_augment=SpecAugmentConfig(time_masks=2, time_width=20)), world["stage1"],
                           world["train"], world["dev"], tmp_path / "masked")
    a, b = plain.sampler.batch(3), masked.sampler.batch(3)
    assert torch.equal(a.targets, b.targets) and torch.equal(a.lengths, b.lengths)
    changed = (a.mels != b.mels).any(dim=2)  # (B, T): masked frames
    assert bool(changed.any())
    mean = masked.encoder.mel_mean
    assert torch.allclose(b.mels[changed], mean.expand(int(changed.sum()), -1))
    # after the encoder's input normalisation a masked frame is zero
    assert float(((b.mels[changed] - mean) / masked.encoder.mel_std).abs().max()) < 1e-6
    parts = masked.train_step()  # trains on masked crops
    assert float(parts["ctc"]) > 0 and np.isfinite(float(parts["ctc"]))


def test_replay_needs_the_heads(world, tmp_path):
    with pytest.raises(ConfigError, match="replay_speaker"):
        PhoneticStage(_cfg(), world["root"] / "encoder.pt",
                      world["train"], world["dev"], tmp_path)
    with pytest.raises(ConfigError, match="stages.phonetic.select"):
        PhoneticStageConfig(select="wer")
    with pytest.raises(ConfigError, match="ctc_weight"):
        PhoneticStageConfig(ctc_weight=0.0, vq_ctc_weight=0.0)
