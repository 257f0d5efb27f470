import copy
import math
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from echo.config import ROOT, SECTIONS, WIRED, FieldError, build, load_raw, validate_raw
from echo.errors import ConfigError
from echo.features import FrontEnd


def _params():
    return load_raw(ROOT / "params.yaml")


def test_default_params_valid():
    validate_raw(_params())


@pytest.mark.parametrize("mutate, expect", [
    (lambda p: p.update(bogus=1), "bogus: unknown key"),
    (lambda p: p["features"].update(n_mels="80"), "features.n_mels: expected an integer"),
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

        fields = {f.name for f in dataclasses.fields(_resolve(spec)) if f.init and not f.metadata.get(WIRED)}
        fields -= set(INJECT.get(path, {}))
        assert set(node["properties"]) == fields, path


def _set(p: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = p
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return p


@pytest.mark.parametrize("key, value, message", [
    # one case per kind of rule; each message names the params path as written in params.yaml
    ("evaluation.diarizer.chunk_s", -1, "evaluation.diarizer.chunk_s: expected finite seconds > 0, got -1"),
    ("evaluation.diarizer.chunk_s", math.inf, "evaluation.diarizer.chunk_s: expected finite seconds > 0, got inf"),
    ("evaluation.diarizer.context_s", -0.5, "evaluation.diarizer.context_s: expected finite seconds >= 0, got -0.5"),
    ("evaluation.diarizer.vbx.loopP", 1.0, "evaluation.diarizer.vbx.loopP: expected a number in [0, 1), got 1.0"),
    ("stages.phonetic.ctc_layers", 5, "stages.phonetic.ctc_layers: expected an integer in [0, 4], got 5"),
    ("pretrain.steps", 0, "pretrain.steps: expected an integer >= 1, got 0"),
    ("stages.routing.clean_batch_size", 1, "stages.routing.clean_batch_size: expected 0 or an integer >= 2, got 1"),
    ("evaluation.tune.Fa", [], "evaluation.tune.Fa: expected a non-empty list, got []"),
    ("evaluation.tune.Fb", [5.0, -1], "evaluation.tune.Fb[1]: expected a number > 0, got -1"),
    ("stages.routing.target", "x", "stages.routing.target: expected one of ['stage2', 'pretrain'], got 'x'"),
    # nested sections, and cross-field rules from __post_init__, anchored the same way
    ("stages.routing.router.num_heads", 0, "stages.routing.router.num_heads: expected an integer >= 1, got 0"),
    ("stages.routing.router.width", 30, "stages.routing.router.width: expected a multiple of num_heads (4), got 30"),
    ("simulation.conversations.room.rt60_s", [0.6, 0.2],
     "simulation.conversations.room.rt60_s: expected [low, high] with low <= high, got [0.6, 0.2]"),
    ("evaluation.diarizer.segment_step_s", 3.0,
     "evaluation.diarizer.segment_step_s: expected seconds in (0, segment_s=1.5], got 3.0"),
    # a width the code takes from the encoder is not a params key
    ("stages.routing.router.d_model", 512, "stages.routing.router.d_model: unknown key"),
])
def test_each_rule_names_the_params_path(key, value, message):
    with pytest.raises(ConfigError) as e:
        validate_raw(_set(_params(), key, value))
    assert str(e.value).startswith(f"params.yaml: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_rules_also_check_directly_built_configs():
    from echo.diarization.diarizer import DiarizerConfig

    with pytest.raises(FieldError, match=r"^DiarizerConfig\.chunk_s: expected finite seconds > 0, got 0$"):
        DiarizerConfig(chunk_s=0)
    with pytest.raises(FieldError, match=r"^stages\.speaker\.lr: expected a number in \(0, 1\), got 2$"):
        from echo.stages.speaker import SpeakerStageConfig

        SpeakerStageConfig(lr=2)


@pytest.mark.parametrize("key, values", [
    ("evaluation.diarizer.chunk_s", [30.0, 0.5, 0, -1, math.inf]),
    ("evaluation.diarizer.vbx.loopP", [0.0, 0.99, 1.0, -0.1]),
    ("evaluation.diarizer.vbx.dim", [None, 1, 0, 2.5]),
    ("stages.routing.clean_batch_size", [1, 2, 4]),  # 0 is allowed by the rule, refused by a cross-field one
    ("stages.phonetic.ctc_layers", [0, 4, 5, -1]),
    ("stages.routing.target", ["stage2", "pretrain", "x"]),
    ("evaluation.tune.Fa", [[0.3], [], [0.3, -1.0]]),
    ("pretrain.log_every", [1, 0, 1.5, True]),
    ("simulation.conversations.room.max_order", [0, 200, 201]),
])
def test_schema_and_loader_agree(key, values):
    """The generated schema and the loader read the same rules: a value one rejects, so does the other."""
    import jsonschema

    from echo.config import SCHEMA_PATH

    validator = jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA_PATH.read_text()))
    base = _params()
    for value in values:
        p = _set(copy.deepcopy(base), key, value)
        schema_ok = validator.is_valid(p)
        try:
            validate_raw(p)
            loader_ok = True
        except ConfigError:
            loader_ok = False
        assert schema_ok == loader_ok, (key, value, schema_ok, loader_ok)
    assert not all(validator.is_valid(_set(copy.deepcopy(base), key, v)) for v in values), key  # a rejecting value
