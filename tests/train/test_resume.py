"""Resume under faults: pretraining and a stage are SIGKILLed in a subprocess, then re-run.

A killed run must continue from its last checkpoint (not from step 0) and end with exactly the
weights, curves and metrics of a run that was never killed; a kill while a checkpoint is being
written must leave the previous checkpoint in place (atomic write), never a half-written one.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

TESTS = Path(__file__).parents[1]

# Kills itself with SIGKILL (no cleanup, no finally blocks) at a chosen point, then trains on.
# mode "log": when step KILL_AT is logged (checkpoints are written every 4 steps);
# mode "write": inside the second checkpoint write, after the temporary file is complete but
# before it is renamed into place.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path

    sys.path.insert(0, {root!r})
    kind, out, mode, kill_at = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "write":
        real_replace, writes = os.replace, []

        def replace(src, dst):
            if str(dst).endswith("last.pt"):
                writes.append(dst)
                if len(writes) == 2:
                    die()
            real_replace(src, dst)

        os.replace = replace

    def log(metrics, step):
        if mode == "log" and step == kill_at and "loss" in metrics:
            die()

    if kind == "pretrain":
        from tests.train.helpers import ENC, tiny_arrays, tiny_config
        from echo.train.pretrain import JEPATrainer

        trainer = JEPATrainer(tiny_config(steps=12, checkpoint_every=4, warmup_steps=3, start_lr=1e-4),
                              ENC, tiny_arrays(), out, log)
        print("start", trainer.step, flush=True)
        trainer.train()
    else:
        from tests.stages.helpers import speaker_config
        from echo.features import FeatureCache
        from echo.stages.speaker import SpeakerStage

        world = Path(sys.argv[5])
        cfg = speaker_config(steps=12, eval_every=4, checkpoint_every=4)
        trainer = SpeakerStage(cfg, world / "encoder.pt", FeatureCache(world / "features" / "train"),
                               FeatureCache(world / "features" / "dev"), out, log)
        print("start", trainer.step, flush=True)
        trainer.run()
""")

TIMING = ("tokens_per_s", "audio_s_per_s", "step_s")  # wall-clock columns differ between any two runs


def _run(script: Path, kind: str, out: Path, mode: str = "none", kill_at: int = 0, *extra: str) -> tuple[int, int | None]:
    """Run the child; return its exit code and the step it started from."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same float sums in every run
    proc = subprocess.run([sys.executable, str(script), kind, str(out), mode, str(kill_at), *extra], env=env,
                          capture_output=True, text=True, timeout=300)
    starts = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("start ")]
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode, starts[0] if starts else None


def _table(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df.drop(columns=[c for c in TIMING if c in df.columns])


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    script = tmp_path_factory.mktemp("child") / "child.py"
    script.write_text(CHILD.format(root=str(TESTS.parent)))
    return script


@pytest.fixture(scope="module")
def full_pretraining(child, tmp_path_factory):
    """The uninterrupted run both kill points are compared with."""
    out = tmp_path_factory.mktemp("full")
    assert _run(child, "pretrain", out) == (0, 0)
    return out


@pytest.mark.parametrize("mode, resumed_at", [("log", 8), ("write", 4)])
def test_killed_pretraining_resumes_from_its_last_checkpoint(child, full_pretraining, tmp_path, mode, resumed_at):
    from echo.models.vit import Encoder

    cut = tmp_path / "cut"
    assert _run(child, "pretrain", cut, mode, 10) == (-signal.SIGKILL, 0)
    assert not (cut / "encoder.pt").exists()  # killed before the end: no final output
    assert (cut / "checkpoints" / "last.pt").exists()
    assert _run(child, "pretrain", cut) == (0, resumed_at)  # from the last complete checkpoint
    full_enc, cut_enc = (Encoder.load(d / "encoder.pt").state_dict() for d in (full_pretraining, cut))
    _assert_same_state(full_enc, cut_enc)
    pd.testing.assert_frame_equal(_table(cut / "curves.parquet"), _table(full_pretraining / "curves.parquet"))


def test_killed_stage_resumes_from_its_last_checkpoint(child, tmp_path):
    from tests.stages.helpers import build_world, pretrained_encoder

    from echo.models.bundle import EchoModel

    world = build_world(tmp_path / "world")
    pretrained_encoder(world["train"], world["root"] / "encoder.pt")
    w = str(world["root"])
    assert _run(child, "stage", tmp_path / "full", "none", 0, w) == (0, 0)
    cut = tmp_path / "cut"
    assert _run(child, "stage", cut, "log", 10, w) == (-signal.SIGKILL, 0)
    assert not (cut / "summary.json").exists()  # the stage's "done" marker is written last
    assert _run(child, "stage", cut, "none", 0, w) == (0, 8)
    a, b = (EchoModel.load(d / "bundle").state_dict() for d in (tmp_path / "full", cut))
    _assert_same_state(a, b)
    for table in ("curves.parquet", "dev.parquet"):
        pd.testing.assert_frame_equal(_table(cut / table), _table(tmp_path / "full" / table))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (tmp_path / "full", cut)]
    for s in summaries:
        s.pop("step_time_s"), s.pop("bundle")
    assert summaries[0] == summaries[1]
