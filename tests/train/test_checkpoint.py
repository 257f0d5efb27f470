"""Training-state checkpoints: round trip, refusal of another run's state, and one clean line
for every damaged or hostile file (nothing pickled is ever executed)."""
import os
import pickle

import pytest
import torch

from echo.errors import CacheMismatchError, EchoError
from echo.train.checkpoint import TRAIN_STATE_VERSION, load_train_state, save_train_state

FP = {"pretrain": {"lr": 1e-3, "steps": 10}, "world_size": 1}


def _state() -> dict:
    return {"step": 3, "modules": {"model": {"w": torch.arange(6.0).reshape(2, 3)}}, "curves": [{"step": 1, "loss": 0.5}]}


def test_round_trip_keeps_every_value(tmp_path):
    path = save_train_state(tmp_path / "ckpt" / "last.pt", _state(), FP)
    got = load_train_state(path, FP)
    assert got["step"] == 3 and got["curves"] == [{"step": 1, "loss": 0.5}]
    assert torch.equal(got["modules"]["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert got["version"] == TRAIN_STATE_VERSION
    assert os.listdir(tmp_path / "ckpt") == ["last.pt"]  # no temporary file left behind


def test_another_runs_state_is_refused_naming_the_key(tmp_path):
    path = save_train_state(tmp_path / "last.pt", _state(), FP)
    with pytest.raises(CacheMismatchError, match=r"different pretrain\.lr \(0\.001 vs now 0\.002\)"):
        load_train_state(path, {**FP, "pretrain": {"lr": 2e-3, "steps": 10}})


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = save_train_state(tmp_path / "last.pt", _state(), FP)
    with pytest.raises(Exception):
        save_train_state(path, {"step": 4, "bad": lambda: None}, FP)  # torch.save cannot store a lambda
    assert load_train_state(path, FP)["step"] == 3
    assert os.listdir(tmp_path) == ["last.pt"]


class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _truncated(path):
    good = save_train_state(path.with_name("good.pt"), _state(), FP).read_bytes()
    path.write_bytes(good[: len(good) // 2])


def _raw_pickle(path):
    path.write_bytes(pickle.dumps({"step": 3, "payload": _Hostile()}))


def _hostile_archive(path):
    torch.save({"format": "echo.pretrain-state", "payload": _Hostile()}, path)


def _text(path):
    path.write_text("step: 3\n")


@pytest.mark.parametrize("write, reason", [
    (_truncated, "truncated or corrupt archive"),
    (_raw_pickle, "a plain pickle, not a torch checkpoint"),
    (_hostile_archive, "holds a pickled Python object"),
    (_text, "not a torch checkpoint"),
    (lambda p: p.write_bytes(b""), "empty file"),
])
def test_a_damaged_or_hostile_file_is_one_line_naming_it(tmp_path, monkeypatch, write, reason):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "last.pt"
    write(path)
    with pytest.raises(CacheMismatchError) as err:
        load_train_state(path, FP)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a readable Echo training checkpoint (") and "\n" not in msg
    assert reason in msg and msg.endswith("delete it to restart") and "weights_only" not in msg
    assert not (tmp_path / "pwned").exists()  # nothing pickled ran


def test_a_torch_file_that_is_not_a_train_state_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "encoder.pt")
    with pytest.raises(CacheMismatchError, match="encoder.pt: not an Echo training checkpoint"):
        load_train_state(tmp_path / "encoder.pt", FP)


def test_an_older_version_is_refused(tmp_path):
    path = save_train_state(tmp_path / "last.pt", _state(), FP)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": TRAIN_STATE_VERSION - 1}, path)
    with pytest.raises(CacheMismatchError, match=f"checkpoint version {TRAIN_STATE_VERSION - 1}"):
        load_train_state(path, FP)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(EchoError, match="last.pt: training checkpoint not found"):
        load_train_state(tmp_path / "last.pt", FP)
