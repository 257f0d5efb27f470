import re
import shutil
import subprocess
import sys

import pytest
import yaml

from echo.config import ROOT, SECTIONS, build, load_raw, validate_raw
from echo.errors import ConfigError
from echo.features import FrontEnd


def _params():
    return load_raw(ROOT / "params.yaml")


def test_default_params_valid():
    validate_raw(_params())


@pytest.mark.parametrize("mutate, expect", [
    (lambda p: p.update(bogus=1), "bogus: unknown key"),
    (lambda p: p["features"].update(n_mels="80"), "features.n_mels: expected integer"),
    (lambda p: p["features"].update(hop_length=0), "features.hop_length"),
    (lambda p: p["corpus"]["real"].update(workers=0), "corpus.real.workers"),
    (lambda p: p["corpus"].update(source="librispeech"), "corpus.real.root: expected the directory"),
    (lambda p: p["corpus"].update(source="timit"), "corpus.source: expected one of"),
    (lambda p: p["features"].update(f_max=9000.0), "features.f_max"),
])
def test_bad_params_one_line(mutate, expect):
    p = _params()
    mutate(p)
    with pytest.raises(ConfigError) as e:
        validate_raw(p)
    assert expect in str(e.value) and "\n" not in str(e.value)


def _broken_params(tmp_path):
    """The real params.yaml with a YAML syntax error on one of its value lines; returns (dir, line)."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if i >= 10 and re.match(r"^\s+\w+: \S", line))
    lines[i] += " : oops"  # "key: value : oops" -> mapping values are not allowed here
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path, i + 1


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    d, line = _broken_params(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_raw(d / "params.yaml")
    assert str(e.value) == f"{d / 'params.yaml'}:{line}: could not parse YAML: mapping values are not allowed here"
    # the workflow's own entry point: one line on stderr, exit status 2
    r = subprocess.run([sys.executable, "-m", "echo.pipeline", "validate", "--params", "params.yaml"], cwd=d,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"echo: error: params.yaml:{line}: could not parse YAML: "
                                             "mapping values are not allowed here"]


def test_yaml_syntax_error_in_snakemake_dry_run(tmp_path):
    d, line = _broken_params(tmp_path)
    shutil.copy(ROOT / "Snakefile", d / "Snakefile")  # it fails on params.yaml before any include
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.strip().splitlines() == [f"echo: error: params.yaml:{line}: could not parse YAML: "
                                             "mapping values are not allowed here"], r.stderr


def test_build_rejects_unknown_and_wrong_type():
    with pytest.raises(ConfigError, match="x.nope: unknown key"):
        build(FrontEnd, {"nope": 1}, "x")
    with pytest.raises(ConfigError, match="x.n_mels: expected an integer"):
        build(FrontEnd, {"n_mels": 1.5}, "x")


def test_committed_schema_is_generated():
    from echo.pipeline.schema import check_schema

    check_schema()


def test_schema_and_dataclasses_agree():
    """Every dataclass field has a schema property and vice versa (one contract, two checks)."""
    import dataclasses

    from echo.config import SCHEMA_PATH, _resolve

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    for path, spec in SECTIONS.items():
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        from echo.config import INJECT

        fields = {f.name for f in dataclasses.fields(_resolve(spec)) if f.init} - set(INJECT.get(path, {}))
        assert set(node["properties"]) == fields, path
