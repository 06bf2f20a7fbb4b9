"""What the audit service answers: one frozen dataclass per answer and per part of one.

Field names are those of the audit API's messages (protos/mlwitness/protocol/audit.proto),
so that `mlwitness.wire.audit_convert` maps them by name, and its tests fail when the two
part. A `Row` is one row of named values: a number, or text for a BYTES tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
class Status:
    """The health detail: one part per concern (a new concern adds a part)."""

    ledger: LedgerStatus
    checkpoints: CheckpointStatus
    publisher: PublisherStatus
