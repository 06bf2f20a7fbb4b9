"""Guards: checking a model's inputs and outputs against a guard file, per row.

`GuardSet` compiles a `GuardConfig` (the guard file, see `mlwitness.guardfile`) and checks
decoded `Rows` vectorised over all rows, giving `Violation`s; `refusal` turns them into the
error an enforcing server raises. A guard whose name is neither a column nor (for
features) a request parameter is skipped, unless it is `required`. NaN is never compared
with min/max. `allowed` matches text exactly ("1" is not "1.0"); on a numeric column its
entries are read as numbers. A text value under a min/max guard is read as a number
("not_numeric" if it is not one).

The guard-file API (`FieldGuard`, `GuardConfig`, `load_guards`, `loads_guards`,
`dumps_toml` from `mlwitness.guardfile`; `suggest`, `suggest_toml`, `baseline_id` from
`mlwitness.guard_suggestions`) is re-exported from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwitness.errors import GuardViolation
from mlwitness.guard_suggestions import baseline_id, suggest, suggest_toml
from mlwitness.guardfile import (
    FieldGuard,
    GuardConfig,
    _number_or_none,
    dumps_toml,
    load_guards,
    loads_guards,
)

if TYPE_CHECKING:
    from mlwitness.ledger.rows import Rows

__all__ = [
    "FieldGuard",
    "GuardConfig",
    "GuardSet",
    "Violation",
    "baseline_id",
    "dumps_toml",
    "load_guards",
    "loads_guards",
    "refusal",
    "suggest",
    "suggest_toml",
]


@dataclass(frozen=True, slots=True)
class Violation:
    """One value that broke a guard. `row` is None for a request parameter or a missing
    column. `kind`: below_min, above_max, nan, unseen_category, not_numeric, missing.
    `bound`: the min or max broken, the allowed values, or None."""

    row: int | None
    column: str
    value: float | str | None
    kind: str
    bound: float | tuple[str, ...] | None
    guard: str

    def message(self) -> str:
        if self.kind == "missing":
            return f"{self.column} is missing (guard {self.guard} has required = true)"
        where = "request parameter" if self.row is None else f"row {self.row}"
        head = f"{where}: {self.column} = {_show(self.value)}"
        if self.kind in ("below_min", "above_max"):
            side = "below min" if self.kind == "below_min" else "above max"
            return f"{head} is {side} {_show(self.bound)} (guard {self.guard})"
        if self.kind == "nan":
            return f"{head} is not allowed (guard {self.guard} has allow_nan = false)"
        if self.kind == "unseen_category":
            shown = list(self.bound) if isinstance(self.bound, tuple) else []
            listed = ", ".join(_show(v) for v in shown[:8]) + (", …" if len(shown) > 8 else "")
            return f"{head} is not an allowed value [{listed}] (guard {self.guard})"
        return f"{head} is not a number (guard {self.guard})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become the strings "nan", "inf", "-inf"."""
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        bound = list(self.bound) if isinstance(self.bound, tuple) else self.bound
        return {
            "row": self.row,
            "column": self.column,
            "value": value,
            "kind": self.kind,
            "bound": bound,
            "guard": self.guard,
        }


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
    return str(value)


def refusal(violations: Sequence[Violation], limit: int = 3) -> GuardViolation:
    """The error an enforcing server raises (INVALID_ARGUMENT), naming the first few."""
    shown = "; ".join(v.message() for v in violations[:limit])
    more = f"; and {len(violations) - limit} more" if len(violations) > limit else ""
    return GuardViolation(f"refused by guards: {shown}{more}")


class _Rule:
    """A FieldGuard compiled for checking."""

    __slots__ = (
        "name",
        "guard",
        "lo",
        "hi",
        "allow_nan",
        "allowed",
        "allowed_set",
        "numbers",
        "numbers_array",
        "ranged",
        "required",
    )

    def __init__(self, section: str, name: str, g: FieldGuard) -> None:
        self.name, self.guard = name, f"{section}.{name}"
        self.lo = -math.inf if g.min is None else g.min
        self.hi = math.inf if g.max is None else g.max
        self.ranged = g.min is not None or g.max is not None
        self.allow_nan, self.allowed, self.required = g.allow_nan, g.allowed, g.required
        self.allowed_set = frozenset(g.allowed or ())
        parsed = (_number_or_none(v) for v in self.allowed_set)
        self.numbers = frozenset(x for x in parsed if x is not None and not math.isnan(x))
        self.numbers_array = np.array(sorted(self.numbers), dtype=np.float64)

    def judge(self, value: Any) -> tuple[str, float | tuple[str, ...] | None] | None:
        """(kind, bound) if `value` breaks this rule, else None. Reference semantics; the
        vectorised paths only decide which values need judging."""
        if isinstance(value, str):
            if self.allowed is not None:
                return None if value in self.allowed_set else ("unseen_category", self.allowed)
            if not self.ranged:
                return None
            number = _number_or_none(value)
            if number is None:
                return ("not_numeric", None)
            value = number
        value = float(value)
        if value != value:
            return None if self.allow_nan else ("nan", None)
        if self.allowed is not None:
            return None if value in self.numbers else ("unseen_category", self.allowed)
        if value < self.lo:
            return ("below_min", self.lo)
        if value > self.hi:
            return ("above_max", self.hi)
        return None


class _Plan:
    """Where each rule applies for one column layout (cached per layout)."""

    def __init__(self, rules: Sequence[_Rule], num_names: Sequence[str], text_names: Sequence[str]):
        num = {name: j for j, name in enumerate(num_names)}
        text = {name: j for j, name in enumerate(text_names)}
        width = len(num_names)
        self.numeric = [(num[r.name], r) for r in rules if r.name in num]
        self.text = [
            (text[r.name], r)
            for r in rules
            if r.name not in num and r.name in text and (r.allowed is not None or r.ranged)
        ]
        self.absent = [r for r in rules if r.name not in num and r.name not in text]
        self.lo, self.hi = np.full(width, -np.inf), np.full(width, np.inf)
        self.nan_ok = np.ones(width, dtype=bool)
        for j, r in self.numeric:
            self.nan_ok[j] = r.allow_nan
            if r.allowed is None:
                self.lo[j], self.hi[j] = r.lo, r.hi
        self.sets = [(j, r) for j, r in self.numeric if r.allowed is not None]
        self.rule_at = dict(self.numeric)
        self.scalar = [
            (j, r.lo, r.hi, r.allow_nan, r.numbers if r.allowed is not None else None)
            for j, r in self.numeric
        ]
        self.width = width

    def suspects(self, x: np.ndarray) -> list[tuple[int, int]]:
        """(row, column) of every numeric cell that may break its rule, row-major; judged
        by `_Rule.judge`. One row is scanned in plain Python (faster than numpy at n = 1)."""
        if x.shape[0] == 1:
            row = x[0].tolist()
            for j, lo, hi, nan_ok, numbers in self.scalar:
                v = row[j]
                fits = (lo <= v <= hi) if numbers is None else (v in numbers)
                if not fits and not (v != v and nan_ok):
                    return [(0, j) for j, _ in self.numeric]
            return []
        ok = (x >= self.lo) & (x <= self.hi)  # False for NaN; True in `allowed` columns
        clean = bool(ok.all())
        if not clean:
            ok |= np.isnan(x) & self.nan_ok
        for j, r in self.sets:
            member = _member(x[:, j], r.numbers_array)
            if not member.all():
                ok[:, j] &= member | np.isnan(x[:, j])
                clean = False
        if clean:
            return []
        rows, cols = np.nonzero(~ok)
        return list(zip(rows.tolist(), cols.tolist(), strict=True))


def _member(column: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`np.isin(column, values)`, faster for the few values of a label."""
    if values.size > 16:
        return np.isin(column, values)
    hit = np.zeros(column.shape, dtype=bool)
    for value in values.tolist():
        hit |= column == value
    return hit


class GuardSet:
    """A GuardConfig compiled for per-request checks. Safe to share between threads."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.sha256 = config.sha256
        self._features = [_Rule("features", n, g) for n, g in config.features.items()]
        self._outputs = [_Rule("outputs", n, g) for n, g in config.outputs.items()]
        self._plans: dict[tuple[bool, tuple[str, ...], tuple[str, ...]], _Plan] = {}

    def check_inputs(
        self, rows: Rows, parameters: Mapping[str, Any] | None = None
    ) -> list[Violation]:
        """Violations of feature guards by a request's rows and parameters, by row then column."""
        return self._check(self._features, True, rows, parameters)

    def check_outputs(self, rows: Rows) -> list[Violation]:
        """Violations of output guards by a response's rows, by row then column."""
        return self._check(self._outputs, False, rows, None)

    def _check(
        self, rules: list[_Rule], inputs: bool, rows: Rows, parameters: Mapping[str, Any] | None
    ) -> list[Violation]:
        if not rules:
            return []
        key = (inputs, rows.num_names, rows.text_names)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[key] = _Plan(rules, rows.num_names, rows.text_names)
        found: list[tuple[int, int, Violation]] = []
        if plan.numeric and rows.n:
            x = rows.num_values
            for r, j in plan.suspects(x):
                self._add(found, r, j, plan.rule_at[j], x[r, j].item())
        for j, rule in plan.text:
            col = rows.text_values[:, j]
            if rule.allowed is not None and rule.allowed_set.issuperset(col):
                continue
            for r, value in enumerate(col.tolist()):
                self._add(found, r, plan.width + j, rule, value)
        for rule in plan.absent:
            if parameters and rule.name in parameters:
                value = parameters[rule.name]
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    value = str(value)
                self._add(found, -1, 0, rule, value)
            elif rule.required:
                found.append((-1, 0, Violation(None, rule.name, None, "missing", None, rule.guard)))
        found.sort(key=lambda item: item[:2])
        return [v for _, _, v in found]

    @staticmethod
    def _add(found: list, row: int, pos: int, rule: _Rule, value: Any) -> None:
        verdict = rule.judge(value)
        if verdict is not None:
            at = None if row < 0 else row
            found.append((row, pos, Violation(at, rule.name, value, *verdict, rule.guard)))
