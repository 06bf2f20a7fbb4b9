"""`mlwitness verify` (the real CLI, as a subprocess) on intact and tampered ledgers.

The ledger is made once by a real sidecar; each test tampers with its own copy through
DuckDB, the way someone with write access to the file would.
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
from sidecar import read_ledger, run_verify, start_sidecar
from tritonclient.utils import InferenceServerException

from mlwitness.settings import Settings

RECORDS = 10
REFUSED_SEQ = 6  # the call to an unknown model


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, affine_model: Path) -> Path:
    """A closed ledger of 10 records (seq 6 a refusal) written by a real sidecar."""
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
