"""The guard file: the configuration model, its parsing and writing, and its suggestion.

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
    [[rates]]                      # see mlwitness.rates
    name = "approval_rate"
    ...

`FieldGuard` and `GuardConfig` model it; `load_guards` / `loads_guards` parse and validate
it, `dumps_toml` writes it back, `baseline_id`, `suggest` and `suggest_toml` draft one from
a baseline profile (see `suggest`'s docstring). Checking rows against it is
`mlwitness.guards.GuardSet`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlwitness.errors import ConfigError
from mlwitness.rates import RateGuard, require_number

__all__ = [
    "FieldGuard",
    "GuardConfig",
    "baseline_id",
    "dumps_toml",
    "load_guards",
    "loads_guards",
    "suggest",
    "suggest_toml",
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
            sections[section] = {
                name: FieldGuard.from_dict(guard, f"{section}.{name}")
                for name, guard in entries.items()
            }
        raw_rates = data.get("rates", [])
        if not isinstance(raw_rates, list):
            raise ConfigError("rates: expected an array of [[rates]] tables")
        rates = tuple(RateGuard.from_dict(r, f"rates[{i}]") for i, r in enumerate(raw_rates))
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


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads_guards(text: str, fmt: str = "toml") -> GuardConfig:
    """Parse guard text in `fmt` ("toml" or "json")."""
    try:
        data = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not valid {fmt.upper()}: {exc}") from None
    return GuardConfig.from_dict(data)


def load_guards(path: str | Path) -> GuardConfig:
    """Read a guard file: TOML, or JSON when the name ends in `.json`. Errors name the file."""
    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    try:
        return loads_guards(path.read_text(encoding="utf-8"), fmt)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read guard file: {exc.strerror}") from None
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


# ── suggestion from a baseline ────────────────────────────────────────────────────────


def baseline_id(baseline: Mapping[str, Any]) -> str:
    """The baseline's "sha256" entry if it has one, else the SHA-256 of its JSON with sorted
    keys and compact separators (for a `mlwitness.baseline/1` document: `Baseline.sha256`)."""
    given = baseline.get("sha256")
    if isinstance(given, str):
        return given
    text = json.dumps(baseline, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _profiles(baseline: Any) -> dict[str, Mapping[str, Any]]:
    """{"features": …, "outputs": …} in the shape `suggest` documents. A `Baseline.to_json`
    document ("format": "mlwitness.baseline/1") is converted: every data column except
    the label becomes a feature, a column profiled both ways is numeric as a feature and
    categorical as an output (the class label)."""
    if not isinstance(baseline, Mapping):
        raise ConfigError("baseline: expected a JSON object")
    if "features" in baseline or not isinstance(baseline.get("columns"), Mapping):
        if not isinstance(baseline.get("features"), Mapping):
            raise ConfigError("baseline: expected a 'features' (or 'columns') object")
        return {"features": baseline["features"], "outputs": baseline.get("outputs") or {}}
    label = baseline.get("label")
    features = {k: v for k, v in baseline["columns"].items() if k != label}
    outputs = baseline.get("outputs") or {}
    if not isinstance(outputs, Mapping):
        raise ConfigError("baseline outputs: expected an object")
    return {
        "features": {k: _kinded(v, categorical=False) for k, v in features.items()},
        "outputs": {k: _kinded(v, categorical=True) for k, v in outputs.items()},
    }


def _kinded(column: Any, *, categorical: bool) -> Any:
    if not isinstance(column, Mapping) or "kind" in column:
        return column
    numeric, freqs = column.get("numeric"), column.get("categorical")
    common = {"count": column.get("count"), "missing": column.get("missing")}
    if freqs is not None and (categorical or numeric is None):
        return {"kind": "categorical", "frequencies": freqs, **common}
    numeric = numeric if isinstance(numeric, Mapping) else {}
    keep = {k: numeric.get(k) for k in ("min", "max", "quantiles")}
    return {"kind": "numeric", **keep, **common}


def suggest(baseline: Mapping[str, Any], *, margin: float = 0.1) -> GuardConfig:
    """Draft guards from a baseline's JSON form: either
    ``{"features": {name: profile}, "outputs": {name: profile}}`` with a profile
    ``{"kind": "numeric", "min", "max", "missing"}`` or ``{"kind": "categorical",
    "frequencies": {value: count}, "missing"}`` ("count" and "quantiles" p01/p1, p99 only
    feed comments), or a `Baseline.to_json` document (converted by `_profiles`).

    * numeric feature/output: [min − margin·range, max + margin·range] of the training
      values (range 0: margin·max(|min|, 1)); the lower bound is clamped at 0 when the
      training min is ≥ 0, and an output whose training values lie in [0, 1] (a
      probability or score) is clamped to [0, 1]. Bounds are rounded outward to 6
      significant digits. `allow_nan` is true iff the baseline had missing values.
    * categorical: `allowed` = the values seen; `allow_nan` as above.
    * a categorical output whose values are "0"/"1": a rate guard on "1" with bounds
      training rate ± 0.15 (clipped to [0, 1]), window 1000, confidence 0.95,
      min_samples 100.
    """
    return _suggest(baseline, margin)[0]


def suggest_toml(baseline: Mapping[str, Any], *, margin: float = 0.1) -> str:
    """`suggest` as commented TOML: a header naming the baseline and per-guard notes."""
    config, notes = _suggest(baseline, margin)
    header = (
        f"Guards suggested from baseline {baseline_id(baseline)}\n"
        f"by `mlwitness guards suggest` (margin {margin:g} of each training range).\n"
        "EDIT BEFORE USE: these bounds describe the training data, not a policy.\n"
        "Each guard's comment shows the baseline figures it was drawn from."
    )
    return dumps_toml(config, header=header, notes=notes)


def _suggest(baseline: Any, margin: float) -> tuple[GuardConfig, dict[str, str]]:
    if not isinstance(margin, int | float) or not 0 <= margin < math.inf:
        raise ConfigError(f"margin must be a non-negative number, got {margin!r}")
    given = _profiles(baseline)
    sections: dict[str, dict[str, FieldGuard]] = {"features": {}, "outputs": {}}
    rates: list[RateGuard] = []
    notes: dict[str, str] = {}
    for section, guards in sections.items():
        profiles = given[section]
        if not isinstance(profiles, Mapping):
            raise ConfigError(f"baseline {section}: expected an object")
        for name, profile in profiles.items():
            where = f"baseline {section}.{name}"
            if not isinstance(profile, Mapping):
                raise ConfigError(f"{where}: expected an object")
            missing = _profile_count(profile, "missing", where)
            kind = profile.get("kind")
            if kind == "numeric":
                guards[name], notes[f"{section}.{name}"] = _numeric_guard(
                    profile, margin, where, missing, is_output=section == "outputs"
                )
            elif kind == "categorical":
                freqs = profile.get("frequencies")
                if not isinstance(freqs, Mapping):
                    raise ConfigError(f"{where}: 'frequencies' must be an object {{value: count}}")
                counts = {str(v): _profile_count(freqs, v, where) for v in freqs}
                allowed = tuple(sorted(counts)) or None
                guards[name] = FieldGuard(allow_nan=missing > 0, allowed=allowed)
                notes[f"{section}.{name}"] = (
                    f"baseline: {len(counts)} values seen, {missing} missing"
                )
                rate = _rate_guard(name, counts) if section == "outputs" else None
                if rate is not None:
                    rates.append(rate)
                    share = counts[rate.equals or ""] / sum(counts.values())
                    notes[f"rates.{rate.name}"] = (
                        f"baseline rate of {name} == {rate.equals!r}: {share:.4f}; bounds ± 0.15"
                    )
            else:
                raise ConfigError(f"{where}: 'kind' must be 'numeric' or 'categorical'")
    return GuardConfig(sections["features"], sections["outputs"], tuple(rates)), notes


def _profile_count(profile: Mapping[str, Any], key: Any, where: str) -> int:
    value = profile.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{where}: {key!r} must be a non-negative count, got {value!r}")
    return int(value)


def _numeric_guard(
    profile: Mapping[str, Any], margin: float, where: str, missing: int, *, is_output: bool
) -> tuple[FieldGuard, str]:
    low, high = profile.get("min"), profile.get("max")
    if low is None or high is None:  # no finite training value at all
        return FieldGuard(allow_nan=True), f"baseline: no values, {missing} missing"
    low, high = (require_number(v, f"{where}: {k!r}") for k, v in (("min", low), ("max", high)))
    span = high - low
    pad = margin * (span if span > 0 else max(abs(low), 1.0))
    lower, upper = low - pad, high + pad
    if low >= 0:
        lower = max(lower, 0.0)
    if is_output and low >= 0 and high <= 1:
        upper = min(upper, 1.0)
    quantiles = profile.get("quantiles") or {}
    extra = "".join(
        f", {q} {quantiles[q]:.6g}"
        for q in ("p01", "p1", "p99")
        if isinstance(quantiles.get(q), float | int)
    )
    note = f"baseline: min {low:.6g}, max {high:.6g}{extra}, {missing} missing"
    return FieldGuard(_round(lower, down=True), _round(upper, down=False), missing > 0), note


def _round(x: float, *, down: bool) -> float:
    """`x` to 6 significant digits, rounded outward (down for a min, up for a max); a
    rounding within 1e-9 (relative) either way is float noise and is taken as is."""
    if x == 0 or not math.isfinite(x):
        return x
    digits = 5 - math.floor(math.log10(abs(x)))
    rounded = round(x, digits)
    if abs(rounded - x) <= 1e-9 * abs(x) or (rounded <= x if down else rounded >= x):
        return rounded
    return round(rounded + (-1 if down else 1) * 10.0**-digits, digits)


def _rate_guard(name: str, counts: Mapping[str, int]) -> RateGuard | None:
    numbers = {value: _number_or_none(value) for value in counts}
    total = sum(counts.values())
    ones = [v for v, x in numbers.items() if x == 1.0]
    if total <= 0 or not ones or any(x not in (0.0, 1.0) for x in numbers.values()):
        return None
    share = counts[ones[0]] / total
    return RateGuard(
        name=f"{name}_{ones[0]}_rate",
        output=name,
        equals=ones[0],
        min=round(max(0.0, share - 0.15), 4),
        max=round(min(1.0, share + 0.15), 4),
        window=1000,
        confidence=0.95,
        min_samples=100,
    )


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
