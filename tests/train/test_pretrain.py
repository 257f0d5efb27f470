import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from echo.errors import CacheMismatchError, ConfigError
from echo.models.vit import Encoder
from echo.train.collapse import CollapseError
from echo.train.loader import FeatureArrays
from echo.train.pretrain import PretrainConfig, pretrain

from tests.train.helpers import ENC, tiny_arrays, tiny_config


class Killed(Exception):
    """Stands in for the process being killed between two steps."""


def test_loss_decreases_and_outputs_are_written(tmp_path):
    logged = []
    path = pretrain(tiny_config(steps=40), ENC, tiny_arrays(), tmp_path, log_metrics=lambda m, s: logged.append((s, m)))
    assert [s for s, _ in logged] == list(range(1, 41))
    assert {"loss", "lr", "weight_decay", "momentum", "feat_std", "eff_rank", "grad_norm"} <= set(logged[0][1])
    losses = np.array([m["loss"] for _, m in logged])
    assert losses[-8:].mean() < 0.9 * losses[:5].mean(), losses
    curves = pd.read_parquet(tmp_path / "curves.parquet")
    np.testing.assert_allclose(curves["loss"], losses)
    assert curves["momentum"].is_monotonic_increasing
    # the final encoder is the EMA target, self-contained with the data's normalisation
    enc = Encoder.load(path)
    data = tiny_arrays()
    np.testing.assert_allclose(enc.mel_mean.numpy(), data.mean, rtol=1e-6)
    out = enc(torch.from_numpy(data.frames[:103].astype(np.float32)))
    assert out.features.shape == (1, 26, 32) and torch.isfinite(out.features).all()
    # a finished run is not redone
    again = []
    assert pretrain(tiny_config(steps=40), ENC, tiny_arrays(), tmp_path, lambda m, s: again.append(s)) == path
    assert again == []


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # dropout masks must be a function of the step too
def test_resume_follows_the_uninterrupted_trajectory(tmp_path, dropout):
    enc = dataclasses.replace(ENC, dropout=dropout)
    cfg = tiny_config(steps=16, checkpoint_every=4, warmup_steps=3, start_lr=1e-4)
    pretrain(cfg, enc, tiny_arrays(), tmp_path / "full")
    full = pd.read_parquet(tmp_path / "full" / "curves.parquet")

    def kill_at_10(metrics, step):
        if step == 10:
            raise Killed

    with pytest.raises(Killed):
        pretrain(cfg, enc, tiny_arrays(), tmp_path / "cut", log_metrics=kill_at_10)
    resumed_steps = []
    pretrain(cfg, enc, tiny_arrays(), tmp_path / "cut", log_metrics=lambda m, s: resumed_steps.append(s))
    assert resumed_steps == list(range(9, 17))  # restarted from the step-8 checkpoint
    cut = pd.read_parquet(tmp_path / "cut" / "curves.parquet")
    assert cut["step"].tolist() == list(range(1, 17))
    for col in ("loss", "lr", "weight_decay", "momentum", "eff_rank"):
        np.testing.assert_allclose(cut[col], full[col], rtol=1e-6, atol=1e-7, err_msg=col)
    a, b = Encoder.load(tmp_path / "full" / "encoder.pt"), Encoder.load(tmp_path / "cut" / "encoder.pt")
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=k)


def test_resume_refuses_a_different_run(tmp_path):
    cfg = tiny_config(steps=6, checkpoint_every=3)

    def kill(metrics, step):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        pretrain(cfg, ENC, tiny_arrays(), tmp_path, log_metrics=kill)
    with pytest.raises(CacheMismatchError, match="pretrain.lr"):
        pretrain(tiny_config(steps=6, checkpoint_every=3, lr=1e-3), ENC, tiny_arrays(), tmp_path)


def test_collapse_stops_the_run(tmp_path):
    data = tiny_arrays()
    data = FeatureArrays(np.full_like(data.frames, -5.0), data.offsets, data.lengths, data.mean, data.std)
    with pytest.raises(CollapseError, match="step 3"):
        pretrain(tiny_config(steps=10, warmup_steps=3), ENC, data, tmp_path)
    curves = pd.read_parquet(tmp_path / "curves.parquet")  # written before failing, for the post-mortem
    assert curves["step"].tolist() == [1, 2, 3] and (curves["feat_std"] < 1e-3).all()


def test_config_validation():
    with pytest.raises(ConfigError, match="PretrainConfig.warmup_steps"):
        PretrainConfig(steps=10, warmup_steps=20)
    with pytest.raises(ConfigError, match="PretrainConfig.ema_start"):
        PretrainConfig(ema_start=0.999, ema_end=0.99)
    with pytest.raises(ConfigError, match="crop_frames"):
        pretrain(tiny_config(crop_frames=50), ENC, tiny_arrays(), "unused")
