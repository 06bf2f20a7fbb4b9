"""What the commit path spends per record on its encoding and hash: the journal frame's
bytes, the payload commitment (record format 2) and the chain hash, for a typical call of
the demo credit model (batch 1, six FP32 features, an age-band parameter, guard verdict).

    python bench/bench_record.py [--records 20000] [--rounds 5] [--compare-with RECORD_PY]

It times what `Chain.commit` does for a batch, minus the journal write: the salts of the
batch (one `os.urandom` call), each record's stored and hashed encodings, its chain hash
and its journal frame. Run it on two checkouts to compare formats: under a version that
writes format 1 it times `encode` (then the journal frame's bytes are the hashed bytes).
Single-threaded, a few seconds; µs per record, the least of the rounds (on a shared
machine the others carry other work's time) and their median.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import basics  # noqa: E402

from mlwitness.codec import Tensor, encode_inputs, encode_outputs  # noqa: E402
from mlwitness.ledger import journal  # noqa: E402
from mlwitness.ledger import record as record_mod  # noqa: E402
from mlwitness.ledger.record import Record  # noqa: E402
from mlwitness.protocol import inference as pb  # noqa: E402

BATCH = 16  # records per group commit, as at 8 concurrent callers


def sample_records(count: int) -> list[Record]:
    rng = np.random.default_rng(7)
    records = []
    for i in range(count):
        request = pb.ModelInferRequest(model_name="credit", id=f"application-{i:08d}")
        x = rng.normal(size=(1, 6)).astype(np.float32)
        encode_inputs(request, [Tensor("input", "FP32", (1, 6), x)], raw=True)
        request.parameters["age_band"].string_param = "26-40"
        response = pb.ModelInferResponse(model_name="credit", id=request.id)
        encode_outputs(response, [
            Tensor("label", "INT64", (1,), np.array([i % 2], dtype=np.int64)),
            Tensor("probabilities", "FP32", (1, 2), np.array([[0.3, 0.7]], np.float32))],
            raw=True)
        records.append(Record(
            kind="infer", request_id=request.id, received_us=1_700_000_000_000_000 + i,
            responded_us=1_700_000_000_000_900 + i, model_name="credit", model_version="1",
            model_sha256="ab" * 32, env_id="cd" * 32, peer="ipv4:10.0.0.7:51234",
            metadata='{"x-caller": "loan-origination-service"}',
            violations='{"guards": "' + "ef" * 32 + '", "counts": []}',
            request=request.SerializeToString(), response=response.SerializeToString()))
    return records


def commit_encoding(records: list[Any], module: Any = record_mod) -> float:
    """Seconds to chain and frame `records` in batches of BATCH, as Chain.commit does, with
    the record module `module` (this version's, or another's for --compare-with)."""
    encodings = getattr(module, "encodings", None)
    salt_size = getattr(module, "SALT_SIZE", 0)
    prev = bytes(32)
    seq = 0
    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        batch = records[start:start + BATCH]
        first = seq + 1
        salts = os.urandom(salt_size * len(batch)) if encodings else b""
        frames = []
        for index, record in enumerate(batch):
            seq += 1
            record.seq = seq
            if encodings is not None:
                record.salt = salts[index * salt_size:(index + 1) * salt_size]
                stored, hashed = encodings(record)
            else:
                stored = hashed = module.encode(record)
            record.prev_hash = prev
            record.hash = prev = module.chain_hash(prev, hashed)
            frames.append(journal.frame(record, stored, first))
        b"".join(frames)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare-with", type=Path, metavar="RECORD_PY",
                        help="another version's src/mlwitness/ledger/record.py (e.g. of a "
                        "checkout before format 2): its rounds interleave with this one's, "
                        "in this process, so that other work on the machine weighs on both")
    args = parser.parse_args()
    records = sample_records(args.records)
    other = _load(args.compare_with) if args.compare_with else None
    theirs = [_convert(r, other) for r in records] if other else []
    commit_encoding(records[:1000])  # warm up
    times, other_times = [], []
    for _ in range(args.rounds):
        times.append(commit_encoding(records) / args.records * 1e6)
        if other is not None:
            other_times.append(commit_encoding(theirs, other) / args.records * 1e6)
    sizes = [len(record_mod.encode(r)) for r in records[:100]]
    if other is not None:
        print(json.dumps({"compared_with": str(args.compare_with),
                          "format": getattr(other, "FORMAT_VERSION", 1),
                          "us_per_record_min": round(min(other_times), 3),
                          "us_per_record_median": round(statistics.median(other_times), 3)},
                         indent=2))
    print(json.dumps({
        "machine": basics(),
        "format": getattr(record_mod, "FORMAT_VERSION", 1),
        "records": args.records,
        "us_per_record_min": round(min(times), 3),
        "us_per_record_median": round(statistics.median(times), 3),
        "us_per_record_rounds": [round(t, 3) for t in times],
        "hashed_bytes_per_record": statistics.mean(sizes),
        "request_bytes": len(records[0].request),
        "response_bytes": len(records[0].response),
    }, indent=2))


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("compared_record", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _convert(record: Record, module: Any) -> Any:
    """The same call as a record of the other version (its own fields only)."""
    names = [f.name for f in dataclasses.fields(module.Record)]
    return module.Record(**{n: getattr(record, n) for n in names
                            if n not in ("inputs", "outputs", "parameters", "format", "salt")
                            and hasattr(record, n)})


if __name__ == "__main__":
    main()
