"""What-if and sensitivity: answers equal onnxruntime run directly on the modified rows.

Each expected answer is built here with numpy (the recorded rows, the feature changed) and
run through `onnxruntime.InferenceSession`; the audit API must return exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    credit_output_rows,
    credit_row,
    credit_run,
    ref,
    rpc_error,
    start_audited_sidecar,
    values,
)

from mlwitness.protocol import audit_pb2 as apb

try:
    from tests import models as test_models
except ImportError:  # tests/ is on sys.path, not a package
    import models as test_models  # type: ignore[no-redef]

INCOME, DEBT_RATIO, FICO = 0, 1, 2


@pytest.fixture(scope="module")
def strings_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedSidecar]:
    """The strings model: one BYTES input `category`, nothing numeric to change."""
    root = tmp_path_factory.mktemp("strings")
    model = test_models.build_strings(root / "strings.onnx")
    side = start_audited_sidecar(model, root / "ledger.duckdb", model_name="strings",
                                 features=[])
    side.infer_tensors("strings", "s1", category=np.array([b"red", b"blue", b"teal"], object))
    yield side
    side.stop()


@pytest.fixture(scope="module")
def dtypes_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedSidecar]:
    """all_dtypes: f64 [N,3], i32 [N,2], i64 [N], flag BOOL [N] -> f64*2, i32+1, i64*3, !flag."""
    root = tmp_path_factory.mktemp("dtypes")
    model = test_models.build_all_dtypes(root / "all_dtypes.onnx")
    side = start_audited_sidecar(model, root / "ledger.duckdb", model_name="all_dtypes",
                                 features=[])
    side.infer_tensors(
        "all_dtypes", "d1",
        f64=np.array([[0.5, 1.0, 1.5], [2.0, 2.5, 3.0]]),
        i32=np.array([[1, 2], [3, 4]], np.int32),
        i64=np.array([5, 6], np.int64),
        flag=np.array([True, False]))
    yield side
    side.stop()


def what_if(side: AuditedSidecar, request_id: str, *overrides: tuple[str, float],
            **options: object) -> apb.WhatIfResponse:
    request = apb.WhatIfRequest(ref=ref(request_id), **options,  # type: ignore[arg-type]
                                overrides=[apb.Override(feature=f, value=v)
                                           for f, v in overrides])
    return side.stub.WhatIf(request, timeout=60)


def sensitivity(side: AuditedSidecar, request_id: str, feature: str,
                **options: object) -> apb.SensitivityResponse:
    request = apb.SensitivityRequest(ref=ref(request_id), feature=feature,
                                     **options)  # type: ignore[arg-type]
    return side.stub.Sensitivity(request, timeout=60)


# ── what-if ─────────────────────────────────────────────────────────────────────────────


def assert_what_if(r: apb.WhatIfResponse, ledger: AuditLedger, x: np.ndarray,
                   changed_x: np.ndarray) -> None:
    features = ledger.models.features
    before, after = credit_run(ledger.models.v1, x), credit_run(ledger.models.v1, changed_x)
    assert [values(v) for v in r.original_inputs] == [credit_row(row, features) for row in x]
    assert [values(v) for v in r.counterfactual_inputs] == [
        credit_row(row, features) for row in changed_x]
    assert [values(v) for v in r.original_outputs] == credit_output_rows(before)
    assert [values(v) for v in r.counterfactual_outputs] == credit_output_rows(after)
    assert list(r.decisions_changed) == list(np.flatnonzero(before["label"] != after["label"]))
    assert r.model_sha256 == ledger.models.sha_v1 and r.decision_output == "label"


def test_what_if_by_feature_name_equals_onnxruntime_on_the_modified_row(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    x = audit_ledger.call("a05").x  # 11 rows
    changed = x.copy()
    changed[4, INCOME], changed[4, DEBT_RATIO] = 45000, 0.2
    r = what_if(audit_sidecar, "a05", ("income", 45000), ("debt_ratio", 0.2), row=4)
    assert (r.seq, r.request_id) == (audit_ledger.entries["a05"].seq, "a05")
    assert_what_if(r, audit_ledger, x, changed)
    assert [values(v) for v in r.counterfactual_inputs][3] == [
        values(v) for v in r.original_inputs][3]  # other rows untouched


def test_what_if_by_column_index_equals_by_name(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    by_index = what_if(audit_sidecar, "a05", ("0", 45000), ("1", 0.2), row=4)
    by_name = what_if(audit_sidecar, "a05", ("income", 45000), ("debt_ratio", 0.2), row=4)
    assert by_index == by_name


def test_what_if_on_all_rows(audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger) -> None:
    x = audit_ledger.call("a11").x  # 11 rows
    changed = x.copy()
    changed[:, FICO] = 520
    changed[:, 5] = 9  # open_loans, by index
    r = what_if(audit_sidecar, "a11", ("fico", 520), ("5", 9), all_rows=True)
    assert_what_if(r, audit_ledger, x, changed)
    assert len(r.decisions_changed) > 0  # a fico of 520 turns approvals down


def test_what_if_that_flips_a_decision_reports_the_row(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    call = audit_ledger.call("a04")  # 9 rows
    assert call.outputs is not None
    row = int(np.flatnonzero(call.outputs["label"] == 1)[0])  # an approved applicant
    changed = call.x.copy()
    changed[row, DEBT_RATIO], changed[row, FICO] = 1.4, 420
    r = what_if(audit_sidecar, "a04", ("debt_ratio", 1.4), ("fico", 420), row=row)
    assert_what_if(r, audit_ledger, call.x, changed)
    assert list(r.decisions_changed) == [row]
    assert values(r.counterfactual_outputs[row])["label"] == 0


@pytest.mark.parametrize(("overrides", "options", "words"), [
    ([("salary", 1.0)], {}, ["unknown feature 'salary'", "income", "open_loans"]),
    ([("6", 1.0)], {}, ["feature index 6", "0..5"]),
    ([("income", 1.0)], {"row": 11}, ["row 11", "11 rows"]),
    ([], {}, ["at least one override"]),
    ([("income", float("nan"))], {}, ["income", "not a finite number"]),
])
def test_bad_what_if_is_invalid_and_names_the_problem(
    audit_sidecar: AuditedSidecar, overrides: list[tuple[str, float]],
    options: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        what_if(audit_sidecar, "a05", *overrides, **options)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in info.value.details()


def test_what_if_on_a_refused_or_unknown_record(audit_sidecar: AuditedSidecar) -> None:
    with pytest.raises(grpc.RpcError) as info:
        what_if(audit_sidecar, "bad0", ("income", 1.0))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        what_if(audit_sidecar, "never-sent", ("income", 1.0))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_overriding_a_bytes_input_is_invalid_and_names_it(
    strings_sidecar: AuditedSidecar,
) -> None:
    for feature in ("category", "0"):
        with pytest.raises(grpc.RpcError) as info:
            what_if(strings_sidecar, "s1", (feature, 1.0))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'category'" in info.value.details() and "numeric" in info.value.details()
    err = rpc_error(strings_sidecar.stub.Sensitivity, apb.SensitivityRequest(
        ref=ref("s1"), feature="category", start=0, stop=1, steps=3))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'category'" in err.details()


def test_what_if_on_integer_and_boolean_inputs(dtypes_sidecar: AuditedSidecar) -> None:
    r = what_if(dtypes_sidecar, "d1", ("i32_1", 40), ("f64_0", -1.25), row=1)
    assert [values(v) for v in r.counterfactual_outputs] == [
        {"f64_out_0": 1.0, "f64_out_1": 2.0, "f64_out_2": 3.0, "i32_out_0": 2, "i32_out_1": 3,
         "i64_out": 15, "flag_out": 0},
        {"f64_out_0": -2.5, "f64_out_1": 5.0, "f64_out_2": 6.0, "i32_out_0": 4, "i32_out_1": 41,
         "i64_out": 18, "flag_out": 1}]
    for feature, value, words in (("i32_0", 1.5, "integers"), ("flag", 1.0, "boolean"),
                                  ("i32_0", 3e9, "int32: 3000000000.0 is outside"),
                                  ("i64", 1e19, "int64: 1e+19 is outside"),
                                  # 2**63 is one past int64's max, though float64 rounds
                                  # that max up to it
                                  ("i64", 2.0**63, "is outside [-9223372036854775808, ")):
        with pytest.raises(grpc.RpcError) as info:
            what_if(dtypes_sidecar, "d1", (feature, value))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in info.value.details()


def test_sensitivity_refuses_values_the_input_cannot_hold(dtypes_sidecar: AuditedSidecar,
                                                         ) -> None:
    # Cast silently, 3e10 became -2147483648 in the model while the answer said 3e10.
    err = rpc_error(dtypes_sidecar.stub.Sensitivity, apb.SensitivityRequest(
        ref=ref("d1"), feature="i32_0", values=[1, 2, 3e10]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'i32' is int32" in err.details() and "outside" in err.details()
    err = rpc_error(dtypes_sidecar.stub.Sensitivity, apb.SensitivityRequest(
        ref=ref("d1"), feature="i32_0", values=[1, 2], threshold=float("nan")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "threshold nan is not a finite number" in err.details()


# ── sensitivity ─────────────────────────────────────────────────────────────────────────


def swept(ledger: AuditLedger, request_id: str, row: int, column: int,
          points: np.ndarray) -> dict[str, np.ndarray]:
    """The recorded row repeated once per point, the feature set to each point."""
    x = np.repeat(ledger.call(request_id).x[row:row + 1], len(points), axis=0)
    x[:, column] = points
    return credit_run(ledger.models.v1, x)


def flips(points: np.ndarray, decisions: list[str]) -> list[tuple[float, float, str, str]]:
    return [(float(points[i - 1]), float(points[i]), decisions[i - 1], decisions[i])
            for i in range(1, len(points)) if decisions[i] != decisions[i - 1]]


def assert_sweep(r: apb.SensitivityResponse, points: np.ndarray,
                 expected: dict[str, np.ndarray], decisions: list[str]) -> None:
    assert [p.value for p in r.points] == [float(v) for v in points]
    assert [values(p.outputs) for p in r.points] == credit_output_rows(expected)
    assert [p.decision for p in r.points] == decisions
    assert [(f.from_value, f.to_value, f.from_decision, f.to_decision)
            for f in r.flips] == flips(points, decisions)


def test_linear_sweep_equals_onnxruntime_and_finds_the_flips(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    call = audit_ledger.call("a05")
    assert call.outputs is not None
    r = sensitivity(audit_sidecar, "a05", "fico", start=300, stop=850, steps=23, row=4)
    points = np.linspace(300, 850, 23)
    expected = swept(audit_ledger, "a05", 4, FICO, points)
    assert_sweep(r, points, expected, [str(v) for v in expected["label"]])
    assert len(r.flips) >= 1  # fico from 300 to 850 turns a refusal into an approval
    assert (r.feature, r.recorded_value) == ("fico", float(call.x[4, FICO]))
    assert r.recorded_decision == str(call.outputs["label"][4])
    assert r.decision_output == "label"


def test_log_sweep_by_feature_name(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    r = sensitivity(audit_sidecar, "a03", "income", start=1000, stop=1_000_000, steps=31,
                    scale="log", row=6)
    points = np.geomspace(1000, 1_000_000, 31)
    expected = swept(audit_ledger, "a03", 6, INCOME, points)
    assert_sweep(r, points, expected, [str(v) for v in expected["label"]])
    assert r.points[15].value == pytest.approx(31622.7766, rel=1e-9)  # evenly spaced in log
    assert r.recorded_value == float(audit_ledger.call("a03").x[6, INCOME])


def test_explicit_values_by_column_index_keep_their_order(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    given = [1.2, 0.0, 0.5, 1.45, 0.05, 0.9]
    r = sensitivity(audit_sidecar, "a01", "1", values=given, row=2)
    points = np.array(given)
    expected = swept(audit_ledger, "a01", 2, DEBT_RATIO, points)
    assert_sweep(r, points, expected, [str(v) for v in expected["label"]])
    assert r.feature == "debt_ratio"


def test_sweep_with_an_output_threshold(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    r = sensitivity(audit_sidecar, "a05", "fico", start=500, stop=800, steps=16, row=4,
                    output="probabilities_1", threshold=0.3)
    points = np.linspace(500, 800, 16)
    expected = swept(audit_ledger, "a05", 4, FICO, points)
    decisions = ["1" if p >= np.float32(0.3) else "0" for p in expected["probabilities"][:, 1]]
    assert_sweep(r, points, expected, decisions)
    assert r.decision_output == "probabilities_1 >= 0.3"
    assert len(r.flips) == 1


def test_threshold_on_an_output_whose_name_has_underscores(
    dtypes_sidecar: AuditedSidecar,
) -> None:
    r = sensitivity(dtypes_sidecar, "d1", "f64_1", start=0, stop=3, steps=7,
                    output="f64_out_1", threshold=3.0)
    assert [p.value for p in r.points] == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert [values(p.outputs)["f64_out_1"] for p in r.points] == [0, 1, 2, 3, 4, 5, 6]
    assert [p.decision for p in r.points] == ["0", "0", "0", "1", "1", "1", "1"]
    assert [(f.from_value, f.to_value) for f in r.flips] == [(1.0, 1.5)]


@pytest.mark.parametrize(("options", "words"), [
    ({"start": 300, "stop": 850, "steps": 1}, ["steps", "got 1"]),
    ({"start": 0, "stop": 850, "steps": 5, "scale": "log"}, ["log", "positive"]),
    ({"start": -5, "stop": 850, "steps": 5, "scale": "log"}, ["log", "positive"]),
    ({"start": 700, "stop": 700, "steps": 5}, ["700", "empty"]),
    ({"start": 300, "stop": 850, "steps": 5, "scale": "cubic"}, ["'cubic'"]),
    ({"start": 300, "stop": 850, "steps": 100_000}, ["steps", "100000"]),
    ({"values": [1.0, float("inf")]}, ["finite"]),
    ({"start": 300, "stop": 850, "steps": 5, "output": "nope", "threshold": 0.5},
     ["'nope'", "label", "probabilities"]),
    ({"start": 300, "stop": 850, "steps": 5, "row": 99}, ["row 99"]),
])
def test_bad_sweep_is_invalid_and_names_the_problem(
    audit_sidecar: AuditedSidecar, options: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        sensitivity(audit_sidecar, "a05", "fico", **options)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in info.value.details()


def test_sweep_of_an_unknown_feature_is_invalid(audit_sidecar: AuditedSidecar) -> None:
    with pytest.raises(grpc.RpcError) as info:
        sensitivity(audit_sidecar, "a05", "height", start=1, stop=2, steps=3)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown feature 'height'" in info.value.details()
