"""The numerical core of `mlwitness audit explain`: attributions, reason codes, nearest flip.

Real models throughout: scikit-learn models converted with skl2onnx and run by onnxruntime
as the explained function; tree ensembles parsed from those ONNX files with the `onnx`
package. The `shap` library is the oracle for `exact`.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression

from mlwitness.errors import ConfigError
from mlwitness.explain.attribution import EFFICIENCY_TOLERANCE, Attribution
from mlwitness.explain.flip import MAX_BISECTIONS, nearest_flips
from mlwitness.explain.kernel import kernel_shapley
from mlwitness.explain.reasons import ReasonTexts, load_reasons, loads_reasons, reason_codes
from mlwitness.explain.reference import feature_summary, median_row, sample_rows
from mlwitness.explain.shapley import coalition_masks, exact_shapley, exact_shapley_many
from mlwitness.explain.trees import TreeEnsemble
from mlwitness.explain.treeshap import TreeExplainer, tree_shap

# skl2onnx's converters pass bools where onnx wants ints; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Field onnx.AttributeProto.ints:DeprecationWarning")

REPO = Path(__file__).resolve().parents[3]
OPSETS = {"": 17, "ai.onnx.ml": 3}
Fn = Callable[[np.ndarray], np.ndarray]


# ── fixtures: data, models, helpers ──────────────────────────────────────────────────


def _builder() -> ModuleType:
    path = REPO / "examples" / "credit" / "build_model.py"
    spec = importlib.util.spec_from_file_location("explain_credit_builder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def credit() -> tuple[ModuleType, np.ndarray, np.ndarray]:
    """The demo data set: (builder, X float32 [3000, 6], approved labels)."""
    builder = _builder()
    data = builder.make_dataset(3000, 7)
    return builder, builder.feature_matrix(data), data["approved"]


def _convert(model: object, n: int, double: bool = False, **options: object) -> onnx.ModelProto:
    kind = DoubleTensorType if double else FloatTensorType
    opts = {id(model): options} if options else None
    return convert_sklearn(model, initial_types=[("input", kind([None, n]))], options=opts,
                           target_opset=OPSETS)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _output(model: onnx.ModelProto, output: int, column: int | None) -> Fn:
    """f(X) = one column of one output of the model, run by onnxruntime."""
    session = _session(model)
    dtype = np.float64 if model.graph.input[0].type.tensor_type.elem_type == 11 else np.float32

    def f(rows: np.ndarray) -> np.ndarray:
        out = session.run(None, {"input": np.asarray(rows, dtype=dtype)})[output]
        return out if column is None else out[:, column]

    return f


def _tree_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))


def _ensemble(model: onnx.ModelProto) -> TreeEnsemble:
    """Parse the model's tree ensemble node with the onnx package."""
    node = _tree_node(model)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return TreeEnsemble.from_attributes(node.op_type, attributes)


def _post_transform(model: onnx.ModelProto, value: str) -> onnx.ModelProto:
    """A copy whose tree ensemble applies `value` instead of its post_transform."""
    out = copy.deepcopy(model)
    node = _tree_node(out)
    kept = [a for a in node.attribute if a.name != "post_transform"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("post_transform", value)])
    return out


def _efficient(result: Attribution) -> None:
    assert abs(result.gap) <= EFFICIENCY_TOLERANCE
    assert result.efficient
    assert result.total == pytest.approx(result.fx - result.reference_value, abs=1e-6)


@pytest.fixture(scope="module")
def gbt(credit: tuple[ModuleType, np.ndarray, np.ndarray]) -> onnx.ModelProto:
    """Like the demo v2 model (60 trees of depth 2), on the raw features."""
    _, x, y = credit
    model = GradientBoostingClassifier(n_estimators=60, max_depth=2, random_state=0).fit(x, y)
    return _convert(model, 6, zipmap=False)


@pytest.fixture(scope="module")
def reference(credit: tuple[ModuleType, np.ndarray, np.ndarray]) -> np.ndarray:
    return sample_rows(credit[1][1000:], 100)


# ── reference sets ───────────────────────────────────────────────────────────────────


def test_reference_rows_are_evenly_spaced_and_deterministic() -> None:
    sample = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    rows = sample_rows(sample, 100)
    assert rows.shape == (100, 3)
    assert rows[0, 0] == 0 and rows[-1, 0] == sample[-1, 0]  # both ends
    np.testing.assert_array_equal(rows, sample_rows(sample, 100))
    np.testing.assert_array_equal(sample_rows(sample[:40], 100), sample[:40])  # fewer: all
    assert median_row(np.array([[1.0, 5.0], [3.0, np.nan], [2.0, 7.0]])).tolist() == [2.0, 6.0]
    assert feature_summary(np.array([1.0, 2.0])).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="feature 1 has no value"):
        median_row(np.array([[1.0, np.nan]]))


# ── exact ────────────────────────────────────────────────────────────────────────────


def _logistic(x: np.ndarray, y: np.ndarray, double: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """A logistic regression whose second output column is its logit; and its weights."""
    model = LogisticRegression(max_iter=2000).fit(x, y)
    return _convert(model, 6, double=double, zipmap=False, raw_scores=True), model.coef_[0]


@pytest.mark.parametrize(("double", "tolerance"), [(True, 1e-9), (False, 1e-6)])
def test_exact_on_a_logit_is_the_closed_form(
    credit: tuple[ModuleType, np.ndarray, np.ndarray], double: bool, tolerance: float
) -> None:
    _, x_all, y = credit
    dtype = np.float64 if double else np.float32
    x_all = (x_all / x_all.std(axis=0)).astype(dtype)  # logit terms of order one
    onx, weight = _logistic(x_all, y, double)
    f = _output(onx, 1, 1)  # raw_scores: the decision function (logit) of class 1
    reference = sample_rows(x_all[1000:], 100)
    for x in x_all[:3]:
        result = exact_shapley(f, x, reference)
        expected = weight * (x.astype(np.float64) - reference.astype(np.float64).mean(axis=0))
        np.testing.assert_allclose(result.values, expected, rtol=0, atol=tolerance)
        _efficient(result)
        assert (result.method, result.samples, result.reference_rows) == ("exact", 64, 100)


def test_exact_makes_one_model_call_for_all_coalitions(
    gbt: onnx.ModelProto, credit: tuple[ModuleType, np.ndarray, np.ndarray],
    reference: np.ndarray,
) -> None:
    calls: list[int] = []
    f = _output(gbt, 1, 1)

    def counted(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.shape[0])
        return f(rows)

    result = exact_shapley(counted, credit[1][7], reference)
    assert calls == [6400] and (result.model_calls, result.model_rows) == (1, 6400)
    chunked = exact_shapley(counted, credit[1][7], reference, chunk_cells=6 * 100 * 10)
    assert calls[1:] == [1000] * 6 + [400] and chunked.model_calls == 7
    np.testing.assert_array_equal(chunked.values, result.values)
    _efficient(result)


def test_exact_agrees_with_the_shap_library(
    gbt: onnx.ModelProto, credit: tuple[ModuleType, np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # shap's numba kernels take ~20 s to compile here and a blink to interpret at this size
    # (numba reads the switch when first imported; if it already was, this is just slower)
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    shap = pytest.importorskip("shap")
    f = _output(gbt, 1, 1)  # probability of approval
    reference = sample_rows(credit[1][1000:], 40)
    x = credit[1][11]
    masker = shap.maskers.Independent(reference, max_samples=len(reference))
    oracle = shap.Explainer(lambda rows: f(rows).astype(np.float64), masker,
                            algorithm="exact")(x[None, :], silent=True)
    result = exact_shapley(f, x, reference)
    np.testing.assert_allclose(result.values, oracle.values[0], rtol=0, atol=1e-6)
    assert result.reference_value == pytest.approx(float(oracle.base_values[0]), abs=1e-9)
    _efficient(result)


def test_exact_refuses_wide_inputs_and_too_much_work() -> None:
    def f(rows: np.ndarray) -> np.ndarray:
        return rows.sum(axis=1)

    with pytest.raises(ValueError, match="limited to 12 features.*'kernel'"):
        exact_shapley(f, np.zeros(13), np.zeros((2, 13)))
    with pytest.raises(ValueError, match="over the limit"):
        exact_shapley(f, np.zeros(10), np.zeros((100, 10)), max_cells=10**6)
    with pytest.raises(ValueError, match="one value per row"):
        exact_shapley(lambda rows: rows, np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        exact_shapley(lambda rows: np.full(len(rows), np.nan), np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="x has 3 features but the reference rows have 4"):
        exact_shapley(f, np.zeros(3), np.zeros((2, 4)))


def test_exact_gives_an_unused_feature_exactly_zero() -> None:
    def f(rows: np.ndarray) -> np.ndarray:
        return np.tanh(rows[:, 0] * rows[:, 1]) + rows[:, 3] ** 2  # ignores feature 2

    rng = np.random.default_rng(1)
    result = exact_shapley(f, rng.normal(size=4), rng.normal(size=(30, 4)))
    assert result.values[2] == 0.0 and np.all(result.values[[0, 1, 3]] != 0.0)
    _efficient(result)


def test_baseline_shapley_against_one_row(gbt: onnx.ModelProto, credit: tuple) -> None:
    f = _output(gbt, 1, 1)
    median = median_row(credit[1])
    result = exact_shapley(f, credit[1][3], median)  # a 1-D row: the median applicant
    assert result.reference_rows == 1 and result.model_rows == 64
    # onnxruntime sums a lone row's trees in another order than a batch's: float32 noise
    assert result.reference_value == pytest.approx(float(f(median[None, :])[0]), abs=1e-6)
    _efficient(result)


# ── kernel ───────────────────────────────────────────────────────────────────────────


def test_kernel_with_every_coalition_equals_exact(
    gbt: onnx.ModelProto, credit: tuple, reference: np.ndarray
) -> None:
    f = _output(gbt, 1, 1)
    for x in credit[1][5:8]:
        kernel = kernel_shapley(f, x, reference)
        np.testing.assert_allclose(kernel.values, exact_shapley(f, x, reference).values,
                                   rtol=0, atol=1e-9)
        assert (kernel.samples, kernel.seed) == (64, None)  # enumerated: no seed involved
        _efficient(kernel)


def _smooth(m: int) -> Fn:
    """A smooth model with interactions (no additive shortcut for the regression)."""
    rng = np.random.default_rng(5)
    w, a, b = rng.normal(size=(3, m))

    def f(rows: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(rows @ w + 0.4 * (rows @ a) * np.tanh(rows @ b))))

    return f


def test_sampled_kernel_is_deterministic_for_a_seed_and_close_to_exact() -> None:
    m = 10
    f = _smooth(m)
    rng = np.random.default_rng(2)
    x, reference = rng.normal(size=m), rng.normal(size=(20, m))
    exact = exact_shapley(f, x, reference)
    first = kernel_shapley(f, x, reference, samples=300, seed=7)
    again = kernel_shapley(f, x, reference, samples=300, seed=7)
    other = kernel_shapley(f, x, reference, samples=300, seed=8)
    np.testing.assert_array_equal(first.values, again.values)
    assert not np.array_equal(first.values, other.values)
    assert first.seed == 7 and first.samples == 302  # 300 coalitions + empty and full
    assert first.model_rows == 302 * 20
    for result in (first, other):
        _efficient(result)
        assert np.abs(result.values - exact.values).max() < 0.05 * np.abs(exact.values).max()
    many = kernel_shapley(f, x, reference, samples=1000, seed=7)
    assert np.abs(many.values - exact.values).max() < np.abs(first.values - exact.values).max()


def test_kernel_explains_inputs_too_wide_for_exact() -> None:
    m = 20
    f = _smooth(m)
    rng = np.random.default_rng(3)
    x, reference = rng.normal(size=m), rng.normal(size=(10, m))
    with pytest.raises(ValueError, match="kernel"):
        exact_shapley(f, x, reference)
    result = kernel_shapley(f, x, reference, seed=1)
    assert result.samples == 2 * m + 2048 + 2 and result.seed == 1
    _efficient(result)
    with pytest.raises(ValueError, match="at least"):
        kernel_shapley(f, x, reference, samples=5)


# ── trees ────────────────────────────────────────────────────────────────────────────


def test_raw_scores_match_onnxruntime(gbt: onnx.ModelProto, credit: tuple) -> None:
    x = credit[1][:500]
    ensemble = _ensemble(gbt)
    assert (ensemble.n_trees, ensemble.columns, ensemble.binary_case) == (60, 1, True)
    raw = ensemble.raw_scores(x)[:, 0]
    margin = _output(_post_transform(gbt, "NONE"), 1, 1)(x)
    np.testing.assert_allclose(raw, margin, rtol=0, atol=1e-5)
    probability = _output(gbt, 1, 1)(x)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), probability, rtol=0, atol=1e-6)


def test_tree_equals_exact_on_the_margin_not_the_probability(
    gbt: onnx.ModelProto, credit: tuple, reference: np.ndarray
) -> None:
    ensemble = _ensemble(gbt)
    assert ensemble.post_transform == "LOGISTIC" and "before post_transform" in \
        ensemble.describe()
    margin = _output(_post_transform(gbt, "NONE"), 1, 1)
    probability = _output(gbt, 1, 1)
    explainer = TreeExplainer(ensemble, reference)
    for x in credit[1][:5]:
        tree = explainer.explain(x)
        exact = exact_shapley(margin, x, reference)
        np.testing.assert_allclose(tree.values, exact.values, rtol=0, atol=1e-6)
        assert tree.fx == pytest.approx(exact.fx, abs=1e-5)
        _efficient(tree)
        on_probability = exact_shapley(probability, x, reference).values
        assert np.abs(tree.values - on_probability).max() > 0.01  # a different quantity
    assert tree.method == "tree" and tree.model_calls == 0 and tree.reference_rows == 100


def test_tree_explainer_gives_the_same_answer_for_few_reference_rows(
    gbt: onnx.ModelProto, credit: tuple
) -> None:
    """Few reference rows take the per-row path instead of the per-pattern table."""
    ensemble = _ensemble(gbt)
    f = _output(_post_transform(gbt, "NONE"), 1, 1)
    for rows in (credit[1][2000:2003], credit[1][2000]):
        explainer = TreeExplainer(ensemble, rows)
        assert explainer.table is None
        result = explainer.explain(credit[1][9])
        np.testing.assert_allclose(result.values, exact_shapley(f, credit[1][9], rows).values,
                                   rtol=0, atol=1e-6)
        _efficient(result)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_tree_on_a_random_forest_equals_exact_on_its_output(
    credit: tuple, reference: np.ndarray, kind: str
) -> None:
    _, x_all, y = credit
    if kind == "classifier":
        model = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0)
        onx = _convert(model.fit(x_all, y), 6, zipmap=False)
        f = _output(onx, 1, 1)  # the probability of approval, averaged over the trees
    else:
        model = RandomForestRegressor(n_estimators=15, max_depth=4, random_state=0)
        onx = _convert(model.fit(x_all, y.astype(np.float64)), 6)
        f = _output(onx, 0, 0)
    ensemble = _ensemble(onx)
    assert ensemble.post_transform == "NONE"
    np.testing.assert_allclose(ensemble.raw_scores(x_all[:300])[:, 0], f(x_all[:300]),
                               rtol=0, atol=1e-6)
    for x in x_all[20:23]:
        tree = tree_shap(ensemble, x, reference)
        np.testing.assert_allclose(tree.values, exact_shapley(f, x, reference).values,
                                   rtol=0, atol=1e-6)
        _efficient(tree)


def test_tree_explains_each_class_of_a_multiclass_model(
    credit: tuple, reference: np.ndarray
) -> None:
    x_all = credit[1]
    classes = np.digitize(x_all[:, 2], [650, 720])  # three fico bands
    model = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0)
    onx = _convert(model.fit(x_all, classes), 6, zipmap=False)
    ensemble = _ensemble(onx)
    assert (ensemble.columns, ensemble.binary_case, ensemble.post_transform) == (
        3, False, "SOFTMAX")
    raw = _output(_post_transform(onx, "NONE"), 1, None)
    np.testing.assert_allclose(ensemble.raw_scores(x_all[:300]), raw(x_all[:300]),
                               rtol=0, atol=1e-5)
    for column in range(3):
        tree = tree_shap(ensemble, x_all[4], reference, column=column)
        exact = exact_shapley(lambda rows, c=column: raw(rows)[:, c], x_all[4], reference)
        np.testing.assert_allclose(tree.values, exact.values, rtol=0, atol=1e-6)
        _efficient(tree)
        assert f"class {column!r}" in tree.explains


def test_tree_follows_missing_value_tracks(credit: tuple) -> None:
    _, x_all, y = credit
    x_all = x_all.copy()
    x_all[::5, 1] = np.nan  # debt_ratio missing for a fifth of the rows
    x_all[::7, 2] = np.nan
    model = HistGradientBoostingClassifier(max_iter=15, max_depth=3, random_state=0)
    onx = _convert(model.fit(x_all, y), 6, zipmap=False)
    ensemble = _ensemble(onx)
    assert ensemble.nodes_missing_value_tracks_true.any()
    margin = _output(_post_transform(onx, "NONE"), 1, 1)
    np.testing.assert_allclose(ensemble.raw_scores(x_all[:400])[:, 0], margin(x_all[:400]),
                               rtol=0, atol=1e-5)
    reference = sample_rows(x_all[1000:], 60)
    for x in (x_all[0], x_all[1], x_all[7]):  # missing debt_ratio, none, missing fico
        tree = tree_shap(ensemble, x, reference)
        np.testing.assert_allclose(tree.values, exact_shapley(margin, x, reference).values,
                                   rtol=0, atol=1e-6)
        _efficient(tree)


def _hand_built_ensemble() -> onnx.ModelProto:
    """A 2-target regressor (AVERAGE, base values) using every branch mode, missing
    tracks both ways, and a tree whose root is not listed first by node id."""
    nodes = [  # tree, node, feature, value, mode, true, false, missing->true
        (0, 0, 0, 0.5, "BRANCH_LT", 1, 2, 1),
        (0, 1, 1, 2.0, "BRANCH_EQ", 3, 4, 0),
        (0, 2, 2, -0.25, "BRANCH_GTE", 5, 6, 0),
        (0, 3, 0, 0.0, "LEAF", 0, 0, 0),
        (0, 4, 3, 1.0, "BRANCH_NEQ", 7, 8, 0),
        (0, 5, 0, 0.0, "LEAF", 0, 0, 0),
        (0, 6, 0, 0.0, "LEAF", 0, 0, 0),
        (0, 7, 0, 0.0, "LEAF", 0, 0, 0),
        (0, 8, 0, 0.0, "LEAF", 0, 0, 0),
        (1, 2, 0, 0.0, "LEAF", 0, 0, 0),
        (1, 0, 2, 0.1, "BRANCH_GT", 1, 2, 1),
        (1, 1, 1, 2.0, "BRANCH_LEQ", 3, 4, 0),
        (1, 3, 0, 0.0, "LEAF", 0, 0, 0),
        (1, 4, 2, 0.7, "BRANCH_LT", 5, 6, 0),
        (1, 5, 0, 0.0, "LEAF", 0, 0, 0),
        (1, 6, 0, 0.0, "LEAF", 0, 0, 0),
        (2, 0, 3, 1.0, "BRANCH_EQ", 1, 2, 0),
        (2, 1, 0, 0.0, "LEAF", 0, 0, 0),
        (2, 2, 0, 0.0, "LEAF", 0, 0, 0),
    ]
    leaves = [(t, i) for t, i, _, _, mode, *_ in nodes if mode == "LEAF"]
    rng = np.random.default_rng(4)
    targets = [(t, i, target, float(w)) for (t, i) in leaves for target in (0, 1)
               for w in [rng.normal()]]
    columns = list(zip(*nodes, strict=True))
    ensemble = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=2,
        aggregate_function="AVERAGE", base_values=[0.5, -1.0], post_transform="NONE",
        nodes_treeids=list(columns[0]), nodes_nodeids=list(columns[1]),
        nodes_featureids=list(columns[2]), nodes_values=list(columns[3]),
        nodes_modes=list(columns[4]), nodes_truenodeids=list(columns[5]),
        nodes_falsenodeids=list(columns[6]), nodes_missing_value_tracks_true=list(columns[7]),
        target_treeids=[t[0] for t in targets], target_nodeids=[t[1] for t in targets],
        target_ids=[t[2] for t in targets], target_weights=[t[3] for t in targets],
    )
    graph = helper.make_graph(
        [ensemble], "modes", [helper.make_tensor_value_info("x", 1, [None, 4])],
        [helper.make_tensor_value_info("y", 1, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_every_branch_mode_and_missing_track_matches_onnxruntime() -> None:
    model = _hand_built_ensemble()
    node = _tree_node(model)
    ensemble = TreeEnsemble.from_attributes(
        node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute})
    session = _session(model)
    rng = np.random.default_rng(6)
    rows = rng.choice([-1.0, -0.25, 0.0, 0.1, 0.5, 0.7, 1.0, 2.0, 3.0, np.nan],
                      size=(400, 4)).astype(np.float32)
    expected = session.run(None, {"x": rows})[0]
    np.testing.assert_allclose(ensemble.raw_scores(rows), expected, rtol=0, atol=1e-6)
    reference = rows[200:260]
    for column in (0, 1):
        def f(z: np.ndarray, column: int = column) -> np.ndarray:
            return session.run(None, {"x": z.astype(np.float32)})[0][:, column]

        for x in rows[:6]:
            tree = tree_shap(ensemble, x, reference, column=column)
            np.testing.assert_allclose(tree.values, exact_shapley(f, x, reference).values,
                                       rtol=0, atol=1e-6)
            _efficient(tree)


def test_tree_on_the_demo_pipeline_explains_its_scaled_inputs(credit: tuple) -> None:
    """The demo v2 model scales its inputs before the trees: explaining the scaled rows
    gives the same attributions (a per-feature bijection keeps every coalition's value)."""
    builder, x_all, y = credit
    pipe = builder.make_pipeline("v2").fit(x_all.astype(np.float64), y)
    onx = convert_sklearn(pipe, initial_types=[("input", FloatTensorType([None, 6]))],
                          options={id(pipe.named_steps["clf"]): {"zipmap": False}},
                          target_opset=OPSETS)
    scaler = next(n for n in onx.graph.node if n.op_type == "Scaler")
    offset, scale = (np.asarray(helper.get_attribute_value(a), dtype=np.float32)
                     for a in sorted(scaler.attribute, key=lambda a: a.name))
    margin = _output(_post_transform(onx, "NONE"), 1, 1)
    reference = sample_rows(x_all[1000:], 100)
    explainer = TreeExplainer(_ensemble(onx), (reference - offset) * scale)
    for x in x_all[:3]:
        tree = explainer.explain((x - offset) * scale)
        np.testing.assert_allclose(tree.values, exact_shapley(margin, x, reference).values,
                                   rtol=0, atol=1e-6)
        _efficient(tree)


def test_tree_ensemble_attributes_are_validated() -> None:
    good = {
        "nodes_treeids": [0, 0, 0], "nodes_nodeids": [0, 1, 2], "nodes_featureids": [0, 0, 0],
        "nodes_values": [0.5, 0, 0], "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"],
        "nodes_truenodeids": [1, 0, 0], "nodes_falsenodeids": [2, 0, 0],
        "target_treeids": [0, 0], "target_nodeids": [1, 2], "target_ids": [0, 0],
        "target_weights": [1.0, 2.0], "n_targets": 1,
    }
    ensemble = TreeEnsemble.from_attributes("TreeEnsembleRegressor", good)
    assert ensemble.raw_scores(np.array([[0.0], [1.0]])).tolist() == [[1.0], [2.0]]
    cases = [
        ("nodes_modes", ["BRANCH_LEQ", "LEAF", "SPLIT"], "unknown node mode 'SPLIT'"),
        ("nodes_falsenodeids", [7, 0, 0], "false child 7 is not another node"),
        ("nodes_truenodeids", [0, 0, 0], "true child 0 is not another node"),
        ("target_nodeids", [1, 1], "a leaf has no weight"),
        ("nodes_values", [0.5, 0], "nodes_values has 2 entries"),
    ]
    for key, value, message in cases:
        with pytest.raises(ValueError, match=message):
            TreeEnsemble.from_attributes("TreeEnsembleRegressor", {**good, key: value})
    with pytest.raises(ValueError, match="not a tree ensemble operator"):
        TreeEnsemble.from_attributes("LinearRegressor", good)
    with pytest.raises(ValueError, match="not additive|additive ensemble"):
        tree_shap(TreeEnsemble.from_attributes(
            "TreeEnsembleRegressor", {**good, "aggregate_function": "MAX"}),
            np.zeros(1), np.zeros((2, 1)))


def test_tree_with_no_weight_for_the_column_explains_nothing() -> None:
    attributes = {
        "nodes_treeids": [0, 0, 0], "nodes_nodeids": [0, 1, 2], "nodes_featureids": [1, 0, 0],
        "nodes_values": [0.5, 0, 0], "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"],
        "nodes_truenodeids": [1, 0, 0], "nodes_falsenodeids": [2, 0, 0],
        "target_treeids": [0, 0], "target_nodeids": [1, 2], "target_ids": [0, 0],
        "target_weights": [0.0, 0.0], "n_targets": 1, "base_values": [3.0],
    }
    ensemble = TreeEnsemble.from_attributes("TreeEnsembleRegressor", attributes)
    result = tree_shap(ensemble, np.array([0.0, 1.0]), np.zeros((200, 2)))
    assert result.values.tolist() == [0.0, 0.0] and result.fx == result.reference_value == 3.0


# ── reason codes ─────────────────────────────────────────────────────────────────────


FEATURES = ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans")


def test_reason_codes_rank_ties_by_feature_order_and_skip_zeros() -> None:
    texts = loads_reasons('version = 1\n[features.income]\nbelow = "Income too low"\n'
                          '[features.fico]\nany = "Credit score"\n', FEATURES)
    attributions = np.array([-0.3, 0.2, -0.3 - 1e-13, 0.0, -0.1, 1e-12])
    x = np.array([40_000.0, 0.3, 700.0, 30.0, 2.0, 3.0])
    reference = np.array([55_000.0, 0.4, 690.0, 40.0, 5.0, 3.0])
    top2 = reason_codes(attributions, x, reference, FEATURES, k=2, texts=texts)
    assert [(r.rank, r.feature, r.direction, r.text) for r in top2.reasons] == [
        (1, "income", "below", "Income too low"), (2, "fico", "above", "Credit score")]
    assert (top2.reasons[0].value, top2.reasons[0].reference) == (40_000.0, 55_000.0)
    assert top2.ties == (("income", "fico"),) and not top2.cut_in_tie
    assert top2.zero == ("age", "open_loans") and top2.harmful == 3
    top1 = reason_codes(attributions, x, reference, FEATURES, k=1)
    assert [r.feature for r in top1.reasons] == ["income"] and top1.cut_in_tie
    assert top1.reasons[0].text is None  # no texts given
    all_of_them = reason_codes(attributions, x, reference, FEATURES, k=5, texts=texts)
    assert [r.feature for r in all_of_them.reasons] == ["income", "fico", "years_employed"]
    assert all_of_them.reasons[2].text is None  # no text for years_employed
    nothing = reason_codes(np.abs(attributions), x, reference, FEATURES, k=4)
    assert nothing.reasons == () and nothing.harmful == 0
    with pytest.raises(ValueError, match="one value per feature"):
        reason_codes(attributions[:5], x, reference, FEATURES)


def test_reasons_file_is_validated() -> None:
    cases = [
        ("version = 2\n", "'version' must be 1"),
        ("version = 1\n[features.salary]\nbelow = 'x'\n", "no feature 'salary'"),
        ("version = 1\n[features.income]\nlower = 'x'\n", "unknown key 'lower'"),
        ("version = 1\n[features.income]\nbelow = ' '\n", "'below' must be a non-empty"),
        ("version = 1\n[features.income]\n", "at least one of"),
        ("version = 1\nfeatures = 3\n", "must be a table"),
        ("version = 1\ntitle = 'x'\n", "unknown top-level key 'title'"),
        ("version = \n", "not valid TOML"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError, match=message):
            loads_reasons(text, FEATURES)


def test_example_reasons_file_covers_the_demo_features(tmp_path: Path) -> None:
    texts = load_reasons(REPO / "examples" / "credit" / "reasons.toml", FEATURES)
    assert isinstance(texts, ReasonTexts) and set(texts.texts) == set(FEATURES)
    assert texts.text("income", "below") and texts.text("debt_ratio", "above")
    bad = tmp_path / "reasons.toml"
    bad.write_text("version = 1\n[features.nope]\nany = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"reasons.toml: features.nope"):
        load_reasons(bad, FEATURES)


# ── nearest flip ─────────────────────────────────────────────────────────────────────


def _sweep(decide: Fn, x: np.ndarray, i: int, low: float, high: float,
           integer: bool = False) -> float | None:
    """The nearest flipping value of feature i on a 10,000-point grid per direction."""
    base = decide(x[None, :])[0]
    best: float | None = None
    for end in (high, low):
        values = (np.arange(min(x[i], end), max(x[i], end) + 1) if integer
                  else np.linspace(x[i], end, 10_001)[1:])
        rows = np.repeat(x[None, :], len(values), axis=0)
        rows[:, i] = values
        rows = rows.astype(x.dtype)
        flipped = values[decide(rows) != base]
        if flipped.size:
            near = flipped[np.argmin(np.abs(flipped - x[i]))]
            if best is None or abs(near - x[i]) < abs(best - x[i]):
                best = float(near)
    return best


def test_nearest_flip_on_hand_checked_decisions() -> None:
    def decide(rows: np.ndarray) -> np.ndarray:
        return (rows[:, 0] > 7) | (rows[:, 1] >= 4)

    low, high = np.zeros(3), np.full(3, 10.0)
    found = nearest_flips(decide, np.array([2.0, 1.0, 5.0]), low, high,
                          integer=[False, True, False], tolerance=1e-3)
    assert found.decision is False
    first, second, third = found.flips
    assert first.direction == "up" and 7 < first.to <= 7 + 1e-3 and first.decision is True
    assert second.to == 4.0 and second.distance == 3.0  # integers only
    assert third.to is None and third.direction is None  # no flip within range
    assert found.model_calls <= 1 + MAX_BISECTIONS
    outside = nearest_flips(decide, np.array([12.0, 1.0, 5.0]), low, high, tolerance=1e-3)
    assert outside.decision is True  # x0 = 12 is beyond the observed range [0, 10]
    assert outside.flips[0].direction == "down" and 7 - 1e-3 <= outside.flips[0].to <= 7


def test_nearest_pair_flip_moves_both_features() -> None:
    def decide(rows: np.ndarray) -> np.ndarray:
        return rows[:, 0] + rows[:, 1] > 10

    found = nearest_flips(decide, np.array([2.0, 3.0]), np.zeros(2), np.full(2, 10.0),
                          pairs=[(0, 1)])
    pair = found.pairs[0]
    best = 5 / np.sqrt(2) / 10  # the perpendicular to x0 + x1 = 10, range-normalised
    assert pair.to is not None and pair.distance is not None
    assert best - 1e-9 <= pair.distance <= best + 0.03
    assert decide(np.array([pair.to]))[0]  # the reported change does flip it
    assert pair.distance < found.flips[0].distance / 10  # better than one feature alone


@pytest.mark.parametrize("model", ["logistic", "gbt"])
def test_nearest_flip_agrees_with_a_fine_sweep(
    credit: tuple, gbt: onnx.ModelProto, model: str
) -> None:
    _, x_all, y = credit
    if model == "gbt":
        onx = gbt
        points = x_all[:4]
    else:
        x_all = (x_all / x_all.std(axis=0)).astype(np.float32)
        onx, _ = _logistic(x_all, y, double=False)
        points = x_all[:4]
    session = _session(onx)

    def decide(rows: np.ndarray) -> np.ndarray:
        return session.run(None, {"input": rows.astype(np.float32)})[0]

    low, high = x_all.min(axis=0), x_all.max(axis=0)
    integer = [False] * 5 + [True]  # open_loans is a count
    flips_seen = 0
    for x in points.astype(np.float32):
        found = nearest_flips(decide, x, low, high, integer=integer)
        for i, flip in enumerate(found.flips):
            swept = _sweep(decide, x, i, float(low[i]), float(high[i]), integer[i])
            if swept is None:
                assert flip.to is None
                continue
            flips_seen += 1
            assert flip.to is not None
            step = (high[i] - low[i]) / 10_000
            assert abs(flip.to - swept) <= flip.tolerance + step + 1e-6 * abs(swept)
            if integer[i]:
                assert flip.to == swept and float(flip.to).is_integer()
            row = x.copy()
            row[i] = flip.to
            assert decide(row[None, :])[0] != found.decision  # replays as a flip
    assert flips_seen >= 3


def test_exact_for_many_decisions_shares_model_calls_and_answers_alike(
    gbt: onnx.ModelProto, credit: tuple, reference: np.ndarray
) -> None:
    calls: list[np.ndarray] = []
    f = _output(gbt, 1, 1)

    def counted(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.copy())
        return f(rows)

    xs = credit[1][20:25]
    many = exact_shapley_many(counted, xs, reference, chunk_cells=6400 * 6 * 2)
    assert len(calls) == 3  # two decisions a call
    for rows in calls:  # each distinct row once, fewer than 6,400 a decision
        assert 0 < len(rows) < 12800 and len(np.unique(rows, axis=0)) == len(rows)
    for x, result in zip(xs, many, strict=True):
        alone = exact_shapley(f, x, reference)
        np.testing.assert_array_equal(result.values, alone.values)  # bit for bit
        assert (result.fx, result.reference_value) == (alone.fx, alone.reference_value)
        assert (result.model_rows, result.model_calls) == (6400, 1)
        _efficient(result)
    with pytest.raises(ValueError, match="limited to 12 features"):
        exact_shapley_many(counted, np.zeros((2, 13)), np.zeros((2, 13)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_exact_for_many_runs_each_distinct_hybrid_row_once(dtype: type) -> None:
    """Reference rows alike outside a coalition, decisions sharing values with reference
    rows, repeated reference rows: the model sees every distinct row once, and each
    decision's numbers are bit for bit those of all 2^M x R rows. Rows are the same by
    their bytes: 0.0 and -0.0 are two rows (the model below tells them apart)."""
    rng = np.random.default_rng(5)
    reference = rng.integers(0, 3, size=(40, 4)).astype(dtype)
    reference[7] = reference[3]
    xs = rng.integers(0, 3, size=(9, 4)).astype(dtype)
    if dtype is not np.int64:
        reference[::5, 0] = -0.0
        xs[::2, 0] = 0.0
    seen: list[np.ndarray] = []

    def f(rows: np.ndarray) -> np.ndarray:
        seen.append(rows.copy())
        r = rows.astype(np.float64)
        return np.sin(r @ [0.3, -1.1, 0.7, 2.0] + r[:, 1] * r[:, 2]) + np.signbit(r[:, 0]) / 7

    def distinct(rows: np.ndarray) -> int:
        rows = np.ascontiguousarray(rows).reshape(-1, 4)
        return len(np.unique(rows.view(np.dtype((np.void, 4 * rows.itemsize)))))

    def at_most(part: np.ndarray) -> int:
        """The reference rows once, then each decision's distinct rows."""
        return distinct(reference) + sum(
            distinct(np.where(coalition_masks(4)[:, None, :], x, reference)) for x in part)

    many = exact_shapley_many(f, xs, reference, chunk_cells=2**4 * 40 * 4 * 4)
    assert len(seen) == 3  # four decisions a call
    for rows, part in zip(seen, (xs[:4], xs[4:8], xs[8:]), strict=True):
        assert rows.dtype == dtype
        assert distinct(rows) <= len(rows) <= at_most(part) < len(part) * 2**4 * 40
    seen.clear()
    for x, result in zip(xs, many, strict=True):
        alone = exact_shapley(f, x, reference)
        np.testing.assert_array_equal(result.values, alone.values)
        assert (result.fx, result.reference_value) == (alone.fx, alone.reference_value)


def test_tree_for_many_decisions_answers_as_one_at_a_time(
    gbt: onnx.ModelProto, credit: tuple, reference: np.ndarray
) -> None:
    explainer = TreeExplainer(_ensemble(gbt), reference)
    assert explainer.table is not None  # depth-2 trees against 100 rows: the tabled case
    xs = credit[1][30:45]
    for x, many in zip(xs, explainer.explain_many(xs), strict=True):
        one = explainer.explain(x)
        np.testing.assert_array_equal(many.values, one.values)
        assert (many.fx, many.reference_value, many.explains) == (
            one.fx, one.reference_value, one.explains)
        _efficient(many)
    few = TreeExplainer(_ensemble(gbt), reference[:3])  # no table: one at a time
    assert few.table is None
    np.testing.assert_array_equal(few.explain_many(xs[:2])[1].values,
                                  few.explain(xs[1]).values)
