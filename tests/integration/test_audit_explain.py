"""`audit explain` through the API and the CLI: attributions by replay on the recorded model
bytes, reason codes, nearest flips, the audit record that holds each explanation.

A sidecar serves the demo credit model v2 (a Scaler and 60 trees of depth 2) with a
baseline of its training data, and records known calls; a second one serves the same
model with its trees' post_transform NONE (its `probabilities_1` is then the trees' margin).
Oracles: the `shap` library's exact explainer and onnxruntime run directly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    audit_server,
    credit_models,
    credit_run,
    rpc_error,
    run_cli,
    start_audited_sidecar,
    stub_for,
)
from explain_support import (
    FEATURES,
    REASONS,
    Explained,
    credit_baseline,
    explained_sidecar,
    logit_model,
    margin_model,
)
from json_shape import shape_problems

from mlwitness.audit import explain_range as window
from mlwitness.audit.explain_range import decision_line
from mlwitness.cli.answers import as_json
from mlwitness.explain.reasons import load_reasons
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.wire import audit_convert as convert

pytestmark = pytest.mark.filterwarnings("ignore:Field onnx.AttributeProto.ints:DeprecationWarning")


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return credit_baseline(credit_models(tmp_path_factory),
                           tmp_path_factory.mktemp("explain-baseline"))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return credit_models(tmp_path_factory).rows(40, seed=11)


@pytest.fixture(scope="module")
def gbt(tmp_path_factory: pytest.TempPathFactory, baseline_file: Path, rows: np.ndarray
        ) -> Iterator[Explained]:
    models = credit_models(tmp_path_factory)
    with explained_sidecar(models.v2, baseline_file,
                           tmp_path_factory.mktemp("explain-gbt") / "ledger.duckdb",
                           rows) as served:
        yield served


@pytest.fixture(scope="module")
def margin(tmp_path_factory: pytest.TempPathFactory, baseline_file: Path, rows: np.ndarray
           ) -> Iterator[Explained]:
    directory = tmp_path_factory.mktemp("explain-margin")
    model = margin_model(credit_models(tmp_path_factory).v2, directory / "margin.onnx")
    with explained_sidecar(model, baseline_file, directory / "ledger.duckdb", rows) as served:
        yield served


def probability(model: Path):  # noqa: ANN201 — f for the oracles
    def f(x: np.ndarray) -> np.ndarray:
        return credit_run(model, np.asarray(x, dtype=np.float32))["probabilities"][:, 1].astype(
            np.float64)
    return f


def values(r: apb.ExplainResponse | apb.ExplainedDecision) -> np.ndarray:
    return np.array([a.attribution for a in r.attributions])


def assert_efficient(r: apb.ExplainResponse) -> None:
    assert r.efficient and abs(r.gap) <= 1e-6
    assert abs(values(r).sum() - (r.fx - r.reference_value)) <= 1e-6
    assert r.total == pytest.approx(values(r).sum(), abs=1e-12)


# ── attributions ───────────────────────────────────────────────────────────────────────


def test_exact_through_the_api_equals_the_shap_library_on_the_demo_gbt(
    gbt: Explained, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shap's numba kernels take ~20 s to compile here and a blink to interpret at this size
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    shap = pytest.importorskip("shap")
    reference = gbt.reference(40)
    f = probability(gbt.model)
    masker = shap.maskers.Independent(reference, max_samples=len(reference))
    for request_id in ("app-03", "app-07"):
        r = gbt.explain(request_id, reference_rows=40, no_flips=True)
        x = gbt.x[request_id][0]
        oracle = shap.Explainer(f, masker, algorithm="exact")(x[None, :], silent=True)
        np.testing.assert_allclose(values(r), oracle.values[0], rtol=0, atol=1e-6)
        assert r.reference_value == pytest.approx(float(oracle.base_values[0]), abs=1e-6)
        assert [a.feature for a in r.attributions] == list(FEATURES)
        assert [a.value for a in r.attributions] == x.astype(np.float64).tolist()
        assert_efficient(r)
        assert (r.method, r.samples, r.model_rows, r.model_calls) == ("exact", 64, 64 * 40, 1)
        assert (r.favorable, r.output, r.explains) == ("label=1", "probabilities_1",
                                                       "probabilities_1")
        assert r.model_sha256 == hashlib.sha256(gbt.model.read_bytes()).hexdigest()
        recorded = credit_run(gbt.model, gbt.x[request_id])
        assert r.recorded_value == float(recorded["probabilities"][0, 1])
        assert r.decision == str(int(recorded["label"][0]))
    text = json.dumps({"features": list(FEATURES), "rows": reference.astype(float).tolist()},
                      sort_keys=True, separators=(",", ":"))
    assert r.reference_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert r.reference_rows == 40 and r.baseline_sha256 == gbt.baseline.sha256


def test_exact_on_a_logit_through_the_api_is_the_closed_form(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, baseline_file: Path,
    rows: np.ndarray
) -> None:
    """A linear model explained on its logit: phi_i = w_i (z_i - mean over the reference
    of z_i), z the Scaler's output (in float32, as onnxruntime computes it)."""
    model, weights, offset, scale = logit_model(credit_models(tmp_path_factory).v1,
                                                tmp_path / "logit.onnx")
    with explained_sidecar(model, baseline_file, tmp_path / "ledger.duckdb", rows) as served:
        z_reference = ((served.reference() - offset) * scale).astype(np.float64)
        for request_id, row in (("app-00", 0), ("app-09", 0), ("batch", 1)):
            r = served.explain(request_id, row=row, favorable="probabilities_1>=0",
                               no_flips=True)
            z = ((served.x[request_id][row] - offset) * scale).astype(np.float64)
            expected = weights.astype(np.float64) * (z - z_reference.mean(axis=0))
            np.testing.assert_allclose(values(r), expected, rtol=0, atol=1e-6)
            assert_efficient(r)
            assert r.favorable == "probabilities_1>=0" and r.explains == "probabilities_1"


def test_tree_equals_exact_through_the_api_on_a_tree_model(margin: Explained) -> None:
    """With post_transform NONE the served probability is the trees' raw score: `tree`,
    read from the ONNX nodes behind the Scaler, equals `exact` run on replay."""
    for request_id, row in (("app-01", 0), ("app-05", 0), ("batch", 2)):
        tree = margin.explain(request_id, row=row, method="tree", no_flips=True)
        exact = margin.explain(request_id, row=row, method="exact", no_flips=True)
        np.testing.assert_allclose(values(tree), values(exact), rtol=0, atol=1e-6)
        assert tree.fx == pytest.approx(exact.fx, abs=1e-6)
        assert tree.reference_value == pytest.approx(exact.reference_value, abs=1e-6)
        assert_efficient(tree)
        assert (tree.model_rows, tree.model_calls, tree.samples) == (0, 0, 0)
        assert tree.explains.startswith("probabilities_1 itself: the raw score")


def test_tree_on_a_probability_explains_the_margin_and_says_so(
    gbt: Explained, margin: Explained
) -> None:
    tree = gbt.explain("app-02", method="tree", no_flips=True)
    assert "margin behind probabilities_1" in tree.explains
    assert "LOGISTIC" in tree.explains and "method exact explains it" in tree.explains
    on_margin = margin.explain("app-02", method="exact", no_flips=True)  # the same x
    np.testing.assert_allclose(values(tree), values(on_margin), rtol=0, atol=1e-6)
    assert_efficient(tree)
    # the favourable class of two read as the negative margin: label=0
    other = gbt.explain("app-02", method="tree", favorable="label=0", no_flips=True)
    np.testing.assert_allclose(values(other), -values(tree), rtol=0, atol=1e-12)
    assert other.explains.startswith("the margin behind probabilities_0: minus the raw score")


def test_kernel_with_every_coalition_equals_exact_and_sampled_kernel_is_seeded(
    gbt: Explained
) -> None:
    exact = gbt.explain("app-04", no_flips=True)
    kernel = gbt.explain("app-04", method="kernel", no_flips=True)  # 62 ≤ 2060: enumerated
    np.testing.assert_allclose(values(kernel), values(exact), rtol=0, atol=1e-6)
    assert not kernel.seeded
    sampled = gbt.explain("app-04", method="kernel", samples=20, seed=7, no_flips=True)
    again = gbt.explain("app-04", method="kernel", samples=20, seed=7, no_flips=True)
    assert sampled.seeded and sampled.seed == 7 and sampled.samples == 22
    assert values(sampled).tolist() == values(again).tolist()
    assert_efficient(sampled)


# ── recorded and reproducible ──────────────────────────────────────────────────────────


def test_the_audit_record_holds_the_explanation_and_asking_again_gives_the_same_numbers(
    gbt: Explained
) -> None:
    first = gbt.explain("app-06", reasons_toml=REASONS.read_text(), pairs=("income:fico",))
    second = gbt.explain("app-06", reasons_toml=REASONS.read_text(), pairs=("income:fico",))
    assert first.audit_request_id != second.audit_request_id
    second.audit_request_id = first.audit_request_id
    assert second == first  # every number, reason and flip
    detail = gbt.audit_detail(first.audit_request_id)
    assert detail["rpc"] == "Explain"
    held = detail["result"]["explanation"]
    answered = as_json(first)
    assert {k: held[k] for k in ("method", "reference_sha256", "model_sha256", "seed",
                                 "samples", "fx", "reference_value", "favorable")} == {
        k: answered[k] for k in ("method", "reference_sha256", "model_sha256", "seed",
                                 "samples", "fx", "reference_value", "favorable")}
    assert held["attributions"] == answered["attributions"]
    assert held["reasons"] == answered["reasons"] and held["flips"] == answered["flips"]
    assert detail["request"]["reasons_sha256"] == hashlib.sha256(
        REASONS.read_bytes()).hexdigest()
    (kind, status, request) = gbt.side.query(
        "SELECT kind, status, request FROM entries WHERE request_id = ?",
        [first.audit_request_id])[0]
    assert (kind, status) == ("audit", "OK")
    assert apb.ExplainRequest.FromString(request).options.reasons_toml == REASONS.read_text()


# ── reason codes and nearest flips ─────────────────────────────────────────────────────


def denied(served: Explained) -> list[str]:
    return [rid for rid, x in served.x.items() if rid != "batch"
            and credit_run(served.model, x)["label"][0] == 0]


def test_reason_codes_are_the_features_that_counted_most_against_approval(
    gbt: Explained
) -> None:
    texts = load_reasons(REASONS, FEATURES)
    ids = denied(gbt)
    assert len(ids) >= 3
    for request_id in ids[:3]:
        r = gbt.explain(request_id, reasons_toml=REASONS.read_text(), no_flips=True)
        assert not r.favorable_outcome and r.decision == "0"
        attribution = {a.feature: a for a in r.attributions}
        against = sorted((a for a in r.attributions if a.attribution < -1e-9),
                         key=lambda a: a.attribution)
        assert [c.feature for c in r.reasons] == [a.feature for a in against][:4]
        assert r.harmful == len(against) and [c.rank for c in r.reasons] == list(
            range(1, len(r.reasons) + 1))
        for code in r.reasons:
            a = attribution[code.feature]
            assert (code.attribution, code.value, code.reference) == (
                a.attribution, a.value, a.reference)
            direction = ("below" if a.value < a.reference else
                         "above" if a.value > a.reference else "equal")
            assert code.direction == direction
            assert code.text == (texts.text(code.feature, direction) or "")


def test_a_flip_found_changes_the_decision_on_replay_and_one_step_before_it_does_not(
    gbt: Explained
) -> None:
    request_id = denied(gbt)[0]
    r = gbt.explain(request_id)
    x = gbt.x[request_id][0]
    assert r.flips and any(f.found for f in r.flips) and r.flips_note == ""
    numeric = {name: gbt.baseline.columns[name].numeric for name in FEATURES}
    for flip in r.flips:
        i = FEATURES.index(flip.feature)
        assert flip.value == float(x[i])
        if not flip.found:
            continue
        assert flip.to_decision == "favorable"
        assert numeric[flip.feature].min <= flip.to_value <= numeric[flip.feature].max
        assert flip.distance == pytest.approx(abs(flip.to_value - flip.value))
        whole = all(float(v).is_integer() for v in numeric[flip.feature].sample)
        step = 1.0 if whole else flip.tolerance
        back = flip.to_value - (step if flip.direction == "up" else -step)
        at, before = x.copy(), x.copy()
        at[i], before[i] = flip.to_value, back
        labels = credit_run(gbt.model, np.stack([at, before]))["label"]
        assert labels.tolist() == [1, 0], flip


# ── explain-range ──────────────────────────────────────────────────────────────────────


def explain_range(side: AuditedSidecar, **options: object) -> list[apb.ExplainRangeEvent]:
    return list(side.stub.ExplainRange(apb.ExplainRangeRequest(
        options=apb.ExplainOptions(**options)), timeout=120))


def test_explain_range_streams_every_decision_as_explain_answers_it(gbt: Explained) -> None:
    events = explain_range(gbt.side, reasons_toml=REASONS.read_text())
    decisions = [e.decision for e in events if e.WhichOneof("event") == "decision"]
    summary = events[-1].summary
    assert [(d.request_id, d.row) for d in decisions] == [
        (rid, row) for rid, x in gbt.x.items() for row in range(len(x))]
    assert (summary.records, summary.decisions, summary.failed) == (13, 15, 0)
    assert summary.method == "exact" and summary.favorable == "label=1"
    for d in decisions[::4]:
        one = gbt.explain(d.request_id, row=d.row, reasons_toml=REASONS.read_text(),
                          no_flips=True)
        np.testing.assert_allclose(values(d), values(one), rtol=0, atol=1e-6)
        assert [c.feature for c in d.reasons] == [c.feature for c in one.reasons]
        assert [c.text for c in d.reasons] == [c.text for c in one.reasons]
        assert (d.decision, d.favorable_outcome, d.efficient) == (
            one.decision, one.favorable_outcome, True)
    digest = hashlib.sha256("".join(decision_line(convert.from_message(d))
                                    for d in decisions).encode()).hexdigest()
    assert summary.results_sha256 == digest
    again = explain_range(gbt.side, reasons_toml=REASONS.read_text())
    assert again[-1].summary.results_sha256 == digest  # the same numbers, line for line
    detail = gbt.audit_detail(summary.audit_request_id)
    assert detail["rpc"] == "ExplainRange"
    assert detail["result"]["results_sha256"] == digest


def test_explain_range_in_many_runs_streams_what_one_run_does(
        gbt: Explained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of a few decisions (each run going on while the last one's decisions stream)
    give the lines one run gives; a stream cancelled while a run is in the worker leaves
    the worker to the next question with nothing of its own pending."""
    one = explain_range(gbt.side)
    monkeypatch.setattr(window, "CHUNK_CELLS", 2 * 2**6 * 100 * 6)  # two decisions a run
    many = explain_range(gbt.side)
    lines = [[decision_line(convert.from_message(e.decision)) for e in events
              if e.WhichOneof("event") == "decision"] for events in (one, many)]
    assert lines[0] == lines[1] and len(lines[0]) == 15
    assert many[-1].summary.results_sha256 == one[-1].summary.results_sha256
    stream = gbt.side.stub.ExplainRange(apb.ExplainRangeRequest(), timeout=120)
    assert next(e for e in stream if e.WhichOneof("event") == "decision")
    stream.cancel()
    for _ in range(2):
        assert explain_range(gbt.side)[-1].summary.results_sha256 == \
            one[-1].summary.results_sha256
        assert gbt.explain("app-03", no_flips=True).efficient


def test_explain_range_with_tree_and_records_it_cannot_explain(
    tmp_path: Path, audit_ledger: AuditLedger, baseline_file: Path, margin: Explained
) -> None:
    """A ledger of two models: tree explains v2's records and names v1's (a linear
    model) and the refused calls among the failures."""
    tree = explain_range(margin.side, method="tree")
    assert tree[-1].summary.decisions == 15 and tree[-1].summary.failed == 0
    ledger = audit_ledger.copy(tmp_path)
    side = start_audited_sidecar(audit_ledger.models.v1, ledger, baseline=baseline_file)
    try:
        events = explain_range(side, method="tree")
    finally:
        side.stop()
    summary = events[-1].summary
    v2_rows = sum(len(c.x) for c in audit_ledger.ok_calls if c.model_name == "credit_v2")
    v1_records = sum(c.model_name == "credit" for c in audit_ledger.ok_calls)
    assert summary.decisions == v2_rows and summary.failed == v1_records
    assert "use method exact or kernel" in summary.failures[0]
    assert "LinearClassifier" in summary.failures[0]


# ── refusals ───────────────────────────────────────────────────────────────────────────


def explain_error(side: AuditedSidecar, request: apb.ExplainRequest) -> grpc.RpcError:
    return rpc_error(side.stub.Explain, request)


GIVEN_ROW = "income=50000,debt_ratio=0.3,fico=700,age=40,years_employed=5,open_loans=3"


@pytest.mark.parametrize(("options", "code", "message"), [
    ({"output": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown output column 'nope'"),
    ({"method": "lime"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown method 'lime'"),
    ({"favorable": "label=7"}, grpc.StatusCode.INVALID_ARGUMENT, "cannot tell which"),
    ({"reference": "income=oops"}, grpc.StatusCode.INVALID_ARGUMENT, "none of them"),
    ({"reasons_toml": "version = 2"}, grpc.StatusCode.INVALID_ARGUMENT, "reasons file"),
    ({"reasons_toml": "version = 1\n[features.salary]\nany = 'x'"},
     grpc.StatusCode.INVALID_ARGUMENT, "no feature 'salary'"),
], ids=["output", "method", "label", "reference", "reasons", "reasons-feature"])
def test_bad_questions_are_invalid_arguments(gbt: Explained, options: dict,
                                             code: grpc.StatusCode, message: str) -> None:
    err = explain_error(gbt.side, apb.ExplainRequest(ref=apb.RecordRef(request_id="app-00"),
                                                     options=apb.ExplainOptions(**options)))
    assert err.code() == code and message in err.details(), err.details()


def test_records_that_cannot_be_explained_are_failed_preconditions(
    audit_sidecar: AuditedSidecar
) -> None:
    cases = {
        "bad0": (apb.ExplainOptions(), "was not answered"),  # refused: no decision
        "a05": (apb.ExplainOptions(method="tree", reference=GIVEN_ROW),
                "method tree reads a tree ensemble from the model, and cannot here"),
        "a07": (apb.ExplainOptions(), "the ledger has none"),  # no baseline to compare with
    }
    for request_id, (options, message) in cases.items():
        err = explain_error(audit_sidecar, apb.ExplainRequest(
            ref=apb.RecordRef(request_id=request_id), options=options))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (request_id, err.details())
        assert message in err.details()
    answer = audit_sidecar.stub.Explain(apb.ExplainRequest(
        ref=apb.RecordRef(request_id="a05"), options=apb.ExplainOptions(reference=GIVEN_ROW)),
        timeout=60)  # against a given row, without a baseline: no flips, and said why
    assert answer.efficient and answer.flips == [] and "no baseline" in answer.flips_note
    assert answer.reference.startswith("one row given by the auditor")


def test_minimised_and_non_tabular_inputs_are_refused(
    tmp_path: Path, model_paths: dict[str, Path], audit_ledger: AuditLedger
) -> None:
    side = start_audited_sidecar(audit_ledger.models.v1, tmp_path / "min.duckdb",
                                 redact_inputs=["input"])
    try:
        side.infer(audit_ledger.models.rows(1, seed=3), "secret")
        err = explain_error(side, apb.ExplainRequest(ref=apb.RecordRef(request_id="secret")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "hashed or redacted" in err.details()
    finally:
        side.stop()
    side = start_audited_sidecar(model_paths["strings"], tmp_path / "text.duckdb",
                                 model_name="strings", features=[])
    try:
        side.infer_tensors("strings", "words", category=np.array(["red", "blue"], dtype=object))
        err = explain_error(side, apb.ExplainRequest(
            ref=apb.RecordRef(request_id="words"), options=apb.ExplainOptions(
                favorable="code>=1", reference="category=1")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not tabular: input 'category' is BYTES" in err.details()
    finally:
        side.stop()


def test_more_than_twelve_features_need_kernel(tmp_path: Path,
                                               model_paths: dict[str, Path]) -> None:
    side = start_audited_sidecar(model_paths["argmax_rows"], tmp_path / "wide.duckdb",
                                 model_name="argmax", features=[])
    try:
        side.infer_tensors("argmax", "wide", x=np.arange(13, dtype=np.float32)[None, :])
        given = ",".join(f"x_{i}=0" for i in range(13))

        def ask(method: str) -> apb.ExplainRequest:
            return apb.ExplainRequest(ref=apb.RecordRef(request_id="wide"), options=(
                apb.ExplainOptions(favorable="best>=12", reference=given, method=method,
                                   samples=300)))

        err = explain_error(side, ask("exact"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limited to 12 features" in err.details() and "'kernel'" in err.details()
        r = side.stub.Explain(ask("kernel"), timeout=120)
        assert r.efficient and r.seeded and len(r.attributions) == 13
        assert (r.fx, r.reference_value) == (12.0, 0.0)  # the argmax of 0..12; of zeros, 0
    finally:
        side.stop()


def test_an_erased_record_is_refused_naming_the_erasure(tmp_path: Path,
                                                        audit_ledger: AuditLedger) -> None:
    """Erasure (record format 2) marks a record with the seq of the admin record that
    erased it; explain and explain-range refuse such a record, also on a ledger file that
    gained the column after it was written (set here by hand, on a standalone server)."""
    ledger = audit_ledger.copy(tmp_path)
    con = duckdb.connect(str(ledger))
    try:
        (admin,) = con.execute("SELECT min(seq) FROM entries WHERE kind = 'admin'").fetchone()
        con.execute("ALTER TABLE entries ADD COLUMN IF NOT EXISTS erased_by BIGINT")
        con.execute("UPDATE entries SET erased_by = ? WHERE request_id = 'a05'", [admin])
    finally:
        con.close()
    with audit_server(ledger, log_dir=tmp_path) as server:
        channel, stub = stub_for(server.address)
        try:
            request = apb.ExplainRequest(ref=apb.RecordRef(request_id="a05"),
                                         options=apb.ExplainOptions(reference=GIVEN_ROW))
            err = rpc_error(stub.Explain, request)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"record seq {audit_ledger.entries['a05'].seq} was erased by admin record " \
                   f"seq {admin}" in err.details()
            request.ref.request_id = "a06"  # not erased: explained
            assert stub.Explain(request, timeout=60).efficient
            events = list(stub.ExplainRange(apb.ExplainRangeRequest(
                options=apb.ExplainOptions(reference=GIVEN_ROW)), timeout=120))
            summary = events[-1].summary
            assert summary.failed == 1 and "was erased by admin record" in summary.failures[0]
        finally:
            channel.close()


# ── the command line ───────────────────────────────────────────────────────────────────


def test_cli_explain_prints_reasons_flips_and_the_audit_record(gbt: Explained) -> None:
    request_id = denied(gbt)[0]
    out = run_cli(gbt.side.audit_address, "explain", request_id, "--reasons", str(REASONS),
                  "--pair", "income:debt_ratio")
    assert out.returncode == 0, out.stderr
    assert f"({request_id}) row 0: decision 0 (unfavorable; favorable is label=1)" in out.stdout
    assert "efficiency holds" in out.stdout and "adverse-action reasons" in out.stdout
    assert "nearest flips" in out.stdout and "would be favorable" in out.stdout
    assert "on the ledger: audit record" in out.stdout
    texts = load_reasons(REASONS, FEATURES)
    first = gbt.explain(request_id, no_flips=True, reasons_toml=REASONS.read_text()).reasons[0]
    assert f"1. {first.feature}" in out.stdout
    assert texts.text(first.feature, first.direction) in out.stdout
    data = run_cli(gbt.side.audit_address, "--json", "explain", request_id, "--no-flips")
    assert data.returncode == 0, data.stderr
    assert shape_problems(json.loads(data.stdout), apb.ExplainResponse.DESCRIPTOR) == []
    bad = run_cli(gbt.side.audit_address, "explain", request_id, "--output", "nope")
    assert bad.returncode == 2 and "unknown output column" in bad.stderr and not bad.stdout


def test_cli_explain_range_writes_a_parquet_report(gbt: Explained, tmp_path: Path) -> None:
    target = tmp_path / "explanations.parquet"
    out = run_cli(gbt.side.audit_address, "explain-range", "--out", str(target), "--top", "3",
                  "--reasons", str(REASONS), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "explained 15 decisions of 13 records" in out.stdout
    assert "(matches what was received)" in out.stdout
    table = pq.read_table(target)
    assert table.num_rows == 15
    assert table.column_names[:11] == ["seq", "request_id", "row", "received_at",
                                       "model_sha256", "decision", "favorable",
                                       "recorded_value", "fx", "reference_value", "efficient"]
    assert "reason_3_text" in table.column_names and "reason_4_text" not in table.column_names
    rows = table.to_pylist()
    assert [(r["request_id"], r["row"]) for r in rows] == [
        (rid, row) for rid, x in gbt.x.items() for row in range(len(x))]
    meta = json.loads(pq.read_metadata(target).metadata[b"mlwitness.explain"])
    assert meta["decisions"] == 15 and meta["method"] == "exact"
    denial = next(r for r in rows if not r["favorable"])
    answer = gbt.explain(denial["request_id"], row=denial["row"], no_flips=True, top=3,
                         reasons_toml=REASONS.read_text())
    assert [denial[f"reason_{k}_feature"] for k in (1, 2, 3)][:len(answer.reasons)] == [
        c.feature for c in answer.reasons]
    lines = run_cli(gbt.side.audit_address, "--json", "explain-range", timeout=120)
    parsed = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [list(p) for p in parsed] == [["decision"]] * 15 + [["summary"]]
    assert shape_problems(parsed[0]["decision"], apb.ExplainedDecision.DESCRIPTOR) == []
    assert shape_problems(parsed[-1]["summary"], apb.ExplainRangeSummary.DESCRIPTOR) == []
    shutil.rmtree(tmp_path, ignore_errors=True)
