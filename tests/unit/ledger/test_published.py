"""Checkpoints published outside the ledger (ledger/publisher.py), and a ledger checked
against them (ledger/extension.py, `mlwitness verify --checkpoint`): the exact first record
that differs with the published tiles, a range without them, truncation, forks, keys."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from evidence_support import (
    append,
    checkpointer,
    file_leaves,
    open_writer,
    reference_root,
    rewrite_from,
)

from mlwitness.errors import InvalidInput
from mlwitness.evidence import check
from mlwitness.evidence.note import Checkpoint, Signer, sign_checkpoint
from mlwitness.evidence.tiles import tile_path
from mlwitness.ledger import checkpoints
from mlwitness.ledger.extension import check_extends, read_keys
from mlwitness.ledger.publisher import Publisher
from mlwitness.ledger.record import Record


def wait_until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s} s"
        time.sleep(0.02)


def published_ledger(root: Path, batches: tuple[int, ...], signer: Signer | None
                     ) -> tuple[Path, Path]:
    """A closed ledger with one checkpoint per batch of records, each published to
    root/witness: (ledger, witness directory)."""
    path, witness = root / "ledger.duckdb", root / "witness"
    witness.mkdir()
    writer = open_writer(path)
    issuer = checkpointer(writer, witness, signer=signer)
    issuer.start()
    try:
        for n, count in enumerate(batches):
            append(writer, count, prefix=f"{n}-")
            issuer.issue()
            assert issuer.publisher is not None
            wait_until(lambda: issuer.publisher.published_size == issuer.latest.size)
    finally:
        issuer.close(timeout=10)
        writer.close()
    return path, witness


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("ops")


# ── the published directory ────────────────────────────────────────────────────────────


def test_the_directory_holds_latest_history_and_the_trees_tiles(tmp_path: Path,
                                                                 signer: Signer) -> None:
    path, witness = published_ledger(tmp_path, (300, 300), signer)
    leaves = file_leaves(path)
    con = duckdb.connect(str(path), read_only=True)
    notes = dict(con.execute("SELECT size, note FROM checkpoints").fetchall())
    unpublished = con.execute("SELECT count(*) FROM checkpoints WHERE published_us IS NULL"
                              ).fetchall()[0][0]
    con.close()
    assert sorted(notes) == [300, 600] and unpublished == 0
    assert (witness / "latest").read_text() == (witness / "checkpoint").read_text() == notes[600]
    for size in (300, 600):
        assert (witness / "checkpoints" / str(size)).read_text() == notes[size]
    # tile level 0: the leaf hashes, full tiles 0 and 1, a partial tile 2 of 88 (600 - 512)
    def tile(level: int, index: int, width: int = 256) -> bytes:
        return (witness / tile_path(level, index, width)).read_bytes()
    assert tile(0, 0) == b"".join(leaves[:256]) and tile(0, 1) == b"".join(leaves[256:512])
    assert tile(0, 2, 88) == b"".join(leaves[512:600])
    assert tile(0, 1, 44) == b"".join(leaves[256:300])  # the partial tile of size 300 stays
    assert tile(1, 0, 2) == b"".join(reference_root(leaves[i * 256:(i + 1) * 256])
                                     for i in range(2))
    assert check.verify_checkpoint((witness / "latest").read_bytes(),
                                   checkpoints.read_note(notes[600])[0].origin,
                                   [signer.verifier_key()]).root == reference_root(leaves)


def test_a_failing_directory_is_retried_reported_and_recovers(tmp_path: Path) -> None:
    witness = tmp_path / "witness"  # not there yet: an unmounted volume
    writer = open_writer(tmp_path / "ledger.duckdb")
    issuer = checkpointer(writer, witness)
    publisher = issuer.publisher
    assert publisher is not None
    issuer.start()
    try:
        append(writer, 20)
        issuer.issue()
        wait_until(lambda: publisher.state == "failing")
        assert publisher.failures >= 1 and "is not a directory" in publisher.last_error
        assert not witness.exists()  # never created: it would be the local disk
        writer.append_blocking(Record(request_id="while-failing"))  # the ledger serves on
        witness.mkdir()
        publisher.submit()
        wait_until(lambda: publisher.state == "ok")
        assert publisher.published_size == 20 and publisher.last_error == ""
    finally:
        issuer.close(timeout=10)
        writer.close()
    assert check.parse_checkpoint((witness / "latest").read_text()).size == 21


def test_a_start_publishes_what_an_earlier_run_could_not(tmp_path: Path) -> None:
    path, witness = tmp_path / "ledger.duckdb", tmp_path / "witness"
    writer = open_writer(path)
    try:
        append(writer, 30)
        checkpointer(writer).issue()  # no directory given: stored, not published
    finally:
        writer.close()
    witness.mkdir()
    writer = open_writer(path)
    publisher = Publisher(witness, writer)
    publisher.start()
    try:
        wait_until(lambda: publisher.state == "ok")
        con = writer.cursor()
        marked = con.execute("SELECT published_us FROM checkpoints").fetchall()
        con.close()
    finally:
        publisher.close(10)
        writer.close()
    assert marked[0][0] and check.parse_checkpoint((witness / "latest").read_text()).size == 30


@pytest.mark.parametrize(("latest", "words"), [
    (Checkpoint("mlwitness/another-chain", 5, bytes(32)).text(), "another log"),
    (None, "beyond this ledger's"),  # a larger tree of this log: the ledger was truncated
    ("not a checkpoint\n", "is not a checkpoint"),
])
def test_what_the_directory_must_keep_is_not_overwritten(tmp_path: Path, latest: str | None,
                                                         words: str) -> None:
    witness = tmp_path / "witness"
    witness.mkdir()
    writer = open_writer(tmp_path / "ledger.duckdb")
    issuer = checkpointer(writer, witness)
    publisher = issuer.publisher
    assert publisher is not None
    try:
        append(writer, 10)
        row = issuer.issue()
        assert row is not None
        text = latest or Checkpoint(issuer.origin, 99, bytes(32)).text()
        (witness / "latest").write_text(text)
        publisher.start()
        wait_until(lambda: publisher.state == "failing")
        assert words in publisher.last_error
        assert (witness / "latest").read_text() == text
    finally:
        issuer.close(timeout=5)
        writer.close()


def test_a_start_whose_ledger_does_not_extend_the_published_checkpoint_signs_nothing(
    tmp_path: Path, signer: Signer,
) -> None:
    path, witness = published_ledger(tmp_path, (50,), signer)
    shutil.copy(path, tmp_path / "older.duckdb")  # same chain, same checkpoints...
    con = duckdb.connect(str(tmp_path / "older.duckdb"))  # ...rolled back to 20 records
    con.execute("DELETE FROM entries WHERE seq > 20; DELETE FROM checkpoints; DELETE FROM "
                "merkle_nodes; DELETE FROM ledger_meta WHERE key = 'merkle_frontier'")
    con.close()
    writer = open_writer(tmp_path / "older.duckdb")
    issuer = checkpointer(writer, witness, signer=signer)
    try:
        assert issuer.issue() is None
    finally:
        writer.close()
    assert issuer.state == "stopped" and "truncated or restored" in issuer.detail


# ── verify --checkpoint ────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def published_once(tmp_path_factory: pytest.TempPathFactory, signer: Signer
                   ) -> tuple[Path, Path]:
    return published_ledger(tmp_path_factory.mktemp("published"), (100, 300, 300), signer)


@pytest.fixture
def published(published_once: tuple[Path, Path], tmp_path: Path, signer: Signer
              ) -> tuple[Path, Path, str]:
    """A ledger of 700 records, checkpoints at 100, 400 and 700 published with tiles (a
    copy for each test to damage)."""
    path, witness = tmp_path / "ledger.duckdb", tmp_path / "witness"
    shutil.copy(published_once[0], path)
    shutil.copytree(published_once[1], witness)
    return path, witness, signer.verifier_key()


def test_a_ledger_that_extends_its_published_checkpoint_passes(published) -> None:
    path, witness, key = published
    report = check_extends(path, witness, [key])
    assert report.problems == [] and report.extends
    assert (report.size, report.references) == (700, [100, 400])
    assert report.signature.startswith("verified: signed by ops+")
    assert check_extends(path, witness / "checkpoints" / "400", [key]).extends


def test_a_rewrite_with_recomputed_hashes_is_named_at_its_exact_seq_with_tiles(
    published,
) -> None:
    path, witness, key = published
    rewrite_from(path, 345)
    report = check_extends(path, witness, [key])
    assert not report.extends and report.tiles.startswith("used")
    assert [p.seq for p in report.problems] == [345]
    assert "record seq 345 no longer matches the published tree" in report.problems[0].what


def test_without_tiles_the_published_history_narrows_it_to_a_range(published) -> None:
    path, witness, key = published
    rewrite_from(path, 345)
    shutil.rmtree(witness / "tile")
    report = check_extends(path, witness, [key])
    assert [p.seq for p in report.problems] == [101]
    assert "one of seq 101..400" in report.problems[0].what
    shutil.rmtree(witness / "checkpoints")
    report = check_extends(path, witness, [key])
    # the ledger's own checkpoints 100 and 400 are signed by the key: they still narrow it
    assert "one of seq 101..400" in report.problems[0].what
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM checkpoints")
    con.close()
    report = check_extends(path, witness, [key])
    assert "one of seq 1..700" in report.problems[0].what


def test_tiles_that_do_not_fold_into_the_signed_root_are_not_believed(published) -> None:
    path, witness, key = published
    rewrite_from(path, 345)
    forged = witness / tile_path(0, 0)
    forged.write_bytes(b"\x00" * 32 + forged.read_bytes()[32:])  # leaf 0 "differs" now
    report = check_extends(path, witness, [key])
    assert report.tiles.startswith("not used")
    assert [p.seq for p in report.problems] == [101]


def test_a_truncated_ledger_is_named_where_it_ends(published) -> None:
    path, witness, key = published
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM entries WHERE seq > 650")
    con.close()
    report = check_extends(path, witness, [key])
    assert [p.seq for p in report.problems] == [651]
    assert "records 651..700 are missing" in report.problems[0].what


def test_two_checkpoints_of_one_size_with_different_roots_are_a_fork(published,
                                                                     signer: Signer) -> None:
    path, witness, key = published
    origin = checkpoints.read_note((witness / "latest").read_text())[0].origin
    other = sign_checkpoint(Checkpoint(origin, 400, bytes(32)), [signer])
    (witness / "checkpoints" / "400").write_bytes(other)  # the key signed another tree
    report = check_extends(path, witness, [key])
    forks = [p.what for p in report.problems if p.what.startswith("fork")]
    assert len(forks) == 1 and "two checkpoints of size 400" in forks[0]
    # the published checkpoint against the ledger's own, unsigned, of the same size
    con = duckdb.connect(str(path))
    con.execute("UPDATE checkpoints SET note = ? WHERE size = 700",
                [Checkpoint(origin, 700, bytes(32)).text()])
    con.close()
    report = check_extends(path, witness / "latest", [key])
    assert any("the ledger's own checkpoint 700" in p.what for p in report.problems)


def test_keys_decide_which_checkpoints_count(published, tmp_path: Path) -> None:
    path, witness, key = published
    stranger = Signer.generate("ops").verifier_key()
    refused = check_extends(path, witness, [stranger])
    assert not refused.extends and "no signature by a known key" in refused.problems[0].what
    unchecked = check_extends(path, witness, [])
    assert unchecked.extends and unchecked.signature.startswith("not checked (no --key)")
    unsigned = tmp_path / "unsigned"
    unsigned.write_text(checkpoints.read_note((witness / "latest").read_text())[0].text())
    assert check_extends(path, unsigned, []).signature.startswith("unsigned")
    with_key = check_extends(path, unsigned, [key])
    assert not with_key.extends and "it is unsigned" in with_key.problems[0].what
    with pytest.raises(InvalidInput, match="not a verifier key"):
        read_keys(["nonsense+zz+abc"])
    keyfile = tmp_path / "ops.pub"
    keyfile.write_text(key + "\n")
    assert read_keys([str(keyfile)]) == [key]


def test_a_checkpoint_of_another_ledger_is_named(published, tmp_path: Path,
                                                 signer: Signer) -> None:
    path, _, key = published
    other = tmp_path / "other"
    other.write_bytes(sign_checkpoint(Checkpoint("mlwitness/0123abcd", 5, bytes(32)), [signer]))
    report = check_extends(path, other, [key])
    assert "another ledger's checkpoint" in report.problems[0].what
