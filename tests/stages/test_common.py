"""What the encoder stages share (echo.stages.common): the start model, the dev 1-NN accuracy, the
optimizer groups of encoder and heads, the NaN guard and model selection of the loop."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from echo.errors import CacheMismatchError, EchoError
from echo.features import FrontEnd
from echo.models.bundle import EchoModel
from echo.stages.common import knn_accuracy_loo, load_start
from echo.stages.speaker import SpeakerStage, SpeakerStageConfig

from tests.stages.helpers import build_world, pretrained_encoder, speaker_config, stage_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("world"), train_speakers=3, dev_speakers=2, utts=4)
    w["encoder"] = pretrained_encoder(w["train"], w["root"] / "encoder.pt")
    return w


def _cfg(**kw) -> SpeakerStageConfig:
    return speaker_config(**{"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "emb_dim": 8, **kw})


def test_knn_accuracy_is_leave_one_out_over_labels_seen_twice():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    assert knn_accuracy_loo(emb, np.array([0, 0, 1, 1, 2])) == 1.0  # label 2 occurs once: not scored
    assert knn_accuracy_loo(emb, np.array([0, 1, 0, 1, 2])) == 0.0
    assert np.isnan(knn_accuracy_loo(emb, np.arange(5)))


def test_the_start_is_an_encoder_file_or_a_bundle_with_the_same_front_end(world, tmp_path):
    assert load_start(world["encoder"]).stage == "pretrain"
    bundle = stage_bundle(world["train"], world["encoder"], tmp_path / "bundle")
    assert load_start(bundle, world["train"].frontend).components == ["encoder", "speaker", "arcface"]
    with pytest.raises(CacheMismatchError, match="another front-end"):
        load_start(bundle, dataclasses.replace(FrontEnd(), n_mels=40))


def test_encoder_and_heads_get_their_own_learning_rates_and_no_decay_on_1d(world, tmp_path):
    t = SpeakerStage(_cfg(), world["encoder"], world["train"], world["dev"], tmp_path)
    enc = {id(p) for p in t.encoder.parameters()}
    for g in t.optimizer.param_groups:
        in_encoder = {id(p) in enc for p in g["params"]}
        assert len(in_encoder) == 1  # a group holds encoder or head parameters, never both
        assert g["base_lr"] == (1e-3 if in_encoder == {True} else 1e-2)
        assert all(p.requires_grad for p in g["params"])
        assert g["weight_decay"] == (0.01 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    trained = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    frozen = [n for n, p in t.encoder.named_parameters() if id(p) not in trained]
    assert frozen and all(not n.startswith(("blocks.1.", "norm.")) for n in frozen)  # top1: block 1 + final norm


class _NaNAtStep2(SpeakerStage):
    def compute_loss(self, step):
        loss, parts = super().compute_loss(step)
        return (loss * float("nan") if step == 2 else loss), parts


def test_a_nan_loss_stops_the_stage_and_keeps_the_curves_so_far(world, tmp_path):
    t = _NaNAtStep2(_cfg(), world["encoder"], world["train"], world["dev"], tmp_path)
    with pytest.raises(EchoError, match=r"^stages.speaker: loss is nan at step 3; lower stages.speaker.lr"):
        t.run()
    assert pd.read_parquet(tmp_path / "curves.parquet")["step"].tolist() == [1, 2]
    assert not (tmp_path / "summary.json").exists()


def test_the_kept_bundle_is_the_best_dev_step(world, tmp_path):
    t = SpeakerStage(_cfg(), world["encoder"], world["train"], world["dev"], tmp_path)
    t.run()
    dev = pd.read_parquet(tmp_path / "dev.parquet")
    assert dev["step"].tolist() == [0, 3, 6]
    best = int(dev.loc[dev["speaker_eer"].idxmin(), "step"])  # ties keep the earlier step
    model = EchoModel.load(t.bundle_path)
    assert model.meta["stages"]["speaker"]["selected_step"] == best == t.best["step"]
