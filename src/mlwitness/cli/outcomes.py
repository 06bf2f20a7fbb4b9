"""`mlwitness outcomes record|import` and `mlwitness review`: what became of decisions and
what a person did about them, written on the ledger through the audit API.

    mlwitness outcomes record application-42 --set defaulted=1 --observed-at 2027-03-01
    mlwitness outcomes import outcomes.parquet --id-column application_id --label defaulted
    mlwitness review application-42 --decision label=1 --reason "income verified by hand"

An import reads CSV or Parquet and sends `--batch` rows a call (each batch one commit on
the ledger); outcomes already on the ledger are skipped, so importing a file again adds
nothing. Its progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from mlwitness.cli.answers import as_json, dumps
from mlwitness.cli.audit import _at_least, _connection_options, _ref, parse_time
from mlwitness.cli.client import stub
from mlwitness.errors import InvalidInput
from mlwitness.protocol import audit_pb2 as apb

MAX_BATCH = 10_000  # the API's limit per call


def _value(name: str, text: str) -> apb.Value:
    """A number where the text is one, else text."""
    try:
        return apb.Value(name=name, number=float(text))
    except ValueError:
        return apb.Value(name=name, text=text)


def _assignments(items: list[str], flag: str) -> list[apb.Value]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"{flag} takes NAME=VALUE, got {item!r}")
        out.append(_value(name.strip(), value.strip()))
    return out


def record(args: argparse.Namespace) -> int:
    if not args.set:
        raise InvalidInput("give the outcome with --set NAME=VALUE, e.g. --set defaulted=1")
    outcome = apb.Outcome(decision=_ref(args.record), row=args.row,
                          values=_assignments(args.set, "--set"),
                          observed_us=parse_time(args.observed_at))
    r = stub(args).RecordOutcomes(apb.RecordOutcomesRequest(outcomes=[outcome]),
                                  timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
    elif r.recorded:
        more = " (superseding the earlier outcome)" if r.superseding else ""
        print(f"recorded outcome seq {r.first_seq} for {args.record}{more}")
    else:
        print(f"already on the ledger: {args.record} has this outcome")
    return 0


def review(args: argparse.Namespace) -> int:
    r = stub(args).RecordReview(apb.RecordReviewRequest(
        decision=_ref(args.record), row=args.row,
        decision_made=_assignments(args.decision, "--decision"), reason=args.reason),
        timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
    else:
        what = "overriding the model" if r.overrides else "agreeing with the model"
        print(f"recorded review seq {r.seq} of decision seq {r.decision_seq} by {r.reviewer}, "
              f"{what}")
    return 0


# ── import ─────────────────────────────────────────────────────────────────────────────

def read_table(path: Path, text: tuple[str, ...] = ()) -> Any:
    """A CSV or Parquet file as a pyarrow Table (by its suffix; CSV otherwise); in a CSV
    file the `text` columns are read as text: the id "000042" is not the number 42."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            strings_can_be_null=True, column_types={c: pa.string() for c in text}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None


def _column(table: Any, name: str, flag: str) -> Any:
    if name not in table.column_names:
        raise InvalidInput(f"{flag} {name!r} is not a column of the file; columns: "
                           f"{table.column_names}")
    return table.column(name)


def _times_us(column: Any, flag: str) -> list[int | None]:
    """Observed times as µs since the epoch: timestamps and dates as they are (UTC unless
    they say otherwise), integers as µs, text as ISO dates or times."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        us = pc.cast(pc.cast(column, pa.timestamp("us", tz=getattr(kind, "tz", None) or "UTC")),
                     pa.int64())
        return list(us.to_pylist())
    if pa.types.is_integer(kind):
        return list(column.to_pylist())
    out: list[int | None] = []
    for i, text in enumerate(column.to_pylist()):
        if text is None or text == "":
            out.append(None)
            continue
        try:
            out.append(parse_time(str(text)))
        except InvalidInput:
            raise InvalidInput(f"{flag}: row {i + 1}: cannot read time {text!r}: use e.g. "
                               "2027-03-01 or 2027-03-01T09:30:00") from None
    return out


def outcomes_of(table: Any, args: argparse.Namespace) -> list[apb.Outcome]:
    """One Outcome per row of the file that has a label value. Line numbers count the CSV
    header as line 1 (Parquet: row number + 1, the same)."""
    if bool(args.id_column) == bool(args.seq_column):
        raise InvalidInput("name the column that identifies each decision: --id-column "
                           "(request ids) or --seq-column (ledger seqs)")
    ids = _column(table, args.id_column or args.seq_column,
                  "--id-column" if args.id_column else "--seq-column").to_pylist()
    labels = {name: _column(table, name, "--label").to_pylist() for name in args.label}
    rows = _column(table, args.row_column, "--row-column").to_pylist() \
        if args.row_column else None
    default = parse_time(args.observed_at) if args.observed_at else 0
    times = _times_us(_column(table, args.observed_column, "--observed-column"),
                      "--observed-column") if args.observed_column else None
    out = []
    for i, key in enumerate(ids):
        line = i + 2
        if key is None or key == "":
            raise InvalidInput(f"line {line}: no decision id")
        values = [apb.Value(name=n, text=v) if isinstance(v, str) else
                  apb.Value(name=n, number=float(v))
                  for n, column in labels.items() if (v := column[i]) is not None
                  and v == v]  # NaN is a missing value too
        if not values:
            continue
        ref = (apb.RecordRef(request_id=str(key)) if args.id_column
               else apb.RecordRef(seq=_seq(key, line)))
        observed = times[i] if times is not None and times[i] is not None else default
        out.append(apb.Outcome(decision=ref, row=int(rows[i] or 0) if rows else 0,
                               values=values, observed_us=observed or 0, line=line))
    return out


def _seq(value: Any, line: int) -> int:
    try:
        seq = int(str(value).removeprefix("seq:"))
    except ValueError:
        raise InvalidInput(f"line {line}: {value!r} is not a seq") from None
    if seq < 1:
        raise InvalidInput(f"line {line}: seq {seq} must be 1 or more")
    return seq


def import_file(args: argparse.Namespace) -> int:
    if args.batch > MAX_BATCH:
        raise InvalidInput(f"--batch is at most {MAX_BATCH:,}")
    path = Path(args.file)
    table = read_table(path, tuple(c for c in (args.id_column,) if c))
    items = outcomes_of(table, args)
    client = stub(args)
    tty = sys.stderr.isatty()
    total = {"recorded": 0, "duplicates": 0, "superseding": 0}
    started = time.monotonic()
    for start in range(0, len(items), args.batch):
        batch = items[start:start + args.batch]
        try:
            r = client.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=batch,
                                                                source=path.name),
                                      timeout=args.timeout)
        except Exception:
            if start:
                print(f"\n{start:,} rows before line {batch[0].line} were imported; fix the "
                      "file and import it again (what is on the ledger already is skipped)",
                      file=sys.stderr)
            raise
        for key in total:
            total[key] += getattr(r, key)
        done = start + len(batch)
        line = (f"{done:,}/{len(items):,} outcomes sent: {total['recorded']:,} recorded, "
                f"{total['duplicates']:,} already on the ledger "
                f"({time.monotonic() - started:.1f} s)")
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr)
    if tty and items:
        print(file=sys.stderr)
    skipped = table.num_rows - len(items)
    if args.json:
        print(dumps({"rows": table.num_rows, "outcomes": len(items), "without_label": skipped,
                     **total}))
    else:
        print(f"{path.name}: {table.num_rows:,} rows, {len(items):,} outcomes: "
              f"{total['recorded']:,} recorded ({total['superseding']:,} superseding an "
              f"earlier outcome), {total['duplicates']:,} already on the ledger"
              + (f"; {skipped:,} rows without a label value" if skipped else ""))
    return 0


def add_commands(sub: Any) -> None:
    """`outcomes` (record, import) and `review`, with the audit commands' connection options."""
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, default=True)

    outcomes = sub.add_parser("outcomes", help="attach what became of decisions (ground "
                              "truth) to the ledger")
    commands = outcomes.add_subparsers(dest="outcomes_command", required=True,
                                       metavar="COMMAND")
    p = commands.add_parser("record", parents=[common],
                            help="record the outcome of one decision")
    p.add_argument("record", help="the decision: request id, or seq:N")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an outcome value, e.g. defaulted=1 (repeatable)")
    p.add_argument("--observed-at", help="when it was observed (UTC), e.g. 2027-03-01 "
                   "(default: now)")
    p.add_argument("--row", type=_at_least(0), default=0,
                   help="row of the call (default 0)")
    p.set_defaults(func=record)
    p = commands.add_parser("import", parents=[common],
                            help="record outcomes from a CSV or Parquet file (importing it "
                            "again adds nothing)")
    p.add_argument("file", help="CSV or Parquet (.parquet) file, one outcome a row")
    p.add_argument("--id-column", help="column of request ids naming the decisions")
    p.add_argument("--seq-column", help="column of ledger seqs naming the decisions instead")
    p.add_argument("--label", action="append", required=True, metavar="COLUMN",
                   help="column holding an outcome value, kept under its name (repeatable)")
    p.add_argument("--observed-column", help="column of observation times (dates, times, "
                   "or µs since the epoch)")
    p.add_argument("--observed-at", help="observation time for rows without one (UTC; "
                   "default: the time of the import)")
    p.add_argument("--row-column", help="column of row numbers within each call (default 0)")
    p.add_argument("--batch", type=_at_least(1), default=1000,
                   help=f"outcomes per call, each one commit (default 1000, at most "
                   f"{MAX_BATCH:,})")
    p.set_defaults(func=import_file)

    p = sub.add_parser("review", parents=[common],
                       help="record a person's review of a decision: what they decided, why")
    p.add_argument("record", help="the decision: request id, or seq:N")
    p.add_argument("--decision", action="append", required=True, metavar="OUTPUT=VALUE",
                   help="the reviewer's decision for an output, e.g. label=1 (repeatable)")
    p.add_argument("--reason", required=True, help="why (kept on the ledger)")
    p.add_argument("--row", type=_at_least(0), default=0, help="row of the call (default 0)")
    p.set_defaults(func=review)
