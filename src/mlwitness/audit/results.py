"""What the audit service answers: one frozen dataclass per answer and per part of one.

Field names are those of the audit API's messages (protos/mlwitness/protocol/audit.proto),
so that `mlwitness.wire.audit_convert` maps them by name, and its tests fail when the two
part. A `Row` is one row of named values: a number, or text for a BYTES tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Row = Mapping[str, object]


# ── records ────────────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class RecordDetail:
    seq: int
    request_id: str
    kind: str
    received_us: int
    responded_us: int
    model_name: str
    model_version: str
    model_sha256: str
    env_id: str
    environment_json: str
    caller: str
    metadata_json: str
    status: str
    message: str
    violations_json: str
    inputs: Sequence[Row]
    outputs: Sequence[Row]
    prev_hash: str  # hex
    hash: str  # hex
    request_bytes: int
    response_bytes: int


@dataclass(frozen=True)
class RecordSummary:
    seq: int
    request_id: str
    received_us: int
    model_name: str
    model_sha256: str
    status: str
    latency_us: int
    caller: str
    batch_size: int
    first_output: Row
    erased_by: int = 0  # seq of the admin record that erased its payload; 0: kept
    chain_id: str = ""  # over a fleet: the chain that holds it


@dataclass(frozen=True)
class RecordPage:
    records: Sequence[RecordSummary]
    next_page_token: str  # empty: no more


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    journal_records: int
    head_seq: int
    head_hash: str
    first_bad_seq: int  # 0 when ok
    problems: Sequence[str]
    decoded_checked: int
    decoded_not_covered: int
    notes: Sequence[str]
    erased_records: int = 0


# ── erasure ────────────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class SeqRange:
    first: int
    last: int


@dataclass(frozen=True)
class EraseResult:
    dry_run: bool
    matched: int  # inference records the selector matches
    erased: int  # erased now (a dry run: would be)
    already_erased: int
    admin_seq: int  # the erasure's admin record; 0: none was written
    seqs: Sequence[SeqRange]
    compacted: bool  # the DuckDB file was rewritten without the erased bytes
    journal_segments: int  # journal segments overwritten and deleted
    notes: Sequence[str]


# ── replay, what-if, sensitivity ───────────────────────────────────────────────────────

@dataclass(frozen=True)
class OutputDiff:
    name: str
    identical: bool  # byte for byte
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    elements_differing: int = 0  # elements whose bits differ
    max_ulps: float = 0.0  # `mlwitness.audit.replay.ulps`; infinity: no distance (text, shape)


@dataclass(frozen=True)
class EnvDifference:
    key: str
    recorded: str
    current: str


@dataclass(frozen=True)
class ReplayResult:
    seq: int
    request_id: str
    recorded_model_sha256: str
    replayed_model_sha256: str
    bit_identical: bool
    outputs: Sequence[OutputDiff]
    environment_differences: Sequence[EnvDifference]
    recorded_outputs: Sequence[Row]
    replayed_outputs: Sequence[Row]
    decisions_changed: Sequence[int]  # rows whose decision differs
    decision_output: str  # how a row's decision was read
    verdict: str = ""  # bit-identical, rounding (and why), or material


@dataclass(frozen=True)
class WhatIfResult:
    seq: int
    request_id: str
    model_sha256: str
    original_inputs: Sequence[Row]
    counterfactual_inputs: Sequence[Row]
    original_outputs: Sequence[Row]
    counterfactual_outputs: Sequence[Row]
    decisions_changed: Sequence[int]
    decision_output: str


@dataclass(frozen=True)
class SensitivityPoint:
    value: float
    outputs: Row
    decision: str


@dataclass(frozen=True)
class DecisionFlip:
    from_value: float
    to_value: float
    from_decision: str
    to_decision: str


@dataclass(frozen=True)
class SensitivityResult:
    seq: int
    request_id: str
    feature: str
    recorded_value: float
    recorded_decision: str
    points: Sequence[SensitivityPoint]
    flips: Sequence[DecisionFlip]
    decision_output: str


# ── traffic replay: the events of one ReplayRange question ─────────────────────────────

@dataclass(frozen=True)
class ReplayProgress:
    done: int
    total: int
    elapsed_s: float


@dataclass(frozen=True)
class ChangedDecision:
    seq: int
    request_id: str
    row: int
    recorded_decision: str
    replayed_decision: str
    inputs: Row


@dataclass(frozen=True)
class ReplaySummary:
    records: int
    rows: int
    identical: int  # records whose outputs are bit-identical
    changed: int  # records with any output difference
    failed: int  # records that could not be replayed
    decisions_changed: int  # rows whose decision differs
    records_per_second: float
    replayed_model_sha256: str  # empty: each record's own model
    max_abs_diff: float
    failures: Sequence[str]  # the first few reasons
    max_ulps: float = 0.0  # over every output of every changed record


ReplayEvent = ReplayProgress | ChangedDecision | ReplaySummary


# ── monitoring: drift, bias, guards ────────────────────────────────────────────────────

@dataclass(frozen=True)
class DriftResult:
    drift: bool  # any feature or output has a drift verdict
    drifted: Sequence[str]
    window_rows: int
    reference: str  # "baseline <sha>" or "window …"
    report_json: str  # every statistic per feature


@dataclass(frozen=True)
class BiasGroup:
    group: str
    n: int
    favorable: int
    rate: float
    disparate_impact: float
    statistical_parity_difference: float
    pvalue: float
    pvalue_holm: float


@dataclass(frozen=True)
class BiasResult:
    attribute: str
    favorable: str
    privileged: str
    groups: Sequence[BiasGroup]
    chi2: float
    chi2_pvalue: float
    dof: int
    has_fisher: bool
    fisher_odds_ratio: float
    fisher_pvalue: float
    biased: bool
    verdict: str
    report_json: str


@dataclass(frozen=True)
class ViolationCount:
    guard: str
    column: str
    kind: str
    count: int
    refused: int  # calls refused for it (enforce mode)
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class RateBreach:
    seq: int
    received_us: int
    guard: str
    state: str
    estimate: float
    low: float
    high: float
    min: float
    max: float
    n: int


@dataclass(frozen=True)
class RateState:
    guard: str
    state: str  # insufficient, ok, breach_low, breach_high
    n: int
    estimate: float
    low: float
    high: float
    min: float
    max: float


@dataclass(frozen=True)
class ViolationsResult:
    calls: int  # inference records in the window
    calls_with_violations: int
    refused: int
    violations: Sequence[ViolationCount]
    rate_breaches: Sequence[RateBreach]
    rates_now: Sequence[RateState]  # live rate windows (the sidecar's only)


@dataclass(frozen=True)
class GuardsState:
    active: bool
    sha256: str = ""
    mode: str = ""  # observe or enforce
    toml: str = ""
    rates_now: Sequence[RateState] = ()


# ── evidence: checkpoints, proofs, status ──────────────────────────────────────────────

@dataclass(frozen=True)
class CheckpointInfo:
    size: int  # 0: no such checkpoint
    root_hash: str  # hex
    note: str  # as published: a signed note, or its text alone (unsigned)
    signed: bool
    origin: str
    key_id: str
    created_us: int
    published_us: int  # 0: not (yet)


@dataclass(frozen=True)
class InclusionProofResult:
    seq: int
    leaf_index: int
    tree_size: int
    chain_hash: str  # hex
    leaf_hash: str  # hex
    hashes: Sequence[str]  # hex, the leaf's sibling first
    root_hash: str  # hex
    checkpoint: CheckpointInfo


@dataclass(frozen=True)
class EvidenceBundle:
    """A record's evidence bundle: its JSON bytes (format mlwitness-evidence/1), their
    size and SHA-256 (hex); record `seq`, proven in the checkpoint of `tree_size`."""

    data: bytes
    total_bytes: int
    sha256: str
    seq: int
    tree_size: int


@dataclass(frozen=True)
class ConsistencyProofResult:
    from_size: int
    to_size: int
    from_root: str  # hex
    to_root: str  # hex
    hashes: Sequence[str]  # hex
    from_checkpoint: CheckpointInfo
    to_checkpoint: CheckpointInfo


@dataclass(frozen=True)
class LedgerStatus:
    chain_id: str
    head_seq: int
    head_hash: str  # hex
    loaded_seq: int
    healthy: bool
    writable: bool


@dataclass(frozen=True)
class CheckpointStatus:
    state: str
    detail: str
    tree_size: int
    size: int
    root_hash: str  # hex
    created_us: int
    age_s: float
    signed: bool
    origin: str
    key_id: str
    failures: int
    last_error: str


@dataclass(frozen=True)
class PublisherStatus:
    directory: str
    state: str
    last_error: str
    failures: int
    published_size: int
    published_us: int
    age_s: float


@dataclass(frozen=True)
class ArchiveStatus:
    """Shipping to --archive (a sidecar), or the archive a fleet audit-server reads."""

    url: str
    state: str  # off; starting; ok; failing; fleet (an audit-server over the archive)
    chain_id: str
    archived_seq: int
    loaded_seq: int
    lag_records: int
    lag_s: float
    failures: int
    last_error: str
    segments_shipped: int
    last_shipped_us: int
    retention_days: float
    pruned_seq: int
    retention_error: str
    chains: int


def no_archive(state: str = "off", url: str = "", chains: int = 0) -> ArchiveStatus:
    return ArchiveStatus(url=url, state=state, chain_id="", archived_seq=0, loaded_seq=0,
                         lag_records=0, lag_s=0.0, failures=0, last_error="",
                         segments_shipped=0, last_shipped_us=0, retention_days=0.0,
                         pruned_seq=0, retention_error="", chains=chains)


@dataclass(frozen=True)
class Status:
    """The health detail: one part per concern (a new concern adds a part)."""

    ledger: LedgerStatus
    checkpoints: CheckpointStatus
    publisher: PublisherStatus
    archive: ArchiveStatus = field(default_factory=no_archive)


# ── explanations: why a decision came out as it did ────────────────────────────────────

@dataclass(frozen=True)
class FeatureAttribution:
    feature: str
    value: float  # the applicant's, as the model received it
    reference: float  # the reference set's median (the value a reason quotes)
    attribution: float  # this feature's share of fx - reference_value


@dataclass(frozen=True)
class ReasonCode:
    rank: int  # 1 = the feature that counted most against the favourable outcome
    feature: str
    attribution: float  # of the explained output (the same number as in `attributions`)
    value: float
    reference: float
    direction: str  # below, above or equal: the applicant's value against the reference
    text: str  # from the reasons file ("" when it has none for this feature)


@dataclass(frozen=True)
class TieGroup:
    features: Sequence[str]  # harmful features whose attributions are equal


@dataclass(frozen=True)
class FeatureFlip:
    feature: str
    value: float
    found: bool  # False: no single change within the observed range flips the decision
    to_value: float
    direction: str  # up or down ("" when not found)
    distance: float  # |to_value - value|
    tolerance: float  # to_value lies at most this far beyond where the decision changes
    to_decision: str  # favorable or unfavorable


@dataclass(frozen=True)
class PairFlip:
    features: Sequence[str]  # the two features
    values: Sequence[float]
    found: bool
    to_values: Sequence[float]
    distance: float  # range-normalised: sqrt(di^2 + dj^2), d = change / (max - min)
    to_decision: str


@dataclass(frozen=True)
class ExplainResult:
    seq: int
    request_id: str
    row: int
    model_sha256: str  # the recorded model the explanation ran on
    method: str  # exact, kernel or tree
    explains: str  # what f is, in words
    favorable: str  # the rule naming the favourable outcome, e.g. label=1
    output: str  # the explained output column, e.g. probabilities_1
    decision: str  # the recorded decision of this row
    favorable_outcome: bool
    recorded_value: float  # the explained output column as recorded
    fx: float  # f(x) as the explanation computed it
    reference_value: float  # mean f over the reference rows
    total: float  # sum of the attributions
    gap: float  # total - (fx - reference_value)
    efficient: bool  # |gap| <= 1e-6
    attributions: Sequence[FeatureAttribution]
    reference: str  # what the reference set is, in words
    reference_sha256: str
    reference_rows: int
    baseline_sha256: str  # "" when no baseline was used
    samples: int  # coalitions evaluated (0 for tree)
    seed: int
    seeded: bool  # coalitions were sampled with `seed`
    model_rows: int
    model_calls: int
    reasons: Sequence[ReasonCode]
    harmful: int  # features that counted against the favourable outcome
    zero_features: Sequence[str]  # attributions that count as zero: never reasons
    ties: Sequence[TieGroup]
    cut_in_tie: bool  # the last reason ties with a harmful feature not listed
    flips: Sequence[FeatureFlip]
    pair_flips: Sequence[PairFlip]
    flips_note: str  # why there are no flips, when there are none
    audit_request_id: str  # the request id of this question's audit record


@dataclass(frozen=True)
class ExplainedDecision:
    """One decision of an ExplainRange question: a row of the reason-code report."""

    seq: int
    request_id: str
    row: int
    received_us: int
    model_sha256: str
    decision: str
    favorable_outcome: bool
    recorded_value: float
    fx: float
    reference_value: float
    efficient: bool
    attributions: Sequence[FeatureAttribution]
    reasons: Sequence[ReasonCode]


@dataclass(frozen=True)
class ExplainRangeSummary:
    records: int
    decisions: int
    failed: int  # records that could not be explained
    failures: Sequence[str]  # the first few reasons
    decisions_per_second: float
    method: str
    favorable: str
    explains: Sequence[str]  # per model
    reference: Sequence[str]  # per feature set: "<sha256> <description>"
    baseline_sha256: str
    samples: int
    seed: int
    seeded: bool
    results_sha256: str  # of the decisions as streamed (docs/explain.md)
    audit_request_id: str


ExplainEvent = ReplayProgress | ExplainedDecision | ExplainRangeSummary


# ── outcomes, reviews, quality, the report ─────────────────────────────────────────────

@dataclass(frozen=True)
class OutcomesRecorded:
    recorded: int
    duplicates: int  # already on the chain: not added again
    superseding: int  # recorded for a decision row that already had an outcome
    first_seq: int  # 0 when nothing was recorded
    last_seq: int


@dataclass(frozen=True)
class ReviewRecorded:
    seq: int
    decision_seq: int
    reviewer: str
    overrides: bool  # the decision made differs from the model's


@dataclass(frozen=True)
class QualityResult:
    decisions: int
    with_outcome: int
    coverage: float  # NaN: no decisions
    accuracy: float  # NaN where undefined
    precision: float
    recall: float
    roc_auc: float
    brier: float
    review_rate: float
    override_rate: float
    report_json: str


@dataclass(frozen=True)
class ReportChunk:
    """A part of the report's file; the last one (no html) says what the whole is."""

    html: bytes = b""
    sha256: str = ""  # of the whole file, in the last chunk
    size: int = 0
    head_seq: int = 0  # the last record the report read
