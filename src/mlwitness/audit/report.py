"""The auditor's report: every section gathered from the ledger (`report_sections`), the
chain verified, a replay spot-check run, rendered as one self-contained HTML file
(`mlwitness.report`).

The chain is verified as `mlwitness verify` does it, except that the decoded columns are
not derived again from the hashed bytes unless asked (`verify_decoded`): that is most of
verification's cost, and the report says it was left out.

The report is itself an audit record: the question goes on the trail with the SHA-256 and
size of the file it produced and the ledger head it read, so a report handed to a
regulator can be matched to the record that made it. The head is read first: the window
ends at that record's time at the latest, so calls made while the report is drawn are left
out of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from mlwitness import __version__
from mlwitness.analytics.baseline import Baseline, latest_baseline, load_baseline
from mlwitness.analytics.outcomes import QualityQuery, fetch
from mlwitness.audit import replay as rp
from mlwitness.audit import report_sections as sections
from mlwitness.audit.candidates import Candidates
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import InvalidInput, MlwitnessError, RecordNotFound
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.verify import verify
from mlwitness.report import data as rd
from mlwitness.report import render

log = logging.getLogger(__name__)

DEFAULT_REPLAY_SAMPLE = 20
MAX_REPLAY_SAMPLE = rd.MAX_REPLAY
BUCKETS = ("day", "hour")


@dataclass(frozen=True)
class ReportQuery:
    since_us: int = 0
    until_us: int = 0
    model: str = ""
    favorable: str = ""  # the favourable decision (rate, bias); default: a rate guard's
    attributes: tuple[str, ...] = ()  # bias by each
    quality: QualityQuery = field(default_factory=lambda: QualityQuery(label=""))
    baseline: str = ""  # default: the latest stored
    replay_sample: int = DEFAULT_REPLAY_SAMPLE
    seed: int = 0  # 0: the seq of the window's last decision
    verify_decoded: bool = False  # also derive every decoded column again (slow)
    command: str = ""
    bucket: str = "day"


@dataclass(frozen=True)
class Made:
    """A rendered report: the file and what identifies it."""

    html: bytes
    sha256: str
    head_seq: int


class Reports:
    def __init__(self, reader: LedgerReader, trail: Trail, candidates: Candidates,
                 ledger_path: Path | None) -> None:
        self.reader = reader
        self.trail = trail
        self.candidates = candidates
        self.ledger_path = ledger_path

    def report(self, asker: Asker, q: ReportQuery) -> Made:
        with self.trail.audited(asker, **_asked(q)) as summary:
            _check(q)
            data = self.gather(q, asker.deadline)
            html = render(data).encode()
            made = Made(html, hashlib.sha256(html).hexdigest(), data.header.head_seq)
            summary.update(sha256=made.sha256, bytes=len(html), head_seq=made.head_seq,
                           verified=data.header.verification.ok)
            return made

    def gather(self, q: ReportQuery, deadline: float | None = None) -> rd.ReportData:
        con = self.reader.cursor()
        head = con.execute("SELECT seq, lower(hex(hash)), received_us FROM entries "
                           "ORDER BY seq DESC LIMIT 1").fetchall()
        head_seq, head_hash, head_us = head[0] if head else (0, "0" * 64, 0)
        # The chain is verified in a thread while the sections are read: DuckDB's queries
        # let go of the GIL, and on a ledger of 100,000 calls each takes seconds.
        with ThreadPoolExecutor(1) as pool:
            verifying = pool.submit(self._verify, q.verify_decoded)
            data = self._sections(con, q, head_us, deadline)
            verification = verifying.result()
        header = self._header(con, q, data.pop("scope"), verification, head_seq, head_hash)
        return rd.ReportData(header=header, **data)

    def _sections(self, con: duckdb.DuckDBPyConnection, q: ReportQuery, head_us: int,
                  deadline: float | None) -> dict[str, Any]:
        # The window ends at the head read first: calls made meanwhile are left out.
        until = q.until_us if q.until_us and (not head_us or q.until_us <= head_us) \
            else (head_us + 1 if head_us else q.until_us)
        s = sections.scope(con, q.since_us, until, q.model, q.bucket)
        notes: dict[str, str] = {}

        def note(sid: str, section: Any, why: str | None) -> Any:
            if why:
                notes[sid] = why
            return section

        guards = sections.latest_rate_guards(con, until)
        rule = sections.favourable_rule(q.favorable, guards)
        quality_q = dataclasses.replace(
            q.quality, since_us=s.since_us, until_us=until, model=q.model,
            decision=q.quality.decision or (rule if not q.quality.label else ""))
        rows = fetch(con, quality_q) if s.buckets else None
        return dict(
            scope=s,
            volume=note("volume", *sections.volume(con, s)),
            favourable=note("favourable-rate", *sections.favourable(con, s, rule, guards)),
            drift=note("drift", *sections.drift(con, s, self._baseline(con, q.baseline))),
            bias=note("bias", *sections.bias(con, s, list(q.attributes), rule)),
            violations=note("violations", *sections.violations(con, s, bool(guards))),
            quality=note("quality", *sections.quality_section(rows, quality_q, s))
            if rows is not None else None,
            reviews=note("reviews", *sections.review_section(rows, s, quality_q.confidence))
            if rows is not None else None,
            replay=note("replay", *self._replay(con, s, q, deadline)),
            notes=notes)

    # ── the header ────────────────────────────────────────────────────────────────────

    def _verify(self, derive: bool) -> rd.Verification:
        if self.ledger_path is None:
            return rd.Verification(False, 0, "not verified (no ledger file)")
        report = verify(self.ledger_path, con=self.reader.cursor(), derive=derive)
        if report.ok:
            message = ("chain intact; every record, model and reference matches its hash"
                       if derive else
                       "chain intact; every record, model and reference matches its hash "
                       "(decoded columns were not derived again from the hashed bytes: "
                       "`mlwitness audit verify` does, and so does a report made with "
                       "--verify-decoded)")
        else:
            first = report.problems[0]
            where = f"seq {first.seq}: " if first.seq is not None else ""
            message = (f"{len(report.problems)} problem(s), the first {where}{first.what}")
        notes = report.notes()
        if notes:
            message += " (not covered: " + "; ".join(notes) + ")"
        return rd.Verification(report.ok, report.records + report.journal_records, message)

    def _header(self, con: duckdb.DuckDBPyConnection, q: ReportQuery, s: sections.Scope,
                verification: rd.Verification, head_seq: int, head_hash: str) -> rd.Header:
        where, params = s.filters.where()
        records = con.execute(f"SELECT count(*) FROM entries WHERE {where}", params
                              ).fetchall()[0][0]
        models = tuple(rd.Model(name, sha, n) for name, sha, n in con.execute(
            f"SELECT model_name, model_sha256, count(*) FROM entries WHERE {where} "
            "AND model_sha256 <> '' GROUP BY ALL ORDER BY 3 DESC, 1 LIMIT 100",
            params).fetchall())
        envs = []
        for env_id, n in con.execute(
                f"SELECT env_id, count(*) FROM entries WHERE {where} AND env_id <> '' "
                "GROUP BY ALL ORDER BY 2 DESC LIMIT 50", params).fetchall():
            envs.append(rd.Environment(env_id, _describe(self.reader, env_id), n))
        return rd.Header(
            ledger_path=str(self.ledger_path or "(ledger)"), records=int(records),
            head_seq=head_seq, head_hash=head_hash, since_us=q.since_us, until_us=q.until_us,
            generated_us=time.time_ns() // 1000, version=__version__,
            command=q.command or "(the Report RPC)", verification=verification,
            checkpoint=latest_checkpoint(con), models=models, environments=tuple(envs))

    def _baseline(self, con: duckdb.DuckDBPyConnection, named: str) -> Baseline | None:
        try:
            return load_baseline(con, named or latest_baseline(con))
        except RecordNotFound:
            if named:
                raise
            return None

    # ── the replay spot-check ─────────────────────────────────────────────────────────

    def _replay(self, con: duckdb.DuckDBPyConnection, s: sections.Scope, q: ReportQuery,
                deadline: float | None) -> tuple[rd.ReplaySection | None, str | None]:
        if q.replay_sample == 0:
            return None, "No replay spot-check was asked for (--replay-sample 0)."
        where, params = s.filters.where()
        seqs = np.array([r[0] for r in con.execute(
            f"SELECT seq FROM entries WHERE {where} AND status = 'OK' ORDER BY seq",
            params).fetchall()], np.int64)
        if not seqs.size:
            return None, "No answered call in the window to replay."
        seed = q.seed or int(seqs[-1])  # the window's last decision: same window, same draw
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(seqs, min(q.replay_sample, seqs.size), replace=False))
        checks = []
        with self.candidates.runs(deadline) as runs:
            for seq in chosen:
                checks.append(_replay_one(self.reader, runs, int(seq)))
        return rd.ReplaySection(int(seqs.size), seed, tuple(checks)), None


def _replay_one(reader: LedgerReader, runs: Any, seq: int) -> rd.ReplayCheck:
    record = reader.get(seq=seq, rows=False).record
    try:
        call = rp.decode_call(record)
        model = runs.model(record.model_sha256)
        diffs = rp.compare(call.outputs, model.run(call.inputs, call.requested))
    except MlwitnessError as exc:
        return rd.ReplayCheck(seq, record.request_id, record.model_name, False,
                              f"not replayed: {exc.message}")
    differing = [d.name for d in diffs if not d.identical]
    detail = ("" if not differing else "differs in " + ", ".join(
        f"{d.name} (max |Δ| {d.max_abs_diff:.3g})" for d in diffs if not d.identical))
    return rd.ReplayCheck(seq, record.request_id, record.model_name, not differing, detail)


def _describe(reader: LedgerReader, env_id: str) -> str:
    try:
        env = reader.environment(env_id)
    except MlwitnessError:
        return "(not stored)"
    parts = [f"onnxruntime {env.get('onnxruntime', '?')}",
             ", ".join(env.get("execution_providers", [])),
             f"Python {env.get('python', '?')}", f"numpy {env.get('numpy', '?')}",
             f"{env.get('system', '')} {env.get('machine', '')}".strip(),
             f"mlwitness {env.get('mlwitness', '?')}"]
    return ", ".join(p for p in parts if p)


def latest_checkpoint(con: duckdb.DuckDBPyConnection) -> str | None:
    """The newest signed checkpoint's text, where the ledger keeps checkpoints (a table
    `checkpoints`); None where it does not."""
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = "
                         "'checkpoints'").fetchall()[0][0]
    if not exists:
        return None
    try:
        cursor = con.execute("SELECT * FROM checkpoints ORDER BY 1 DESC LIMIT 1")
        row = cursor.fetchone()
        names = [d[0] for d in cursor.description or []]
    except duckdb.Error as exc:
        log.warning("the checkpoints table could not be read: %s", exc)
        return None
    if row is None:
        return None
    fields = dict(zip(names, row, strict=True))
    for name in ("text", "note", "checkpoint"):
        if isinstance(fields.get(name), str):
            return str(fields[name])
    return "\n".join(f"{k}: {v.hex() if isinstance(v, bytes) else v}"
                     for k, v in fields.items())


def _check(q: ReportQuery) -> None:
    if q.bucket not in BUCKETS:
        raise InvalidInput(f"bucket must be one of {', '.join(BUCKETS)}, got {q.bucket!r}")
    if not 0 <= q.replay_sample <= MAX_REPLAY_SAMPLE:
        raise InvalidInput(f"replay sample must be from 0 to {MAX_REPLAY_SAMPLE}")
    if q.until_us and q.since_us and q.until_us <= q.since_us:
        raise InvalidInput("until must be after since")
    if len(q.attributes) > 20:
        raise InvalidInput("at most 20 bias attributes")


def _asked(q: ReportQuery) -> dict[str, Any]:
    asked = dataclasses.asdict(q)
    asked["quality"] = {k: v for k, v in asked["quality"].items()
                        if k in ("label", "positive", "decision", "score", "by")}
    return json.loads(json.dumps(asked, default=str))
