"""workflow/rules/nodes.smk is generated from the node registry, and Snakemake's own reading of the
workflow (a forced dry run) has exactly the registry's jobs, files, logs, threads and commands."""
import re
import subprocess
import sys

import pytest
import yaml

from echo.config import ROOT
from echo.pipeline.dag import nodes
from echo.pipeline.rules import PATH, render


def test_committed_rules_are_generated():
    assert (ROOT / PATH).read_text() == render(), "run `python -m echo.pipeline snakemake`"


@pytest.fixture(scope="module")
def dry_run_jobs() -> dict[str, dict[str, str]]:
    """Each job of `snakemake -n -p --forceall` as {field: value} (input, output, log, threads, shell...)."""
    # --forceall: list every job even where outputs already exist; -p: print each job's shell command
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "results/tables.md"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = {}
    for block in re.split(r"^rule ", out.stdout + out.stderr, flags=re.M)[1:]:
        name, _, body = block.partition(":\n")
        fields = dict(re.findall(r"^    (\w+): (.*)$", body, flags=re.M))
        fields["shell"] = re.search(r"^Shell command: (.*)$", body, flags=re.M).group(1)
        jobs[name] = fields
    return jobs


def _files(value: str) -> set[str]:
    return set(value.split(", ")) if value else set()


def test_snakemake_jobs_are_the_registry_nodes(dry_run_jobs):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(dry_run_jobs) == {n.name for n in nodes()} == set(stages)
    for n in nodes():
        job = dry_run_jobs[n.name]
        assert _files(job.get("input", "")) == set(n.deps) | set(n.code), n.name
        assert _files(job["output"]) == set(n.all_outs), n.name
        threads = int(job.get("threads", 1))  # Snakemake prints threads only when more than one
        assert (job["log"], job["benchmark"], threads) == (n.log, n.benchmark, n.threads), n.name
        assert f"gpu={n.gpu}" in job["resources"].split(", "), n.name
        assert job["shell"] == f"{n.cmd} > {n.log} 2>&1", n.name
        assert stages[n.name]["cmd"].endswith(job["shell"]), n.name  # DVC runs the same command


def test_rules_take_the_registry_params_slice():
    """Each rule's `params.slice` names the node's params keys (what makes Snakemake re-run it)."""
    text = (ROOT / PATH).read_text()
    for n in nodes():
        rule = text.split(f"rule {n.name}:\n", 1)[1].split("\nrule ", 1)[0]
        assert f"slice=params_slice(config, {list(n.params)!r})".replace("'", '"') in rule, n.name
