"""What an explanation explains (one output column, f) and which outcome is favourable.

`favorable` is named as in `audit bias`, one of:

* ``LABEL=VALUE`` on a label output (an integer or text column): the decision is favourable
  when the model's label is VALUE, and f is the probability of that class — the column of
  the model's probability output (a float output of two or more columns, one per class)
  that belongs to VALUE: found by the classifier node's class labels in the model, or,
  when the model names none, VALUE read as the column's index;
* ``COLUMN>=T`` (or ``>``, ``<=``, ``<``) on a numeric output column: the decision is
  favourable when the inequality holds, and f is that column. With ``<`` or ``<=`` a
  *smaller* f is the favourable direction (a risk score), and the reasons are the features
  that pushed f up.

`output` names f's column when it is another than the rule reads (``probabilities_1``,
``score``); alone, it means ``output>=0.5``. With neither, a two-class classifier (a label
output and a two-column probability output) is taken to favour its second class
(``label=1`` for classes 0 and 1), and the answer says so; any other model must be told.
Column names are the ledger's: a tensor's name for one column, ``name_k`` for column k.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlwitness.codec import Tensor
from mlwitness.errors import InvalidInput

_RULE = re.compile(r"([^=<>!]+)(==|=|!=|>=|<=|>|<)(.*)")
_HIGHER = (">=", ">")


@dataclass(frozen=True)
class Column:
    tensor: str
    index: int
    name: str


@dataclass(frozen=True)
class Target:
    """f (`explained`), the favourable rule, and `sign`: +1 when a larger f is more
    favourable, -1 when a smaller one is."""

    explained: Column
    favorable: str
    sign: float
    decision: Column
    label: str | None  # a label rule's favourable label, as text
    op: str = ""
    threshold: float = 0.0

    @property
    def outputs(self) -> list[str]:
        """The output tensors f and the decision are read from."""
        return list(dict.fromkeys([self.explained.tensor, self.decision.tensor]))

    def values(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """f for each row, as float64."""
        return _column(tensors, self.explained).astype(np.float64)

    def favorable_rows(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        column = _column(tensors, self.decision)
        if self.label is not None:
            return np.array([label_text(v) == self.label for v in column], dtype=bool)
        values = column.astype(np.float64)
        return {">=": values >= self.threshold, ">": values > self.threshold,
                "<=": values <= self.threshold, "<": values < self.threshold}[self.op]

    def decisions(self, tensors: Mapping[str, np.ndarray]) -> list[str]:
        """Each row's decision in words: its label, or which side of the threshold."""
        if self.label is not None:
            return [label_text(v) for v in _column(tensors, self.decision)]
        opposite = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
        return [f"{self.decision.name} {self.op if ok else opposite[self.op]} "
                f"{self.threshold:g}" for ok in self.favorable_rows(tensors)]


def _column(tensors: Mapping[str, np.ndarray], column: Column) -> np.ndarray:
    array = np.asarray(tensors[column.tensor])
    n = array.shape[0] if array.ndim else 1
    return array.reshape(n, -1)[:, column.index]


def label_text(value: Any) -> str:
    """A label as the decision text shows it: integers without a decimal point."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class _Output:
    name: str
    kind: str  # numpy dtype kind ("O" for text)
    width: int

    def columns(self) -> list[str]:
        return [self.name] if self.width == 1 else [f"{self.name}_{j}"
                                                    for j in range(self.width)]

    @property
    def is_label(self) -> bool:
        return self.width == 1 and self.kind in "iuOSU"

    @property
    def is_scores(self) -> bool:
        return self.width >= 2 and self.kind == "f"


def resolve(favorable: str, output: str, outputs: Sequence[Tensor],
            labels: Sequence[Any] | None) -> Target:
    """The Target of a question on a model whose recorded outputs are `outputs` and whose
    classifier node names `labels` (None: it names none). InvalidInput says what to fix."""
    shapes = [_Output(t.name, t.array.dtype.kind, _width(t)) for t in outputs]
    explained = _find(shapes, output, "--output") if output else None
    favorable = favorable.strip()
    if not favorable:
        if explained is not None:
            return _threshold(shapes, explained.name, ">=", 0.5, explained)
        favorable = _default_rule(shapes, labels)
    match = _RULE.fullmatch(favorable)
    column, op, value = (p.strip() for p in match.groups()) if match else ("", "", "")
    if not column or not value:
        raise InvalidInput(f"favorable must look like label=1 or probabilities_1>=0.5, got "
                           f"{favorable!r}")
    if op in ("=", "=="):
        return _label_rule(shapes, column, value, explained, labels)
    if op == "!=":
        raise InvalidInput(f"favorable {favorable!r}: name the favourable outcome itself "
                           "(label=VALUE) or a threshold (COLUMN>=T), not what it is not")
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise InvalidInput(f"favorable {favorable!r}: {value!r} is not a finite number")
    return _threshold(shapes, column, op, threshold, explained)


def _width(tensor: Tensor) -> int:
    array = tensor.array
    if array.ndim == 0 or array.shape[0] == 0:
        return 1
    return int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1


def _find(shapes: Sequence[_Output], name: str, what: str) -> Column:
    for shape in shapes:
        if name in shape.columns():
            return Column(shape.name, shape.columns().index(name), name)
    columns = [c for s in shapes for c in s.columns()]
    raise InvalidInput(f"{what}: unknown output column {name!r}; the model's output columns: "
                       f"{', '.join(columns)}")


def _shape(shapes: Sequence[_Output], tensor: str) -> _Output:
    return next(s for s in shapes if s.name == tensor)


def _default_rule(shapes: Sequence[_Output], labels: Sequence[Any] | None) -> str:
    label = [s for s in shapes if s.is_label]
    scores = [s for s in shapes if s.is_scores and s.width == 2]
    if len(label) == 1 and len(scores) == 1 and (labels is None or len(labels) == 2):
        return f"{label[0].name}={label_text(labels[1]) if labels else '1'}"
    raise InvalidInput("say which outcome is favourable: --favorable label=1 (as in audit "
                       "bias) or --favorable COLUMN>=T, or the output to explain: --output "
                       "COLUMN; only a two-class classifier has a default")


def _threshold(shapes: Sequence[_Output], name: str, op: str, threshold: float,
               explained: Column | None) -> Target:
    column = _find(shapes, name, "favorable")
    if _shape(shapes, column.tensor).kind not in "iuf":
        raise InvalidInput(f"favorable: output {name!r} is text; compare a label with "
                           f"{name}=VALUE")
    if explained is not None and explained != column:
        raise InvalidInput(f"a threshold rule ({name}{op}{threshold:g}) explains the column "
                           f"it reads; --output {explained.name} names another")
    return Target(column, f"{name}{op}{threshold:g}", 1.0 if op in _HIGHER else -1.0,
                  column, None, op, threshold)


def _label_rule(shapes: Sequence[_Output], name: str, value: str,
                explained: Column | None, labels: Sequence[Any] | None) -> Target:
    column = _find(shapes, name, "favorable")
    shape = _shape(shapes, column.tensor)
    if not shape.is_label:
        raise InvalidInput(f"favorable {name}={value}: {name!r} is not a label output (an "
                           f"integer or text column); for a score use {name}>=T or {name}<T")
    if shape.kind in "iu":
        try:
            value = str(int(float(value)))
        except ValueError:
            raise InvalidInput(f"favorable: the labels of {name!r} are integers; "
                               f"{value!r} is not one") from None
    rule = f"{name}={value}"
    scores = [s for s in shapes if s.is_scores]
    if len(scores) > 1:
        scores = [s for s in scores if "prob" in s.name.lower()] or scores
    index = _class_index(value, labels, scores[0].width) if len(scores) == 1 else None
    if explained is None:
        if index is None:
            raise InvalidInput(f"favorable {rule}: cannot tell which output column is the "
                               f"probability of {value}; name it: --output COLUMN")
        score = scores[0]
        explained = Column(score.name, index, score.columns()[index])
        return Target(explained, rule, 1.0, column, value)
    sign = 1.0
    if index is not None and explained.tensor == scores[0].name and explained.index != index:
        if scores[0].width != 2:
            raise InvalidInput(f"--output {explained.name} is the score of another class "
                               f"than {rule}; explain that class's own column")
        sign = -1.0  # the other class of two: its probability falls as ours rises
    return Target(explained, rule, sign, column, value)


def _class_index(value: str, labels: Sequence[Any] | None, width: int) -> int | None:
    if labels:
        texts = [label_text(v) for v in labels]
        return texts.index(value) if value in texts and len(texts) == width else None
    if value.lstrip("-").isdigit() and 0 <= int(value) < width:
        return int(value)
    return None
