"""params.yaml -> validated, typed, frozen config objects.

Validation happens twice, before any work: the JSON schema in ``workflow/schemas/params.schema.yaml``
(structure, types, ranges; unknown keys are errors) and the component dataclasses' own
``__post_init__`` checks (cross-field rules). Either failure is one line naming the key, e.g.
``params.yaml: pretrain.lr: expected a number > 0, got -1``.

Each component owns a small frozen dataclass; :data:`SECTIONS` maps a params path to it, so a
workflow node receives only its own slice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from echo.errors import ConfigError

__all__ = ["SECTIONS", "SCHEMA_PATH", "load_raw", "validate_raw", "load_section", "build",
           "params_slice", "params_hash", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "params.schema.yaml"

# params path -> "module:Class". The only place where params.yaml meets the package.
SECTIONS: dict[str, str] = {
    "corpus.embedded": "echo.corpus.embedded:EmbeddedCorpusConfig",
    "corpus.real": "echo.corpus.adapters:RealCorpusConfig",
    "features": "echo.features:FrontEnd",
    "encoder": "echo.models.vit:EncoderConfig",
    "pretrain": "echo.train.pretrain:PretrainConfig",
    "stages.speaker": "echo.stages.speaker:SpeakerStageConfig",
    "stages.phonetic": "echo.stages.phonetic:PhoneticStageConfig",
    "stages.routing": "echo.stages.routing:RoutingStageConfig",
    "stages.segmentation": "echo.stages.segmentation:SegmentationStageConfig",
    "evaluation.abilities": "echo.evaluate.abilities:AbilityConfig",
    "evaluation.diarizer": "echo.diarization.diarizer:DiarizerConfig",
    "evaluation.backend": "echo.diarization.backend:BackendConfig",
    "evaluation.tune": "echo.evaluate.diarize:TuneConfig",
    "evaluation.separation": "echo.evaluate.separation:SeparationConfig",
    "evaluation.bootstrap": "echo.metrics.bootstrap:BootstrapConfig",
    "simulation.conversations": "echo.simulate.conversations:ConversationConfig",
    "simulation.mixtures": "echo.simulate.mixtures:MixtureConfig",
    "simulation.sets": "echo.simulate.sets:SimulationSets",
    "simulation.augmentation": "echo.simulate.augment:AugmentConfig",
}
# Keys a section's dataclass takes from elsewhere in params.yaml (one key chooses the corpus).
INJECT: dict[str, dict[str, str]] = {"corpus.real": {"source": "corpus.source"}}
REAL_SOURCES = ("voxceleb2", "voxceleb1", "librispeech")


def load_raw(path: str | Path) -> dict:
    """Read a params YAML file into a dict (no validation).

    Raises:
        ConfigError: one line: a missing file, or a syntax error with its line, e.g.
            ``params.yaml:12: could not parse YAML: mapping values are not allowed here``.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: expected a params YAML file, got a directory")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: could not parse YAML: not UTF-8 text") from None
    except yaml.YAMLError as e:
        # one line, ``file:line: could not parse YAML: problem`` (the compiler's convention)
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}:{where} could not parse YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def validate_raw(raw: dict, source: str = "params.yaml") -> dict:
    """Check ``raw`` against the JSON schema and every section's dataclass; return ``raw``.

    Raises:
        ConfigError: one line naming the first offending key and what was expected.
    """
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(f"{source}: {_describe(errors[0])}")
    for path in SECTIONS:
        load_section(raw, path, source)
    return raw


def load_section(raw: dict, path: str, source: str = "params.yaml"):
    """Build the frozen config object of one params section (``path`` like ``"pretrain"``)."""
    cls = _resolve(SECTIONS[path])
    data = dict(_get(raw, path) or {})
    for key, other in INJECT.get(path, {}).items():
        value = _get(raw, other)
        if path == "corpus.real" and value not in REAL_SOURCES:
            value = "librispeech"  # embedded corpus: still type-check the real-corpus section
        data[key] = value
    cfg = build(cls, data, f"{source}: {path}")
    if path == "corpus.real" and _get(raw, "corpus.source") in REAL_SOURCES and not cfg.root:
        raise ConfigError(f"{source}: corpus.real.root: expected the directory holding "
                          f"{_get(raw, 'corpus.source')}, got an empty string")
    return cfg


def build(cls, data: dict | None, where: str):
    """Construct dataclass ``cls`` from a mapping, checking keys and types (nested dataclasses too)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (expected one of {sorted(fields)})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # components name keys by their own section name ("real_corpus.workers: ..."); re-anchor the
        # message at the params path the user actually wrote ("corpus.real.workers: ...")
        m = re.match(r"^(?:[^:]+: )?[A-Za-z_]+\.([\w./\[\]]+): (.*)$", str(e))
        raise ConfigError(f"{where}.{m.group(1)}: {m.group(2)}" if m else f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(tp, v, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, where)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(errs[0] if errs else f"{where}: unexpected value {v!r}")
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {v!r}")
        return v
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(v)}")
            return tuple(_coerce(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
        inner = args[0] if args else Any
        out = [_coerce(inner, x, f"{where}[{i}]") for i, x in enumerate(v)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        return build(tp, v, where)
    if tp is Any:
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where}: expected a string, got {v!r}")
        return v
    if isinstance(tp, type) and tp is Path:
        return Path(v)
    return v


def params_slice(raw: dict, keys: list[str] | tuple[str, ...]) -> dict:
    """The sub-dict of ``raw`` under dotted ``keys`` (what one workflow node depends on)."""
    return {k: _get(raw, k) for k in keys}


def params_hash(obj: Any) -> str:
    """Short stable hash of a params slice (sorted-key JSON)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _get(raw: dict, dotted: str):
    cur: Any = raw
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _resolve(spec: str):
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name)


def _describe(err) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    v = err.validator
    if v == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        name = f"{key}.{extra[0]}" if key != "(top level)" else extra[0]
        return f"{name}: unknown key (expected one of {sorted(err.schema.get('properties', {}))})"
    if v == "required":
        return f"{key}: {err.message}"
    if v == "type":
        return f"{key}: expected {err.validator_value}, got {err.instance!r}"
    if v == "enum":
        return f"{key}: expected one of {err.validator_value}, got {err.instance!r}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"{key}: expected a value {op} {err.validator_value}, got {err.instance!r}"
    return f"{key}: {err.message}"
