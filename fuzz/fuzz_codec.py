"""Coverage-guided fuzzing of what a ModelInfer request's bytes go through in-process, no
server: parse, `codec.check_sizes`, `codec.decode_inputs` (the same bytes read as a
response: `decode_outputs`), `ledger.tensors.decode_record_tensors` and the ledger's row
tabulation (`rows.record_table`) into a DuckDB `entries` table.

Invariants (anything else is a crash): malformed bytes raise only `DecodeError`,
`InvalidInput` or `TooLarge`; whatever decodes re-encodes to the same tensors, bit for bit
(raw and typed); a record's table is always built and inserted, its decoded columns left
empty only for a record claiming more values than a record holds.

    python fuzz/fuzz_codec.py --seeds fuzz/corpus        # write the seed corpus once
    python fuzz/fuzz_codec.py fuzz/corpus -dict=fuzz/codec.dict \\
        -artifact_prefix=fuzz/crashes/ -max_total_time=3600  # an hour; crashes in fuzz/crashes/
    python fuzz/fuzz_codec.py fuzz/crashes/crash-…       # rerun one crash

Needs `pip install atheris` (CPython wheels bundle libFuzzer). Without atheris the module
still imports: tests/test_fuzz_codec.py runs `one_input` on the seeds and on Hypothesis'
examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:
    import atheris
except ImportError:  # the harness's function still runs (tests), only not under libFuzzer
    atheris = None


def _imports() -> None:
    global duckdb, DecodeError, codec, errors, pb, ledger_tensors, rows, schema, Record
    import duckdb
    from google.protobuf.message import DecodeError

    from mlwitness import codec, errors
    from mlwitness.ledger import rows, schema
    from mlwitness.ledger import tensors as ledger_tensors
    from mlwitness.ledger.record import Record
    from mlwitness.protocol import inference as pb


if __name__ == "__main__" and atheris is not None:  # coverage of mlwitness guides libFuzzer
    with atheris.instrument_imports(include=["mlwitness"]):
        _imports()
else:
    _imports()

FEATURES = {"input": ["income", "debt_ratio", "fico", "age", "years_employed", "open_loans"]}
MAX_STRINGS = 1 << 20  # the sidecar's default --max-string-elements
TABULATOR = rows.Tabulator(FEATURES)
_CON: duckdb.DuckDBPyConnection | None = None


def _entries() -> duckdb.DuckDBPyConnection:
    global _CON
    if _CON is None:
        _CON = duckdb.connect()
        schema.create(_CON)
    return _CON


def one_input(data: bytes) -> None:
    """Everything the bytes of one call go through before and after the model."""
    try:
        request = pb.ModelInferRequest.FromString(data)
        codec.check_sizes(request, size=len(data), max_strings=MAX_STRINGS)
        inputs = codec.decode_inputs(request, size=len(data))
    except (DecodeError, errors.InvalidInput, errors.TooLarge):
        inputs = None
    else:
        _round_trip(inputs, raw=bool(request.raw_input_contents), size=len(data))
    try:
        outputs = codec.decode_outputs(pb.ModelInferResponse.FromString(data), size=len(data))
    except (DecodeError, errors.InvalidInput, errors.TooLarge):
        outputs = None
    status = "OK" if outputs is not None else "INVALID_ARGUMENT"
    _tabulate(Record(seq=1, request_id="fuzz", status=status, request=data,
                     response=data if outputs is not None else b"", prev_hash=bytes(32),
                     hash=bytes(32)))


def _round_trip(tensors: list, raw: bool, size: int) -> None:
    """Re-encoded alone, the tensors decode to the same; `size` is the original message's
    (the bound on what an empty tensor's shape may claim: the re-encoding is smaller)."""
    again = pb.ModelInferRequest()
    codec.encode_inputs(again, tensors, raw=raw)
    data = again.SerializeToString()
    decoded = codec.decode_inputs(pb.ModelInferRequest.FromString(data), size=size)
    for before, after in zip(tensors, decoded, strict=True):
        assert (before.name, before.datatype, before.shape) == (
            after.name, after.datatype, after.shape), (before, after)
        if before.datatype == "BYTES":
            assert before.array.tolist() == after.array.tolist()
        else:
            assert before.array.tobytes() == after.array.tobytes(), before.name


def _tabulate(record: Record) -> None:
    """The record as the ledger's loader and table builder see it: no tensors in memory,
    decoded from its bytes."""
    table = rows.record_table([record], TABULATOR, ledger_tensors.decode_record_tensors)
    for _, why in rows.undecoded(table):
        assert "claim" in why, why  # only the values cap may empty a record's columns
    con = _entries()
    con.register("_fuzz_batch", table)
    try:
        con.execute("INSERT INTO entries BY NAME SELECT * FROM _fuzz_batch")
    finally:
        con.unregister("_fuzz_batch")
        con.execute("DELETE FROM entries")


def seeds() -> list[bytes]:
    """Valid requests of every datatype, raw and typed, for the corpus."""
    rng = np.random.default_rng(0)
    arrays = {
        "input": rng.standard_normal((3, 6)).astype(np.float32),
        "f64": rng.standard_normal((2, 3)), "i32": np.arange(4, dtype=np.int32).reshape(2, 2),
        "i64": np.arange(3, dtype=np.int64), "u8": np.arange(3, dtype=np.uint8),
        "flag": np.array([True, False]), "h": np.ones((1, 2), np.float16),
        "category": np.array([b"red", b"\xff\xfe", b""], dtype=object),
    }
    out = []
    for raw in (True, False):
        for name, array in arrays.items():
            request = pb.ModelInferRequest(model_name="credit", id=f"seed-{name}")
            request.parameters["age_band"].string_param = "26-40"
            codec.encode_inputs(request, [codec.tensor_from_array(name, array)], raw=raw)
            request.outputs.add(name="label")
            out.append(request.SerializeToString())
    return out


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--seeds":
        corpus = Path(argv[2])
        corpus.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(seeds()):
            (corpus / f"seed-{i:02d}").write_bytes(data)
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
