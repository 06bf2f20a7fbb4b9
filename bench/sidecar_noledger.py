"""The sidecar with its ledger off: configuration (n) of bench_sidecar.py, the issue's
"(b) the same with the ledger off".

    python bench/sidecar_noledger.py --model credit.onnx --ledger L --port 0 ...  # serve's flags

It is `mlwitness serve`, everything it does per call — parse, check, decode, run the
model, encode, build the call's Record — except that `LedgerWriter.append` returns at once:
nothing is chained, written, flushed or loaded into DuckDB. The difference between this and
(a) is what the ledger costs. A benchmark baseline only: decisions served here are on no
record.
"""

from __future__ import annotations

from mlwitness import cli
from mlwitness.ledger.chain import Chain
from mlwitness.ledger.record import Record


async def _discard(self: Chain, record: Record) -> None:
    return None


if __name__ == "__main__":
    # LedgerWriter.append is the commit path's, bound when the writer is built
    Chain.append = _discard  # type: ignore[method-assign]
    raise SystemExit(cli.main(["serve", *__import__("sys").argv[1:]]))
