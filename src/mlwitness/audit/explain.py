"""Explanations: why a recorded decision came out as it did, by replay on its model bytes.

`explain` answers for one row of one record: attributions of the explained output f
(`exact`, `kernel` or `tree`, against a reference set), the reason codes an adverse-action
notice quotes, and the nearest single-feature (and, when asked, pair) change that flips
the decision. `explain_range` streams attributions and reason codes for every decision in a
window. Both run on the model bytes the ledger stored under the record's SHA-256, never a
file on disk, in the question's sandbox worker; both are audit records like every question,
holding what was asked and what was answered, so that an explanation given to a customer
can be shown later to be the one the ledger holds. Asking again gives the same numbers:
the reference set is chosen without randomness, `kernel` draws from its recorded seed, and
the same rows go to the same onnxruntime session.

Refused: records that were not answered, whose inputs were stored hashed or redacted, or
that were erased (FAILED_PRECONDITION); inputs that are not a numeric table
(FAILED_PRECONDITION); an unknown output, method or feature, or more work than the limits
allow (INVALID_ARGUMENT). docs/explain.md is the user's guide.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mlwitness.analytics.baseline import Baseline, latest_baseline, load_baseline
from mlwitness.audit import replay as rp
from mlwitness.audit.candidates import Candidates, Runs
from mlwitness.audit.explain_range import Method, Window
from mlwitness.audit.explainer import (
    METHODS,
    Decided,
    Explainer,
    Features,
    Reasons,
    features_of,
)
from mlwitness.audit.favorable import resolve
from mlwitness.audit.references import reference_for
from mlwitness.audit.rerun import feature_names
from mlwitness.audit.results import ExplainEvent, ExplainResult, FeatureFlip, PairFlip
from mlwitness.audit.trail import Asker, Trail
from mlwitness.codec import Tensor
from mlwitness.errors import ConfigError, FailedPrecondition, InvalidInput, MlwitnessError
from mlwitness.explain.attribution import Attribution
from mlwitness.explain.flip import nearest_flips
from mlwitness.explain.reasons import ReasonTexts, loads_reasons
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record
from mlwitness.model.onnx_graph import Graph, read_graph

DEFAULT_TOP = 4
MAX_TOP = 100
MAX_PAIRS = 20
CACHED = 16  # baselines, model graphs and reference sets kept


@dataclass(frozen=True)
class ExplainOptions:
    """What an explanation explains, how and against what (the API request's fields)."""

    favorable: str = ""
    output: str = ""
    method: str = ""  # exact (default), kernel, tree
    reference: str = ""  # baseline (default), median, FEATURE=VALUE,…
    reference_rows: int = 0  # 0: 100
    baseline: str = ""  # SHA-256 (prefix) or name; "": the latest stored
    top: int = 0  # 0: 4
    reasons_toml: str = ""
    seed: int = 0
    samples: int = 0  # kernel coalitions; 0: 2M + 2048

    def checked(self) -> ExplainOptions:
        method = self.method.strip().lower() or "exact"
        if method not in METHODS:
            raise InvalidInput(f"unknown method {self.method!r}; methods: {', '.join(METHODS)}")
        top = self.top or DEFAULT_TOP
        if not 1 <= top <= MAX_TOP:
            raise InvalidInput(f"top must be between 1 and {MAX_TOP}, got {self.top}")
        if self.samples < 0 or self.seed < 0 or self.reference_rows < 0:
            raise InvalidInput("samples, seed and reference_rows must not be negative")
        if self.reasons_toml:
            _texts(self.reasons_toml, None)  # a broken file fails before any work
        return replace(self, method=method, top=top)

    def asked(self) -> dict[str, Any]:
        """The options as the trail's summary keeps them (a reasons file by its hash)."""
        kept = asdict(self)
        kept["reasons_sha256"] = hashlib.sha256(kept.pop("reasons_toml").encode()).hexdigest(
            ) if self.reasons_toml else ""
        return kept


def feature_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    """`income:debt_ratio` → ("income", "debt_ratio"); at most MAX_PAIRS."""
    if len(texts) > MAX_PAIRS:
        raise InvalidInput(f"at most {MAX_PAIRS} pairs, got {len(texts)}")
    out = []
    for text in texts:
        first, sep, second = text.partition(":")
        if not sep or not first.strip() or not second.strip() or ":" in second:
            raise InvalidInput(f"a pair is two features, FEATURE:FEATURE; got {text[:80]!r}")
        out.append((first.strip(), second.strip()))
    return out


def _texts(text: str, names: Sequence[str] | None) -> ReasonTexts | None:
    if not text:
        return None
    try:
        return loads_reasons(text, names)
    except ConfigError as exc:
        raise InvalidInput(f"reasons file: {exc.message}") from None


class Explanations:
    def __init__(self, reader: LedgerReader, trail: Trail, candidates: Candidates) -> None:
        self.reader = reader
        self.trail = trail
        self.candidates = candidates
        self._lock = threading.Lock()
        self._parsed: OrderedDict[tuple[str, str], Any] = OrderedDict()

    # ── one decision ───────────────────────────────────────────────────────────────────

    def explain(self, asker: Asker, options: ExplainOptions, *, request_id: str = "",
                seq: int = 0, row: int = 0, flips: bool = True, pairs: Sequence[str] = ()
                ) -> ExplainResult:
        """`pairs`: two features to search together each, as FEATURE:FEATURE."""
        record_id = uuid.uuid4().hex
        with self.trail.audited(asker, record_id=record_id, request_id=request_id, seq=seq,
                                row=row, flips=flips, pairs=list(pairs),
                                **options.asked()) as summary, \
                self.candidates.runs(asker.deadline) as runs:
            options = options.checked()
            pairs_asked = feature_pairs(pairs)
            stored = self.reader.get(request_id, seq)
            record = stored.record
            call = self._call(record)
            features = features_of(call.inputs, feature_names(stored), record.seq)
            n = features.matrix.shape[0]
            if not 0 <= row < n:
                raise InvalidInput(f"row {row} is out of range: the request has {n} rows")
            explainer = self.explainer(runs, record.model_sha256, features, call.outputs,
                                       options)
            texts = _texts(options.reasons_toml, features.names)
            x = features.matrix[row]
            attribution = explainer.attribute(x, options.method, seed=options.seed,
                                              samples=options.samples)
            decided = explainer.decided(call.outputs)[row]
            reasons = explainer.reasons(x, attribution, options.top, texts)
            found, pair_found, note = self._flips(explainer, x, decided.favorable, flips,
                                                  pairs_asked)
            result = _result(record, row, explainer, attribution, decided, reasons, found,
                             pair_found, note, record_id)
            summary.update(seq=record.seq, explanation=asdict(result))
            return result

    def _call(self, record: Record) -> rp.Decoded:
        erased = self.reader.erased_by(record.seq) if record.kind == "infer" else None
        if erased is not None:
            admin, reason = erased
            raise FailedPrecondition(f"record seq {record.seq} was erased by admin record seq "
                                     f"{admin}" + (f": {reason}" if reason else "")
                                     + "; there is nothing to explain")
        return rp.decode_call(record)  # answered, not minimised

    def _flips(self, explainer: Explainer, x: np.ndarray, favorable: bool, wanted: bool,
               pairs: Sequence[tuple[str, str]]
               ) -> tuple[list[FeatureFlip], list[PairFlip], str]:
        ref = explainer.reference
        names = list(explainer.features.names)
        unknown = [f for pair in pairs for f in pair if f not in names]
        if unknown:
            raise InvalidInput(f"pairs: unknown feature {unknown[0]!r}; features: "
                               f"{', '.join(names)}")
        if not wanted:
            return [], [], "not asked for"
        if ref.low is None or ref.high is None:
            return [], [], ("no baseline with every feature's observed range is stored: "
                            "there is no range to search")
        try:
            search = nearest_flips(explainer.favorable, x, ref.low, ref.high,
                                   integer=ref.integer,
                                   pairs=[(names.index(a), names.index(b)) for a, b in pairs])
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        note = "" if bool(search.decision) == favorable else (
            "the replay decides this row otherwise than the record says; the flips start "
            "from the replay's decision")
        single = [FeatureFlip(names[f.feature], f.value, f.to is not None, f.to or 0.0,
                              f.direction or "", f.distance or 0.0, f.tolerance,
                              _word(f.decision) if f.to is not None else "")
                  for f in search.flips]
        double = [PairFlip([names[p.features[0]], names[p.features[1]]], list(p.values),
                           p.to is not None, list(p.to or (0.0, 0.0)), p.distance or 0.0,
                           _word(p.decision) if p.to is not None else "")
                  for p in search.pairs]
        return single, double, note

    # ── a window of decisions ──────────────────────────────────────────────────────────

    def explain_range(self, asker: Asker, filters: Filters, options: ExplainOptions
                      ) -> Generator[ExplainEvent, None, None]:
        """Yield ReplayProgress and ExplainedDecision events, then one ExplainRangeSummary."""
        record_id = uuid.uuid4().hex
        with self.trail.audited(asker, record_id=record_id, filters=filters.__dict__,
                                **options.asked()) as summary, \
                self.candidates.runs(asker.deadline) as runs:
            options = options.checked()
            window = Window(
                lambda sha, features, outputs: self.explainer(runs, sha, features, outputs,
                                                              options),
                lambda names: _texts(options.reasons_toml, names),
                Method(options.method, options.top, options.seed, options.samples),
                self.reader.count(filters))
            yield from window.run(self.reader.decisions(filters))
            result = window.summary(record_id, options.favorable)
            summary.update({k: v for k, v in asdict(result).items() if k != "failures"})
            yield result

    # ── shared ─────────────────────────────────────────────────────────────────────────

    def explainer(self, runs: Runs, sha: str, features: Features, outputs: Sequence[Tensor],
                  options: ExplainOptions) -> Explainer:
        """The Explainer of a model (by SHA-256) for calls of this feature layout."""
        if not sha:
            raise FailedPrecondition("the record names no model")
        graph: Graph = self._cached("graph", sha, lambda: read_graph(self.reader.model(sha).onnx))
        target = resolve(options.favorable, options.output, outputs, graph.class_labels())
        baseline = self._baseline(options)
        key = json.dumps([options.reference, features.names, features.dtype.str,
                          baseline.sha256 if baseline is not None else "",
                          options.reference_rows])
        reference = self._cached("reference", key, lambda: reference_for(
            options.reference, features.names, features.dtype, baseline,
            options.reference_rows))
        explainer = Explainer(lambda: runs.model(sha), features, target, reference, graph)
        if options.method == "tree":
            explainer.tree()  # refused now, before any work, when the graph does not fit
        return explainer

    def _baseline(self, options: ExplainOptions) -> Baseline | None:
        con = self.reader.cursor()
        if options.baseline:
            name = options.baseline
        else:
            try:
                name = latest_baseline(con)
            except MlwitnessError:  # none stored: a given row may do without
                return None
        return self._cached("baseline", name, lambda: load_baseline(con, name))

    def _cached(self, kind: str, key: str, make: Any) -> Any:
        with self._lock:
            if (kind, key) in self._parsed:
                self._parsed.move_to_end((kind, key))
                return self._parsed[kind, key]
        value = make()
        with self._lock:
            self._parsed[kind, key] = value
            while len(self._parsed) > CACHED:
                self._parsed.popitem(last=False)
        return value


def _word(favorable: Any) -> str:
    return "favorable" if favorable else "unfavorable"


def _result(record: Record, row: int, explainer: Explainer, a: Attribution,
            decided: Decided, reasons: Reasons,
            flips: list[FeatureFlip], pairs: list[PairFlip], note: str, record_id: str
            ) -> ExplainResult:
    target, ref = explainer.target, explainer.reference
    x = explainer.features.matrix[row]
    return ExplainResult(
        seq=record.seq, request_id=record.request_id, row=row,
        model_sha256=record.model_sha256, method=a.method,
        explains=explainer.explains(a),
        favorable=target.favorable, output=target.explained.name, decision=decided.decision,
        favorable_outcome=decided.favorable, recorded_value=decided.value, fx=a.fx,
        reference_value=a.reference_value, total=a.total, gap=a.gap, efficient=a.efficient,
        attributions=explainer.attributions(x, a), reference=ref.description,
        reference_sha256=ref.sha256, reference_rows=a.reference_rows,
        baseline_sha256=ref.baseline_sha256, samples=a.samples or 0,
        seed=a.seed if a.seed is not None else 0, seeded=a.seed is not None,
        model_rows=a.model_rows, model_calls=a.model_calls, reasons=reasons.codes,
        harmful=reasons.harmful, zero_features=reasons.zero, ties=reasons.ties,
        cut_in_tie=reasons.cut_in_tie, flips=flips, pair_flips=pairs,
        flips_note=note, audit_request_id=record_id)
