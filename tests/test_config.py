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
