"""The Merkle tree over a real ledger, its checkpoints and their proofs: every root and proof
checked against the tree worked out from scratch over `entries.hash` (evidence_support,
from RFC 6962) and with the independent verifier (evidence/check.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from evidence_support import (
    append,
    chain_hashes,
    checkpointer,
    file_leaves,
    leaf,
    open_writer,
    reference_root,
    rewrite_from,
)

from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.evidence import check
from mlwitness.evidence.note import Checkpoint, Signer, sign_checkpoint
from mlwitness.ledger import checkpoints, tree
from mlwitness.ledger.checkpoints import read_note
from mlwitness.ledger.record import Record


def wait_until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s} s"
        time.sleep(0.02)


def rows_of(writer) -> list[checkpoints.CheckpointRow]:
    con = writer.cursor()
    try:
        return checkpoints.all_rows(con)
    finally:
        con.close()


def leaves_of(writer) -> list[bytes]:
    con = writer.cursor()
    try:
        return [leaf(h) for h in chain_hashes(con)]
    finally:
        con.close()


# ── checkpoints: sizes, roots, nodes, signatures ───────────────────────────────────────


def test_each_checkpoint_is_the_tree_over_every_loaded_records_chain_hash(
    tmp_path: Path,
) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb")
    signer = Signer.generate("ops")
    issuer = checkpointer(writer, signer=signer)
    try:
        issued = []
        for count in (1, 300, 0, 700, 55):
            append(writer, count, prefix=f"b{len(issued)}-")
            issued.append(issuer.issue())
        rows = rows_of(writer)
        leaves = leaves_of(writer)
        con = writer.cursor()
        stored = con.execute("SELECT level, idx, hash FROM merkle_nodes ORDER BY level, idx"
                             ).fetchall()
        con.close()
    finally:
        writer.close()
    assert issued[2] is None  # nothing arrived: no checkpoint
    assert [r.size for r in rows] == [1, 301, 1001, 1056] == [r.size for r in issued if r]
    for row in rows:
        assert row.root == reference_root(leaves[:row.size])
        opened = check.verify_checkpoint(row.note.encode(), issuer.origin,
                                         [signer.verifier_key()])
        assert (opened.size, opened.root) == (row.size, row.root)
    # the subtrees of tile boundaries are stored: 4 of level 8 over 1056 leaves
    assert [(level, idx) for level, idx, _ in stored] == [(8, 0), (8, 1), (8, 2), (8, 3)]
    for _, idx, digest in stored:
        assert bytes(digest) == reference_root(leaves[idx * 256:(idx + 1) * 256])


def test_the_origin_names_the_chain_and_a_signature_by_another_key_is_refused(
    tmp_path: Path,
) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb")
    issuer = checkpointer(writer, signer=Signer.generate("ops"))
    try:
        append(writer, 3)
        row = issuer.issue()
    finally:
        writer.close()
    assert row is not None and issuer.origin == f"mlwitness/{writer.chain_id}"
    with pytest.raises(check.VerificationError, match="no signature by a known key"):
        check.verify_checkpoint(row.note.encode(), issuer.origin,
                                [Signer.generate("ops").verifier_key()])


def test_without_a_key_checkpoints_are_unsigned_tree_heads(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb")
    issuer = checkpointer(writer)
    try:
        append(writer, 5)
        row = issuer.issue()
        leaves = leaves_of(writer)
    finally:
        writer.close()
    assert row is not None and not row.signed and issuer.key_id == ""
    assert row.note == Checkpoint(issuer.origin, 5, row.root).text()  # no signature line
    assert check.parse_checkpoint(row.note).root == reference_root(leaves) == row.root
    with pytest.raises(check.VerificationError):
        check.open_note(row.note.encode(), [Signer.generate("x").verifier_key()])


def test_the_thread_issues_while_records_arrive_and_close_issues_after_the_final_load(
    tmp_path: Path,
) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb", load_interval_s=0.05)
    issuer = checkpointer(writer, interval_s=0.05)
    issuer.start()
    try:
        append(writer, 10)
        wait_until(lambda: issuer.latest is not None and issuer.latest.size >= 10)
        issuer.interval_s = 3600.0  # from the next wait on: only close() issues
        for i in range(25):  # acknowledged, maybe not loaded yet: close loads them first
            writer.append_blocking(Record(request_id=f"late{i}"))
        issuer.close(timeout=10)
        head = writer.head[0]
        rows = rows_of(writer)
        leaves = leaves_of(writer)
    finally:
        writer.close()
    assert rows[-1].size == head == 35
    assert [r.size for r in rows] == sorted({r.size for r in rows})
    assert all(r.root == reference_root(leaves[:r.size]) for r in rows)


def test_a_ledger_without_a_tree_has_it_built_in_chunks_before_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path)
    try:
        append(writer, 1000)  # as an older version wrote it: records, no tree
    finally:
        writer.close()
    writer = open_writer(path)
    issuer = checkpointer(writer, chunk=128)
    try:
        row = issuer.issue()
        con = writer.cursor()
        frontier = tree.stored_frontier(con)
        nodes = con.execute("SELECT count(*) FROM merkle_nodes").fetchall()[0][0]
        con.close()
    finally:
        writer.close()
    leaves = file_leaves(path)
    assert row is not None and (row.size, row.root) == (1000, reference_root(leaves))
    assert frontier is not None and frontier.size == 1000 and nodes == 3
    # rebuilt from the ledger alone: the tree's tables and state removed, the same root
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM merkle_nodes; DELETE FROM checkpoints; "
                f"DELETE FROM ledger_meta WHERE key = '{tree.FRONTIER_KEY}'")
    con.close()
    writer = open_writer(path)
    try:
        again = checkpointer(writer, chunk=300).issue()
    finally:
        writer.close()
    assert again is not None and (again.size, again.root) == (row.size, row.root)


# ── restarts, and what a start refuses to sign ─────────────────────────────────────────


def test_a_restart_continues_the_tree_from_its_stored_frontier(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    signer = Signer.generate("ops")
    for batch in (300, 20, 500):
        writer = open_writer(path)
        try:
            append(writer, batch, prefix=f"{batch}-")
            checkpointer(writer, signer=signer).issue()
            rows = rows_of(writer)
        finally:
            writer.close()
    leaves = file_leaves(path)
    assert [r.size for r in rows] == [300, 320, 820]
    assert all(r.root == reference_root(leaves[:r.size]) for r in rows)


def test_a_start_after_records_were_rewritten_signs_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path)
    try:
        append(writer, 40)
        checkpointer(writer, signer=Signer.generate("ops")).issue()
    finally:
        writer.close()
    rewrite_from(path, 7)  # every later hash recomputed: the chain alone verifies
    writer = open_writer(path)
    issuer = checkpointer(writer, signer=Signer.generate("ops"))
    try:
        append(writer, 5)
        assert issuer.issue() is None
        rows = rows_of(writer)
    finally:
        writer.close()
    assert issuer.state == "stopped" and "records 1..40 no longer give" in issuer.detail
    assert [r.size for r in rows] == [40]


# ── proofs ─────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory):
    """A ledger of 1300 records with checkpoints at several sizes."""
    path = tmp_path_factory.mktemp("proofs") / "ledger.duckdb"
    writer = open_writer(path)
    signer = Signer.generate("ops")
    issuer = checkpointer(writer, signer=signer)
    for count in (1, 2, 253, 256, 511, 277):
        append(writer, count, prefix=f"{count}-")
        issuer.issue()
    yield writer, signer, issuer
    writer.close()


def test_inclusion_proofs_of_records_in_every_checkpoint_verify(proved) -> None:
    writer, signer, issuer = proved
    con = writer.cursor()
    try:
        sizes = [r.size for r in checkpoints.all_rows(con)]
        assert sizes == [1, 3, 256, 512, 1023, 1300]
        for size in sizes:
            for seq in sorted({1, 2, size // 2 or 1, size - 1 or 1, size, 257, 1000}):
                if seq > size:
                    continue
                proof = checkpoints.prove_record(con, seq, size)
                signed = check.verify_checkpoint(proof.checkpoint.note.encode(), issuer.origin,
                                                 [signer.verifier_key()])
                inclusion = proof.inclusion
                assert inclusion.leaf_hash == check.leaf_hash(inclusion.chain_hash)
                check.verify_inclusion(inclusion.leaf_index, signed.size, inclusion.leaf_hash,
                                       list(inclusion.hashes), signed.root)
        latest = checkpoints.prove_record(con, 1300)
        assert latest.checkpoint.size == 1300
    finally:
        con.close()


def test_consistency_proofs_between_every_pair_of_sizes_verify(proved) -> None:
    writer, _, _ = proved
    con = writer.cursor()
    try:
        built = tree.built_size(con)
        sizes = [1, 2, 3, 255, 256, 257, 512, 1000, 1023, 1300]
        for old in sizes:
            for new in sizes:
                if old <= new:
                    proof = tree.consistency(con, old, new, built)
                    check.verify_consistency(old, new, list(proof.hashes), proof.old_root,
                                             proof.new_root)
    finally:
        con.close()


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda con: checkpoints.prove_record(con, 0), InvalidInput, "seq must be positive"),
    (lambda con: checkpoints.prove_record(con, -3), InvalidInput, "seq must be positive"),
    (lambda con: checkpoints.prove_record(con, 5, -1), InvalidInput, "tree size"),
    (lambda con: checkpoints.prove_record(con, 5, 4), FailedPrecondition, "no checkpoint of "
     "size 4"),
    (lambda con: checkpoints.prove_record(con, 1301), FailedPrecondition, "not in the tree"),
    (lambda con: checkpoints.prove_record(con, 10, 3), FailedPrecondition, "not in the tree"),
    (lambda con: tree.consistency(con, 0, 5, 1300), InvalidInput, "empty tree"),
    (lambda con: tree.consistency(con, 9, 5, 1300), InvalidInput, "larger than"),
    (lambda con: tree.consistency(con, 5, 1301, 1300), FailedPrecondition, "beyond the tree"),
    (lambda con: tree.consistency(con, -1, 5, 1300), InvalidInput, "must be positive"),
], ids=["seq0", "seq-negative", "size-negative", "no-such-checkpoint", "seq-past-latest",
        "seq-past-size", "from-0", "from-after-to", "to-past-built", "from-negative"])
def test_proofs_of_what_is_not_there_are_refused_with_the_reason(proved, call, error,
                                                                 words) -> None:
    writer, _, _ = proved
    con = writer.cursor()
    try:
        with pytest.raises(error, match=words):
            call(con)
    finally:
        con.close()


def test_a_ledger_without_checkpoints_says_so(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb")
    try:
        append(writer, 3)
        con = writer.cursor()
        with pytest.raises(FailedPrecondition, match="no checkpoint yet"):
            checkpoints.prove_record(con, 1)
        con.close()
    finally:
        writer.close()


def test_a_note_read_back_is_the_checkpoint_it_holds() -> None:
    signer = Signer.generate("ops")
    cp = Checkpoint("mlwitness/abc", 12, bytes(range(32)))
    parsed, signatures = read_note(sign_checkpoint(cp, [signer]).decode())
    assert parsed == cp and [s.key_id for s in signatures] == [signer.key_id]
    assert read_note(cp.text()) == (cp, ())
