"""params.yaml -> validated, typed, frozen config objects.

Each component owns a small frozen dataclass; :data:`SECTIONS` maps a params path to it, so a
workflow node receives only its own slice. Validation happens once, before any work, in
:func:`validate_raw`, from one declaration per field:

- the type annotation (``int``, ``float``, ``Literal[...]``, nested dataclasses; unknown keys are
  errors);
- a value rule in the field's metadata, ``field(default=1.5, metadata=rule(gt=0, finite=True))``;
- cross-field rules in the dataclass's ``__post_init__``, raised through :func:`need`.

The JSON schema in ``workflow/schemas/params.schema.yaml`` is generated from the same types and
rules (``python -m echo.pipeline schema``), for editors and readers; the loader does not need it.
Every failure is one line naming the params path as written, e.g.
``params.yaml: evaluation.diarizer.chunk_s: expected finite seconds > 0, got -1``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from echo.errors import ConfigError

__all__ = ["SECTIONS", "SCALARS", "SCHEMA_PATH", "Rule", "rule", "rule_of", "wired", "need", "check_fields", "FieldError",
           "load_raw", "validate_raw", "load_section", "build", "params_slice", "params_hash", "ROOT"]

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
    "stages.separation": "echo.stages.separation:SeparationStageConfig",
    "evaluation.abilities": "echo.evaluate.abilities:AbilityConfig",
    "evaluation.diarizer": "echo.diarization.diarizer:DiarizerConfig",
    "evaluation.backend": "echo.diarization.backend:BackendConfig",
    "evaluation.tune": "echo.evaluate.diarize:TuneConfig",
    "evaluation.separation": "echo.evaluate.separation:SeparationConfig",
    "evaluation.channels": "echo.evaluate.channels:ChannelEvalConfig",
    "evaluation.real_voices": "echo.corpus.real_voices:RealVoicesConfig",
    "evaluation.bootstrap": "echo.metrics.bootstrap:BootstrapConfig",
    "simulation.conversations": "echo.simulate.conversations:ConversationConfig",
    "simulation.mixtures": "echo.simulate.mixtures:MixtureConfig",
    "simulation.sets": "echo.simulate.sets:SimulationSets",
    "simulation.augmentation": "echo.simulate.augment:AugmentConfig",
    "seeds": "echo.evaluate.seeds:SeedsConfig",
}
# Rules between sections: "module:function" called as function(config of each listed section, source=...),
# after every section has validated on its own; each raises a one-line ConfigError.
CROSS: list[tuple[str, tuple[str, ...]]] = [
    ("echo.stages.segmentation:check_chunk_matches_diarizer", ("stages.segmentation", "evaluation.diarizer")),
    ("echo.evaluate.seeds:check_primary_seed", ("seeds", "stages.segmentation")),
]
# Keys a section's dataclass takes from elsewhere in params.yaml (one key chooses the corpus).
INJECT: dict[str, dict[str, str]] = {"corpus.real": {"source": "corpus.source"}}
REAL_SOURCES = ("voxceleb2", "voxceleb1", "librispeech")
# params keys that are plain values, not dataclass sections: their type and a line for the schema
SCALARS: dict[str, tuple[Any, str]] = {
    "profile": (str, "name of this parameter set, shown in results/tables.md"),
    "corpus.source": (typing.Literal["embedded", *REAL_SOURCES],
                      "the one key that chooses the data; nothing downstream changes"),
}

RULE = "echo.rule"  # field metadata key of a :class:`Rule`
WIRED = "echo.wired"  # field metadata key: set by the code from another component, not a params key


@dataclass(frozen=True)
class Rule:
    """The value rule of one config field (bounds, finiteness, non-empty lists).

    Declared once in the field's metadata through :func:`rule`; :func:`build` applies it to params
    values, :func:`check_fields` to directly constructed objects, and ``echo.pipeline.schema``
    writes it into the JSON schema. A rule on a list field applies to every item.

    Attributes:
        gt, ge, lt, le: exclusive/inclusive lower and upper bounds (None = unbounded).
        finite: reject inf and NaN.
        nonempty: a list field needs at least one item.
        also: values accepted besides the range (``also=(0,)``: "0 = off").
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = False
    nonempty: bool = False
    also: tuple = ()

    def ok(self, v, integer: bool = False) -> bool:
        """Whether the single value ``v`` satisfies the rule (``integer``: the field is an int)."""
        if v in self.also and not isinstance(v, bool):
            return True
        if not self.bounded:
            return True
        if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer else numbers.Real):
            return False
        if math.isnan(v) or (self.finite and not math.isfinite(v)):
            return False
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))

    @property
    def bounded(self) -> bool:
        return self.finite or any(b is not None for b in (self.gt, self.ge, self.lt, self.le))

    def describe(self, noun: str) -> str:
        """What the rule expects, in words: ``finite seconds > 0``, ``a number in [0, 1)``."""
        if self.finite:
            noun = "finite seconds" if noun == "seconds" else noun.replace("a number", "a finite number")
        lo = (">", self.gt) if self.gt is not None else (">=", self.ge) if self.ge is not None else None
        hi = ("<", self.lt) if self.lt is not None else ("<=", self.le) if self.le is not None else None
        if lo and hi:
            text = f"{noun} in {'(' if lo[0] == '>' else '['}{_fmt(lo[1])}, {_fmt(hi[1])}{')' if hi[0] == '<' else ']'}"
        elif lo or hi:
            text = f"{noun} {(lo or hi)[0]} {_fmt((lo or hi)[1])}"
        else:
            text = noun
        return " or ".join([*map(_fmt, self.also), text])

    def schema(self) -> dict:
        """The rule as JSON-schema keywords for one value."""
        out = {k: v for k, v in (("exclusiveMinimum", self.gt), ("minimum", self.ge),
                                 ("exclusiveMaximum", self.lt), ("maximum", self.le)) if v is not None}
        if self.finite:
            out["not"] = {"enum": [math.inf, -math.inf]}
        return {"anyOf": [{"enum": list(self.also)}, out]} if self.also else out


def rule(**kw) -> dict:
    """Field metadata holding a :class:`Rule`: ``field(default=0.5, metadata=rule(gt=0, lt=1))``."""
    return {RULE: Rule(**kw)}


def rule_of(cls, name: str, **changes) -> dict:
    """Field metadata reusing field ``name``'s rule of dataclass ``cls`` (with ``changes``), so a
    list of candidate values obeys the rule of the setting it searches."""
    base = next(f for f in dataclasses.fields(cls) if f.name == name).metadata[RULE]
    return {RULE: dataclasses.replace(base, **changes)}


def wired(**kw) -> dict:
    """Field metadata of a value the code sets from another component (e.g. a head's input width
    from the encoder): not a params key, so params.yaml and the schema omit it. ``kw``: a rule."""
    return {WIRED: True, **(rule(**kw) if kw else {})}


class FieldError(ConfigError):
    """A config field breaks its rule: ``key`` (relative to its section) and what was expected.

    :func:`build` re-anchors it at the params path the user wrote; constructed directly in code,
    it names the class (or its params ``SECTION``)."""

    def __init__(self, owner: str, key: str, detail: str) -> None:
        super().__init__(f"{owner}.{key}: {detail}")
        self.key, self.detail = key, detail


def need(obj, ok: bool, key: str, expected: str, got) -> None:
    """Cross-field rule of ``obj`` (called in ``__post_init__``): raise unless ``ok``.

    Raises:
        FieldError: ``key: expected <expected>, got <got>``, anchored at the params path by :func:`build`.
    """
    if not ok:
        raise FieldError(_owner(obj), key, f"expected {expected}, got {got!r}")


def check_fields(obj) -> None:
    """Apply every field's :class:`Rule` to a constructed config object (``__post_init__``'s first line).

    Raises:
        FieldError: the first field whose value breaks its rule.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        bad = _rule_error(f, hints[f.name], getattr(obj, f.name))
        if bad:
            raise FieldError(_owner(obj), *bad)


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
    """Check ``raw``: the keys between sections, the scalar keys and every section; return ``raw``.

    Raises:
        ConfigError: one line naming the first offending key and what was expected.
    """
    _check_tree(raw, source)
    for path in SECTIONS:
        load_section(raw, path, source)
    for spec, paths in CROSS:
        _resolve(spec)(*(load_section(raw, q, source) for q in paths), source=source)
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
    """Construct dataclass ``cls`` from a mapping, checking keys, types and rules (nested dataclasses too).

    ``where`` is the params path of ``data`` (``"params.yaml: evaluation.diarizer"``); every error
    names the offending key under it.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(WIRED)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (expected one of {sorted(fields)})")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(hints[k], v, f"{where}.{k}")
        bad = _rule_error(fields[k], hints[k], v)  # the value as written (-1, not the coerced -1.0)
        if bad:
            raise ConfigError(f"{where}.{bad[0]}: {bad[1]}")
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{where}.{e.key}: {e.detail}") from None


def _rule_error(f: dataclasses.Field, tp, v) -> tuple[str, str] | None:
    """(key, "expected ..., got ...") where value ``v`` of field ``f`` breaks its ``Literal`` type
    or its rule, else None."""
    if v is None:
        return None
    choices = _choices(tp)
    if choices and v not in choices:
        return f.name, f"expected one of {list(choices)}, got {v!r}"
    r = f.metadata.get(RULE)
    if r is None:
        return None
    integer = _base(tp) is int
    noun = "an integer" if integer else "seconds" if f.name.endswith("_s") else "a number"
    if isinstance(v, (list, tuple)):
        if r.nonempty and not v:
            return f.name, f"expected a non-empty list, got {list(v)!r}"
        for i, x in enumerate(v):
            if not r.ok(x, integer):
                return f"{f.name}[{i}]", f"expected {r.describe(noun)}, got {x!r}"
        return None
    return None if r.ok(v, integer) else (f.name, f"expected {r.describe(noun)}, got {v!r}")


def _base(tp):
    """The scalar type under Optional/tuple/list (``tuple[float, ...] | None`` -> float)."""
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(tp) in (typing.Union, types.UnionType, tuple, list) and args:
        return _base(args[0])
    return tp


def _choices(tp) -> tuple:
    """The values of a ``Literal`` (or optional ``Literal``) type; () for any other type."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((c for c in map(_choices, typing.get_args(tp)) if c), ())
    return ()


def _owner(obj) -> str:
    return getattr(type(obj), "SECTION", None) or type(obj).__name__


def _fmt(x) -> str:
    return repr(x) if isinstance(x, str) else f"{x:g}" if isinstance(x, float) else str(x)


def _check_tree(raw: dict, source: str) -> None:
    """The keys above and between the sections: required top-level keys, no unknown keys, scalars typed."""
    leaves = {**{p: None for p in SECTIONS}, **{p: tp for p, (tp, _) in SCALARS.items()}}
    inner = {".".join(p.split(".")[:i]) for p in leaves for i in range(1, p.count(".") + 1)}
    missing = sorted({p.split(".")[0] for p in leaves} - set(raw))
    if missing:
        raise ConfigError(f"{source}: {missing[0]}: required key missing")

    def walk(node: dict, prefix: str) -> None:
        here = {p[len(prefix):].split(".")[0] for p in (*leaves, *inner) if p.startswith(prefix)}
        unknown = sorted(set(node) - here)
        if unknown:
            raise ConfigError(f"{source}: {prefix}{unknown[0]}: unknown key (expected one of {sorted(here)})")
        for k, v in node.items():
            path = prefix + k
            if path in SCALARS:
                _coerce(leaves[path], v, f"{source}: {path}")
            elif path in inner:
                if not isinstance(v, dict):
                    raise ConfigError(f"{source}: {path}: expected a mapping, got {type(v).__name__}")
                walk(v, path + ".")

    walk(raw, "")


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
        return v if isinstance(v, tp) else build(tp, v, where)
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
