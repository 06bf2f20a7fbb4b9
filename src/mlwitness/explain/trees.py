"""Tree ensembles as ONNX ai.onnx.ml TreeEnsembleClassifier/Regressor describe them.

`TreeEnsemble.from_attributes` takes the operator's attributes (name -> list of values,
strings as str or bytes, ``*_as_tensor`` variants accepted) from any parser; the
ensemble evaluates itself in numpy the way onnxruntime does:

- each tree's root is the first node listed for its tree id (trees in the order their
  ids first appear); a branch node sends a row to its true child when
  ``x[feature] <mode> value`` holds (LEQ ``<=``, LT ``<``, GTE ``>=``, GT ``>``, EQ ``==``,
  NEQ ``!=``) or when the value is NaN and ``nodes_missing_value_tracks_true`` is 1; a NaN
  otherwise goes where the comparison sends it (false, except for NEQ);
- leaf weights are summed per class / target over the trees (divided by the number of
  trees for the regressor's AVERAGE; MIN and MAX take the extreme leaf weight), then the
  base values are added.

`raw_scores` stops there, before `post_transform`. Its columns: one per target (regressor)
or per class label (classifier) — except the *binary case*, a classifier with two labels
whose weights all name a single class id: onnxruntime reads that one column as the score of
the second (positive) label, and so does this module (`raw_scores` then has one column).
Comparisons happen on `x` as given: pass rows as the model receives them (float32-rounded
for a FLOAT input) to reproduce its branches exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ",
         "LEAF")
LEAF = MODES.index("LEAF")
_COMPARE = (np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal)
POST_TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT")
AGGREGATES = ("SUM", "AVERAGE", "MIN", "MAX")
KINDS = {"TreeEnsembleClassifier": "classifier", "TreeEnsembleRegressor": "regressor"}


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """One TreeEnsembleClassifier/Regressor, attributes as numpy arrays (see module doc).

    Leaf weights are `weight_treeids`/`weight_nodeids`/`weight_ids`/`weights` (the
    operator's ``class_*`` or ``target_*``); `columns` is the number of raw score columns.
    """

    kind: str
    nodes_treeids: np.ndarray
    nodes_nodeids: np.ndarray
    nodes_featureids: np.ndarray
    nodes_values: np.ndarray
    nodes_modes: np.ndarray  # int codes, index into MODES
    nodes_truenodeids: np.ndarray
    nodes_falsenodeids: np.ndarray
    nodes_missing_value_tracks_true: np.ndarray
    weight_treeids: np.ndarray
    weight_nodeids: np.ndarray
    weight_ids: np.ndarray
    weights: np.ndarray
    base_values: np.ndarray
    columns: int
    post_transform: str = "NONE"
    aggregate_function: str = "SUM"
    binary_case: bool = False
    labels: tuple[Any, ...] = field(default=())

    @classmethod
    def from_attributes(cls, op_type: str, attributes: Mapping[str, Sequence[Any]]
                        ) -> TreeEnsemble:
        """Build from an ONNX node's op type and attributes; ValueError names what is wrong."""
        if op_type not in KINDS:
            raise ValueError(f"not a tree ensemble operator: {op_type!r}; expected one of "
                             f"{', '.join(KINDS)}")
        kind = KINDS[op_type]
        a = _Attributes(attributes)
        prefix = "class_" if kind == "classifier" else "target_"
        modes = [_text(mode) for mode in a.values("nodes_modes")]
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise ValueError(f"unknown node mode {unknown[0]!r}; expected one of "
                             f"{', '.join(MODES)}")
        n_nodes = len(modes)
        missing = a.ints("nodes_missing_value_tracks_true") or [0] * n_nodes
        weight_ids = a.ints(prefix + "ids")
        labels: tuple[Any, ...] = ()
        binary = False
        if kind == "classifier":
            labels = tuple(_text(v) for v in a.values("classlabels_strings")) or tuple(
                a.ints("classlabels_int64s"))
            if not labels:
                raise ValueError("a TreeEnsembleClassifier needs classlabels_int64s or "
                                 "classlabels_strings")
            binary = len(labels) == 2 and len(set(weight_ids)) == 1
            columns = 1 if binary else len(labels)
        else:
            columns = int(a.scalar("n_targets", 1))
        ensemble = cls(
            kind=kind,
            nodes_treeids=np.asarray(a.ints("nodes_treeids"), dtype=np.int64),
            nodes_nodeids=np.asarray(a.ints("nodes_nodeids"), dtype=np.int64),
            nodes_featureids=np.asarray(a.ints("nodes_featureids"), dtype=np.int64),
            nodes_values=np.asarray(a.floats("nodes_values"), dtype=np.float64),
            nodes_modes=np.asarray([MODES.index(mode) for mode in modes], dtype=np.int64),
            nodes_truenodeids=np.asarray(a.ints("nodes_truenodeids"), dtype=np.int64),
            nodes_falsenodeids=np.asarray(a.ints("nodes_falsenodeids"), dtype=np.int64),
            nodes_missing_value_tracks_true=np.asarray(missing, dtype=bool),
            weight_treeids=np.asarray(a.ints(prefix + "treeids"), dtype=np.int64),
            weight_nodeids=np.asarray(a.ints(prefix + "nodeids"), dtype=np.int64),
            weight_ids=np.zeros(len(weight_ids), dtype=np.int64) if binary
            else np.asarray(weight_ids, dtype=np.int64),
            weights=np.asarray(a.floats(prefix + "weights"), dtype=np.float64),
            base_values=np.asarray(a.floats("base_values"), dtype=np.float64),
            columns=columns,
            post_transform=_text(a.scalar("post_transform", "NONE")),
            aggregate_function=_text(a.scalar("aggregate_function", "SUM")),
            binary_case=binary,
            labels=labels,
        )
        ensemble.compiled  # noqa: B018  (validates the structure now, not at first use)
        return ensemble

    @property
    def n_trees(self) -> int:
        return len(self.compiled.roots)

    @property
    def n_features(self) -> int:
        """Features the trees read: the largest feature id + 1."""
        used = self.nodes_featureids[self.nodes_modes != LEAF]
        return int(used.max()) + 1 if used.size else 0

    def describe(self, column: int = 0) -> str:
        """What raw score `column` is, in words (for an answer's `explains`)."""
        if self.kind == "regressor":
            what = f"target {column}"
        elif self.binary_case:
            what = f"class {self.labels[1]!r} (binary, one score column)"
        else:
            what = f"class {self.labels[column]!r}"
        return (f"raw score of {what}: the {self.aggregate_function.lower()} of leaf weights "
                f"plus base value, before post_transform {self.post_transform}")

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """Scores before `post_transform`: float64 [n, columns] for rows `x` [n, M]."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] < self.n_features:
            raise ValueError(f"expected rows of at least {self.n_features} features, got "
                             f"shape {x.shape}")
        c = self.compiled
        node = np.broadcast_to(c.roots, (x.shape[0], c.roots.size)).copy()
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(c.depth):
            inner = c.mode[node] != LEAF
            if not inner.any():
                break
            go = c.go_true(x[rows, c.feature[node]], node)
            node = np.where(inner, np.where(go, c.true[node], c.false[node]), node)
        leaf = c.leaf_values[node]  # [n, trees, columns]
        if self.aggregate_function == "MIN":
            scores = np.where(c.has_weight[node], leaf, np.inf).min(axis=1)
            scores[np.isinf(scores)] = 0.0
        elif self.aggregate_function == "MAX":
            scores = np.where(c.has_weight[node], leaf, -np.inf).max(axis=1)
            scores[np.isinf(scores)] = 0.0
        else:
            scores = leaf.sum(axis=1)
            if self.aggregate_function == "AVERAGE":
                scores /= c.roots.size
        return scores + self.offset

    @property
    def offset(self) -> np.ndarray:
        """The base values added to every row's raw scores ([columns])."""
        return self.base_values if self.base_values.size else np.zeros(self.columns)

    @cached_property
    def compiled(self) -> _Compiled:
        return _compile(self)

    @cached_property
    def paths(self) -> LeafPaths:
        return _leaf_paths(self.compiled)


@dataclass(frozen=True)
class _Compiled:
    """The ensemble as flat arrays indexed by node position (attribute order)."""

    roots: np.ndarray  # [trees] root node positions
    feature: np.ndarray
    threshold: np.ndarray
    mode: np.ndarray
    track: np.ndarray
    true: np.ndarray  # child positions (self for leaves)
    false: np.ndarray
    leaf_values: np.ndarray  # [nodes, columns] summed leaf weights (0 for branch nodes)
    has_weight: np.ndarray  # [nodes, columns] a weight names this column at this leaf
    depth: int
    modes: tuple[int, ...]  # the branch modes that occur (none: every tree is a leaf)
    any_track: bool

    def go_true(self, values: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Whether `values` go to the true child of `nodes` (`values` may have trailing
        axes beyond `nodes`'); meaningless, and unused, where a node is a leaf."""
        shape = nodes.shape + (1,) * (values.ndim - nodes.ndim)
        threshold = self.threshold[nodes].reshape(shape)
        if not self.modes:
            out = np.zeros(np.broadcast_shapes(values.shape, shape), dtype=bool)
        elif len(self.modes) == 1:  # the usual case: one comparison for every node
            out = _COMPARE[self.modes[0]](values, threshold)
        else:
            mode = self.mode[nodes].reshape(shape)
            out = np.zeros(np.broadcast_shapes(values.shape, shape), dtype=bool)
            for code in self.modes:
                out |= (mode == code) & _COMPARE[code](values, threshold)
        if self.any_track:
            out |= self.track[nodes].reshape(shape) & np.isnan(values)
        return out


def _compile(e: TreeEnsemble) -> _Compiled:
    n = e.nodes_treeids.size
    arrays = (e.nodes_nodeids, e.nodes_featureids, e.nodes_values, e.nodes_modes,
              e.nodes_truenodeids, e.nodes_falsenodeids, e.nodes_missing_value_tracks_true)
    names = ("nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
             "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true")
    if n == 0:
        raise ValueError("the ensemble has no nodes")
    for name, arr in zip(names, arrays, strict=True):
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} entries, nodes_treeids has {n}")
    if not e.weight_treeids.size == e.weight_nodeids.size == e.weight_ids.size \
            == e.weights.size:
        raise ValueError("the leaf weight attributes (treeids, nodeids, ids, weights) differ "
                         "in length")
    if e.post_transform not in POST_TRANSFORMS:
        raise ValueError(f"unknown post_transform {e.post_transform!r}")
    if e.aggregate_function not in AGGREGATES:
        raise ValueError(f"unknown aggregate_function {e.aggregate_function!r}")
    if e.columns < 1:
        raise ValueError("the ensemble has no score column")
    position = {(int(t), int(i)): k for k, (t, i) in
                enumerate(zip(e.nodes_treeids, e.nodes_nodeids, strict=True))}
    if len(position) != n:
        raise ValueError("a (tree id, node id) pair appears twice")
    inner = e.nodes_modes != LEAF
    if np.any(e.nodes_featureids[inner] < 0):
        raise ValueError("a branch node has a negative feature id")
    true = np.arange(n)
    false = np.arange(n)
    for k in np.flatnonzero(inner):
        tree = int(e.nodes_treeids[k])
        for child, ids, name in ((true, e.nodes_truenodeids, "true"),
                                 (false, e.nodes_falsenodeids, "false")):
            target = position.get((tree, int(ids[k])))
            if target is None or target == k:
                raise ValueError(f"node {int(e.nodes_nodeids[k])} of tree {tree}: its "
                                 f"{name} child {int(ids[k])} is not another node of the tree")
            child[k] = target
    _, first = np.unique(e.nodes_treeids, return_index=True)
    roots = np.sort(first)
    leaf_values = np.zeros((n, e.columns))
    has_weight = np.zeros((n, e.columns), dtype=bool)
    for t, i, c, w in zip(e.weight_treeids, e.weight_nodeids, e.weight_ids, e.weights,
                          strict=True):
        at = position.get((int(t), int(i)))
        if at is None:
            raise ValueError(f"a leaf weight names node {int(i)} of tree {int(t)}, which "
                             "does not exist")
        if not 0 <= c < e.columns:
            raise ValueError(f"a leaf weight names column {int(c)}; the ensemble has "
                             f"{e.columns}")
        if inner[at]:
            continue  # onnxruntime ignores weights on branch nodes (old converters wrote them)
        leaf_values[at, c] += w
        has_weight[at, c] = True
    if np.any(~inner & ~has_weight.any(axis=1)):
        raise ValueError("a leaf has no weight")
    if e.base_values.size not in (0, e.columns):
        raise ValueError(f"{e.base_values.size} base_values for {e.columns} score column(s):"
                         " onnxruntime's reading of this combination is not supported here")
    feature = np.where(inner, e.nodes_featureids, 0)  # leaves' ids are unused: keep in range
    return _Compiled(roots, feature, e.nodes_values, e.nodes_modes,
                     e.nodes_missing_value_tracks_true, true, false, leaf_values, has_weight,
                     _depth(roots, true, false, inner),
                     tuple(int(v) for v in np.unique(e.nodes_modes[inner])),
                     bool(np.any(e.nodes_missing_value_tracks_true[inner])))


@dataclass(frozen=True)
class LeafPaths:
    """Every leaf reachable from a root, with the branch nodes on its path.

    `node[l, d]` is the d-th branch node on leaf l's path, `need[l, d]` whether the path
    takes its true child, `valid[l, d]` whether position d exists (paths are padded to the
    longest). Features on a path are numbered in order of first appearance: `feature[l, u]`
    is the u-th distinct one (valid where `slot_valid`), and `slot[l, d, u]` is 1.0 where
    position d tests feature slot u.
    """

    leaf: np.ndarray
    node: np.ndarray
    need: np.ndarray
    valid: np.ndarray
    feature: np.ndarray
    slot_valid: np.ndarray
    slot: np.ndarray


def _leaf_paths(c: _Compiled) -> LeafPaths:
    found: list[tuple[int, list[tuple[int, bool]]]] = []
    for root in c.roots:
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(int(root), [])]
        while stack:
            k, path = stack.pop()
            if c.mode[k] == LEAF:
                found.append((k, path))
                continue
            stack.append((int(c.false[k]), [*path, (k, False)]))
            stack.append((int(c.true[k]), [*path, (k, True)]))
    n_leaves = len(found)
    depth = max(1, max(len(path) for _, path in found))
    node = np.zeros((n_leaves, depth), dtype=np.int64)
    need = np.zeros((n_leaves, depth), dtype=bool)
    valid = np.zeros((n_leaves, depth), dtype=bool)
    feature = np.zeros((n_leaves, depth), dtype=np.int64)
    slot_valid = np.zeros((n_leaves, depth), dtype=bool)
    slot = np.zeros((n_leaves, depth, depth))
    for row, (_, path) in enumerate(found):
        seen: dict[int, int] = {}
        for d, (k, go_true) in enumerate(path):
            u = seen.setdefault(int(c.feature[k]), len(seen))
            node[row, d], need[row, d], valid[row, d] = k, go_true, True
            feature[row, u], slot_valid[row, u] = c.feature[k], True
            slot[row, d, u] = 1.0
    width = max(1, int(slot_valid.sum(axis=1).max()))
    return LeafPaths(np.array([k for k, _ in found], dtype=np.int64), node, need, valid,
                     feature[:, :width], slot_valid[:, :width], slot[:, :, :width])


def _depth(roots: np.ndarray, true: np.ndarray, false: np.ndarray, inner: np.ndarray) -> int:
    """Longest root-to-leaf path, in branch nodes; ValueError on a cycle (a path longer
    than the number of branch nodes must repeat one)."""
    depth = 0
    frontier = roots[inner[roots]]
    while frontier.size:
        depth += 1
        if depth > int(inner.sum()):
            raise ValueError("the trees contain a cycle")
        children = np.unique(np.concatenate([true[frontier], false[frontier]]))
        frontier = children[inner[children]]
    return depth


class _Attributes:
    """Typed access to an attribute mapping, `*_as_tensor` variants included."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def values(self, name: str) -> list[Any]:
        value = self.data.get(name)
        if value is None:
            value = self.data.get(name + "_as_tensor")
        return [] if value is None else list(np.asarray(value).ravel().tolist()
                                             if isinstance(value, np.ndarray) else value)

    def ints(self, name: str) -> list[int]:
        return [int(v) for v in self.values(name)]

    def floats(self, name: str) -> list[float]:
        return [float(v) for v in self.values(name)]

    def scalar(self, name: str, default: Any) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
