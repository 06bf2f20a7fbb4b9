"""The `mlwitness` command: a thin layer over the library.

    mlwitness serve --model credit.onnx [--upstream HOST:PORT] [...]
    mlwitness verify --ledger mlwitness.duckdb [--json] [--expect-head SEQ:HASH]
    mlwitness audit [--target HOST:PORT] show|records|replay|whatif|sensitivity|replay-range|verify
    mlwitness audit-server --ledger copy.duckdb [--audit-port 8702]
    mlwitness outcomes record|import …   mlwitness review ID --decision label=1 --reason …
    mlwitness sql --ledger mlwitness.duckdb "SELECT … FROM records"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import grpc

from mlwitness import __version__
from mlwitness import settings as settings_mod
from mlwitness.cli import audit as audit_cli
from mlwitness.cli import outcomes as outcomes_cli
from mlwitness.errors import ConfigError, InvalidInput, MlwitnessError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from mlwitness.server.sidecar import serve

    settings = settings_mod.build(args).validate()
    _setup_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from mlwitness.ledger import schema

    # The file's tables under this version's views: a view or macro stored in the file
    # (by whoever could write it) cannot change what the query shows.
    con = schema.connect_reader(Path(args.ledger))
    try:
        try:
            result = con.sql(args.query)
        except duckdb.Error as exc:
            raise InvalidInput(f"SQL error: {exc}") from exc
        if result is None:
            return 0
        if args.json:
            columns = result.columns
            rows = [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
            print(json.dumps(rows, indent=2, default=str))
        else:
            result.show(max_rows=args.max_rows, max_width=200)
    finally:
        con.close()
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from mlwitness.analytics.baseline import build_baseline

    features = [f.strip() for f in args.features.split(",")] if args.features else None
    baseline = build_baseline(Path(args.data), model=Path(args.model) if args.model else None,
                              features=features, label=args.label, bins=args.bins,
                              sample_size=args.sample_size, feature_dtype=args.feature_dtype)
    Path(args.out).write_text(baseline.to_json())
    print(f"wrote {args.out}: baseline {baseline.sha256} of {baseline.n_rows} rows, "
          f"{len(baseline.columns)} columns, {len(baseline.outputs)} model outputs")
    return 0


def cmd_guards_suggest(args: argparse.Namespace) -> int:
    from mlwitness.guards.suggestions import suggest_toml

    try:
        baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{args.baseline}: not a baseline JSON file as `mlwitness "
                          f"baseline` writes ({exc}); make one with: mlwitness baseline "
                          "TRAIN.csv --out baseline.json") from None
    if not isinstance(baseline, dict) or not ({"features", "columns"} & set(baseline)):
        raise ConfigError(f"{args.baseline}: not a baseline (no 'columns' or 'features'); "
                          "make one with: mlwitness baseline TRAIN.csv --out baseline.json")
    text = suggest_toml(baseline, margin=args.margin)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: edit it, then serve with --guards {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_guards_check(args: argparse.Namespace) -> int:
    from mlwitness.guards.file import load_guards

    config = load_guards(Path(args.file))
    print(f"{args.file}: valid, version {config.sha256} ({len(config.features)} feature, "
          f"{len(config.outputs)} output and {len(config.rates)} rate guards)")
    return 0


def cmd_token_add(args: argparse.Namespace) -> int:
    import tomllib

    from mlwitness.auth import ROLES, Access, hash_token, new_token

    if args.role not in ROLES:
        raise InvalidInput(f"--role must be one of {', '.join(ROLES)}")
    path = Path(args.file)
    text = path.read_text() if path.exists() else ""
    if text:
        access = Access.load(path)
        if any(name == args.name for name, _ in access.tokens.values()):
            raise InvalidInput(f"{path} already has a token named {args.name!r}; remove it "
                               "first to rotate")
    if not args.name or any(ord(c) < 32 or c == "\x7f" for c in args.name):
        raise InvalidInput("--name must be non-empty and hold no control characters")
    token = new_token()
    # json.dumps of a str is a valid TOML basic string: quotes and backslashes escaped
    entry = (f'\n[[tokens]]\nname = {json.dumps(args.name, ensure_ascii=False)}\n'
             f'role = "{args.role}"\nsha256 = "{hash_token(token)}"\n'
             + ("report_outcomes = true\n" if args.report_outcomes else ""))
    Access.from_dict(tomllib.loads(text + entry), str(path))  # the file stays valid
    # Atomic and private from the first byte: a sidecar reloading the file never sees it
    # half written (which would revoke every token) nor readable by others.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        if path.exists():  # keep who may read it: a sidecar running as another user
            st = path.stat()
            os.fchmod(handle.fileno(), st.st_mode & 0o7777)
            try:
                os.fchown(handle.fileno(), st.st_uid, st.st_gid)
            except PermissionError:  # only root may give a file away; a member keeps its group
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), -1, st.st_gid)
        handle.write(text + entry)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    print(token)
    print(f"added {args.name} ({args.role}{', reports outcomes' if args.report_outcomes else ''}"
          f") to {path}; the token above is shown once and "
          "not stored", file=sys.stderr)
    return 0


def cmd_audit_server(args: argparse.Namespace) -> int:
    from mlwitness.server.audit_server import serve_audit

    settings = settings_mod.build(args)
    _setup_logging(settings.log_level)
    asyncio.run(serve_audit(settings))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mlwitness.ledger.verify import parse_head, verify

    head = parse_head(args.expect_head) if args.expect_head else None
    report = verify(Path(args.ledger), expect_head=head)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"ledger        {report.ledger}")
        print(f"records       {report.records} in DuckDB, {report.journal_records} in the journal")
        print(f"models        {report.models}, environments {report.environments}, "
              f"baselines {report.baselines}")
        print(f"chain head    seq {report.head_seq}  {report.head_hash}")
        print(f"decoded       {report.decoded_checked} records' columns derived again from "
              f"their bytes; {report.decoded_not_covered} not covered by the chain")
        for note in report.notes():
            print(f"  - {note}")
        if report.ok:
            print("result        OK: every record and model matches its hash")
        else:
            where = f" at seq {report.first_bad_seq}" if report.first_bad_seq else ""
            print(f"result        FAILED{where}")
            for problem in report.problems:
                where = f"seq {problem.seq}: " if problem.seq is not None else ""
                print(f"  - {where}{problem.what}")
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mlwitness",
        description="Open Inference Protocol v2 sidecar with a hash-chained decision ledger.",
    )
    top.add_argument("--version", action="version", version=f"mlwitness {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the sidecar (inference + audit ports)")
    settings_mod.add_arguments(serve, [s.name for s in settings_mod.SPECS
                                       if s.name not in settings_mod.AUDIT_SERVER_ONLY])
    serve.set_defaults(func=cmd_serve)

    verify = sub.add_parser("verify", help="check the hash chain and everything auditors read "
                            "against it; exit 1 if anything differs")
    verify.add_argument("--ledger", default="mlwitness.duckdb", help="ledger file")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--expect-head", metavar="SEQ:HASH", default=None,
                        help="also fail unless the record at SEQ has this hash (a head "
                        "published earlier)")
    verify.set_defaults(func=cmd_verify)

    sql = sub.add_parser("sql", help="run a read-only SQL query on a ledger file "
                         "(e.g. on the records view)")
    sql.add_argument("query", help="SQL, e.g. \"SELECT seq, status FROM records LIMIT 5\"")
    sql.add_argument("--ledger", default="mlwitness.duckdb", help="ledger file")
    sql.add_argument("--json", action="store_true", help="print rows as JSON")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown in the table")
    sql.set_defaults(func=cmd_sql)

    audit_server = sub.add_parser(
        "audit-server", help="serve the audit API over a ledger file opened read-only")
    settings_mod.add_arguments(audit_server, list(settings_mod.AUDIT_SERVER), helps={
        "audit_port": "Audit service port (0: any free port, printed in the ready line).",
        "host": "Address the audit port listens on (0.0.0.0 in a pod)."})
    audit_server.set_defaults(func=cmd_audit_server)

    baseline = sub.add_parser("baseline", help="profile training data (and the model's "
                              "outputs on it) for drift and guards")
    baseline.add_argument("data", help="training set, CSV or Parquet")
    baseline.add_argument("--model", help="ONNX model: also profile its outputs")
    baseline.add_argument("--features", help="model input columns in order (default: the "
                          "numeric columns except --label)")
    baseline.add_argument("--label", help="the training label column (profiled for its class "
                          "rates; kept out of the features fed to the model)")
    baseline.add_argument("--feature-dtype", choices=["FP16", "FP32", "FP64"],
                          help="round features to the datatype callers send them in before "
                          "profiling (default: the model input's, or FP64 without --model)")
    baseline.add_argument("--out", default="baseline.json", help="output JSON file")
    baseline.add_argument("--bins", type=int, default=10, help="histogram bins per feature")
    baseline.add_argument("--sample-size", type=int, default=20000,
                          help="values kept per feature for KS and Wasserstein")
    baseline.set_defaults(func=cmd_baseline)

    guards = sub.add_parser("guards", help="write or check guard files")
    guard_commands = guards.add_subparsers(dest="guards_command", required=True,
                                           metavar="COMMAND")
    suggest = guard_commands.add_parser("suggest", help="draft a guard file from a baseline")
    suggest.add_argument("baseline", help="baseline JSON (mlwitness baseline …)")
    suggest.add_argument("--out", help="write here instead of printing")
    suggest.add_argument("--margin", type=float, default=0.1,
                         help="widen numeric bounds by this fraction of the range (0.1)")
    suggest.set_defaults(func=cmd_guards_suggest)
    check = guard_commands.add_parser("check", help="validate a guard file")
    check.add_argument("file", help="guard file (TOML or JSON)")
    check.set_defaults(func=cmd_guards_check)

    token = sub.add_parser("token", help="manage access tokens (stored hashed)")
    token_commands = token.add_subparsers(dest="token_command", required=True,
                                          metavar="COMMAND")
    add = token_commands.add_parser("add", help="create a token, print it once, store its hash")
    add.add_argument("--file", required=True, help="access file (TOML) to append to")
    add.add_argument("--name", required=True, help="who holds it (recorded on the ledger)")
    add.add_argument("--role", required=True, help="caller, auditor, reviewer or admin")
    add.add_argument("--report-outcomes", action="store_true",
                     help="may also record outcomes on the audit port (e.g. a caller: the "
                     "system that asked for the decisions)")
    add.set_defaults(func=cmd_token_add)

    audit_cli.add_commands(sub)
    outcomes_cli.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MlwitnessError as exc:
        print(f"mlwitness: {exc.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mlwitness audit records | head`: the reader left; so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"mlwitness: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:  # from `mlwitness audit …`: the service's own words
        print(f"mlwitness: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except Exception as exc:  # a DuckDB error: a ledger that is not DuckDB, or is locked
        if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
            raise  # (duckdb is imported lazily: `audit` commands do not load it)
        print(f"mlwitness: ledger: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
