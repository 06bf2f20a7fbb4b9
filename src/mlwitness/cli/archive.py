"""`mlwitness archive …`: the archive from the command line.

    mlwitness archive verify --archive s3://audit-bucket/credit [--expect-head CHAIN:SEQ:HASH]
    mlwitness archive register --archive s3://audit-bucket/credit --catalog sqlite:///cat.db
    mlwitness archive push --ledger mlwitness.duckdb --archive s3://audit-bucket/credit

`push` ships a stopped ledger (a replica's volume after the pod is gone, a ledger written
before --archive was set) exactly as the sidecar's shipper would: it resumes where the
archive stands, and a second run ships nothing twice.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from mlwitness.errors import ConfigError, DataLoss, InvalidInput

_HEAD = re.compile(r"([0-9a-f]{32,64}):([0-9]{1,19}):([0-9a-f]{64})")


def _store(url: str) -> Any:
    from mlwitness.server.archiving import open_archive

    return open_archive(url)


def cmd_verify(args: argparse.Namespace) -> int:
    from mlwitness.archive.verify import verify_archive

    heads = {}
    for text in args.expect_head or []:
        found = _HEAD.fullmatch(text.strip().lower())
        if found is None:
            raise InvalidInput(f"--expect-head {text[:120]!r}: give CHAIN:SEQ:HASH (the chain "
                               "id, a seq and that record's 64-hex-digit hash)")
        heads[found[1]] = (int(found[2]), found[3])
    report = verify_archive(_store(args.archive), decoded_columns=not args.no_decoded,
                            expect_heads=heads)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    rate = report.records / report.seconds if report.seconds else 0.0
    print(f"archive       {args.archive}")
    print(f"chains        {len(report.chains)}, {report.records} records, "
          f"{report.content_objects} models/environments/baselines "
          f"({report.seconds:.1f} s, {rate:,.0f} records/s)")
    for chain in report.chains:
        verdict = "OK" if chain.ok else f"FAILED ({len(chain.problems)} problems)"
        print(f"chain         {chain.chain_id}: {chain.segments} segments, records up to seq "
              f"{chain.head_seq}: {verdict}")
        first = chain.first_bad
        if first is not None:
            print(f"  first bad   {first}")
        for note in chain.notes:
            print(f"  - {note}")
    for problem in report.all_problems:
        print(f"  - {problem}")
    print("result        " + ("OK: every chain is whole and matches its hashes" if report.ok
                              else "FAILED"))
    return 0 if report.ok else 1


def cmd_register(args: argparse.Namespace) -> int:
    from mlwitness.archive.iceberg import register

    store = _store(args.archive)
    result = register(args.archive, args.catalog, args.table, warehouse=args.warehouse or "",
                      store=store)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"table         {result.table}: {len(result.added)} segments added, "
              f"{result.already} already registered")
        for skipped in result.skipped:
            print(f"  - not registered: {skipped}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from mlwitness.archive.shipper import Shipper, ShipperOptions
    from mlwitness.ledger import journal, schema

    path = Path(args.ledger)
    if not path.is_file():
        raise InvalidInput(f"ledger file {path} does not exist")
    if args.records < 1 or args.object_lock_days < 0:
        raise InvalidInput("--archive-records must be positive, --archive-object-lock-days "
                           "0 or more")
    store = _store(args.archive)
    pending = sum(1 for _ in journal.read(journal.journal_dir(path)))
    con = schema.connect_reader(path)
    try:
        chain = con.execute("SELECT value FROM ledger_meta WHERE key = 'chain_id'").fetchall()
        if not chain:
            raise InvalidInput(f"{path} is not an mlwitness ledger (no chain id)")
        shipper = Shipper(store, con.cursor, str(chain[0][0]), ShipperOptions(
            max_records=args.records, object_lock_days=args.object_lock_days))
        if args.object_lock_days and not store.supports_object_lock():
            raise ConfigError(f"--archive-object-lock-days: {args.archive} cannot lock objects")
        try:
            shipped = shipper.ship_pending()
        except DataLoss as exc:
            raise DataLoss(f"{path}: {exc.message}") from None
        status = shipper.status()
    finally:
        con.close()
    answer = {"chain_id": status.chain_id, "records_shipped": shipped,
              "segments_shipped": status.segments_shipped,
              "archived_seq": status.archived_seq, "journal_records_not_shipped": pending}
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"chain         {status.chain_id}: {shipped} records shipped in "
              f"{status.segments_shipped} segments; archived up to seq {status.archived_seq}")
    if pending:
        print(f"mlwitness: {path} has {pending} journal records not yet loaded into DuckDB; "
              "they were not shipped (start `mlwitness serve` on it once, then push again)",
              file=sys.stderr)
    return 0


def add_commands(sub: Any) -> None:
    archive = sub.add_parser("archive", help="the archive in object storage: verify it, "
                             "register it in Iceberg, push a stopped ledger to it")
    commands = archive.add_subparsers(dest="archive_command", required=True, metavar="COMMAND")
    url_help = "the archive: s3://bucket/prefix or file:///absolute/dir"

    verify = commands.add_parser("verify", help="check every chain under the archive from "
                                 "its objects; exit 1 naming the first bad object and seq")
    verify.add_argument("--archive", required=True, help=url_help)
    verify.add_argument("--expect-head", action="append", metavar="CHAIN:SEQ:HASH",
                        help="also fail unless the chain reaches SEQ with this hash (a head "
                        "published earlier); repeat for several chains")
    verify.add_argument("--no-decoded", action="store_true", help="skip checking the decoded "
                        "columns against the hashed bytes (faster)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_verify)

    register = commands.add_parser("register", help="add the archive's new segments to an "
                                   "Apache Iceberg table (idempotent: a CronJob)")
    register.add_argument("--archive", required=True, help=url_help)
    register.add_argument("--catalog", default="sqlite:///catalog.db",
                          help="Iceberg catalog: a SQLAlchemy URL (SQL catalog) or an "
                          "http(s):// REST catalog (default sqlite:///catalog.db)")
    register.add_argument("--table", default="mlwitness.records",
                          help="namespace.table (default mlwitness.records)")
    register.add_argument("--warehouse", help="where the table's metadata goes (default: "
                          "ARCHIVE/iceberg)")
    register.add_argument("--json", action="store_true", help="print the result as JSON")
    register.set_defaults(func=cmd_register)

    push = commands.add_parser("push", help="ship a stopped ledger's records to the archive "
                               "(resumes where the archive stands; never twice)")
    push.add_argument("--ledger", default="mlwitness.duckdb", help="ledger file (with no "
                      "sidecar running on it)")
    push.add_argument("--archive", required=True, help=url_help)
    push.add_argument("--archive-records", dest="records", type=int, default=100_000,
                      help="most records in one segment (default 100000)")
    push.add_argument("--archive-object-lock-days", dest="object_lock_days", type=int,
                      default=0, help="lock every object this many days (S3 Object Lock, "
                      "COMPLIANCE mode; default 0: no lock)")
    push.add_argument("--json", action="store_true", help="print the result as JSON")
    push.set_defaults(func=cmd_push)
