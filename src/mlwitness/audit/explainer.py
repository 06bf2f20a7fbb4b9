"""The explained model as the numerical core sees it: rows of features in, f and the
favourable outcome out, run on the recorded model bytes in the audit sandbox.

`Features` is a recorded call's inputs as one table (every numeric input of shape [N] or
[N, k], its columns in the ledger's order and names) and turns rows of that table back into
the model's input tensors. `Explainer` runs them: `values` (f) and `favorable` in the
question's sandbox worker — the 2^M × R hybrid rows of an `exact` explanation go in one run
— and `attribute` dispatches to the method asked for. `tree` needs no run: the ensemble is
read from the stored ONNX bytes (`mlwitness.model.onnx_graph`), the model input passed
through the Scalers and Casts in front of it, and `TreeExplainer` works on the trees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mlwitness.audit.favorable import Target
from mlwitness.audit.references import Reference
from mlwitness.audit.results import FeatureAttribution, ReasonCode, TieGroup
from mlwitness.codec import Tensor
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.explain.attribution import Attribution
from mlwitness.explain.kernel import kernel_shapley
from mlwitness.explain.reasons import ReasonTexts, reason_codes
from mlwitness.explain.shapley import exact_shapley, exact_shapley_many
from mlwitness.explain.trees import TreeEnsemble
from mlwitness.explain.treeshap import TreeExplainer
from mlwitness.model.onnx_graph import Graph, NotATreePipeline, TreePipeline, tree_pipeline
from mlwitness.model.sandbox import SandboxedModel

METHODS = ("exact", "kernel", "tree")


@dataclass(frozen=True)
class _Part:
    """One input tensor: its columns in the feature table."""

    name: str
    datatype: str
    dtype: np.dtype
    start: int
    width: int
    rank: int


@dataclass(frozen=True)
class Features:
    """A call's inputs as a feature table: `matrix` holds every row of the call."""

    names: tuple[str, ...]
    matrix: np.ndarray  # [n, M]
    parts: tuple[_Part, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.matrix.dtype

    @property
    def key(self) -> tuple:
        """What calls must share to be explained by one Explainer."""
        return self.names, tuple((p.name, p.datatype, p.width, p.rank) for p in self.parts)

    def tensors(self, rows: np.ndarray) -> list[Tensor]:
        """Rows of the table as the model's input tensors."""
        out = []
        for part in self.parts:
            block = rows[:, part.start:part.start + part.width]
            if part.dtype.kind in "iu":
                block = np.rint(block)
            array = np.ascontiguousarray(block.astype(part.dtype, copy=False))
            if part.rank == 1:
                array = array[:, 0]
            out.append(Tensor(part.name, part.datatype, tuple(array.shape), array))
        return out


def features_of(inputs: Sequence[Tensor], names: Sequence[str], seq: int) -> Features:
    """The feature table of a recorded call; FailedPrecondition when it is not tabular."""
    parts: list[_Part] = []
    blocks: list[np.ndarray] = []
    n: int | None = None
    for tensor in inputs:
        array = tensor.array
        shape = tuple(array.shape)
        if array.dtype == object or array.dtype.kind not in "iuf" or len(shape) not in (1, 2) \
                or array.size == 0 or (n is not None and shape[0] != n):
            raise FailedPrecondition(
                f"record seq {seq} is not tabular: input {tensor.name!r} is {tensor.datatype} "
                f"{list(shape)}; explanations need numeric inputs of shape [N] or [N, k] "
                "with the same N")
        n = shape[0]
        width = shape[1] if len(shape) == 2 else 1
        parts.append(_Part(tensor.name, tensor.datatype, array.dtype,
                           sum(p.width for p in parts), width, len(shape)))
        blocks.append(array.reshape(n, width))
    if not parts:
        raise FailedPrecondition(f"record seq {seq} has no input to explain")
    dtypes = {p.dtype for p in parts}
    dtype = dtypes.pop() if len(dtypes) == 1 and parts[0].dtype.kind == "f" else np.dtype(
        np.float64)
    matrix = np.concatenate([b.astype(dtype) for b in blocks], axis=1)
    width = matrix.shape[1]
    if len(names) != width:
        names = [f"{p.name}_{j}" if p.width > 1 else p.name for p in parts
                 for j in range(p.width)]
    return Features(tuple(names), matrix, tuple(parts))


class Explainer:
    """One model, one feature layout, one Target and one Reference: f, decisions and
    attributions for rows of the feature table."""

    def __init__(self, model: Callable[[], SandboxedModel], features: Features,
                 target: Target, reference: Reference, graph: Graph | None = None) -> None:
        self.model = model  # loaded in the sandbox on first use (`tree` may need no run)
        self.features = features
        self.target = target
        self.reference = reference
        self.graph = graph
        self._tree: _Tree | None = None

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        tensors = self.features.tensors(np.atleast_2d(rows))
        requested = self.target.outputs
        model = self.model()
        batched = all(s.shape and s.shape[0] == -1 for s in model.signature.inputs)
        out = model.run(tensors, requested) if batched else model.run_rows(tensors, requested)
        return {t.name: t.array for t in out}

    def values(self, rows: np.ndarray) -> np.ndarray:
        """f for each row."""
        return self.target.values(self.run(rows))

    def favorable(self, rows: np.ndarray) -> np.ndarray:
        """Whether the model decides each row favourably."""
        return self.target.favorable_rows(self.run(rows))

    def attribute(self, x: np.ndarray, method: str, *, seed: int = 0, samples: int = 0
                  ) -> Attribution:
        """Attributions of f at row `x` against the reference rows."""
        try:
            if method == "exact":
                return exact_shapley(self.values, x, self.reference.rows)
            if method == "kernel":
                return kernel_shapley(self.values, x, self.reference.rows,
                                      samples=samples or None, seed=seed)
            return self.tree().explain(x)
        except ValueError as exc:  # the core's limits: the question asks too much
            raise InvalidInput(str(exc)) from None

    def attribute_many(self, xs: np.ndarray, method: str, *, seed: int = 0,
                       samples: int = 0) -> list[Attribution]:
        """`attribute` for many rows: `exact` runs several rows' hybrid rows together,
        `tree` works on several rows at once."""
        try:
            if method == "exact":
                return exact_shapley_many(self.values, xs, self.reference.rows)
            if method == "tree":
                return self.tree().explain_many(xs)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        return [self.attribute(x, method, seed=seed, samples=samples) for x in xs]

    def tree(self) -> _Tree:
        if self._tree is None:
            self._tree = _Tree.of(self)
        return self._tree

    def explains(self, attribution: Attribution) -> str:
        """What f is, in words."""
        return self.target.explained.name if attribution.explains == "f(x)" \
            else attribution.explains

    def attributions(self, x: np.ndarray, attribution: Attribution
                     ) -> list[FeatureAttribution]:
        return [FeatureAttribution(*fields) for fields in zip(
            self.features.names, np.asarray(x, dtype=np.float64).tolist(),
            self.reference.quoted.tolist(), attribution.values.tolist(), strict=True)]

    def reasons(self, x: np.ndarray, attribution: Attribution, top: int,
                texts: ReasonTexts | None) -> Reasons:
        """The features that counted most against the favourable outcome: attributions are
        turned toward it (`Target.sign`) to rank, and reported as f's."""
        sign = self.target.sign
        found = reason_codes(sign * attribution.values, x, self.reference.quoted,
                             self.features.names, top, texts)
        codes = [ReasonCode(r.rank, r.feature, sign * r.attribution, r.value, r.reference,
                            r.direction, r.text or "") for r in found.reasons]
        return Reasons(codes, found.harmful, list(found.zero),
                       [TieGroup(list(g)) for g in found.ties], found.cut_in_tie)

    def decided(self, outputs: Sequence[Tensor]) -> list[Decided]:
        """Each row's recorded decision, and f as recorded."""
        recorded = {t.name: t.array for t in outputs}
        target = self.target
        return [Decided(d, bool(ok), float(v)) for d, ok, v in zip(
            target.decisions(recorded), target.favorable_rows(recorded),
            target.values(recorded), strict=True)]


@dataclass(frozen=True)
class Decided:
    decision: str
    favorable: bool
    value: float


@dataclass(frozen=True)
class Reasons:
    codes: list[ReasonCode]
    harmful: int
    zero: list[str]
    ties: list[TieGroup]
    cut_in_tie: bool


@dataclass
class _Tree:
    """The explained output as a tree ensemble's raw score (method `tree`)."""

    pipeline: TreePipeline
    explainer: TreeExplainer
    sign: float
    explains: str

    @classmethod
    def of(cls, owner: Explainer) -> _Tree:
        target, graph = owner.target, owner.graph
        try:
            if graph is None or len(owner.features.parts) != 1 \
                    or owner.features.parts[0].rank != 2:
                raise NotATreePipeline("the model does not take one [N, k] input")
            pipeline = tree_pipeline(graph, target.explained.tensor)
            node = pipeline.node
            ensemble = TreeEnsemble.from_attributes(node.op_type, node.attributes)
            column, sign = _score_column(ensemble, target.explained.index)
            explainer = TreeExplainer(ensemble, pipeline.features(owner.reference.rows),
                                      column)
        except (NotATreePipeline, ValueError) as exc:
            raise FailedPrecondition(f"method tree reads a tree ensemble from the model, and "
                                     f"cannot here: {exc}; use method exact or kernel"
                                     ) from None
        return cls(pipeline, explainer, sign, _explains(ensemble, column, sign,
                                                        target.explained.name))

    def explain(self, x: np.ndarray) -> Attribution:
        return self.explain_many(x[None, :])[0]

    def explain_many(self, xs: np.ndarray) -> list[Attribution]:
        found = self.explainer.explain_many(self.pipeline.features(xs))
        if self.sign < 0:
            found = [replace(a, values=-a.values, fx=-a.fx,
                             reference_value=-a.reference_value) for a in found]
        return [replace(a, explains=self.explains) for a in found]


def _score_column(ensemble: TreeEnsemble, index: int) -> tuple[int, float]:
    """The raw score column behind output column `index`, and +1 or -1: in the binary
    case one score is kept, for the second class; the first class's is its negative."""
    if ensemble.binary_case:
        return 0, (1.0 if index == 1 else -1.0)
    if not 0 <= index < ensemble.columns:
        raise ValueError(f"the ensemble has {ensemble.columns} score columns, not "
                         f"{index + 1}")
    return index, 1.0


def _explains(ensemble: TreeEnsemble, column: int, sign: float, name: str) -> str:
    what = f"{'minus the' if sign < 0 else 'the'} {ensemble.describe(column)}"
    if ensemble.post_transform == "NONE":
        return f"{name} itself: {what}"
    return (f"the margin behind {name}: {what}; {name} is its {ensemble.post_transform}"
            " transform, whose attributions differ (method exact explains it)")

