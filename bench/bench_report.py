"""The auditor's report over 100,000 decisions, and quality over 1,000,000 with outcomes.

    python bench/bench_report.py [--decisions 100000] [--quality-decisions 1000000]
                                 [--repeat 3] [--dir /tmp/mlwitness-bench-report] [--smoke]

Builds (once, cached in --dir) the demo credit model and its baseline, and two ledgers
written by the real `LedgerWriter`:

* **report**: `--decisions` one-row calls spread over 90 days, each with its real request
  and response bytes (so verification and the replay spot-check do their real work), an
  `age_band` request parameter, a guard version with a rate guard, the baseline announced,
  outcomes for 80 % of the decisions and reviews of 5 %;
* **quality**: `--quality-decisions` decision rows in records of 1,000 rows, and an outcome
  record for each row (decisions and outcomes alike: two million rows to join).

Then times, on a read-only connection: (a) the whole report as the `Report` RPC makes it —
verification of the chain (without deriving the decoded columns again, as the report does
by default), every section, a 20-decision replay spot-check through the sandbox, rendering
(target ≤ 5 s, file ≤ 3 MB); (b) `audit quality` with groups (target
≤ 2 s). Prints the machine, its load, the best and median of `--repeat` runs. `--smoke`
shrinks both ledgers to check that the script runs; its times mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from machine import basics  # bench/machine.py (scripts run from bench/)

from mlwitness.analytics.baseline import Baseline, build_baseline, store_baseline
from mlwitness.analytics.outcomes import QualityQuery
from mlwitness.audit.candidates import AuditLimits, Candidates
from mlwitness.audit.quality import Quality
from mlwitness.audit.report import ReportQuery, Reports
from mlwitness.audit.trail import Asker, Trail
from mlwitness.codec import encode_inputs, encode_outputs, tensor_from_array
from mlwitness.guards.checks import guard_record
from mlwitness.guards.file import loads_guards
from mlwitness.ledger import environment, journal, outcomes, schema, store
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.model.runtime import OnnxModel
from mlwitness.protocol import inference as pb

REPO = Path(__file__).resolve().parents[1]
T0 = 1_764_547_200_000_000  # 2025-12-01T00:00:00Z
DAY = 86_400_000_000
GROUP = 10_000  # records a commit while writing
RATE_GUARD = """version = 1
[[rates]]
name = "approval-rate"
output = "label"
equals = "1"
min = 0.2
max = 0.6
window = 1000
"""


def credit_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "credit_build_model", REPO / "examples" / "credit" / "build_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _writer(path: Path, features: tuple[str, ...]) -> LedgerWriter:
    writer = LedgerWriter(path, WriterOptions(durability="write", max_unloaded=1 << 30),
                          tabulator=Tabulator({"input": list(features)}),
                          decoder=decode_record_tensors)
    writer.open()
    return writer


def _call(model: OnnxModel, x: np.ndarray, request_id: str, band: str, received: int,
          env_id: str) -> Record:
    """One answered call with the bytes a client would send and the sidecar answer."""
    inputs = [tensor_from_array("input", x)]
    outputs = model.run(inputs)
    request = pb.ModelInferRequest(model_name="credit", id=request_id)
    request.parameters["age_band"].string_param = band
    encode_inputs(request, inputs, raw=True)
    response = pb.ModelInferResponse(model_name="credit", model_version="1", id=request_id)
    encode_outputs(response, outputs, raw=True)
    return Record(request_id=request_id, received_us=received, responded_us=received + 400,
                  model_name="credit", model_version="1", model_sha256=model.sha256,
                  env_id=env_id, peer="ipv4:10.0.0.7:5000",
                  request=request.SerializeToString(), response=response.SerializeToString())


def write_report_ledger(path: Path, model_path: Path, baseline: Baseline, n: int) -> None:
    builder = credit_builder()
    data = builder.make_dataset(n, 2027)
    x = builder.feature_matrix(data)
    onnx = model_path.read_bytes()
    model = OnnxModel(onnx)
    writer = _writer(path, tuple(builder.FEATURES))
    env_id = writer.write(lambda con: store.put_environment(
        con, environment.fingerprint(model.session_config)))
    writer.write(lambda con: store.put_model(con, onnx, "credit", "1",
                                             model.signature.to_dict()))
    sha = writer.write(lambda con: store_baseline(con, baseline, "baseline.json"))
    writer.append_blocking(Record(kind="admin", request_id="baseline", received_us=T0 - 1,
                                  responded_us=T0 - 1, detail=json.dumps(
                                      {"action": "baseline", "sha256": sha,
                                       "source": "baseline.json"}, sort_keys=True)))
    writer.append_blocking(guard_record(loads_guards(RATE_GUARD, "toml"), mode="observe",
                                        source="guards.toml", caller="startup"))
    step = 90 * DAY // n
    calls = []
    for i in range(n):
        calls.append(_call(model, x[i:i + 1], f"app-{i:07d}", str(data["age_band"][i]),
                           T0 + i * step, env_id))
        if len(calls) == GROUP:
            writer.append_group(calls)
            calls = []
    writer.append_group(calls)
    writer.sync(timeout=600)
    rng = np.random.default_rng(1)
    rows = writer.cursor().execute(
        "SELECT seq, lower(hex(hash)), request_id, received_us, outputs[1]['label'] "
        "FROM entries WHERE kind = 'infer' ORDER BY seq").fetchall()
    later = []
    for seq, digest, request_id, received, label in rows:
        d = outcomes.Decision(seq, digest, request_id, 0, "credit", model.sha256)
        if rng.random() < 0.8:
            later.append(outcomes.outcome_record(
                d, {"defaulted": int(rng.random() < (0.08 if label else 0.3))},
                received + int(rng.integers(30, 200)) * DAY, caller="token:loans"))
        if rng.random() < 0.05:
            made = label if rng.random() < 0.8 else 1 - label
            later.append(outcomes.review_record(d, {"label": int(made)}, "checked",
                                                reviewer="token:officer"))
        if len(later) >= GROUP:
            writer.append_group(later)
            later = []
    writer.append_group(later)
    writer.sync(timeout=600)
    writer.close()


def write_quality_ledger(path: Path, model_path: Path, n: int, batch: int = 1000) -> None:
    builder = credit_builder()
    data = builder.make_dataset(n, 2028)
    x = builder.feature_matrix(data)
    model = OnnxModel(model_path.read_bytes())
    writer = _writer(path, tuple(builder.FEATURES))
    records, labels = [], []
    for i, start in enumerate(range(0, n, batch)):
        inputs = [tensor_from_array("input", x[start:start + batch])]
        outputs = model.run(inputs)
        labels.append(outputs[0].array)
        records.append(Record(
            request_id=f"q-{i}", received_us=T0 + i * 1_000_000, responded_us=T0 + i * 1_000_000,
            model_name="credit", model_version="1", model_sha256=model.sha256,
            inputs=inputs, outputs=outputs,
            parameters={"age_band": str(data["age_band"][start])}))
    for start in range(0, len(records), 100):
        writer.append_group(records[start:start + 100])
    writer.sync(timeout=600)
    rng = np.random.default_rng(2)
    later = []
    for r, label in zip(records, labels, strict=True):
        for row in range(len(label)):
            d = outcomes.Decision(r.seq, r.hash.hex(), r.request_id, row)
            later.append(outcomes.outcome_record(
                d, {"defaulted": int(rng.random() < (0.08 if label[row] else 0.3))},
                r.received_us + 90 * DAY, caller="token:loans"))
            if len(later) == GROUP:
                writer.append_group(later)
                later = []
    writer.append_group(later)
    writer.sync(timeout=1200)
    writer.close()


def _fresh(tmp: Path) -> Path:
    """A ledger path with nothing left of an earlier, interrupted build."""
    for stale in (tmp, Path(f"{tmp}.wal"), journal.journal_dir(tmp)):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    return tmp


def prepare(root: Path, decisions: int, quality_decisions: int) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    builder = credit_builder()
    model_path = root / "credit.onnx"
    if not model_path.exists():
        builder.train_and_export(root, n_rows=20_000, seed=7)
    baseline_path = root / "baseline.json"
    if not baseline_path.exists():
        baseline_path.write_text(build_baseline(root / "train.csv", model=model_path,
                                                label="approved").to_json())
    baseline = Baseline.from_json(baseline_path.read_text())
    report = root / f"report-{decisions}.duckdb"
    if not report.exists():
        started = time.perf_counter()
        tmp = _fresh(report.with_suffix(".tmp.duckdb"))
        write_report_ledger(tmp, model_path, baseline, decisions)
        tmp.rename(report)
        print(f"wrote {report.name}: {time.perf_counter() - started:.1f} s")
    quality = root / f"quality-{quality_decisions}.duckdb"
    if not quality.exists():
        started = time.perf_counter()
        tmp = _fresh(quality.with_suffix(".tmp.duckdb"))
        write_quality_ledger(tmp, model_path, quality_decisions)
        tmp.rename(quality)
        print(f"wrote {quality.name}: {time.perf_counter() - started:.1f} s")
    return report, quality


def timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    """`repeat` timed runs after one untimed one (imports, the sandbox worker, DuckDB's
    caches: a serving process has them already)."""
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def show(what: str, times: list[float], target: float | None = None) -> None:
    best, median = min(times), statistics.median(times)
    met = "met" if target is not None and best <= target else "NOT met"
    verdict = "" if target is None else f"  (target ≤ {target:.0f} s: {met})"
    print(f"{what}: best {best:.2f} s, median {median:.2f} s over {len(times)}{verdict}")


def time_report(ledger: Path, decisions: int, repeat: int) -> None:
    con = schema.connect_reader(ledger)
    reader = LedgerReader(con.cursor)
    candidates = Candidates(reader, None, AuditLimits(), 1)
    reports = Reports(reader, Trail(None, environment.fingerprint()), candidates, ledger)
    query = ReportQuery(favorable="label=1", attributes=("age_band",),
                        quality=QualityQuery(label="defaulted", decision="label=0",
                                             score="probabilities_0", by="age_band"),
                        command="python bench/bench_report.py")
    try:
        times, made = timed(lambda: reports.report(Asker(), query), repeat)
    finally:
        candidates.close()
        con.close()
    show(f"report over {decisions:,} decisions ({len(made.html):,} bytes, target ≤ "
         "3,000,000)", times, 5.0)


def time_quality(ledger: Path, repeat: int) -> None:
    con = schema.connect_reader(ledger)
    quality = Quality(LedgerReader(con.cursor), Trail(None, environment.fingerprint()))
    q = QualityQuery(label="defaulted", decision="label=0", score="probabilities_0",
                     by="age_band")
    try:
        times, answer = timed(lambda: quality.answer(q), repeat)
    finally:
        con.close()
    show(f"quality over {answer.decisions:,} decisions, {answer.with_outcome:,} with "
         "outcomes, by age band", times, 2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--quality-decisions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/mlwitness-bench-report")
    parser.add_argument("--smoke", action="store_true",
                        help="2,000 and 20,000 decisions, one run: does the script work")
    args = parser.parse_args(argv)
    if args.smoke:
        args.decisions, args.quality_decisions, args.repeat = 2_000, 20_000, 1
    print(basics())
    report_ledger, quality_ledger = prepare(Path(args.dir), args.decisions,
                                            args.quality_decisions)
    time_report(report_ledger, args.decisions, args.repeat)
    time_quality(quality_ledger, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
