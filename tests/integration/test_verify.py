"""`mlwitness verify` (the real CLI, as a subprocess) on intact and tampered ledgers.

The ledger is made once by a real sidecar; each test tampers with its own copy through
DuckDB, the way someone with write access to the file would — down to rewriting a record
and recomputing every later hash, redefining the views, or adding a macro that stands in
for a built-in function. Tampering with the decoded columns:
tests/integration/test_verify_decoded.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sidecar import (
    mlwitness_command,
    read_ledger,
    rewrite_record,
    run_verify,
    start_sidecar,
)
from tritonclient.utils import InferenceServerException

from mlwitness.ledger import schema
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.settings import Settings

RECORDS = 20
REFUSED_SEQ = 6  # the call to an unknown model


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, affine_model: Path) -> Path:
    """A closed ledger of 20 records (seq 6 a refusal) written by a real sidecar."""
    root = tmp_path_factory.mktemp("verify")
    ledger = root / "ledger.duckdb"
    sidecar = start_sidecar(
        Settings(model=affine_model, ledger=ledger, port=0, audit_port=0, metrics_port=0)
    )
    try:
        with grpcclient.InferenceServerClient(sidecar.address) as client:
            for i in range(1, RECORDS + 1):
                x = np.full((i, 4), i, np.float32)
                tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                model = "no-such-model" if i == REFUSED_SEQ else "affine_fp32"
                try:
                    client.infer(model, [tensor], request_id=f"r{i}")
                except InferenceServerException as exc:
                    assert i == REFUSED_SEQ and exc.status() == "StatusCode.NOT_FOUND"
    finally:
        sidecar.stop()
    assert read_ledger(ledger, "SELECT count(*) FROM entries") == [(RECORDS,)]
    return ledger


@pytest.fixture
def ledger(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(pristine, copy)
    return copy


def tamper(path: Path, sql: str, params: list[Any] | None = None) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(sql, params or [])
    finally:
        con.close()


def verify_json(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_verify(path, "--json", *args)
    return result.returncode, json.loads(result.stdout)


def flip_byte(path: Path, column: str, seq: int) -> None:
    (value,) = read_ledger(path, f"SELECT {column} FROM entries WHERE seq = ?", [seq])[0]
    data = bytearray(value)
    data[len(data) // 2] ^= 0x01
    tamper(path, f"UPDATE entries SET {column} = ? WHERE seq = ?", [bytes(data), seq])


# ── intact ─────────────────────────────────────────────────────────────────────────────


def test_intact_ledger_verifies_with_exit_0(ledger: Path) -> None:
    before = hashlib.sha256(ledger.read_bytes()).hexdigest()
    code, report = verify_json(ledger)
    assert code == 0, report
    assert report["ok"] is True
    assert report["first_bad_seq"] is None
    assert report["problems"] == []
    assert (report["records"], report["journal_records"]) == (RECORDS, 0)
    assert (report["models"], report["environments"]) == (1, 1)
    (head,) = read_ledger(ledger, "SELECT hash FROM entries WHERE seq = ?", [RECORDS])[0]
    assert (report["head_seq"], report["head_hash"]) == (RECORDS, bytes(head).hex())
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == before  # verify only reads


def test_intact_ledger_text_report_says_ok(ledger: Path) -> None:
    result = run_verify(ledger)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every record and model matches its hash" in result.stdout
    assert f"records       {RECORDS} in DuckDB" in result.stdout


def test_expected_head_matching_the_chain_verifies(ledger: Path) -> None:
    (head,) = read_ledger(ledger, "SELECT hash FROM entries WHERE seq = ?", [RECORDS])[0]
    code, report = verify_json(ledger, "--expect-head", f"{RECORDS}:{bytes(head).hex()}")
    assert code == 0, report


# ── tampering ──────────────────────────────────────────────────────────────────────────

# (what is changed, seq, SQL or callable) — every stored field of a record is covered.
Change = Callable[[Path], None]
CHANGES: dict[str, tuple[int, Change]] = {
    "request_byte": (4, lambda p: flip_byte(p, "request", 4)),
    "response_byte": (7, lambda p: flip_byte(p, "response", 7)),
    "refusal_request_byte": (REFUSED_SEQ, lambda p: flip_byte(p, "request", REFUSED_SEQ)),
    "status": (5, lambda p: tamper(p, "UPDATE entries SET status = 'INTERNAL' WHERE seq = 5")),
    "refusal_turned_ok": (
        REFUSED_SEQ,
        lambda p: tamper(
            p, f"UPDATE entries SET status = 'OK', message = '' WHERE seq = {REFUSED_SEQ}"
        ),
    ),
    "request_id": (2, lambda p: tamper(p, "UPDATE entries SET request_id = 'x' WHERE seq = 2")),
    "received_us": (
        9,
        lambda p: tamper(p, "UPDATE entries SET received_us = received_us + 1 WHERE seq = 9"),
    ),
    "responded_us": (
        1,
        lambda p: tamper(p, "UPDATE entries SET responded_us = responded_us - 1 WHERE seq = 1"),
    ),
    "model_sha256": (
        3,
        lambda p: tamper(p, "UPDATE entries SET model_sha256 = repeat('0', 64) WHERE seq = 3"),
    ),
    "model_version": (
        8,
        lambda p: tamper(p, "UPDATE entries SET model_version = '2' WHERE seq = 8"),
    ),
    "peer": (10, lambda p: tamper(p, "UPDATE entries SET peer = 'ipv4:10.0.0.1:1' WHERE seq = 10")),
    "metadata": (4, lambda p: tamper(p, "UPDATE entries SET metadata = '{}' WHERE seq = 4")),
    "env_id": (2, lambda p: tamper(p, "UPDATE entries SET env_id = 'e' WHERE seq = 2")),
    "hash": (5, lambda p: flip_byte(p, "hash", 5)),
    "prev_hash": (8, lambda p: flip_byte(p, "prev_hash", 8)),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_record_fails_naming_its_seq(ledger: Path, change: str) -> None:
    seq, apply = CHANGES[change]
    apply(ledger)
    code, report = verify_json(ledger)
    assert code == 1
    assert report["ok"] is False
    assert report["first_bad_seq"] == seq
    assert report["problems"][0]["seq"] == seq


def test_changed_record_text_report_names_the_seq(ledger: Path) -> None:
    flip_byte(ledger, "request", 4)
    result = run_verify(ledger)
    assert result.returncode == 1
    assert "FAILED at seq 4" in result.stdout
    assert "content does not match its hash" in result.stdout


@pytest.mark.parametrize("seq", [1, 5, RECORDS - 1])
def test_deleted_record_fails_naming_the_missing_seq(ledger: Path, seq: int) -> None:
    tamper(ledger, "DELETE FROM entries WHERE seq = ?", [seq])
    code, report = verify_json(ledger)
    assert code == 1
    assert report["first_bad_seq"] == seq
    assert f"record seq {seq} is missing" in report["problems"][0]["what"]


def test_deleted_records_renumbered_to_hide_the_gap_fail(ledger: Path) -> None:
    tamper(ledger, "DELETE FROM entries WHERE seq = 5")
    tamper(ledger, "UPDATE entries SET seq = seq - 1 WHERE seq > 5")
    code, report = verify_json(ledger)
    assert code == 1
    assert report["first_bad_seq"] == 5


@pytest.mark.parametrize(("a", "b"), [(3, 7), (1, 2), (9, 10)])
def test_reordered_records_fail_naming_the_first_moved_seq(ledger: Path, a: int, b: int) -> None:
    tamper(
        ledger,
        "UPDATE entries SET seq = CASE seq WHEN ? THEN ? ELSE ? END WHERE seq IN (?, ?)",
        [a, b, a, a, b],
    )
    assert read_ledger(ledger, "SELECT request_id FROM entries WHERE seq = ?", [a]) == [(f"r{b}",)]
    code, report = verify_json(ledger)
    assert code == 1
    assert report["first_bad_seq"] == a


def test_truncated_tail_is_caught_against_a_published_head(ledger: Path) -> None:
    (head,) = read_ledger(ledger, "SELECT hash FROM entries WHERE seq = ?", [RECORDS])[0]
    tamper(ledger, "DELETE FROM entries WHERE seq = ?", [RECORDS])
    code, report = verify_json(ledger)
    assert code == 0  # a shorter chain is still a valid chain…
    assert report["head_seq"] == RECORDS - 1
    code, report = verify_json(ledger, "--expect-head", f"{RECORDS}:{bytes(head).hex()}")
    assert code == 1  # …but not the one that was published
    assert report["first_bad_seq"] == RECORDS


def test_changed_model_bytes_fail_naming_the_first_record_of_that_model(ledger: Path) -> None:
    (sha, onnx) = read_ledger(ledger, "SELECT sha256, onnx FROM models")[0]
    data = bytearray(onnx)
    data[-1] ^= 0x01
    tamper(ledger, "UPDATE models SET onnx = ? WHERE sha256 = ?", [bytes(data), sha])
    code, report = verify_json(ledger)
    assert code == 1
    assert report["first_bad_seq"] == 1
    assert any(sha in p["what"] for p in report["problems"])
    result = run_verify(ledger)
    assert "FAILED at seq 1" in result.stdout


def test_deleted_model_bytes_fail(ledger: Path) -> None:
    tamper(ledger, "DELETE FROM models")
    code, report = verify_json(ledger)
    assert code == 1
    assert report["first_bad_seq"] == 1
    assert "not in the model store" in report["problems"][0]["what"]


def test_changed_environment_fingerprint_fails(ledger: Path) -> None:
    tamper(ledger, "UPDATE environments SET fingerprint = replace(fingerprint, 'CPU', 'GPU')")
    code, report = verify_json(ledger)
    assert code == 1
    assert any("environment" in p["what"] for p in report["problems"])


def test_missing_ledger_file_is_an_error_not_a_pass(tmp_path: Path) -> None:
    result = run_verify(tmp_path / "absent.duckdb")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not (tmp_path / "absent.duckdb").exists()  # verify never creates a ledger


# ── a chain rewritten from some record on, against a head published before ───────────

def hash_at(path: Path, seq: int) -> str:
    (value,) = read_ledger(path, "SELECT hash FROM entries WHERE seq = ?", [seq])[0]
    return bytes(value).hex()


def test_chain_rewritten_after_a_published_head_fails_against_it(ledger: Path) -> None:
    published = hash_at(ledger, 10)  # published when the ledger had reached seq 10
    rewrite_record(ledger, 5, peer="ipv4:10.9.9.9:4242")
    assert hash_at(ledger, 10) != published
    code, report = verify_json(ledger)
    assert code == 0, report  # a rewritten chain is a valid chain on its own…
    code, report = verify_json(ledger, "--expect-head", f"10:{published}")
    assert code == 1, report  # …but not the one whose head was published at seq 10
    assert report["first_bad_seq"] is not None and report["first_bad_seq"] <= 10
    assert "hash at seq 10 differs" in report["problems"][0]["what"]
    result = run_verify(ledger, "--expect-head", f"10:{published.upper()}")
    assert result.returncode == 1 and "FAILED at seq 10" in result.stdout


def test_earlier_published_head_of_an_intact_chain_verifies(ledger: Path) -> None:
    for seq in (1, 10, RECORDS):
        code, report = verify_json(ledger, "--expect-head", f"{seq}:{hash_at(ledger, seq)}")
        assert code == 0, report


@pytest.mark.parametrize(("head", "words"), [
    ("10", "must be SEQ:HASH"),
    ("ten:" + "0" * 64, "must be SEQ:HASH"),
    ("10:" + "g" * 64, "64 hex digits"),
    ("10:" + "0" * 63, "64 hex digits"),
    ("10:" + "0" * 65, "64 hex digits"),
    ("-1:" + "0" * 64, "seq must be 1 or more"),
    ("0:" + "0" * 64, "seq must be 1 or more"),
])
def test_malformed_expected_head_is_refused_with_exit_2(ledger: Path, head: str,
                                                         words: str) -> None:
    result = run_verify(ledger, f"--expect-head={head}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_expected_head_in_the_journal_tail_is_compared(tmp_path: Path) -> None:
    """Records acknowledged but not yet in DuckDB count too: the head can be one of them."""
    writer = LedgerWriter(tmp_path / "ledger.duckdb",
                          WriterOptions(durability="write", load_interval_s=3600))
    writer.open()
    try:
        for i in range(6):
            writer.append_blocking(Record(kind="audit", request_id=f"q{i}", peer="p"))
        writer.sync()
        hashes = {}
        for i in range(6, 12):
            record = Record(kind="audit", request_id=f"q{i}", peer="p")
            writer.append_blocking(record)
            hashes[record.seq] = record.hash.hex()
        cursor = writer.cursor()
        from mlwitness.ledger.verify import verify

        good = verify(writer.path, con=cursor, expect_head=(9, hashes[9]))
        assert good.ok and good.journal_records == 6, good.problems
        bad = verify(writer.path, con=cursor, expect_head=(9, hashes[10]))
        assert not bad.ok and bad.first_bad_seq == 9
    finally:
        writer.close()


# ── views, macros and types in the file ────────────────────────────────────────────────


def records_view_hiding(seq: int) -> str:
    """The records view as mlwitness defines it, but without one record."""
    text = schema.VIEWS.split(";")[0]
    assert "CREATE OR REPLACE VIEW records AS" in text and "WHERE kind = 'infer'" in text
    return text.replace("WHERE kind = 'infer'", f"WHERE kind = 'infer' AND seq <> {seq}")


def run_sql(path: Path, query: str) -> list[dict[str, Any]]:
    import subprocess

    result = subprocess.run([*mlwitness_command(), "sql", "--ledger", str(path), "--json",
                             query], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_redefined_view_fails_and_sql_still_shows_every_record(ledger: Path) -> None:
    tamper(ledger, records_view_hiding(3))
    assert read_ledger(ledger, "SELECT count(*) FROM records") == [(RECORDS - 1,)]  # forged
    code, report = verify_json(ledger)
    assert code == 1
    assert [p["what"].split(":")[0] for p in report["problems"]] == [
        "view records is not mlwitness's definition"]
    rows = run_sql(ledger, "SELECT seq FROM records ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, RECORDS + 1))
    decisions = run_sql(ledger, "SELECT DISTINCT seq FROM decisions ORDER BY seq")
    assert 3 in [r["seq"] for r in decisions]


def test_macro_standing_in_for_a_builtin_fails_and_sql_is_not_fooled(ledger: Path) -> None:
    tamper(ledger, "CREATE MACRO lower(text) AS 'forged'")
    assert read_ledger(ledger, "SELECT hash FROM records WHERE seq = 1") == [("forged",)]
    code, report = verify_json(ledger)
    assert code == 1
    assert any(p["what"].startswith("macro lower is not one mlwitness creates")
               for p in report["problems"]), report
    assert run_sql(ledger, "SELECT hash FROM records WHERE seq = 1") == [
        {"hash": hash_at(ledger, 1)}]


@pytest.mark.parametrize(("sql", "named"), [
    ("CREATE OR REPLACE VIEW decisions AS SELECT * FROM records", "view decisions"),
    ("DROP VIEW audit_log", "view audit_log is missing"),
    ("CREATE VIEW extra AS SELECT 1", "view extra is not one"),
    ("CREATE SCHEMA s; CREATE VIEW s.records AS SELECT 1 AS seq", "view s.records is not one"),
    ("CREATE MACRO entries_since(s) AS TABLE SELECT * FROM entries WHERE seq >= s",
     "table macro entries_since"),
    ("CREATE TYPE json AS VARCHAR", "type json is not one"),
])
def test_object_mlwitness_does_not_create_fails(ledger: Path, sql: str, named: str) -> None:
    tamper(ledger, sql)
    code, report = verify_json(ledger)
    assert code == 1
    assert any(p["what"].startswith(named) for p in report["problems"]), report


# ── model metadata ─────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("change", "words"), [
    ("name = 'credit-approved'", "stored as 'credit-approved'"),
    ("version = '7'", "version '7'"),
    ("signature = '{\"inputs\": [], \"outputs\": []}'", "is not the one its bytes give"),
    ("signature = replace(signature, 'FP32', 'FP64')", "is not the one its bytes give"),
    ("signature = 'x'", "not a JSON object"),
])
def test_changed_model_metadata_fails_naming_its_first_record(ledger: Path, change: str,
                                                              words: str) -> None:
    tamper(ledger, f"UPDATE models SET {change}")
    code, report = verify_json(ledger)
    assert code == 1
    assert report["first_bad_seq"] == 1
    assert words in report["problems"][0]["what"], report
