import json

import numpy as np
import pandas as pd
import pytest
import torch

from echo.errors import CacheMismatchError, ConfigError
from echo.heads.guard import latent_distillation_loss
from echo.models.bundle import EchoModel
from echo.models.vit import Encoder
from echo.stages.common import StageGuardConfig
from echo.stages.speaker import SpeakerStage, SpeakerStageConfig, train_speaker_stage

from tests.stages.helpers import build_world, pretrained_encoder, speaker_config


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("world"))
    w["encoder"] = pretrained_encoder(w["train"], w["root"] / "encoder.pt")
    return w


_cfg = speaker_config


def _state(enc: Encoder) -> dict:
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def test_loss_decreases_only_top_block_moves_and_outputs_are_written(world, tmp_path):
    logs = []
    trainer = SpeakerStage(_cfg(), world["encoder"], world["train"], world["dev"], tmp_path,
                           lambda m, s: logs.append((s, m)))
    before = _state(Encoder.load(world["encoder"]))
    out = trainer.run()
    arc = [m["arcface"] for _, m in logs if "arcface" in m]
    assert len(arc) == 24 and np.mean(arc[-6:]) < 0.7 * np.mean(arc[:6])
    after = _state(trainer.encoder)
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        assert moved == (k.startswith("blocks.1.") or k.startswith("norm.")), k
    assert trainer.encoder_trainable and all(n.startswith(("blocks.1.", "norm.")) for n in trainer.encoder_trainable)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trainable"] == "top1" and summary["steps"] == 24 and summary["step_time_s"] > 0
    dev = pd.read_parquet(tmp_path / "dev.parquet")
    assert dev["step"].tolist() == [0, 8, 16, 24]
    assert summary["best_step"] == int(dev.loc[dev["speaker_eer"].idxmin(), "step"])
    assert set(pd.read_parquet(tmp_path / "curves.parquet").columns) >= {"loss", "arcface", "guard", "lr", "step_s"}

    model = EchoModel.load(out)
    assert model.stage == "speaker" and model.components == ["encoder", "speaker", "arcface"]
    assert model.meta["train_speakers"] == sorted(world["train"].index["speaker"].unique())
    assert model.meta["stages"]["speaker"]["trainable"] == "top1"
    assert model.meta["stages"]["speaker"]["selected_step"] == summary["best_step"]
    mels = torch.from_numpy(world["dev"].get(world["dev"].index.utt_id[0]))[None]
    z = model.latents(mels)
    emb = model.embed_speaker(z.features, z.mask)
    assert emb.shape == (1, 16) and abs(float(emb.norm()) - 1) < 1e-5
    # a finished stage is not trained again
    assert train_speaker_stage(_cfg(), world["encoder"], world["train"], world["dev"], tmp_path,
                               lambda m, s: pytest.fail("re-trained")) == out


def test_trainable_none_leaves_the_encoder_untouched(world, tmp_path):
    trainer = SpeakerStage(_cfg(steps=3, trainable="none"), world["encoder"], world["train"], world["dev"], tmp_path)
    trainer.run()
    before = _state(Encoder.load(world["encoder"]))
    assert trainer.encoder_trainable == []
    for k, v in _state(trainer.encoder).items():
        assert torch.equal(before[k], v), k
    for k, v in _state(EchoModel.load(trainer.bundle_path).encoder).items():
        assert torch.equal(before[k], v), k


def test_guard_is_distillation_to_the_incoming_encoder(world, tmp_path):
    trainer = SpeakerStage(_cfg(steps=6, trainable="all"), world["encoder"], world["train"], world["dev"], tmp_path)
    batch = trainer.sampler.batch(100)
    incoming = Encoder.load(world["encoder"])

    def guard_now():
        with torch.no_grad():
            out = trainer.encoder(batch.mels, batch.lengths)
            return out, trainer.guard_loss(out.features, batch.mels, batch.lengths, out.mask)

    assert float(guard_now()[1]) == 0.0  # student == teacher at the start
    for _ in range(4):
        trainer.train_step()
    out, g = guard_now()
    with torch.no_grad():
        ref = latent_distillation_loss(out.features, incoming(batch.mels, batch.lengths).features, out.mask, "mse", 0.5)
    assert float(g) > 0 and float(g) == pytest.approx(float(ref), rel=1e-5)
    # with kind none there is no term
    t2 = SpeakerStage(_cfg(steps=6, guard=StageGuardConfig(kind="none")), world["encoder"], world["train"],
                      world["dev"], tmp_path / "none")
    t2.train_step()
    with torch.no_grad():
        o2 = t2.encoder(batch.mels, batch.lengths)
        assert float(t2.guard_loss(o2.features, batch.mels, batch.lengths, o2.mask)) == 0.0


def test_resume_follows_the_uninterrupted_trajectory(world, tmp_path):
    cfg = _cfg(steps=12, eval_every=4, checkpoint_every=4)
    train_speaker_stage(cfg, world["encoder"], world["train"], world["dev"], tmp_path / "full")

    def kill_at_10(metrics, step):
        if step == 10 and "loss" in metrics:
            raise Killed

    with pytest.raises(Killed):
        train_speaker_stage(cfg, world["encoder"], world["train"], world["dev"], tmp_path / "cut", kill_at_10)
    seen = []
    train_speaker_stage(cfg, world["encoder"], world["train"], world["dev"], tmp_path / "cut",
                        lambda m, s: seen.append(s) if "loss" in m else None)
    assert seen == [9, 10, 11, 12]  # restarted from the step-8 checkpoint
    full, cut = (pd.read_parquet(tmp_path / d / "curves.parquet") for d in ("full", "cut"))
    assert cut["step"].tolist() == list(range(1, 13))
    for col in ("loss", "arcface", "guard", "lr"):
        np.testing.assert_allclose(cut[col], full[col], rtol=1e-5, atol=1e-6, err_msg=col)
    a, b = (EchoModel.load(tmp_path / d / "bundle") for d in ("full", "cut"))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=k)
    # another run's checkpoint is refused
    with pytest.raises(CacheMismatchError, match="lr"):
        SpeakerStage(_cfg(steps=12, eval_every=4, checkpoint_every=4, lr=5e-3), world["encoder"], world["train"],
                     world["dev"], tmp_path / "cut")


def test_config_validation():
    with pytest.raises(ConfigError, match="stages.speaker.trainable"):
        SpeakerStageConfig(trainable="bottom2")
    with pytest.raises(ConfigError, match="freeze"):
        SpeakerStageConfig(trainable="all", guard=StageGuardConfig(kind="freeze"))
    with pytest.raises(ConfigError, match="replay"):
        SpeakerStageConfig(guard=StageGuardConfig(replay_speaker=0.1))
    with pytest.raises(ConfigError, match="stages.speaker.select"):
        SpeakerStageConfig(select="auc")
    with pytest.raises(ConfigError, match="StageGuardConfig.kind: expected one of"):
        StageGuardConfig(kind="magic")
    with pytest.raises(ConfigError, match="stages.speaker.noisy_prob"):
        SpeakerStageConfig(noisy_prob=1.5)


def test_noisy_crops_need_the_augmented_cache_and_change_the_run(world, tmp_path):
    cfg = _cfg(steps=4, eval_every=4, checkpoint_every=4, noisy_prob=0.5)
    with pytest.raises(ConfigError, match="stages.speaker.noisy_prob: 0.5 needs the augmented training cache"):
        SpeakerStage(cfg, world["encoder"], world["train"], world["dev"], tmp_path / "none")
    with pytest.raises(CacheMismatchError, match="not a copy of the train cache"):
        SpeakerStage(cfg, world["encoder"], world["train"], world["dev"], tmp_path / "bad", noisy_cache=world["dev"])
    stage = SpeakerStage(cfg, world["encoder"], world["train"], world["dev"], tmp_path / "noisy",
                         noisy_cache=world["train_noisy"])
    assert stage.fingerprint()["data"]["noisy"]["utterances"] == len(world["train"])
    stage.run()
    clean = pd.read_parquet(train_speaker_stage(_cfg(steps=4, eval_every=4, checkpoint_every=4), world["encoder"],
                                                world["train"], world["dev"], tmp_path / "clean").parent / "curves.parquet")
    noisy = pd.read_parquet(tmp_path / "noisy" / "curves.parquet")
    assert not np.allclose(noisy["loss"], clean["loss"])  # the crops did change
