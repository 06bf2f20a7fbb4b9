"""`mlwitness audit explain` and `audit explain-range`: why decisions came out as they did.

`explain` prints one decision's attributions, reason codes and nearest flips (or the
ExplainResponse as JSON). `explain-range` streams a window's decisions; with `--out` it
writes them to a Parquet file here, on the auditor's machine (the server may be far
away), one row per decision (`REPORT_COLUMNS`, and `reason_<k>_*` for k = 1..--top; see
docs/explain.md), and checks the summary's `results_sha256` against the decisions it
received.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwitness.cli.answers import as_json, dumps
from mlwitness.cli.audit import _at_least, _ref, _table, parse_time
from mlwitness.cli.client import stub
from mlwitness.errors import InvalidInput
from mlwitness.protocol import audit_pb2 as apb

BATCH_ROWS = 10_000  # decisions per Parquet row group
REPORT_COLUMNS = ("seq", "request_id", "row", "received_at", "model_sha256", "decision",
                  "favorable", "recorded_value", "fx", "reference_value", "efficient")
REASON_FIELDS = ("feature", "attribution", "value", "reference", "direction", "text")


def _options(args: argparse.Namespace) -> apb.ExplainOptions:
    reasons = Path(args.reasons).read_text(encoding="utf-8") if args.reasons else ""
    return apb.ExplainOptions(
        favorable=args.favorable or "", output=args.output or "", method=args.method,
        reference=args.reference or "", reference_rows=args.reference_rows or 0,
        baseline=args.baseline or "", top=args.top, reasons_toml=reasons, seed=args.seed,
        samples=args.samples or 0)


def _number(value: float) -> str:
    return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"


def explain(args: argparse.Namespace) -> int:
    request = apb.ExplainRequest(ref=_ref(args.record), row=args.row, options=_options(args),
                                 no_flips=args.no_flips, pairs=args.pair)
    r = stub(args).Explain(request, timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0
    outcome = "favorable" if r.favorable_outcome else "unfavorable"
    print(f"explanation of seq {r.seq} ({r.request_id}) row {r.row}: decision {r.decision} "
          f"({outcome}; favorable is {r.favorable})")
    print(f"model {r.model_sha256}, method {r.method}"
          + (f", {r.samples} coalitions" if r.samples else "")
          + (f", seed {r.seed}" if r.seeded else ""))
    print(f"explains {r.explains}")
    holds = "efficiency holds" if r.efficient else f"EFFICIENCY FAILS (gap {r.gap:.3g})"
    print(f"f(x) = {r.fx:.6g}   mean f(reference) = {r.reference_value:.6g}   sum of "
          f"attributions = {r.total:.6g} ({holds})")
    print(f"reference: {r.reference} (sha256 {r.reference_sha256})")
    ranked = sorted(r.attributions, key=lambda a: -abs(a.attribution))
    print(_table(["feature", "value", "reference", "attribution"],
                 [[a.feature, _number(a.value), _number(a.reference), f"{a.attribution:+.6g}"]
                  for a in ranked]))
    _reasons(r)
    _flips(r)
    print(f"on the ledger: audit record {r.audit_request_id}")
    return 0


def _reasons(r: apb.ExplainResponse) -> None:
    kind = "adverse-action reasons" if not r.favorable_outcome else \
        "what counted against it (the decision was favorable)"
    if not r.reasons:
        print(f"{kind}: none (no feature counted against {r.favorable})")
        return
    print(f"{kind}, of {r.harmful} that counted against {r.favorable}:")
    for c in r.reasons:
        text = f'  "{c.text}"' if c.text else ""
        print(f"  {c.rank}. {c.feature} {_number(c.value)} ({c.direction} the reference "
              f"{_number(c.reference)}), {c.attribution:+.6g}{text}")
    for tie in r.ties:
        print(f"  tied: {', '.join(tie.features)} (listed in feature order)")
    if r.cut_in_tie:
        print("  the last reason ties with a feature not listed")


def _flips(r: apb.ExplainResponse) -> None:
    if not r.flips and not r.pair_flips:
        print(f"nearest flips: {r.flips_note}")
        return
    print("nearest flips (one feature at a time, within the baseline's observed range):")
    for f in r.flips:
        if f.found:
            print(f"  {f.feature} {_number(f.value)} → {_number(f.to_value)} would be "
                  f"{f.to_decision}")
        else:
            print(f"  {f.feature}: no flip within range")
    for p in r.pair_flips:
        a, b = p.features
        if p.found:
            print(f"  {a} {_number(p.values[0])} → {_number(p.to_values[0])} and {b} "
                  f"{_number(p.values[1])} → {_number(p.to_values[1])} would be "
                  f"{p.to_decision}")
        else:
            print(f"  {a} and {b}: no flip within range")
    if r.flips_note:
        print(f"  note: {r.flips_note}")


def explain_range(args: argparse.Namespace) -> int:
    request = apb.ExplainRangeRequest(
        since_us=parse_time(args.since), until_us=parse_time(args.until),
        model=args.model or "", status=args.status or "", caller=args.caller or "",
        metadata=args.metadata or "", options=_options(args))
    tty = sys.stderr.isatty()
    digest = hashlib.sha256()
    summary = None
    report = Report(Path(args.out), args.top) if args.out else None
    try:
        for event in stub(args).ExplainRange(request, timeout=args.timeout):
            kind = event.WhichOneof("event")
            if kind == "progress" and tty and not args.json:
                p = event.progress
                print(f"\r{p.done}/{p.total} records, {p.elapsed_s:.1f} s", end="",
                      file=sys.stderr)
            elif kind == "decision":
                d = event.decision
                values = as_json(d)
                digest.update((json.dumps(values, sort_keys=True, separators=(",", ":"))
                               + "\n").encode())
                if report is not None:
                    report.add(d)
                elif args.json:
                    print(dumps({"decision": values}, indent=None))
                else:
                    print(_line(d))
            elif kind == "summary":
                summary = event.summary
        if tty and not args.json:
            print(file=sys.stderr)
        if summary is None:
            return 1
        if report is not None:
            report.close(summary)
    finally:
        if report is not None:
            report.abandon()
    return _summary(args, summary, digest.hexdigest())


def _line(d: apb.ExplainedDecision) -> str:
    reasons = ", ".join(f"{c.feature} {c.attribution:+.4g}" for c in d.reasons) or "none"
    outcome = "favorable" if d.favorable_outcome else "unfavorable"
    return (f"seq {d.seq} row {d.row} ({d.request_id}): {d.decision} ({outcome}), f(x) "
            f"{d.fx:.4g}; against it: {reasons}")


def _summary(args: argparse.Namespace, s: apb.ExplainRangeSummary, received: str) -> int:
    verified = received == s.results_sha256
    if args.json:
        print(dumps({"summary": as_json(s)}, indent=None))
    else:
        print(f"explained {s.decisions} decisions of {s.records} records ({s.failed} could "
              f"not be) with method {s.method} at {s.decisions_per_second:,.0f} decisions/s")
        print(f"favorable is {s.favorable}; explains {'; '.join(s.explains)}")
        for reference in s.reference:
            print(f"reference {reference}")
        for failure in s.failures:
            print(f"  failed: {failure}")
        if args.out:
            print(f"wrote {args.out}")
        print(f"results sha256 {s.results_sha256} "
              + ("(matches what was received)" if verified else "(DOES NOT MATCH)")
              + f"; on the ledger: audit record {s.audit_request_id}")
    if not verified:
        print("the decisions received do not hash to the summary's results_sha256",
              file=sys.stderr)
        return 1
    return 0


class Report:
    """The Parquet file of an explain-range question, written in row groups as decisions
    arrive; the question's summary goes in the file's metadata (`mlwitness.explain`)."""

    def __init__(self, path: Path, top: int) -> None:
        if not path.parent.is_dir():  # before the question, not after its answer
            raise InvalidInput(f"--out {path}: there is no directory {path.parent}")
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.top = top
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None
        self.done = False

    def add(self, d: apb.ExplainedDecision) -> None:
        row: dict[str, Any] = {
            "seq": d.seq, "request_id": d.request_id, "row": d.row,
            "received_at": d.received_us, "model_sha256": d.model_sha256,
            "decision": d.decision, "favorable": d.favorable_outcome,
            "recorded_value": d.recorded_value, "fx": d.fx,
            "reference_value": d.reference_value, "efficient": d.efficient}
        for k in range(1, self.top + 1):
            reason = d.reasons[k - 1] if k <= len(d.reasons) else None
            for name in REASON_FIELDS:
                value = getattr(reason, name) if reason is not None else None
                row[f"reason_{k}_{name}"] = value
        row["attributions"] = [{"feature": a.feature, "value": a.value,
                                "reference": a.reference, "attribution": a.attribution}
                               for a in d.attributions]
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self._write()

    def _schema(self) -> Any:
        import pyarrow as pa

        fields = [("seq", pa.int64()), ("request_id", pa.string()), ("row", pa.int32()),
                  ("received_at", pa.timestamp("us", tz="UTC")),
                  ("model_sha256", pa.string()), ("decision", pa.string()),
                  ("favorable", pa.bool_()), ("recorded_value", pa.float64()),
                  ("fx", pa.float64()), ("reference_value", pa.float64()),
                  ("efficient", pa.bool_())]
        kinds = {"feature": pa.string(), "attribution": pa.float64(), "value": pa.float64(),
                 "reference": pa.float64(), "direction": pa.string(), "text": pa.string()}
        for k in range(1, self.top + 1):
            fields += [(f"reason_{k}_{name}", kinds[name]) for name in REASON_FIELDS]
        fields.append(("attributions", pa.list_(pa.struct([
            ("feature", pa.string()), ("value", pa.float64()), ("reference", pa.float64()),
            ("attribution", pa.float64())]))))
        return pa.schema(fields)

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self._schema()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.part, schema)
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=schema))
        self.rows = []

    def close(self, summary: apb.ExplainRangeSummary) -> None:
        """Write what is left and the summary, and put the file in place."""
        import pyarrow.parquet as pq

        if self.rows or self.writer is None:
            self._write()
        self.writer.add_key_value_metadata(
            {"mlwitness.explain": json.dumps(as_json(summary), sort_keys=True)})
        self.writer.close()
        self.writer = None
        self.part.replace(self.path)
        pq.read_metadata(self.path)  # a file a reader can open, or an error here
        self.done = True

    def abandon(self) -> None:
        """A question that failed leaves no half-written file behind."""
        if self.done:
            return
        if self.writer is not None:
            self.writer.close()
        self.part.unlink(missing_ok=True)


def add_commands(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Add `explain` and `explain-range` with `audit`'s `command(name, fn, help)`."""
    p = command("explain", explain, "why a decision came out as it did: attributions by "
                "replay, reason codes, the nearest change that flips it")
    p.add_argument("record", help="request id, or seq:N")
    p.add_argument("--row", type=int, default=0, help="row of the request (default 0)")
    _explain_options(p)
    p.add_argument("--no-flips", action="store_true", help="skip the nearest-flip search")
    p.add_argument("--pair", action="append", default=[], metavar="FEATURE:FEATURE",
                   help="also search changes of these two features together (repeatable)")
    p = command("explain-range", explain_range, "attributions and reason codes of every "
                "decision in a window; --out writes a Parquet report")
    p.add_argument("--since", help="from this time (UTC), e.g. 2026-11-01")
    p.add_argument("--until", help="before this time (UTC)")
    p.add_argument("--model", help="model name or SHA-256 prefix")
    p.add_argument("--status", help="records of this status (only OK ones have a decision)")
    p.add_argument("--caller", help="substring of the caller's identity")
    p.add_argument("--metadata", help="substring of the metadata the caller sent")
    _explain_options(p)
    p.add_argument("--out", metavar="FILE.parquet",
                   help="write one row per decision to this Parquet file (docs/explain.md)")


def _explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--favorable", help="the favourable outcome, as in `audit bias`: label=1, "
                   "score>=0.7 (default: a two-class model's second class)")
    p.add_argument("--output", help="the output column to explain, e.g. probabilities_1 "
                   "(default: the favourable class's probability)")
    p.add_argument("--method", choices=["exact", "kernel", "tree"], default="exact",
                   help="exact Shapley values (default; up to 12 features), KernelSHAP, or "
                   "TreeSHAP read from a tree model")
    p.add_argument("--reference", help="what the decision is compared with: baseline "
                   "(default: rows of the stored baseline), median, or FEATURE=VALUE,…")
    p.add_argument("--reference-rows", type=_at_least(1),
                   help="rows of the baseline's sample in the reference set (default 100)")
    p.add_argument("--baseline", help="stored baseline SHA-256 (prefix) or name (default: "
                   "latest)")
    p.add_argument("--top", type=_at_least(1), default=4,
                   help="reason codes to give (default 4)")
    p.add_argument("--reasons", metavar="FILE", help="reasons file (TOML): the text each "
                   "reason quotes (docs/explain.md)")
    p.add_argument("--seed", type=_at_least(0), default=0,
                   help="kernel: the seed of sampled coalitions (default 0)")
    p.add_argument("--samples", type=_at_least(1),
                   help="kernel: coalitions to evaluate (default 2 x features + 2048)")
