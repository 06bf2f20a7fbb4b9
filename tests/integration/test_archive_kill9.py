"""kill -9 during an upload: `mlwitness serve --archive` killed while it ships segments,
restarted on the same ledger and archive, leaves an archive with no gap and no duplicate.

The archive is a directory (file://), so the test can watch the upload from outside: the
store writes each object to a hidden temporary file and links it into place, and a segment's
Parquet object precedes its manifest. The kill is sent the moment either is seen (an upload
under way), or after a bounded number of calls if none is seen in time. The kill may still
land just after the upload finished, so the round is repeated (ROUNDS, and up to MAX_ROUNDS
until a kill is seen to have left an upload cut short). Nothing of ours is replaced: the
real command, the real tritonclient, `archive push` and `archive verify`.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import tritonclient.grpc as grpcclient
from audit_support import _clean_env
from sidecar import ServeProcess, mlwitness_command, read_ledger
from tritonclient.utils import InferenceServerException

ROUNDS = 3  # kills at least, each of a sidecar restarted on the same ledger and archive
MAX_ROUNDS = 8  # at most: more until a kill has cut an upload short
CALLS_PER_ROUND = 2000  # at most; the kill comes once an upload is seen under way
WARM_UP = 25  # calls acknowledged before the watcher may kill
ROUND_S = 30.0  # at most, per round
FINAL_CALLS = 40
SEGMENT = 20
X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def serve_flags(url: str) -> list[str]:
    """Segments of 20 records shipped while calls arrive; records loaded and checkpointed
    often, so that segments seal what was just acknowledged."""
    return ["--archive", url, "--archive-interval", "0.2", "--archive-records", str(SEGMENT),
            "--load-interval", "0.05", "--checkpoint-interval", "0.5"]


def affine_input() -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return [tensor]


class Caller(threading.Thread):
    """Calls one at a time until told to stop, the server is gone or `count` are made;
    keeps the ids of those acknowledged."""

    def __init__(self, address: str, tag: str, count: int) -> None:
        super().__init__(name=f"caller-{tag}", daemon=True)
        self.address, self.tag, self.count = address, tag, count
        self.acknowledged: list[str] = []
        self.sent: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + ROUND_S
        with grpcclient.InferenceServerClient(self.address) as client:
            for i in range(self.count):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                rid = f"{self.tag}-{i:04d}"
                self.sent.append(rid)
                try:
                    client.infer("affine_fp32", affine_input(), request_id=rid,
                                 client_timeout=10)
                except InferenceServerException as exc:
                    self.errors.append(str(exc.status()))
                    return  # killed under it
                self.acknowledged.append(rid)


def in_flight(root: Path) -> set[str]:
    """What in the archive directory shows an upload in progress: temporary files being
    written (a kill leaves them behind, hidden from readers), and segments whose Parquet
    object is stored without its manifest."""
    found, parquets, manifests = set(), set(), set()
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                found.add(os.path.join(folder, name))
            elif name.endswith(".parquet"):
                parquets.add(name.removesuffix(".parquet"))
            elif name.endswith(".json") and os.path.basename(folder).startswith("chain="):
                manifests.add(name.removesuffix(".json"))
    return found | {f"{stem}.parquet" for stem in parquets - manifests}


def orphans(root: Path) -> set[str]:
    """Segments whose Parquet object is stored without its manifest (an upload cut short)."""
    return {name for name in in_flight(root) if not name.endswith(".tmp")}


def kill_during_upload(server: ServeProcess, root: Path, tag: str) -> tuple[Caller, set[str]]:
    """Call `server` until an upload is seen under way (after WARM_UP calls) and SIGKILL it
    then; if none is seen before the calls or the time run out, kill it anyway. The caller,
    and what the kill left under way: temporary files, Parquet objects without manifest."""
    stale = in_flight(root)  # left by the last kill (this start completes its Parquet)
    caller = Caller(server.address, tag, CALLS_PER_ROUND)
    caller.start()
    deadline = time.monotonic() + ROUND_S
    while caller.is_alive() and time.monotonic() < deadline:
        if len(caller.acknowledged) >= WARM_UP and in_flight(root) - stale:
            break
        time.sleep(0.001)
    assert server.kill() == -9, server.stderr()
    caller.stop.set()
    caller.join(30)
    assert not caller.is_alive()
    assert set(caller.errors) <= {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}, \
        caller.errors
    return caller, in_flight(root) - stale


def test_kill_9_while_segments_are_uploaded_leaves_no_gap_and_no_duplicate(
        serve_process, affine_model: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    root = tmp_path / "archive"
    root.mkdir()
    url = root.as_uri()
    acknowledged: list[str] = []
    sent: list[str] = []
    cut_short: list[set[str]] = []  # by each kill
    for k in range(MAX_ROUNDS):
        server = serve_process(affine_model, ledger, *serve_flags(url))
        caller, left = kill_during_upload(server, root, f"k{k}")
        acknowledged += caller.acknowledged
        sent += caller.sent
        cut_short.append(left)
        if k + 1 >= ROUNDS and any(cut_short):
            break
    assert any(cut_short), f"none of {len(cut_short)} kills landed during an upload"
    assert len(acknowledged) >= len(cut_short) * WARM_UP, "too few calls to mean anything"

    # The last start resumes (completing any upload cut short), serves, and stops cleanly.
    server = serve_process(affine_model, ledger, *serve_flags(url))
    final = Caller(server.address, "final", FINAL_CALLS)
    final.run()
    assert final.acknowledged == final.sent, final.errors
    acknowledged += final.acknowledged
    sent += final.sent
    assert server.terminate() == 0, server.stderr()
    # A clean stop leaves what is not yet shipped to the next start; `archive push` ships it.
    pushed = run("archive", "push", "--ledger", str(ledger), "--archive", url,
                 "--archive-records", str(SEGMENT))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    verified = run("archive", "verify", "--archive", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert not orphans(root), "an upload cut short was never completed"

    ((head,),) = read_ledger(ledger, "SELECT max(seq) FROM entries")
    rows = duckdb.sql(
        f"SELECT seq, request_id FROM read_parquet('{root}/records/*/*/*.parquet', "
        "hive_partitioning = true) ORDER BY seq").fetchall()
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(1, head + 1)), (  # contiguous, each once, up to the head
        f"archived seqs are not 1..{head} once each; the kills cut short {cut_short}")
    ids = [rid for _, rid in rows if rid in set(sent)]
    assert len(ids) == len(set(ids)), "a call is archived twice"
    assert set(acknowledged) <= set(ids), sorted(set(acknowledged) - set(ids))[:10]
    local = {r[0] for r in read_ledger(ledger, "SELECT request_id FROM entries")}
    assert set(ids) == local & set(sent)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*mlwitness_command(), *args], capture_output=True, text=True,
                          timeout=120, env=_clean_env())
