"""profiles/slurm for real: a one-node SLURM cluster on this machine (workflow/slurm/local-cluster.sh),
the tiny workflow submitted through snakemake-executor-plugin-slurm, every node a SLURM job (sbatch),
and the same results as a local run of the same workflow.

Opt-in (ECHO_TEST_SLURM=1; 22.5 min measured on 2 cores at load 5-7: a SLURM run and a local run of the tiny DAG), as
root (the daemons run as root), with Debian's slurm-wlm and munge installed or installable by apt."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echo.config import ROOT
from echo.pipeline.dag import nodes

from tests.pipeline.helpers import TINY, copy_project

SCRIPT = ROOT / "workflow" / "slurm" / "local-cluster.sh"
# metrics that measure speed, not results: they differ between any two runs
TIMING = {"wall_s", "tokens_per_s_median", "diarization_rtf"}


def _why_not() -> str | None:
    if not os.environ.get("ECHO_TEST_SLURM"):
        return "set ECHO_TEST_SLURM=1 to run the workflow on a local SLURM cluster (~20 min)"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root"
    if not (shutil.which("slurmctld") and shutil.which("munged")) and not shutil.which("apt-get"):
        return "slurm-wlm/munge not installed and no apt-get to install them"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


def _sh(args, cwd=ROOT, env=ENV, timeout=2400, check=True):
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def _free_port_pair() -> int:
    """A port p with p and p+1 free (slurmctld, slurmd), away from a cluster on the default 6817."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    """A private one-node cluster (own state dir, munge key, ports); its daemons are stopped by pid at the end."""
    state = tmp_path_factory.mktemp("slurm")
    env = {**ENV, "ECHO_SLURM_DIR": str(state), "ECHO_SLURM_PORT": str(_free_port_pair()),
           "SLURM_CONF": str(state / "etc" / "slurm.conf")}

    def stop():
        pids = [int(p.read_text()) for p in (state / "run").glob("*.pid") if p.read_text().strip()]
        _sh(["bash", str(SCRIPT), "stop"], env=env, check=False, timeout=120)
        time.sleep(1)
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        assert not alive, f"daemons still running: {alive}"

    request.addfinalizer(stop)
    _sh(["bash", str(SCRIPT), "start"], env=env, timeout=900)
    assert {p.stem for p in (state / "run").glob("*.pid")} == {"munged", "slurmctld", "slurmd"}
    return state, env


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The tiny workflow through `snakemake --profile profiles/slurm` (the script's `run`)."""
    state, env = cluster
    d = tmp_path_factory.mktemp("slurm_proj")
    t0 = time.monotonic()
    p = _sh(["bash", str(SCRIPT), "run", str(d)], env=env)
    wall = time.monotonic() - t0
    (d / "snakemake.out").write_text(p.stdout + p.stderr)
    print(f"\nSLURM run of the tiny workflow: {wall:.0f} s", file=sys.stderr)
    return d, state, p.stdout + p.stderr


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, slurm_run):  # after the SLURM run: the two must not share 2 cores
    d = copy_project(tmp_path_factory.mktemp("local_proj"))
    t0 = time.monotonic()
    p = _sh([sys.executable, "-m", "snakemake", "--cores", "2", "results/tables.md"], cwd=d)
    print(f"\nlocal run of the tiny workflow: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    (d / "snakemake.out").write_text(p.stdout + p.stderr)
    return d


def _jobcomp(path: Path) -> list[dict]:
    """jobcomp/filetxt: one `Key=Value ...` line per finished job, written by slurmctld."""
    rows = []
    for line in path.read_text().splitlines():
        rows.append(dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line)))
    return rows


def test_every_node_ran_as_a_slurm_job(slurm_run):
    d, state, out = slurm_run
    # the plugin's record of each submission: rule -> SLURM job id (sbatch's answer)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)/slurm_logs/rule_(\w+)/", out)
    by_rule = {rule: jobid for jobid, _, rule in submitted}
    assert len(submitted) == len(by_rule), "a node was submitted twice (retried?)"
    assert set(by_rule) == {n.name for n in nodes()}
    assert not re.search(r"^localrule ", out, flags=re.M), "a job ran locally, not through SLURM"
    # the controller's own record: every one of those job ids ran here and completed with exit 0
    done = {r["JobId"]: r for r in _jobcomp(state / "jobcomp.txt") if r.get("WorkDir") == str(d)}
    assert set(done) == set(by_rule.values()), (sorted(done), by_rule)
    for rule, jobid in by_rule.items():
        r = done[jobid]
        assert r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0", (rule, r)
        # and its batch log (kept: --slurm-keep-successful-logs) shows the rule ran inside the job
        log = d / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{jobid}.log"
        assert log.exists(), log
        assert re.search(rf"^rule {rule}:", log.read_text(), flags=re.M), log
    for n in nodes():
        for o in n.all_outs:
            assert (d / o).exists(), o


def _flatten(x, prefix=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _flatten(v, f"{prefix}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, x


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_results_equal_a_local_run(slurm_run, local_run):
    d = slurm_run[0]
    a = dict(_flatten(json.loads((d / "results/metrics.json").read_text())))
    b = dict(_flatten(json.loads((local_run / "results/metrics.json").read_text())))
    assert a.keys() == b.keys()
    keep = [k for k in a if k.rsplit("/", 1)[-1] not in TIMING]
    assert len(keep) > 100
    diff = {k: (a[k], b[k]) for k in keep if not _same(a[k], b[k])}
    assert not diff, diff
