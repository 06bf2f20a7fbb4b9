"""Guards proposed from a training baseline: a first guard file to edit, not a policy.

`suggest` drafts a `GuardConfig` from a baseline's JSON form (a `Baseline.to_json` document
or a plain ``{"features": …, "outputs": …}`` profile map): each numeric column gets the
training [min, max] widened by `margin` of its range on both sides (clamped at 0 for
non-negative data, and to [0, 1] for an output that looks like a probability), each
categorical column the values seen, and a 0/1 output a rate guard of training rate ± 0.15.
`suggest_toml` writes the same draft as commented TOML naming the baseline by `baseline_id`.
The file format itself is `mlwitness.guards.file`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from mlwitness.errors import ConfigError
from mlwitness.guards.file import FieldGuard, GuardConfig, _number_or_none, dumps_toml
from mlwitness.guards.rates import RateGuard, require_number

__all__ = ["baseline_id", "suggest", "suggest_toml"]


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
