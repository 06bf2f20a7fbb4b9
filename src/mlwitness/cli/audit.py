"""`mlwitness audit …`: the auditor's command line, a client of the audit gRPC API.

Each command prints a readable table by default and the API's answer as exact JSON with
`--json` (`mlwitness.cli.answers`: integers as numbers; docs/audit-json.md shows each
command's). `replay-range` streams: progress on a terminal (stderr), changed decisions as
they are found, then the summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwitness.cli.answers import as_json, dumps
from mlwitness.cli.client import DEFAULT_TARGET, stub
from mlwitness.errors import InvalidInput
from mlwitness.evidence import check
from mlwitness.protocol import audit_pb2 as apb


def parse_time(text: str | None) -> int:
    """µs since the epoch from an ISO date/time (UTC unless it says otherwise) or an int."""
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot read time {text!r}: use e.g. 2026-03-01 or "
                           "2026-03-01T09:30:00") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ref(text: str) -> apb.RecordRef:
    if text.startswith("seq:"):
        if not text[4:].isdigit():
            raise InvalidInput(f"record {text!r}: after 'seq:' comes a sequence number, "
                               "e.g. seq:42")
        return apb.RecordRef(seq=int(text[4:]))
    return apb.RecordRef(request_id=text)


def _set_candidate(request: Any, text: str) -> None:
    """`--candidate`: an ONNX file to upload, or `sha256:HEX` for a model already in the
    ledger's store (the full hash or a prefix of it, as `audit show` prints)."""
    if text.startswith("sha256:"):
        request.candidate_sha256 = text[len("sha256:"):]
    else:
        request.candidate_onnx = Path(text).read_bytes()


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (0 would mean "the default" to the API)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _cut_points(text: str) -> list[float]:
    """`--bins 25,40,60`: comma-separated numbers."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 25,40,60, got {text!r}"
                                         ) from None


def _row_text(row: apb.Row) -> str:
    parts = []
    for value in row.values:
        shown = value.text if value.WhichOneof("kind") == "text" else f"{value.number:.6g}"
        parts.append(f"{value.name}={shown}")
    return "  ".join(parts)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


# ── commands ────────────────────────────────────────────────────────────────────────────

def show(args: argparse.Namespace) -> int:
    r = stub(args).GetRecord(apb.GetRecordRequest(ref=_ref(args.record)), timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0
    print(f"record        seq {r.seq}  request id {r.request_id}  ({r.kind})")
    print(f"received      {_when(r.received_us)} UTC  latency {r.responded_us - r.received_us} µs")
    print(f"model         {r.model_name} v{r.model_version}  sha256 {r.model_sha256}")
    print(f"caller        {r.caller}  {r.metadata_json}")
    print(f"status        {r.status}  {r.message}")
    if r.violations_json:
        print(f"violations    {r.violations_json}")
    for i, row in enumerate(r.inputs):
        print(f"input[{i}]      {_row_text(row)}")
    for i, row in enumerate(r.outputs):
        print(f"output[{i}]     {_row_text(row)}")
    print(f"environment   {r.environment_json}")
    print(f"chain         prev {r.prev_hash}\n              hash {r.hash}")
    return 0


def records(args: argparse.Namespace) -> int:
    client = stub(args)
    request = apb.ListRecordsRequest(
        since_us=parse_time(args.since), until_us=parse_time(args.until), model=args.model or "",
        status=args.status or "", caller=args.caller or "", metadata=args.metadata or "",
        page_size=min(args.limit, 1000))
    shown: list[apb.RecordSummary] = []
    while len(shown) < args.limit:
        page = client.ListRecords(request, timeout=args.timeout)
        shown.extend(page.records)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    shown = shown[: args.limit]
    if args.json:
        print(dumps([as_json(r) for r in shown]))
        return 0
    print(_table(["seq", "received (UTC)", "request id", "model", "status", "µs", "output"],
                 [[r.seq, _when(r.received_us), r.request_id, r.model_name, r.status,
                   r.latency_us, _row_text(r.first_output) if not r.erased_by
                   else f"(erased by seq {r.erased_by})"] for r in shown]))
    return 0


def replay(args: argparse.Namespace) -> int:
    request = apb.ReplayRequest(ref=_ref(args.record))
    if args.candidate:
        _set_candidate(request, args.candidate)
    r = stub(args).Replay(request, timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0 if r.bit_identical else 1
    verdict = "BIT-IDENTICAL" if r.bit_identical else "DIFFERENT"
    print(f"replay of seq {r.seq} ({r.request_id}): {verdict}")
    print(f"recorded model {r.recorded_model_sha256}\nreplayed on    {r.replayed_model_sha256}")
    print(_table(["output", "identical", "max ulps", "max |Δ|", "max rel Δ", "elements ≠"],
                 [[d.name, d.identical, f"{d.max_ulps:.3g}", f"{d.max_abs_diff:.3g}",
                   f"{d.max_rel_diff:.3g}", d.elements_differing] for d in r.outputs]))
    print(f"verdict: {r.verdict}")
    if r.decisions_changed:
        print(f"decisions changed ({r.decision_output}) in rows {list(r.decisions_changed)}")
    if r.environment_differences:
        print("environment differs from the recording one:")
        for d in r.environment_differences:
            print(f"  {d.key}: recorded {d.recorded}, now {d.current}")
    else:
        print("environment: same as when recorded")
    return 0 if r.bit_identical else 1


def _overrides(items: list[str]) -> list[apb.Override]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"--set takes FEATURE=VALUE, got {item!r}")
        try:
            out.append(apb.Override(feature=name.strip(), value=float(value)))
        except ValueError as exc:
            raise InvalidInput(f"--set {item!r}: {value!r} is not a number") from exc
    return out


def whatif(args: argparse.Namespace) -> int:
    r = stub(args).WhatIf(apb.WhatIfRequest(
        ref=_ref(args.record), overrides=_overrides(args.set), row=args.row,
        all_rows=args.all_rows), timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0
    print(f"what-if on seq {r.seq} ({r.request_id}), model {r.model_sha256[:12]}")
    for i, (a, b, c, d) in enumerate(zip(r.original_inputs, r.counterfactual_inputs,
                                         r.original_outputs, r.counterfactual_outputs,
                                         strict=True)):
        print(f"row {i}  inputs   {_row_text(a)}\n        what-if  {_row_text(b)}")
        print(f"        outputs  {_row_text(c)}\n        what-if  {_row_text(d)}")
    changed = list(r.decisions_changed)
    print(f"decision ({r.decision_output}) changed in rows {changed}" if changed
          else f"decision ({r.decision_output}) unchanged")
    return 0


def sensitivity(args: argparse.Namespace) -> int:
    request = apb.SensitivityRequest(
        ref=_ref(args.record), feature=args.feature, start=args.start or 0.0,
        stop=args.to or 0.0, steps=args.steps, scale=args.scale, values=args.values or [],
        row=args.row, output=args.output or "")
    if args.threshold is not None:
        request.threshold = args.threshold
    r = stub(args).Sensitivity(request, timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0
    print(f"sensitivity of seq {r.seq} to {r.feature} (recorded {r.recorded_value:.6g}, "
          f"decision {r.recorded_decision}; decision = {r.decision_output})")
    print(_table([r.feature, "decision", "outputs"],
                 [[f"{p.value:.6g}", p.decision, _row_text(p.outputs)] for p in r.points]))
    for f in r.flips:
        print(f"flip: {f.from_decision} → {f.to_decision} between {f.from_value:.6g} "
              f"and {f.to_value:.6g}")
    return 0


def replay_range(args: argparse.Namespace) -> int:
    request = apb.ReplayRangeRequest(since_us=parse_time(args.since),
                                     until_us=parse_time(args.until), model=args.model or "",
                                     max_listed=args.max_listed)
    if args.candidate:
        _set_candidate(request, args.candidate)
    tty = sys.stderr.isatty()
    summary = None
    for event in stub(args).ReplayRange(request, timeout=args.timeout):
        kind = event.WhichOneof("event")
        if kind == "progress" and tty and not args.json:
            p = event.progress
            print(f"\r{p.done}/{p.total} records, {p.elapsed_s:.1f} s", end="", file=sys.stderr)
        elif kind == "changed":
            c = event.changed
            if args.json:
                print(dumps({"changed": as_json(c)}, indent=None))
            else:
                print(f"changed  seq {c.seq} row {c.row} ({c.request_id}): "
                      f"{c.recorded_decision} → {c.replayed_decision}   {_row_text(c.inputs)}")
        elif kind == "summary":
            summary = event.summary
    if tty and not args.json:
        print(file=sys.stderr)
    if summary is None:
        return 1
    if args.json:
        print(dumps({"summary": as_json(summary)}, indent=None))
    else:
        on = summary.replayed_model_sha256 or "each record's own model"
        print(f"replayed {summary.records} records ({summary.rows} rows) on {on} "
              f"at {summary.records_per_second:,.0f} records/s")
        print(f"identical {summary.identical}  changed {summary.changed}  failed "
              f"{summary.failed}  decisions changed {summary.decisions_changed}  "
              f"max |Δ| {summary.max_abs_diff:.3g}  max ulps {summary.max_ulps:.3g}")
        for failure in summary.failures:
            print(f"  failed: {failure}")
    return 0


def verify_remote(args: argparse.Namespace) -> int:
    request = apb.VerifyLedgerRequest()
    if args.expect_head:  # split here; the service judges the values
        seq, colon, digest = args.expect_head.strip().partition(":")
        try:
            request.expect_seq = int(seq)
        except ValueError:  # not an integer, or beyond int64
            colon = ""
        if not colon:
            raise InvalidInput("--expect-head must be SEQ:HASH, e.g. 1042:<64 hex digits>, "
                               "the seq and hash `verify` printed as the chain head")
        request.expect_hash = digest
    r = stub(args).VerifyLedger(request, timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
    else:
        state = "OK" if r.ok else f"FAILED at seq {r.first_bad_seq}"
        print(f"{state}: {r.records} records (+{r.journal_records} in the journal), head seq "
              f"{r.head_seq} {r.head_hash}")
        for note in r.notes:
            print(f"  note: {note}")
        for problem in r.problems:
            print(f"  - {problem}")
    return 0 if r.ok else 1


def violations(args: argparse.Namespace) -> int:
    r = stub(args).Violations(apb.ViolationsRequest(
        since_us=parse_time(args.since), until_us=parse_time(args.until),
        model=args.model or ""), timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0
    print(f"{r.calls} calls, {r.calls_with_violations} with guard violations, "
          f"{r.refused} refused")
    if r.violations:
        print(_table(["guard", "column", "kind", "count", "refused", "first seq", "last seq"],
                     [[v.guard, v.column, v.kind, v.count, v.refused, v.first_seq, v.last_seq]
                      for v in r.violations]))
    for b in r.rate_breaches:
        print(f"rate breach at seq {b.seq} ({_when(b.received_us)} UTC): {b.guard} {b.state}, "
              f"estimate {b.estimate:.3f} [{b.low:.3f}, {b.high:.3f}] outside "
              f"[{b.min:g}, {b.max:g}] over {b.n} decisions")
    for state in r.rates_now:
        print(f"rate now: {state.guard} {state.state}, n={state.n}, estimate "
              f"{state.estimate:.3f} [{state.low:.3f}, {state.high:.3f}], bounds "
              f"[{state.min:g}, {state.max:g}]")
    return 0


def guards(args: argparse.Namespace) -> int:
    client = stub(args)
    if args.set:
        text = Path(args.set).read_text()
        request = (apb.SetGuardsRequest(json=text) if Path(args.set).suffix.lower() == ".json"
                   else apb.SetGuardsRequest(toml=text))
        r = client.SetGuards(request, timeout=args.timeout)
    else:
        r = client.GetGuards(apb.GetGuardsRequest(), timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
    elif not r.active:
        print("no guards in force")
    else:
        print(f"# guards {r.sha256} ({r.mode})\n{r.toml}")
    return 0


def erase(args: argparse.Namespace) -> int:
    request = apb.EraseRequest(request_id=args.request_id or "", since_us=parse_time(args.since),
                               until_us=parse_time(args.until), reason=args.reason,
                               dry_run=args.dry_run, no_compact=args.no_compact)
    if args.parameter:
        key, sep, value = args.parameter.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--parameter takes KEY=VALUE, e.g. applicant=A-1093, got "
                               f"{args.parameter!r}")
        request.parameter, request.value = key, value
    r = stub(args).Erase(request, timeout=args.timeout)
    if args.json:
        print(dumps(as_json(r)))
        return 0
    runs = ", ".join(str(s.first) if s.first == s.last else f"{s.first}-{s.last}"
                     for s in r.seqs[:20]) + (", …" if len(r.seqs) > 20 else "")
    if r.dry_run:
        print(f"dry run: {r.matched} records match; {r.erased} would be erased"
              + (f" (seq {runs})" if runs else "") + "; nothing was changed")
    elif r.admin_seq:
        print(f"erased {r.erased} records (seq {runs}) by admin record seq {r.admin_seq}")
        print("ledger file compacted: the erased bytes are gone from it" if r.compacted else
              "ledger file not compacted (--no-compact): the erased bytes may remain in its "
              "unused blocks until a later erasure compacts it")
    else:
        print(f"{r.matched} records match; none left to erase")
    for note in r.notes:
        print(f"  note: {note}")
    return 0


def drift(args: argparse.Namespace) -> int:
    request = apb.DriftRequest(
        since_us=parse_time(args.since), until_us=parse_time(args.until),
        model=args.model or "", baseline=args.baseline or "",
        reference_since_us=parse_time(args.reference_since),
        reference_until_us=parse_time(args.reference_until), features=args.features or [])
    r = stub(args).Drift(request, timeout=args.timeout)
    report = json.loads(r.report_json)
    if args.json:
        print(dumps(report))
        return 0
    verdict = ("DRIFT in " + ", ".join(r.drifted) if r.drift else
               "no drift" if report["verdict"] == "ok" else report["verdict"].upper())
    print(f"{r.window_rows} decision rows vs {r.reference}: {verdict}")
    rows = []
    for f in report["features"]:
        st = f.get("statistics", {})

        def num(key: str, st: dict = st) -> str:
            value = st.get(key)
            return "" if value is None or isinstance(value, str) else f"{value:.4g}"

        rows.append([f["name"], f["role"], f["kind"], f["count"], f["verdict"], num("psi"),
                     num("ks_statistic"), num("ks_pvalue"), num("js_distance"),
                     num("wasserstein"), num("mean_shift"), num("chi2_pvalue"), num("linf")])
    print(_table(["column", "role", "kind", "n", "verdict", "PSI", "KS", "KS p", "JS", "W1",
                  "Δmean", "χ² p", "L∞"], rows))
    return 0


def bias(args: argparse.Namespace) -> int:
    r = stub(args).Bias(apb.BiasRequest(
        attribute=args.attribute, favorable=args.favorable, since_us=parse_time(args.since),
        until_us=parse_time(args.until), model=args.model or "",
        privileged=args.privileged or "", bins=args.bins or []), timeout=args.timeout)
    if args.json:
        print(dumps(json.loads(r.report_json)))
        return 0
    print(f"favorable outcome {r.favorable} by {r.attribute} (reference group "
          f"{r.privileged}): {r.verdict.upper()}")
    def p_values(g: apb.BiasGroup) -> list[str]:  # vs the reference group
        if g.group == r.privileged:
            return ["—", "—"]
        return [f"{g.pvalue:.3g}", f"{g.pvalue_holm:.3g}" if g.disparate_impact < 0.8 else "—"]

    print(_table(["group", "n", "favorable", "rate", "disparate impact", "parity diff",
                  "p vs ref", "p Holm"],
                 [[g.group, g.n, g.favorable, f"{g.rate:.3f}", f"{g.disparate_impact:.3f}",
                   f"{g.statistical_parity_difference:+.3f}", *p_values(g)]
                  for g in r.groups]))
    print(f"chi2 {r.chi2:.4g} (dof {r.dof}) p = {r.chi2_pvalue:.4g}")
    if r.has_fisher:
        print(f"Fisher exact: odds ratio {r.fisher_odds_ratio:.4g}, p = {r.fisher_pvalue:.4g}")
    return 0


# ── checkpoints and proofs: checked here, not taken on the service's word ──────────────

def _keys(given: list[str] | None) -> list[str]:
    from mlwitness.ledger.extension import read_keys

    return read_keys(given or [])


def _opened(note: str, keys: list[str]) -> tuple[check.Checkpoint, str]:
    """The checkpoint in `note` and what is established about who signed it; with keys,
    its signature must verify (VerificationError otherwise)."""
    data = note.encode()
    if keys:
        opened = check.open_note(data, keys)
        who = opened.signed_by[0].rsplit("+", 1)[0]  # name+id, without the key itself
        return check.parse_checkpoint(opened.text), f"signature checked: {who}"
    if "\n\n" not in note:
        return check.parse_checkpoint(note), "unsigned checkpoint"
    text = note[: note.rindex("\n\n") + 1]
    return check.parse_checkpoint(text), "signature not checked (give --verifier-key)"


def _root_of(info: apb.CheckpointResponse, size: int, root_hex: str, keys: list[str]
             ) -> tuple[bytes, str]:
    """The root to check a proof for tree `size` against: the checkpoint's when the answer
    carries one of that size (its signature checked with `keys`), else the root the service
    computed, which proves nothing by itself."""
    if info.size:
        parsed, who = _opened(info.note, keys)
        if parsed.size != size or parsed.root.hex() != root_hex:
            raise check.VerificationError(f"the answer's checkpoint is of size {parsed.size} "
                                          f"and root {parsed.root.hex()[:16]}…, not the "
                                          "proof's")
        return parsed.root, f"checkpoint {size} ({who})"
    if keys:
        raise check.VerificationError(f"no checkpoint of size {size}: nothing signed to "
                                      "check the proof against")
    return bytes.fromhex(root_hex), (f"the root the service computed for size {size} (no "
                                     "checkpoint of that size: this proves nothing alone)")


def _verdict(ok: bool, text: str) -> str:
    return ("OK: " if ok else "FAILED: ") + text


def checkpoint(args: argparse.Namespace) -> int:
    r = stub(args).GetCheckpoint(apb.GetCheckpointRequest(size=args.size), timeout=args.timeout)
    if args.out:
        Path(args.out).write_text(r.note, encoding="utf-8")
    if args.json:
        print(dumps(as_json(r)))
        return 0
    published = f"published {_when(r.published_us)} UTC" if r.published_us else "not published"
    print(f"checkpoint    size {r.size}  root {r.root_hash}")
    print(f"log           {r.origin}")
    print(f"signed        {r.key_id or 'no: unsigned'}")
    print(f"issued        {_when(r.created_us)} UTC; {published}")
    if args.out:
        print(f"written to    {args.out}")
    print(f"\n{r.note}", end="")
    return 0


def prove(args: argparse.Namespace) -> int:
    keys = _keys(args.verifier_key)
    r = stub(args).InclusionProof(apb.InclusionProofRequest(ref=_ref(args.record),
                                                            tree_size=args.size),
                                  timeout=args.timeout)
    try:
        if r.leaf_index != r.seq - 1 or check.leaf_hash(bytes.fromhex(r.chain_hash)) != \
                bytes.fromhex(r.leaf_hash):
            raise check.VerificationError("the leaf is not the record's (leaf hash = "
                                          "SHA-256(0x00 ‖ chain hash), leaf index = seq - 1)")
        root, against = _root_of(r.checkpoint, r.tree_size, r.root_hash, keys)
        check.verify_inclusion(r.leaf_index, r.tree_size, bytes.fromhex(r.leaf_hash),
                               [bytes.fromhex(h) for h in r.hashes], root)
        ok, verdict = True, f"record seq {r.seq} is in the tree of {against}"
    except (check.VerificationError, ValueError) as exc:
        ok, verdict = False, str(exc)
    if args.json:
        print(dumps(as_json(r)))
    else:
        print(f"record        seq {r.seq}, leaf {r.leaf_index} of the tree of {r.tree_size}")
        print(f"chain hash    {r.chain_hash}")
        print(f"leaf hash     {r.leaf_hash}")
        print(f"proof         {len(r.hashes)} hashes, the leaf's sibling first")
        for h in r.hashes:
            print(f"              {h}")
        print(f"root          {r.root_hash}")
        print(f"verified      {_verdict(ok, verdict)}")
    return 0 if ok else 1


def consistency(args: argparse.Namespace) -> int:
    keys = _keys(args.verifier_key)
    mine: bytes | None = None
    if (args.from_size is None) == (args.checkpoint is None):
        raise InvalidInput("give the older tree's size, or --checkpoint FILE (one you kept)")
    if args.checkpoint is not None:
        try:
            held, _ = _opened(Path(args.checkpoint).read_text(encoding="utf-8"), keys)
        except check.VerificationError as exc:
            raise InvalidInput(f"--checkpoint {args.checkpoint}: {exc}") from None
        from_size, mine = held.size, held.root
    else:
        from_size = args.from_size
    r = stub(args).ConsistencyProof(apb.ConsistencyProofRequest(
        from_size=from_size, to_size=args.to), timeout=args.timeout)
    try:
        if mine is not None:
            old, old_from = mine, f"your checkpoint {from_size}"
        else:
            old, old_from = _root_of(r.from_checkpoint, r.from_size, r.from_root, keys)
        new, new_from = _root_of(r.to_checkpoint, r.to_size, r.to_root, keys)
        check.verify_consistency(r.from_size, r.to_size, [bytes.fromhex(h) for h in r.hashes],
                                 old, new)
        ok, verdict = True, f"the tree of {new_from} extends the tree of {old_from}"
    except (check.VerificationError, ValueError) as exc:
        ok, verdict = False, str(exc)
    if args.json:
        print(dumps(as_json(r)))
    else:
        print(f"from          size {r.from_size}  root {r.from_root}")
        print(f"to            size {r.to_size}  root {r.to_root}")
        print(f"proof         {len(r.hashes)} hashes")
        for h in r.hashes:
            print(f"              {h}")
        print(f"verified      {_verdict(ok, verdict)}")
    return 0 if ok else 1


def status(args: argparse.Namespace) -> int:
    r = stub(args).Status(apb.StatusRequest(), timeout=args.timeout)
    led, marks, pub = r.ledger, r.checkpoints, r.publisher
    healthy = led.healthy and marks.state != "stopped" and pub.state != "failing"
    if args.json:
        print(dumps(as_json(r)))
        return 0 if healthy else 1
    print(f"ledger        chain {led.chain_id}: head seq {led.head_seq}, loaded seq "
          f"{led.loaded_seq}, {'healthy' if led.healthy else 'NOT HEALTHY'}"
          + ("" if led.writable else " (a file, read-only)"))
    latest = (f"latest size {marks.size}, {marks.age_s:.1f} s ago, "
              + (f"signed by {marks.key_id}" if marks.signed else "unsigned")
              if marks.size else "none yet")
    print(f"checkpoints   {marks.state}: {latest}; tree of {marks.tree_size} records"
          + (f" ({marks.origin})" if marks.origin else ""))
    for line in (marks.detail, marks.last_error and f"last error: {marks.last_error}"):
        if line:
            print(f"              {line}")
    where = pub.directory or "no --checkpoint-dir"
    done = (f"size {pub.published_size} published {pub.age_s:.1f} s ago"
            if pub.published_us else "nothing published yet")
    print(f"publisher     {pub.state}: {where}; {done}"
          + (f"; {pub.failures} failed rounds" if pub.failures else ""))
    if pub.last_error:
        print(f"              last error: {pub.last_error}")
    return 0 if healthy else 1


def _connection_options(parser: argparse.ArgumentParser, *, default: bool) -> None:
    """--target, --timeout, credentials and --json: on `audit` itself (with defaults) and
    on every command (without: SUPPRESS keeps what was given before the command)."""
    def value(given: Any) -> Any:
        return given if default else argparse.SUPPRESS

    parser.add_argument("--target", default=value(None),
                        help=f"audit service address (default {DEFAULT_TARGET}; "
                        "env MLWITNESS_AUDIT_TARGET)")
    parser.add_argument("--timeout", type=float, default=value(600.0),
                        help="seconds per call (default 600)")
    parser.add_argument("--token-file", default=value(None),
                        help="file holding your access token (env MLWITNESS_TOKEN_FILE, or "
                        "the token itself in MLWITNESS_TOKEN)")
    parser.add_argument("--ca", default=value(None),
                        help="CA certificate (PEM) to verify the audit server: use TLS")
    parser.add_argument("--cert", default=value(None), help="client certificate (PEM) for mTLS")
    parser.add_argument("--key", default=value(None), help="client key (PEM) for --cert")
    parser.add_argument("--json", action="store_true", default=value(False),
                        help="print the answer as JSON (docs/audit-json.md shows each "
                        "command's)")


def add_commands(sub: Any) -> None:
    """Add `audit` and its subcommands to the top-level parser's subparsers."""
    audit = sub.add_parser("audit", help="ask the audit service about recorded decisions")
    _connection_options(audit, default=True)
    # The same options after the command (`audit show ID --target …`): given there, they
    # win; not given, the values before the command stand (SUPPRESS leaves them alone).
    after = argparse.ArgumentParser(add_help=False)
    _connection_options(after, default=False)
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, parents=[after])
        p.set_defaults(func=fn)
        return p

    record_help = "request id, or seq:N"
    p = command("show", show, "one record: inputs, outputs, model, environment, hashes")
    p.add_argument("record", help=record_help)
    p = command("records", records, "list records (newest first)")
    p.add_argument("--since", help="from this time (UTC), e.g. 2026-03-01")
    p.add_argument("--until", help="before this time (UTC)")
    p.add_argument("--model", help="model name or SHA-256 prefix")
    p.add_argument("--status", help="e.g. OK, INVALID_ARGUMENT")
    p.add_argument("--caller", help="substring of the caller's identity as mlwitness "
                   "established it (peer address, token:NAME, mtls:SUBJECT)")
    p.add_argument("--metadata", help="substring of the metadata the caller sent (e.g. "
                   "its x-caller header: self-declared, not checked)")
    p.add_argument("--limit", type=_at_least(1), default=50,
                   help="at most this many (default 50)")
    p = command("replay", replay, "replay a record on the exact model that made it; exit 1 "
                "if the outputs differ")
    p.add_argument("record", help=record_help)
    p.add_argument("--candidate", help="replay on this ONNX file, or on the stored model "
                   "sha256:HEX (a prefix will do), instead of the recorded model")
    p = command("whatif", whatif, "replay with features changed")
    p.add_argument("record", help=record_help)
    p.add_argument("--set", action="append", default=[], metavar="FEATURE=VALUE",
                   help="feature name or column index and its new value (repeatable)")
    p.add_argument("--row", type=int, default=0, help="row of the request (default 0)")
    p.add_argument("--all-rows", action="store_true", help="change every row")
    p = command("sensitivity", sensitivity, "sweep one feature, find decision flips")
    p.add_argument("record", help=record_help)
    p.add_argument("--feature", required=True, help="feature name or column index")
    p.add_argument("--from", dest="start", type=float, help="first value")
    p.add_argument("--to", type=float, help="last value")
    p.add_argument("--steps", type=_at_least(2), default=20,
                   help="points, both ends included (2-10000, default 20)")
    p.add_argument("--scale", choices=["linear", "log"], default="linear", help="step spacing")
    p.add_argument("--values", type=float, nargs="+", help="explicit values instead")
    p.add_argument("--row", type=int, default=0, help="row of the request (default 0)")
    p.add_argument("--output", help="output column to judge, e.g. probabilities_1")
    p.add_argument("--threshold", type=float, help="decision = output >= threshold")
    p = command("replay-range", replay_range, "replay every record in a window")
    p.add_argument("--since", help="from this time (UTC)")
    p.add_argument("--until", help="before this time (UTC)")
    p.add_argument("--model", help="model name or SHA-256 prefix")
    p.add_argument("--candidate", help="replay on this ONNX file, or on the stored model "
                   "sha256:HEX (a prefix will do), instead of the recorded model")
    p.add_argument("--max-listed", type=_at_least(1), default=100,
                   help="changed decisions to list (default 100)")
    p = command("verify", verify_remote, "verify the ledger through the audit service")
    p.add_argument("--expect-head", metavar="SEQ:HASH", default=None,
                   help="also fail unless the record at SEQ has this hash (a head published "
                   "earlier)")
    p = command("violations", violations, "which guards fired, how often; rate breaches")
    p.add_argument("--since", help="from this time (UTC)")
    p.add_argument("--until", help="before this time (UTC)")
    p.add_argument("--model", help="model name or SHA-256 prefix")
    p = command("drift", drift, "per-feature and output drift of a window vs the baseline")
    p.add_argument("--since", help="window start (UTC)")
    p.add_argument("--until", help="window end (UTC)")
    p.add_argument("--model", help="model name or SHA-256 prefix")
    p.add_argument("--baseline", help="stored baseline SHA-256 (prefix) or name (default: "
                   "latest)")
    p.add_argument("--reference-since", help="compare with this window instead (start)")
    p.add_argument("--reference-until", help="… and end")
    p.add_argument("--features", nargs="+", help="only these columns")
    p = command("bias", bias, "favorable-outcome rates by a protected attribute")
    p.add_argument("--attribute", required=True, help="input, text input or request "
                   "parameter, e.g. age_band")
    p.add_argument("--favorable", required=True, help="COLUMN=VALUE or COLUMN>=THRESHOLD, "
                   "e.g. label=1")
    p.add_argument("--since", help="window start (UTC)")
    p.add_argument("--until", help="window end (UTC)")
    p.add_argument("--model", help="model name or SHA-256 prefix")
    p.add_argument("--privileged", help="reference group (default: highest favorable rate "
                   "among groups of 30+ rows)")
    p.add_argument("--bins", type=_cut_points,
                   help="cut points grouping a numeric attribute, e.g. 25,40,60 gives "
                   "<25, [25, 40), [40, 60), >=60")
    p = command("guards", guards, "show the guards in force, or replace them (--set, admin)")
    p.add_argument("--set", metavar="FILE", help="new guard file (TOML, or .json)")
    key_help = ("the log's verifier key (as `mlwitness keygen` printed it), or a file of "
                "them: the checkpoint's signature must verify with it")
    p = command("checkpoint", checkpoint, "the latest checkpoint (signed tree head), or one "
                "of a size")
    p.add_argument("--size", type=_at_least(0), default=0,
                   help="the checkpoint of this tree size (default: the latest)")
    p.add_argument("--out", metavar="FILE", help="also write the checkpoint note to FILE")
    p = command("prove", prove, "prove a record is in a checkpoint's tree, and check the "
                "proof here; exit 1 if it does not hold")
    p.add_argument("record", help=record_help)
    p.add_argument("--size", type=_at_least(0), default=0,
                   help="the tree size (a checkpoint's; default: the latest)")
    p.add_argument("--verifier-key", action="append", metavar="KEY", help=key_help)
    p = command("consistency", consistency, "prove a later tree extends an earlier one (e.g. "
                "a checkpoint you kept), and check it here; exit 1 if it does not hold")
    p.add_argument("from_size", nargs="?", type=_at_least(1), metavar="FROM_SIZE",
                   help="the older tree's size (or give --checkpoint)")
    p.add_argument("--to", type=_at_least(0), default=0,
                   help="the newer tree's size (default: the latest checkpoint's)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="a checkpoint you kept: from its size, checked against its root")
    p.add_argument("--verifier-key", action="append", metavar="KEY", help=key_help)
    command("status", status, "health detail: ledger head, checkpoints, publishing; exit 1 "
            "if checkpoints stopped, publishing fails or the ledger is unhealthy")
    p = command("erase", erase, "erase the payloads of inference records (admin); the chain "
                "and its proofs stay valid")
    p.add_argument("--request-id", help="the record(s) with this request id (alone)")
    p.add_argument("--parameter", metavar="KEY=VALUE", help="records whose request had this "
                   "parameter value (as sent, also for a parameter --hash-inputs minimises)")
    p.add_argument("--since", help="records received from this time (UTC), e.g. 2026-03-01")
    p.add_argument("--until", help="records received before this time (UTC)")
    p.add_argument("--reason", required=True, help="why (kept on the chain with who erased "
                   "what), e.g. \"GDPR Art. 17 request 2026-118\"")
    p.add_argument("--dry-run", action="store_true", help="list what would be erased; change "
                   "nothing")
    p.add_argument("--no-compact", action="store_true", help="leave the DuckDB file as it is "
                   "(faster on a large ledger; the erased bytes may stay in its unused blocks "
                   "until an erasure compacts it)")
