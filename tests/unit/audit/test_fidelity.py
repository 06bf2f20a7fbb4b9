"""Distance in ulps and the replay verdict: hand-made float16/32/64 and integer cases
(signed zeros, subnormals, infinities, NaN payloads, the int64 and float64 extremes where
the distance needs 64 unsigned bits), and the one line an auditor reads first."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlwitness.audit.fidelity import ROUNDING_ULPS, ulps, verdict
from mlwitness.audit.replay import compare
from mlwitness.audit.results import OutputDiff
from mlwitness.codec import tensor_from_array


def bits(dtype: str, pattern: int) -> np.ndarray:
    """A one-element float array with exactly these bits."""
    width = np.dtype(dtype).itemsize
    return np.array([pattern], dtype=f"u{width}").view(dtype)


def one(dtype: str, a: float | np.ndarray, b: float | np.ndarray) -> float:
    x = a if isinstance(a, np.ndarray) else np.array([a], dtype=dtype)
    y = b if isinstance(b, np.ndarray) else np.array([b], dtype=dtype)
    return float(ulps(x, y)[0])


F32_SMALLEST = bits("float32", 1)[0]  # the smallest subnormal
F32_NAN, F32_NAN_PAYLOAD, F32_NEG_NAN = 0x7FC00000, 0x7FC00001, 0xFFC00000


@pytest.mark.parametrize("a, b, expected", [
    (1.0, 1.0, 0),
    (1.0, np.nextafter(np.float32(1), np.float32(2)), 1),
    (1.0, np.nextafter(np.float32(1), np.float32(0)), 1),  # across a binade: still 1
    (-1.0, np.nextafter(np.float32(-1), np.float32(-2)), 1),
    (1.0, -1.0, 2 * 0x3F800000 + 1),  # through both zeros
    (-0.0, 0.0, 1),
    (0.0, F32_SMALLEST, 1),
    (-F32_SMALLEST, F32_SMALLEST, 3),  # -s, -0, +0, +s
    (np.finfo(np.float32).tiny, np.finfo(np.float32).tiny - F32_SMALLEST, 1),  # normal/subnormal
    (np.finfo(np.float32).max, math.inf, 1),
    (-math.inf, math.inf, 2 * 0x7F800000 + 1),
])
def test_float32_ulps(a: float, b: float, expected: int) -> None:
    assert one("float32", a, b) == expected
    assert one("float32", b, a) == expected  # symmetric


def test_float32_nans() -> None:
    nan, payload, negative = (bits("float32", p) for p in (F32_NAN, F32_NAN_PAYLOAD,
                                                          F32_NEG_NAN))
    assert one("float32", nan, nan.copy()) == 0  # the same bits
    assert one("float32", nan, payload) == 1  # another NaN: which one a kernel propagated
    assert one("float32", nan, negative) == 1
    assert one("float32", nan, 1.0) == math.inf  # a NaN and a number: no distance
    assert one("float32", -math.inf, nan) == math.inf


@pytest.mark.parametrize("a, b, expected", [
    (1.0, np.nextafter(1.0, 2.0), 1),
    (-0.0, 0.0, 1),
    (0.0, 5e-324, 1),  # the smallest float64 subnormal
    (np.finfo(np.float64).max, math.inf, 1),
    # 2 * 0x7FEFFFFFFFFFFFFF + 1 apart: more than int64 holds
    (-np.finfo(np.float64).max, np.finfo(np.float64).max, float(2 * 0x7FEFFFFFFFFFFFFF + 1)),
    (-math.inf, math.inf, float(2 * 0x7FF0000000000000 + 1)),
])
def test_float64_ulps(a: float, b: float, expected: float) -> None:
    assert one("float64", a, b) == expected
    assert one("float64", b, a) == expected


def test_float64_nan_payloads() -> None:
    nan = bits("float64", 0x7FF8000000000000)
    assert one("float64", nan, bits("float64", 0x7FF8000000000001)) == 1
    assert one("float64", nan, nan.copy()) == 0
    assert one("float64", nan, 0.0) == math.inf


def test_float16_ulps() -> None:
    assert one("float16", 1.0, np.nextafter(np.float16(1), np.float16(2))) == 1
    assert one("float16", -0.0, 0.0) == 1
    assert one("float16", np.finfo(np.float16).max, math.inf) == 1


def test_integer_ulps_are_the_difference() -> None:
    big = np.iinfo(np.int64)
    assert ulps(np.array([big.min, -3, 5]), np.array([big.max, 4, 5])).tolist() == [
        float(2**64 - 1), 7.0, 0.0]
    assert ulps(np.array([0, 9], dtype=np.uint64),
                np.array([2**64 - 1, 2], dtype=np.uint64)).tolist() == [float(2**64 - 1), 7.0]
    assert ulps(np.array([True, False]), np.array([False, False])).tolist() == [1.0, 0.0]
    assert ulps(np.array([-128], dtype=np.int8), np.array([127], dtype=np.int8)).tolist() == [
        255.0]


def test_ulps_are_zero_exactly_where_the_bits_are_equal() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal(1000).astype(np.float32)
    b = a.copy()
    b[::7] = np.nextafter(b[::7], np.float32(np.inf))
    distance = ulps(a, b)
    assert np.array_equal(distance != 0, a.view(np.uint32) != b.view(np.uint32))
    assert distance.max() == 1


def test_compare_counts_elements_whose_bits_differ_with_their_ulps() -> None:
    old = np.array([[0.0, 1.0], [np.nan, 2.0]], dtype=np.float32)
    new = old.copy()
    new[0, 0] = -0.0  # numerically equal, another bit pattern
    new[1, 0] = bits("float32", F32_NAN_PAYLOAD)[0]
    (diff,) = compare([tensor_from_array("p", old)], [tensor_from_array("p", new)])
    assert (diff.identical, diff.elements_differing, diff.max_ulps, diff.max_abs_diff) == (
        False, 2, 1.0, 0.0)


def test_compare_of_text_or_another_shape_has_no_distance() -> None:
    text_old = tensor_from_array("t", np.array([b"a", b"b"], dtype=object))
    text_new = tensor_from_array("t", np.array([b"a", b"c"], dtype=object))
    shape_new = tensor_from_array("p", np.zeros((3,), dtype=np.float32))
    (text,) = compare([text_old], [text_new])
    (shape,) = compare([tensor_from_array("p", np.zeros((2,), dtype=np.float32))], [shape_new])
    assert (text.elements_differing, text.max_ulps) == (1, math.inf)
    assert shape.max_ulps == math.inf


PROBS = [tensor_from_array("probabilities", np.zeros((256, 2), dtype=np.float32))]


def test_verdict_bit_identical() -> None:
    assert verdict(PROBS, [OutputDiff("probabilities", True)], {}) == "bit-identical"


def test_verdict_of_rounding_names_the_session_options_that_differ() -> None:
    diffs = [OutputDiff("probabilities", False, 1e-7, 1e-6, 78, 1.0)]
    env = {"session_options.intra_op_num_threads": [2, 1], "cpu_features": [["avx512f"], []]}
    assert verdict(PROBS, diffs, env) == (
        "differs by ≤ 1 ulp in 78 of 512 elements of probabilities (rounding: a kernel or "
        "threading difference; session options differ: intra_op_num_threads 2 → 1; "
        "CPU features differ: avx512f only when recorded)")


def test_verdict_of_rounding_with_nothing_to_blame() -> None:
    diffs = [OutputDiff("probabilities", False, 1e-7, 1e-6, 3, float(ROUNDING_ULPS))]
    assert verdict(PROBS, diffs, {}).endswith(
        "(rounding: a kernel or threading difference; no recorded environment field differs)")


def test_verdict_past_rounding_is_material() -> None:
    diffs = [OutputDiff("probabilities", False, 0.2, 0.5, 400, 4.1e6)]
    assert verdict(PROBS, diffs, {"onnxruntime": ["1.31.0", "1.32.0"]}) == (
        "differs materially (max 4.1e+06 ulps): a different model or input; "
        "environment differs: onnxruntime 1.31.0 → 1.32.0")


def test_verdict_of_a_changed_label_is_material_whatever_its_distance() -> None:
    outputs = [tensor_from_array("label", np.zeros(256, dtype=np.int64)), *PROBS]
    diffs = [OutputDiff("label", False, 1.0, math.inf, 1, 1.0),
             OutputDiff("probabilities", False, 1e-7, 1e-6, 2, 2.0)]
    assert verdict(outputs, diffs, {}) == (
        "differs materially (max 2 ulps; label differs in 1 of 256 elements): "
        "a different model or input")


def test_verdict_says_a_recorded_provider_is_missing() -> None:
    env = {"session_options.providers": [[{"name": "CUDAExecutionProvider", "options": {}},
                                          {"name": "CPUExecutionProvider", "options": {}}],
                                         [{"name": "CPUExecutionProvider", "options": {}}]]}
    assert verdict(PROBS, [OutputDiff("probabilities", True)], env,
                   ["CUDAExecutionProvider"]) == (
        "bit-identical (recorded provider CUDAExecutionProvider not available here: ran on "
        "the CPU provider; session options differ: providers "
        "CUDAExecutionProvider+CPUExecutionProvider → CPUExecutionProvider)")
