"""Guards: checking a model's inputs and outputs against a guard file, per row.

`GuardSet` compiles a `GuardConfig` (the guard file, see `mlwitness.guards.file`) and checks
decoded `Rows` vectorised over all rows, giving `Violation`s; `refusal` turns them into the
error an enforcing server raises. A guard whose name is neither a column nor (for
features) a request parameter is skipped, unless it is `required`. NaN is never compared
with min/max. `allowed` matches text exactly ("1" is not "1.0"); on a numeric column its
entries are read as numbers. A text value under a min/max guard is read as a number
("not_numeric" if it is not one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwitness.errors import GuardViolation
from mlwitness.guards.file import FieldGuard, GuardConfig, _number_or_none

if TYPE_CHECKING:
    from mlwitness.ledger.rows import Rows

__all__ = ["Findings", "GuardSet", "Violation", "refusal"]


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
    withheld: bool = False  # the value is of a minimised input: never shown or stored

    def message(self) -> str:
        if self.kind == "missing":
            return f"{self.column} is missing (guard {self.guard} has required = true)"
        where = "request parameter" if self.row is None else f"row {self.row}"
        value = "(withheld: a minimised input)" if self.withheld else f"= {_show(self.value)}"
        head = f"{where}: {self.column} {value}"
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
        value = None if self.withheld else self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        bound = list(self.bound) if isinstance(self.bound, tuple) else self.bound
        out = {
            "row": self.row,
            "column": self.column,
            "value": value,
            "kind": self.kind,
            "bound": bound,
            "guard": self.guard,
        }
        if self.withheld:
            out["withheld"] = True
        return out


@dataclass
class Findings:
    """What one check found: every violation counted by (guard, column, kind), the first
    `limit` of them (by row, then column) listed. A batch of 100,000 bad rows must not
    become 100,000 objects on the event loop and megabytes of JSON on the ledger."""

    listed: list[Violation]
    counts: dict[tuple[str, str, str], int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
    return str(value)


def refusal(violations: Sequence[Violation], limit: int = 3,
            total: int | None = None) -> GuardViolation:
    """The error an enforcing server raises (INVALID_ARGUMENT), naming the first few of
    `total` violations (default: all those given)."""
    total = len(violations) if total is None else total
    shown = "; ".join(v.message() for v in violations[:limit])
    more = f"; and {total - limit} more" if total > limit else ""
    return GuardViolation(f"refused by guards: {shown}{more}")


LISTED = 100  # violations a call's record lists (all are counted)


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

    def suspects(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | list[tuple[int, int]]:
        """(row, column) of numeric cells that may break their rule, row-major. One row is
        scanned in plain Python (faster than numpy at n = 1) and gives a list of every
        column, for `_Rule.judge` to decide; more rows give (rows, columns) arrays of
        exactly the cells that break their rule."""
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
        return rows, cols

    def kinds(self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray
              ) -> dict[tuple[str, str, str], int]:
        """Counts by (guard, column, kind) of the breaking cells `suspects` found, worked
        out column by column as `_Rule.judge` would."""
        counts: dict[tuple[str, str, str], int] = {}
        for j in np.unique(cols).tolist():
            rule = self.rule_at[j]
            values = x[rows[cols == j], j]
            nan = np.isnan(values)
            if rule.allowed is not None:
                found = {"nan": nan, "unseen_category": ~nan}
            else:
                found = {"nan": nan, "below_min": values < rule.lo, "above_max": values > rule.hi}
            for kind, mask in found.items():
                n = int(np.count_nonzero(mask))
                if n:
                    counts[(rule.guard, rule.name, kind)] = n
        return counts


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
        return self.judge_inputs(rows, parameters, limit=None).listed

    def check_outputs(self, rows: Rows) -> list[Violation]:
        """Violations of output guards by a response's rows, by row then column."""
        return self.judge_outputs(rows, limit=None).listed

    def judge_inputs(self, rows: Rows, parameters: Mapping[str, Any] | None = None, *,
                     limit: int | None = LISTED) -> Findings:
        """Feature-guard violations: all counted, the first `limit` listed (None: all)."""
        return self._check(self._features, True, rows, parameters, limit)

    def judge_outputs(self, rows: Rows, *, limit: int | None = LISTED) -> Findings:
        """Output-guard violations: all counted, the first `limit` listed (None: all)."""
        return self._check(self._outputs, False, rows, None, limit)

    def _check(
        self, rules: list[_Rule], inputs: bool, rows: Rows, parameters: Mapping[str, Any] | None,
        limit: int | None,
    ) -> Findings:
        if not rules:
            return Findings([], {})
        key = (inputs, rows.num_names, rows.text_names)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[key] = _Plan(rules, rows.num_names, rows.text_names)
        cap = math.inf if limit is None else limit
        found: list[tuple[int, int, Violation]] = []
        counts: dict[tuple[str, str, str], int] = {}
        if plan.numeric and rows.n:
            x = rows.num_values
            suspects = plan.suspects(x)
            if isinstance(suspects, list):  # one row: judged cell by cell
                for r, j in suspects:
                    self._add(found, counts, cap, r, j, plan.rule_at[j], x[r, j].item())
            else:  # exactly the breaking cells: counted in bulk, the first few judged
                at_rows, at_cols = suspects
                for (guard, column, kind), n in plan.kinds(x, at_rows, at_cols).items():
                    counts[(guard, column, kind)] = counts.get((guard, column, kind), 0) + n
                shown = at_rows.size if limit is None else min(limit, at_rows.size)
                for r, j in zip(at_rows[:shown].tolist(), at_cols[:shown].tolist(), strict=True):
                    rule = plan.rule_at[j]
                    verdict = rule.judge(x[r, j].item())
                    if verdict is not None:
                        found.append((r, j, Violation(r, rule.name, x[r, j].item(), *verdict,
                                                      rule.guard)))
        for j, rule in plan.text:
            col = rows.text_values[:, j]
            if rule.allowed is not None and rule.allowed_set.issuperset(col):
                continue
            listed = 0
            for r, value in enumerate(col.tolist()):
                listed += self._add(found, counts, cap - listed, r, plan.width + j, rule, value)
        for rule in plan.absent:
            if parameters and rule.name in parameters:
                value = parameters[rule.name]
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    value = str(value)
                self._add(found, counts, cap, -1, 0, rule, value)
            elif rule.required:
                counts[(rule.guard, rule.name, "missing")] = 1
                found.append((-1, 0, Violation(None, rule.name, None, "missing", None, rule.guard)))
        found.sort(key=lambda item: item[:2])
        return Findings([v for _, _, v in found[:limit]], counts)

    @staticmethod
    def _add(found: list, counts: dict, room: float, row: int, pos: int, rule: _Rule,
             value: Any) -> int:
        """Judge one value: count a violation, and list it while there is room. Returns 1
        when it was listed."""
        verdict = rule.judge(value)
        if verdict is None:
            return 0
        key = (rule.guard, rule.name, verdict[0])
        counts[key] = counts.get(key, 0) + 1
        if room <= 0:
            return 0
        at = None if row < 0 else row
        found.append((row, pos, Violation(at, rule.name, value, *verdict, rule.guard)))
        return 1
