"""The guard file: the configuration model, its parsing and writing.

A guard file (TOML, or JSON of the same shape; ``version = 1``) has three parts::

    version = 1
    [features.income]              # an input column (or a request parameter)
    min = 0.0                      # optional; values below are "below_min"
    max = 500000.0                 # optional; values above are "above_max"
    allow_nan = false              # default false: NaN is a "nan" violation
    required = false               # default false: true makes an absent column "missing"
    [features.age_band]
    allowed = ["18-25", "26-40"]   # instead of min/max: other values are "unseen_category"
    [outputs.probabilities_1]      # an output column; same keys
    min = 0.0
    max = 1.0
    [[rates]]                      # see mlwitness.guards.rates
    name = "approval_rate"
    ...

`FieldGuard` and `GuardConfig` model it; `load_guards` / `loads_guards` parse and validate
it, `dumps_toml` writes it back. Drafting one from a baseline is
`mlwitness.guards.suggestions`; checking rows against it is `mlwitness.guards.rules.GuardSet`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlwitness.errors import ConfigError
from mlwitness.guards.rates import RateGuard, require_number

__all__ = [
    "FieldGuard",
    "GuardConfig",
    "dumps_toml",
    "load_guards",
    "loads_guards",
]

VERSION = 1
_FIELD_KEYS = ("required", "min", "max", "allow_nan", "allowed")
_TOP_KEYS = ("version", "features", "outputs", "rates")


# ── configuration ─────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class FieldGuard:
    """Bounds for one input feature or output column. `allowed` is sorted and unique."""

    min: float | None = None
    max: float | None = None
    allow_nan: bool = False
    allowed: tuple[str, ...] | None = None
    required: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str) -> FieldGuard:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELD_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(_FIELD_KEYS)}"
            )
        low, high = (
            None if data.get(k) is None else require_number(data[k], f"{where}: {k!r}")
            for k in ("min", "max")
        )
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{where}: min {low:g} is greater than max {high:g}")
        flags = {k: data.get(k, False) for k in ("allow_nan", "required")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
        allowed = data.get("allowed")
        if allowed is not None:
            if not isinstance(allowed, list | tuple) or not allowed:
                raise ConfigError(f"{where}: 'allowed' must be a non-empty list of strings")
            if any(isinstance(v, bool) or not isinstance(v, str | int) for v in allowed):
                raise ConfigError(f"{where}: 'allowed' entries must be strings (or integers)")
            if low is not None or high is not None:
                raise ConfigError(f"{where}: use either 'allowed' or 'min'/'max', not both")
            allowed = tuple(sorted({str(v) for v in allowed}))
        return cls(low, high, flags["allow_nan"], allowed, flags["required"])

    def to_dict(self) -> dict[str, Any]:
        items = {k: getattr(self, k) for k in _FIELD_KEYS}
        items["allowed"] = None if self.allowed is None else list(self.allowed)
        return {k: v for k, v in items.items() if v is not None}


@dataclass(frozen=True)
class GuardConfig:
    """A whole guard file. `sha256` (of the canonical JSON) is the guard version id."""

    features: dict[str, FieldGuard] = field(default_factory=dict)
    outputs: dict[str, FieldGuard] = field(default_factory=dict)
    rates: tuple[RateGuard, ...] = ()
    version: int = VERSION

    @classmethod
    def from_dict(cls, data: Any) -> GuardConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"guards: expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown top-level key {unknown[0]!r}; expected one of {', '.join(_TOP_KEYS)}"
            )
        if data.get("version") != VERSION:
            raise ConfigError(
                f"'version' must be {VERSION} (got {data.get('version')!r}); "
                f"start the file with: version = {VERSION}"
            )
        sections = {}
        for section in ("features", "outputs"):
            entries = data.get(section, {})
            if not isinstance(entries, Mapping):
                raise ConfigError(f"{section}: expected a table of [{section}.<name>] tables")
            for name in entries:
                if not isinstance(name, str) or not name:
                    raise ConfigError(f"{section}: names must be non-empty strings")
                _require_text(name, f"{section}: the name {name!r}")
            sections[section] = {
                name: FieldGuard.from_dict(guard, f"{section}.{name}")
                for name, guard in entries.items()
            }
        raw_rates = data.get("rates", [])
        if not isinstance(raw_rates, list):
            raise ConfigError("rates: expected an array of [[rates]] tables")
        rates = tuple(RateGuard.from_dict(r, f"rates[{i}]") for i, r in enumerate(raw_rates))
        for i, rate in enumerate(rates):
            for text in (rate.name, rate.output, rate.equals or ""):
                _require_text(text, f"rates[{i}]: {text!r}")
        names = [r.name for r in rates]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"rates: the name {name!r} is used more than once")
        return cls(sections["features"], sections["outputs"], rates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "features": {name: g.to_dict() for name, g in self.features.items()},
            "outputs": {name: g.to_dict() for name, g in self.outputs.items()},
            "rates": [r.to_dict() for r in self.rates],
        }

    def canonical_json(self) -> str:
        return _canonical(self.to_dict())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _require_text(text: str, where: str) -> None:
    """Names and values end up hashed and stored as UTF-8: a lone surrogate (possible in
    JSON's \\uD800 escapes) cannot be."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{where} is not valid Unicode text") from None


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads_guards(text: str, fmt: str = "toml") -> GuardConfig:
    """Parse guard text in `fmt` ("toml" or "json")."""
    try:
        data = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not valid {fmt.upper()}: {exc}") from None
    except RecursionError:  # both parsers recurse per nested array or table
        raise ConfigError(f"not valid {fmt.upper()}: nested too deeply") from None
    return GuardConfig.from_dict(data)


def load_guards(path: str | Path) -> GuardConfig:
    """Read a guard file: TOML, or JSON when the name ends in `.json`. Errors name the file."""
    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    try:
        return loads_guards(path.read_text(encoding="utf-8"), fmt)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read guard file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the guard file "
                          "as UTF-8") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None


# ── TOML writer (the structure is flat enough not to need a dependency) ───────────────


def dumps_toml(
    config: GuardConfig, *, header: str = "", notes: Mapping[str, str] | None = None
) -> str:
    """`config` as TOML that `tomllib` reads back to an equal config. `header` and
    `notes` (keyed "features.<name>", "outputs.<name>", "rates.<name>") become comments."""
    notes = notes or {}
    lines = [*_comment(header), f"version = {config.version}"]
    for section, guards in (("features", config.features), ("outputs", config.outputs)):
        for name, guard in guards.items():
            lines += ["", *_comment(notes.get(f"{section}.{name}", ""))]
            lines.append(f"[{section}.{_key(name)}]")
            items = guard.to_dict()
            if not guard.required:
                del items["required"]
            lines += [f"{key} = {_value(value)}" for key, value in items.items()]
    for rate in config.rates:
        lines += ["", *_comment(notes.get(f"rates.{rate.name}", "")), "[[rates]]"]
        lines += [f"{key} = {_value(value)}" for key, value in rate.to_dict().items()]
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # "0.1", "1e+16", "inf", "nan": all valid TOML floats
    if isinstance(value, str):
        return _string(value)
    items = [_value(v) for v in value]
    if sum(len(i) + 2 for i in items) <= 80:
        return f"[{', '.join(items)}]"
    return "[\n" + "".join(f"    {i},\n" for i in items) + "]"


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
