"""The auditor's report made end to end: a real sidecar's ledger (real calls, guards, a
baseline, outcomes, reviews), `mlwitness audit report --out … --pdf …` through the audit
API, then the file opened in Debian's headless Chromium: it loads with no console error
and no request, every section is there with its table, a screenshot is kept, the PDF has
a sensible page count. The report is itself on the ledger, with the SHA-256 of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from browser_support import keep_artifacts, launch, open_page, pdf_pages
from monitoring_support import MonitoredSidecar, monitoring_kit, start_monitored
from sidecar import mlwitness_command

from mlwitness.protocol import audit_pb2 as apb
from mlwitness.report import SECTION_IDS

CALLS = 240
RATE_GUARD = """
[[rates]]
name = "approval-rate"
output = "label"
equals = "1"
min = 0.2
max = 0.7
window = 500
min_samples = 50
"""


@pytest.fixture(scope="module")
def browser():
    yield from launch()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, credit_model: Any
             ) -> tuple[MonitoredSidecar, Path]:
    """A sidecar that answered CALLS one-row calls (an age band each as a request
    parameter, a few far outside the guards), with outcomes for most and some reviews."""
    kit = monitoring_kit(tmp_path_factory, credit_model)
    root = tmp_path_factory.mktemp("audit-report")
    guards = root / "guards.toml"
    guards.write_text(kit.guards_text() + RATE_GUARD)
    side = start_monitored(kit, root / "ledger.duckdb", baseline=kit.baseline_path,
                           guards=guards)
    x, bands = kit.in_range(CALLS, seed=11)
    x[::40, 0] = 9e6  # income far above anything in training: guard violations
    rng = np.random.default_rng(4)
    outcomes, reviews = [], []
    for i in range(CALLS):
        out = side.infer(x[i:i + 1], f"app-{i:04d}", {"age_band": str(bands[i])})
        approved = int(out["label"][0])
        if rng.random() < 0.85:
            defaulted = int(rng.random() < (0.08 if approved else 0.35))
            outcomes.append(apb.Outcome(decision=apb.RecordRef(request_id=f"app-{i:04d}"),
                                        values=[apb.Value(name="defaulted",
                                                          number=defaulted)]))
        if i % 12 == 0:
            reviews.append((f"app-{i:04d}", 1 - approved if i % 36 == 0 else approved))
    side.stub.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=outcomes), timeout=60)
    for request_id, label in reviews:
        side.stub.RecordReview(apb.RecordReviewRequest(
            decision=apb.RecordRef(request_id=request_id),
            decision_made=[apb.Value(name="label", number=label)],
            reason="file checked by hand"), timeout=30)
    yield side, root
    side.stop()


def make_report(side: MonitoredSidecar, out: Path, *extra: str) -> Any:
    done = side.audit_cli("report", "--out", str(out), "--favorable", "label=1",
                          "--attribute", "age_band", "--label", "defaulted", "--decision",
                          "label=0", "--score", "probabilities_0", "--by", "age_band",
                          "--replay-sample", "8", "--seed", "7", "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_report_of_a_real_ledger_in_headless_chromium(recorded, browser) -> None:
    side, root = recorded
    html, pdf = root / "december.html", root / "december.pdf"
    made = make_report(side, html, "--pdf", str(pdf))
    data = html.read_bytes()
    assert made["sha256"] == hashlib.sha256(data).hexdigest() and made["bytes"] == len(data)
    assert len(data) < 3_000_000
    page, seen = open_page(browser, html)
    try:
        for sid in SECTION_IDS:
            section = page.locator(f"section#{sid}")
            assert section.is_visible(), sid
            assert section.get_attribute("class") != "no-data", (
                sid, section.inner_text()[:300])
            assert section.locator("table").count() >= 1, sid
        assert page.evaluate("document.scripts.length") == 0
        text = page.locator("#summary").inner_text()
        assert "verified" in text.lower() and "mlwitness audit --target" in text
        assert f"report --out {html}" in text  # how it was made
        assert f"{made['head_seq']:,}" in text
        replay = page.locator("#replay").inner_text()
        assert "8 of 8 sampled decisions replayed bit-identically" in \
            page.locator(".findings").inner_text()
        assert "Identical" in replay and "Differs" not in replay
        assert "age_band" in page.locator("#bias").inner_text()
        shot = root / "audit-report.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_artifacts((shot, "audit-report.png"), (html, "audit-report.html"),
                       (pdf, "audit-report.pdf"))
        print(f"\nreport screenshot: {shot}")
    finally:
        page.close()
    assert seen == {"requests": [], "errors": [], "dialogs": []}
    pages = pdf_pages(pdf.read_bytes())
    assert made["pdf_pages"] == pages
    assert 5 <= pages <= 40, pages


def test_the_report_is_an_audit_record_with_the_files_hash(recorded) -> None:
    side, root = recorded
    made = make_report(side, root / "again.html", "--replay-sample", "0")
    rows = side.running.query(
        "SELECT caller, status, detail->'result'->>'sha256', detail->'result'->>'head_seq' "
        "FROM audit_log WHERE detail->>'rpc' = 'Report' ORDER BY seq")
    assert (rows[-1][1], rows[-1][2]) == ("OK", made["sha256"])
    assert int(rows[-1][3]) == made["head_seq"]
    bad = side.audit_cli("report", "--out", str(root / "x.html"), "--favorable", "nope=1")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    assert not (root / "x.html").exists()


def test_a_report_over_an_empty_window_says_why_each_section_is_empty(recorded) -> None:
    side, root = recorded
    out = root / "empty.html"
    chunks = list(side.stub.Report(apb.ReportRequest(since_us=1, until_us=2), timeout=120))
    html = b"".join(c.html for c in chunks)
    assert chunks[-1].sha256 == hashlib.sha256(html).hexdigest()
    out.write_bytes(html)
    text = html.decode()
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in text
    assert "No records fall in the window." in text
    with pytest.raises(grpc.RpcError) as info:
        list(side.stub.Report(apb.ReportRequest(bucket="week"), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pdf_without_chromium_fails_before_asking(recorded, tmp_path: Path) -> None:
    side, _ = recorded
    env = {**os.environ, "MLWITNESS_CHROMIUM": str(tmp_path / "no-chromium")}
    done = subprocess.run([*mlwitness_command(), "audit", "--target", side.audit_target,
                           "report", "--out", str(tmp_path / "r.html"), "--pdf",
                           str(tmp_path / "r.pdf")], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 2
    assert "needs a Chromium" in done.stderr
    assert not (tmp_path / "r.html").exists()
