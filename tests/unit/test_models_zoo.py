"""Run every test-model builder through onnxruntime, and check the demo credit model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

try:
    from tests import models
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import models

REPO = Path(__file__).resolve().parents[2]
BUILD_MODEL = REPO / "examples" / "credit" / "build_model.py"


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _io(sess: ort.InferenceSession) -> tuple[list[tuple], list[tuple]]:
    ins = [(a.name, a.type, a.shape) for a in sess.get_inputs()]
    outs = [(a.name, a.type, a.shape) for a in sess.get_outputs()]
    return ins, outs


@pytest.fixture(scope="module")
def build_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("credit_build_model", BUILD_MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- tests/support/models.py -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_builder_writes_valid_model(tmp_path: Path, name: str) -> None:
    path = models.BUILDERS[name](tmp_path / f"{name}.onnx")
    assert path == tmp_path / f"{name}.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.ir_version == models.IR_VERSION
    assert {o.domain: o.version for o in model.opset_import} == {
        "": models.OPSET,
        "ai.onnx.ml": models.ML_OPSET,
    }


def test_affine_fp32(tmp_path: Path) -> None:
    sess = _session(models.build_affine_fp32(tmp_path / "m.onnx"))
    assert _io(sess) == (
        [("x", "tensor(float)", [None, 4])],
        [("y", "tensor(float)", [None, 2]), ("score", "tensor(float)", [None])],
    )
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 0], [-1, 0.5, 2, -3]], dtype=np.float32)
    y, score = sess.run(None, {"x": x})
    expected_y = np.array([[6.0, 1.75], [0.5, -1.0], [-9.25, 4.5]], dtype=np.float32)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(y, x @ models.AFFINE_W + models.AFFINE_B)
    np.testing.assert_array_equal(score, np.array([7.75, -0.5, -4.75], dtype=np.float32))
    assert y.dtype == np.float32 and score.dtype == np.float32


def test_all_dtypes(tmp_path: Path) -> None:
    sess = _session(models.build_all_dtypes(tmp_path / "m.onnx"))
    assert _io(sess) == (
        [
            ("f64", "tensor(double)", [None, 3]),
            ("i32", "tensor(int32)", [None, 2]),
            ("i64", "tensor(int64)", [None]),
            ("flag", "tensor(bool)", [None]),
        ],
        [
            ("f64_out", "tensor(double)", [None, 3]),
            ("i32_out", "tensor(int32)", [None, 2]),
            ("i64_out", "tensor(int64)", [None]),
            ("flag_out", "tensor(bool)", [None]),
        ],
    )
    feeds = {
        "f64": np.array([[0.1, -2.5, 1e300], [3.0, 0.0, -7.25]], dtype=np.float64),
        "i32": np.array([[1, -1], [2**31 - 2, 0]], dtype=np.int32),
        "i64": np.array([5, -4], dtype=np.int64),
        "flag": np.array([True, False]),
    }
    f64_out, i32_out, i64_out, flag_out = sess.run(None, feeds)
    np.testing.assert_array_equal(
        f64_out, np.array([[0.2, -5.0, 2e300], [6.0, 0.0, -14.5]], dtype=np.float64)
    )
    np.testing.assert_array_equal(i32_out, np.array([[2, 0], [2**31 - 1, 1]], dtype=np.int32))
    np.testing.assert_array_equal(i64_out, np.array([15, -12], dtype=np.int64))
    np.testing.assert_array_equal(flag_out, np.array([False, True]))
    assert [a.dtype for a in (f64_out, i32_out, i64_out, flag_out)] == [
        np.float64,
        np.int32,
        np.int64,
        np.bool_,
    ]


def test_strings(tmp_path: Path) -> None:
    sess = _session(models.build_strings(tmp_path / "m.onnx"))
    assert _io(sess) == (
        [("category", "tensor(string)", [None])],
        [("code", "tensor(int64)", [None]), ("echo", "tensor(string)", [None])],
    )
    category = np.array(["red", "green", "blue", "purple", ""], dtype=object)
    code, echo = sess.run(None, {"category": category})
    np.testing.assert_array_equal(code, np.array([0, 1, 2, -1, -1], dtype=np.int64))
    assert code.dtype == np.int64
    assert echo.tolist() == ["red", "green", "blue", "purple", ""]


def test_fixed_shape(tmp_path: Path) -> None:
    sess = _session(models.build_fixed_shape(tmp_path / "m.onnx"))
    assert _io(sess) == (
        [("x", "tensor(float)", [1, 3])],
        [("y", "tensor(float)", [1, 3])],
    )
    (y,) = sess.run(None, {"x": np.array([[-1.5, 0.0, 2.25]], dtype=np.float32)})
    np.testing.assert_array_equal(y, np.array([[0.0, 0.0, 2.25]], dtype=np.float32))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"x": np.zeros((2, 3), dtype=np.float32)})


def test_fp16(tmp_path: Path) -> None:
    sess = _session(models.build_fp16(tmp_path / "m.onnx"))
    assert _io(sess) == (
        [("h", "tensor(float16)", [None, 2])],
        [("h_out", "tensor(float16)", [None, 2])],
    )
    h = np.array([[1.5, -0.25], [0.0, 1000.0]], dtype=np.float16)
    (h_out,) = sess.run(None, {"h": h})
    assert h_out.dtype == np.float16
    np.testing.assert_array_equal(h_out, np.array([[3.0, -0.5], [0.0, 2000.0]], dtype=np.float16))


# --- examples/credit/build_model.py ---------------------------------------------------------

CREDIT_IO = (
    [("input", "tensor(float)", [None, 6])],
    [("label", "tensor(int64)", [None]), ("probabilities", "tensor(float)", [None, 2])],
)


def test_make_dataset_is_deterministic(build_model: ModuleType) -> None:
    a = build_model.make_dataset(500, 11)
    b = build_model.make_dataset(500, 11)
    c = build_model.make_dataset(500, 12)
    expected = [*build_model.FEATURES, "age_band", "approved"]
    assert list(a) == expected
    for key in expected:
        assert len(a[key]) == 500
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["income"], c["income"])
    assert set(a["age_band"]) <= set(build_model.AGE_BANDS)
    assert set(np.unique(a["approved"])) <= {0, 1}


def test_make_dataset_ranges(build_model: ModuleType) -> None:
    d = build_model.make_dataset(5000, 7)
    assert d["debt_ratio"].min() >= 0.0 and d["debt_ratio"].max() <= 1.5
    assert d["fico"].min() >= 300 and d["fico"].max() <= 850
    assert d["age"].min() >= 18 and d["age"].max() <= 90
    assert d["years_employed"].min() >= 0 and d["years_employed"].max() <= 45
    assert d["open_loans"].min() >= 0 and d["open_loans"].max() <= 15
    np.testing.assert_array_equal(d["open_loans"], np.round(d["open_loans"]))
    assert 0.3 < d["approved"].mean() < 0.5
    young = d["age_band"] == "18-25"
    np.testing.assert_array_equal(young, d["age"] <= 25)


def test_credit_model(build_model: ModuleType, tmp_path: Path) -> None:
    out = build_model.train_and_export(tmp_path, n_rows=2000, seed=3)
    assert out.model == tmp_path / "credit.onnx"
    assert (tmp_path / "features.txt").read_text() == (
        "income,debt_ratio,fico,age,years_employed,open_loans\n"
    )
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0] == "income,debt_ratio,fico,age,years_employed,open_loans,age_band,approved"
    assert len(lines) == 2001

    sess = _session(out.model)
    assert _io(sess) == CREDIT_IO
    data = build_model.make_dataset(2000, 3)
    label, proba = sess.run(None, {"input": build_model.feature_matrix(data)})
    assert label.dtype == np.int64 and label.shape == (2000,)
    assert proba.dtype == np.float32 and proba.shape == (2000, 2)
    assert 0.2 < label.mean() < 0.7
    assert 0.2 < data["approved"].mean() < 0.7
    assert (label == data["approved"]).mean() > 0.7  # learned something real
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_credit_model_v2_and_byte_determinism(build_model: ModuleType, tmp_path: Path) -> None:
    v1 = build_model.train_and_export(tmp_path / "a", n_rows=2000, seed=3)
    v2 = build_model.train_and_export(tmp_path / "a", n_rows=2000, seed=3, variant="v2")
    again = build_model.train_and_export(tmp_path / "b", n_rows=2000, seed=3)
    assert v2.model.name == "credit_v2.onnx"
    assert again.model.read_bytes() == v1.model.read_bytes()
    assert again.train_csv.read_bytes() == v1.train_csv.read_bytes()

    x = build_model.feature_matrix(build_model.make_dataset(2000, 3))
    s1, s2 = _session(v1.model), _session(v2.model)
    assert _io(s2) == CREDIT_IO
    differ = (s1.run(["label"], {"input": x})[0] != s2.run(["label"], {"input": x})[0]).mean()
    assert 0.0 < differ < 0.15
