"""The `mlwitness` command: a thin layer over the library.

    mlwitness serve --model credit.onnx [--upstream HOST:PORT] [...]
    mlwitness verify --ledger mlwitness.duckdb [--json] [--expect-head SEQ:HASH]
                     [--checkpoint FILE|DIR --key PUB]
    mlwitness keygen --out signing.key
    mlwitness evidence verify decision.evidence --key PUB [--model F.onnx]
    mlwitness audit [--target HOST:PORT] show|records|replay|whatif|sensitivity|replay-range|verify
    mlwitness audit-server --ledger copy.duckdb [--audit-port 8702]
    mlwitness outcomes record|import …   mlwitness review ID --decision label=1 --reason …
    mlwitness audit-server --archive s3://bucket/prefix   (every chain archived there)
    mlwitness archive verify|register|push --archive s3://bucket/prefix
    mlwitness sql --ledger mlwitness.duckdb "SELECT … FROM records"
    mlwitness migrate --ledger mlwitness.duckdb
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
from typing import Any

import grpc

from mlwitness import __version__
from mlwitness import settings as settings_mod
from mlwitness.cli import archive as archive_cli
from mlwitness.cli import audit as audit_cli
from mlwitness.cli import evidence as evidence_cli
from mlwitness.cli import outcomes as outcomes_cli
from mlwitness.errors import ConfigError, InvalidInput, MlwitnessError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from mlwitness.ledger.tabler import keep_pandas_out
    from mlwitness.server.lifecycle import return_freed_memory
    from mlwitness.server.sidecar import serve

    keep_pandas_out()  # as in an image without pandas: no import on pyarrow's first call
    return_freed_memory()
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
                              sample_size=args.sample_size, feature_dtype=args.feature_dtype,
                              reference_rows=args.reference_rows)
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


def cmd_keygen(args: argparse.Namespace) -> int:
    from mlwitness.evidence.note import NoteError, Signer

    out = Path(args.out)
    pub = Path(args.pub) if args.pub else out.with_name(out.name + ".pub")
    if out.resolve() == pub.resolve():
        raise InvalidInput("--pub must name another file than --out")
    try:
        signer = Signer.generate(args.name)
    except NoteError as exc:
        raise InvalidInput(f"--name: {exc}") from None
    for path in (out, pub):
        if path.exists() or path.is_symlink():
            raise InvalidInput(f"{path} exists: keygen never overwrites a key (move it aside "
                               "to make a new one)")
    _write_new(out, signer.signer_key() + "\n", 0o600)
    try:
        _write_new(pub, signer.verifier_key() + "\n", 0o644)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    print(signer.verifier_key())
    print(f"wrote the signer key to {out} (mode 600: keep it secret, off the ledger's volume; "
          f"serve with --signing-key {out}) and the verifier key above to {pub} (give it to "
          "auditors: `mlwitness verify --checkpoint DIR --key "
          f"{pub.name}`)", file=sys.stderr)
    return 0


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` holding `text` (never over an existing file), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def cmd_verify(args: argparse.Namespace) -> int:
    from mlwitness.ledger.extension import check_extends, read_keys
    from mlwitness.ledger.verify import parse_head, verify

    head = parse_head(args.expect_head) if args.expect_head else None
    if args.key and not args.checkpoint:
        raise InvalidInput("--key checks a checkpoint's signature: give --checkpoint too")
    keys = read_keys(args.key or [])
    report = verify(Path(args.ledger), expect_head=head)
    extension = (check_extends(Path(args.ledger), Path(args.checkpoint), keys)
                 if args.checkpoint else None)
    if extension is not None:
        report.problems.extend(extension.problems)
    if args.json:
        data = report.to_dict()
        if extension is not None:
            data["checkpoint"] = extension.to_dict()
        print(json.dumps(data, indent=2))
    else:
        print(f"ledger        {report.ledger}")
        formats = ", ".join(f"format {f}: {n}" for f, n in report.record_formats.items())
        print(f"records       {report.records} in DuckDB ({formats or 'none'}), "
              f"{report.journal_records} in the journal")
        if report.erased:
            print(f"erased        {report.erased_records} records, by admin record seq "
                  f"{', '.join(report.erased)}")
        print(f"models        {report.models}, environments {report.environments}, "
              f"baselines {report.baselines}")
        print(f"chain head    seq {report.head_seq}  {report.head_hash}")
        print(f"decoded       {report.decoded_checked} records' columns derived again from "
              f"their bytes; {report.decoded_not_covered} not covered by the chain")
        for note in report.notes():
            print(f"  - {note}")
        if extension is not None:
            _print_extension(extension)
        if report.ok:
            also = ", and the ledger extends the checkpoint" if extension is not None else ""
            print(f"result        OK: every record and model matches its hash{also}")
        else:
            where = f" at seq {report.first_bad_seq}" if report.first_bad_seq else ""
            print(f"result        FAILED{where}")
            for problem in report.problems:
                where = f"seq {problem.seq}: " if problem.seq is not None else ""
                print(f"  - {where}{problem.what}")
    return 0 if report.ok else 1


def _print_extension(extension: Any) -> None:
    """The checkpoint part of `verify --checkpoint`'s report (its problems are listed
    with the others)."""
    e = extension
    print(f"checkpoint    {e.checkpoint}: size {e.size}, log {e.origin or '?'}")
    print(f"signature     {e.signature or 'not read'}")
    if e.extends:
        others = f"; {len(e.references)} other checkpoints agree" if e.references else ""
        print(f"extends       yes: records 1..{e.size} give its root{others}")
    else:
        print("extends       NO (below)" if e.size else "extends       not checked")
    if e.tiles:
        print(f"tiles         {e.tiles}")
    for note in e.notes:
        print(f"  - {note}")


def cmd_migrate(args: argparse.Namespace) -> int:
    from mlwitness.ledger import journal, schema

    path = Path(args.ledger)
    if not path.exists():
        raise InvalidInput(f"ledger file {path} does not exist")
    con = schema.connect(path, upgrade=False)
    try:
        if not schema.entries_columns(con):
            raise InvalidInput(f"{path} is not an mlwitness ledger (it has no entries table)")
        done = schema.create(con)
        (version,) = con.execute(
            "SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone() or ("?",)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    if done:
        print(f"{path}: upgraded in place to schema version {version}:")
        for sentence in done:
            print(f"  - {sentence}")
    else:
        print(f"{path}: already at schema version {version}; nothing to do")
    pending = sum(1 for _ in journal.read(journal.journal_dir(path)))
    if pending:
        print(f"  its journal holds {pending} records not yet in DuckDB: the next `mlwitness "
              "serve` loads them (format-1 records stay format 1)")
    return 0


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
    verify.add_argument("--checkpoint", metavar="FILE|DIR", default=None,
                        help="also fail unless the ledger extends this checkpoint (a file, "
                        "or a --checkpoint-dir: its `latest`), naming the first record that "
                        "differs (exactly, with the published tiles)")
    verify.add_argument("--key", metavar="PUB", action="append", default=None,
                        help="verifier key (as `mlwitness keygen` printed it), or a file of "
                        "them: the checkpoint must be signed by it")
    verify.set_defaults(func=cmd_verify)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key to sign checkpoints; print "
                            "its verifier key")
    keygen.add_argument("--out", required=True, help="signer key file to create (mode 600; "
                        "never overwritten)")
    keygen.add_argument("--name", default="mlwitness", help="the key's name, shown in "
                        "signatures (default mlwitness)")
    keygen.add_argument("--pub", help="verifier key file to create (default: OUT.pub)")
    keygen.set_defaults(func=cmd_keygen)
    migrate = sub.add_parser("migrate", help="upgrade a ledger file written by an older "
                             "version in place (serve does it at start); print what it did")
    migrate.add_argument("--ledger", default="mlwitness.duckdb", help="ledger file (with "
                         "no sidecar running on it)")
    migrate.set_defaults(func=cmd_migrate)

    sql = sub.add_parser("sql", help="run a read-only SQL query on a ledger file "
                         "(e.g. on the records view)")
    sql.add_argument("query", help="SQL, e.g. \"SELECT seq, status FROM records LIMIT 5\"")
    sql.add_argument("--ledger", default="mlwitness.duckdb", help="ledger file")
    sql.add_argument("--json", action="store_true", help="print rows as JSON")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown in the table")
    sql.set_defaults(func=cmd_sql)

    audit_server = sub.add_parser(
        "audit-server", help="serve the audit API over a ledger file opened read-only, or "
        "over every chain of an archive (--archive)")
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
    baseline.add_argument("--reference-rows", type=int, default=1000,
                          help="whole feature rows kept, a seeded sample, as the reference "
                          "set `audit explain` compares decisions with (0: none)")
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
    evidence_cli.add_commands(sub)
    archive_cli.add_commands(sub)
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
