from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordRef(_message.Message):
    __slots__ = ("request_id", "seq")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("name", "number", "text")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: float
    text: str
    def __init__(self, name: _Optional[str] = ..., number: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: RecordRef
    def __init__(self, ref: _Optional[_Union[RecordRef, _Mapping]] = ...) -> None: ...

class RecordDetail(_message.Message):
    __slots__ = ("seq", "request_id", "kind", "received_us", "responded_us", "model_name", "model_version", "model_sha256", "env_id", "environment_json", "caller", "metadata_json", "status", "message", "violations_json", "inputs", "outputs", "prev_hash", "hash", "request_bytes", "response_bytes")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_US_FIELD_NUMBER: _ClassVar[int]
    RESPONDED_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
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
    inputs: _containers.RepeatedCompositeFieldContainer[Row]
    outputs: _containers.RepeatedCompositeFieldContainer[Row]
    prev_hash: str
    hash: str
    request_bytes: int
    response_bytes: int
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., kind: _Optional[str] = ..., received_us: _Optional[int] = ..., responded_us: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., model_sha256: _Optional[str] = ..., env_id: _Optional[str] = ..., environment_json: _Optional[str] = ..., caller: _Optional[str] = ..., metadata_json: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., violations_json: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class ListRecordsRequest(_message.Message):
    __slots__ = ("since_us", "until_us", "model", "status", "caller", "page_size", "page_token", "metadata")
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    since_us: int
    until_us: int
    model: str
    status: str
    caller: str
    page_size: int
    page_token: str
    metadata: str
    def __init__(self, since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., model: _Optional[str] = ..., status: _Optional[str] = ..., caller: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class RecordSummary(_message.Message):
    __slots__ = ("seq", "request_id", "received_us", "model_name", "model_sha256", "status", "latency_us", "caller", "batch_size", "first_output", "erased_by")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    FIRST_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERASED_BY_FIELD_NUMBER: _ClassVar[int]
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
    erased_by: int
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., received_us: _Optional[int] = ..., model_name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., status: _Optional[str] = ..., latency_us: _Optional[int] = ..., caller: _Optional[str] = ..., batch_size: _Optional[int] = ..., first_output: _Optional[_Union[Row, _Mapping]] = ..., erased_by: _Optional[int] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RecordSummary]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[RecordSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OutputDiff(_message.Message):
    __slots__ = ("name", "identical", "max_abs_diff", "max_rel_diff", "elements_differing", "max_ulps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    MAX_ULPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    identical: bool
    max_abs_diff: float
    max_rel_diff: float
    elements_differing: int
    max_ulps: float
    def __init__(self, name: _Optional[str] = ..., identical: bool = ..., max_abs_diff: _Optional[float] = ..., max_rel_diff: _Optional[float] = ..., elements_differing: _Optional[int] = ..., max_ulps: _Optional[float] = ...) -> None: ...

class EnvDifference(_message.Message):
    __slots__ = ("key", "recorded", "current")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    key: str
    recorded: str
    current: str
    def __init__(self, key: _Optional[str] = ..., recorded: _Optional[str] = ..., current: _Optional[str] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("ref", "candidate_sha256", "candidate_onnx")
    REF_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ONNX_FIELD_NUMBER: _ClassVar[int]
    ref: RecordRef
    candidate_sha256: str
    candidate_onnx: bytes
    def __init__(self, ref: _Optional[_Union[RecordRef, _Mapping]] = ..., candidate_sha256: _Optional[str] = ..., candidate_onnx: _Optional[bytes] = ...) -> None: ...

class ReplayResponse(_message.Message):
    __slots__ = ("seq", "request_id", "recorded_model_sha256", "replayed_model_sha256", "bit_identical", "outputs", "environment_differences", "recorded_outputs", "replayed_outputs", "decisions_changed", "decision_output", "verdict")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDED_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BIT_IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    RECORDED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DECISION_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    recorded_model_sha256: str
    replayed_model_sha256: str
    bit_identical: bool
    outputs: _containers.RepeatedCompositeFieldContainer[OutputDiff]
    environment_differences: _containers.RepeatedCompositeFieldContainer[EnvDifference]
    recorded_outputs: _containers.RepeatedCompositeFieldContainer[Row]
    replayed_outputs: _containers.RepeatedCompositeFieldContainer[Row]
    decisions_changed: _containers.RepeatedScalarFieldContainer[int]
    decision_output: str
    verdict: str
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., recorded_model_sha256: _Optional[str] = ..., replayed_model_sha256: _Optional[str] = ..., bit_identical: bool = ..., outputs: _Optional[_Iterable[_Union[OutputDiff, _Mapping]]] = ..., environment_differences: _Optional[_Iterable[_Union[EnvDifference, _Mapping]]] = ..., recorded_outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., replayed_outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., decisions_changed: _Optional[_Iterable[int]] = ..., decision_output: _Optional[str] = ..., verdict: _Optional[str] = ...) -> None: ...

class Override(_message.Message):
    __slots__ = ("feature", "value")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class WhatIfRequest(_message.Message):
    __slots__ = ("ref", "overrides", "all_rows", "row")
    REF_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    ALL_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    ref: RecordRef
    overrides: _containers.RepeatedCompositeFieldContainer[Override]
    all_rows: bool
    row: int
    def __init__(self, ref: _Optional[_Union[RecordRef, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[Override, _Mapping]]] = ..., all_rows: bool = ..., row: _Optional[int] = ...) -> None: ...

class WhatIfResponse(_message.Message):
    __slots__ = ("seq", "request_id", "model_sha256", "original_inputs", "counterfactual_inputs", "original_outputs", "counterfactual_outputs", "decisions_changed", "decision_output")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    COUNTERFACTUAL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COUNTERFACTUAL_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DECISION_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    model_sha256: str
    original_inputs: _containers.RepeatedCompositeFieldContainer[Row]
    counterfactual_inputs: _containers.RepeatedCompositeFieldContainer[Row]
    original_outputs: _containers.RepeatedCompositeFieldContainer[Row]
    counterfactual_outputs: _containers.RepeatedCompositeFieldContainer[Row]
    decisions_changed: _containers.RepeatedScalarFieldContainer[int]
    decision_output: str
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., original_inputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., counterfactual_inputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., original_outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., counterfactual_outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., decisions_changed: _Optional[_Iterable[int]] = ..., decision_output: _Optional[str] = ...) -> None: ...

class SensitivityRequest(_message.Message):
    __slots__ = ("ref", "feature", "start", "stop", "steps", "scale", "values", "row", "output", "threshold")
    REF_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ref: RecordRef
    feature: str
    start: float
    stop: float
    steps: int
    scale: str
    values: _containers.RepeatedScalarFieldContainer[float]
    row: int
    output: str
    threshold: float
    def __init__(self, ref: _Optional[_Union[RecordRef, _Mapping]] = ..., feature: _Optional[str] = ..., start: _Optional[float] = ..., stop: _Optional[float] = ..., steps: _Optional[int] = ..., scale: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., row: _Optional[int] = ..., output: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class SensitivityPoint(_message.Message):
    __slots__ = ("value", "outputs", "decision")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    value: float
    outputs: Row
    decision: str
    def __init__(self, value: _Optional[float] = ..., outputs: _Optional[_Union[Row, _Mapping]] = ..., decision: _Optional[str] = ...) -> None: ...

class DecisionFlip(_message.Message):
    __slots__ = ("from_value", "to_value", "from_decision", "to_decision")
    FROM_VALUE_FIELD_NUMBER: _ClassVar[int]
    TO_VALUE_FIELD_NUMBER: _ClassVar[int]
    FROM_DECISION_FIELD_NUMBER: _ClassVar[int]
    TO_DECISION_FIELD_NUMBER: _ClassVar[int]
    from_value: float
    to_value: float
    from_decision: str
    to_decision: str
    def __init__(self, from_value: _Optional[float] = ..., to_value: _Optional[float] = ..., from_decision: _Optional[str] = ..., to_decision: _Optional[str] = ...) -> None: ...

class SensitivityResponse(_message.Message):
    __slots__ = ("seq", "request_id", "feature", "recorded_value", "recorded_decision", "points", "flips", "decision_output")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_VALUE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_DECISION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    FLIPS_FIELD_NUMBER: _ClassVar[int]
    DECISION_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    feature: str
    recorded_value: float
    recorded_decision: str
    points: _containers.RepeatedCompositeFieldContainer[SensitivityPoint]
    flips: _containers.RepeatedCompositeFieldContainer[DecisionFlip]
    decision_output: str
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., feature: _Optional[str] = ..., recorded_value: _Optional[float] = ..., recorded_decision: _Optional[str] = ..., points: _Optional[_Iterable[_Union[SensitivityPoint, _Mapping]]] = ..., flips: _Optional[_Iterable[_Union[DecisionFlip, _Mapping]]] = ..., decision_output: _Optional[str] = ...) -> None: ...

class ReplayRangeRequest(_message.Message):
    __slots__ = ("since_us", "until_us", "model", "candidate_sha256", "candidate_onnx", "max_listed")
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ONNX_FIELD_NUMBER: _ClassVar[int]
    MAX_LISTED_FIELD_NUMBER: _ClassVar[int]
    since_us: int
    until_us: int
    model: str
    candidate_sha256: str
    candidate_onnx: bytes
    max_listed: int
    def __init__(self, since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., model: _Optional[str] = ..., candidate_sha256: _Optional[str] = ..., candidate_onnx: _Optional[bytes] = ..., max_listed: _Optional[int] = ...) -> None: ...

class ReplayProgress(_message.Message):
    __slots__ = ("done", "total", "elapsed_s")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    elapsed_s: float
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class ChangedDecision(_message.Message):
    __slots__ = ("seq", "request_id", "row", "recorded_decision", "replayed_decision", "inputs")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    RECORDED_DECISION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_DECISION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    row: int
    recorded_decision: str
    replayed_decision: str
    inputs: Row
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., row: _Optional[int] = ..., recorded_decision: _Optional[str] = ..., replayed_decision: _Optional[str] = ..., inputs: _Optional[_Union[Row, _Mapping]] = ...) -> None: ...

class ReplaySummary(_message.Message):
    __slots__ = ("records", "rows", "identical", "changed", "failed", "decisions_changed", "records_per_second", "replayed_model_sha256", "max_abs_diff", "failures", "max_ulps")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    MAX_ULPS_FIELD_NUMBER: _ClassVar[int]
    records: int
    rows: int
    identical: int
    changed: int
    failed: int
    decisions_changed: int
    records_per_second: float
    replayed_model_sha256: str
    max_abs_diff: float
    failures: _containers.RepeatedScalarFieldContainer[str]
    max_ulps: float
    def __init__(self, records: _Optional[int] = ..., rows: _Optional[int] = ..., identical: _Optional[int] = ..., changed: _Optional[int] = ..., failed: _Optional[int] = ..., decisions_changed: _Optional[int] = ..., records_per_second: _Optional[float] = ..., replayed_model_sha256: _Optional[str] = ..., max_abs_diff: _Optional[float] = ..., failures: _Optional[_Iterable[str]] = ..., max_ulps: _Optional[float] = ...) -> None: ...

class ReplayRangeEvent(_message.Message):
    __slots__ = ("progress", "changed", "summary")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    progress: ReplayProgress
    changed: ChangedDecision
    summary: ReplaySummary
    def __init__(self, progress: _Optional[_Union[ReplayProgress, _Mapping]] = ..., changed: _Optional[_Union[ChangedDecision, _Mapping]] = ..., summary: _Optional[_Union[ReplaySummary, _Mapping]] = ...) -> None: ...

class VerifyLedgerRequest(_message.Message):
    __slots__ = ("expect_seq", "expect_hash")
    EXPECT_SEQ_FIELD_NUMBER: _ClassVar[int]
    EXPECT_HASH_FIELD_NUMBER: _ClassVar[int]
    expect_seq: int
    expect_hash: str
    def __init__(self, expect_seq: _Optional[int] = ..., expect_hash: _Optional[str] = ...) -> None: ...

class VerifyLedgerResponse(_message.Message):
    __slots__ = ("ok", "records", "journal_records", "head_seq", "head_hash", "first_bad_seq", "problems", "decoded_checked", "decoded_not_covered", "notes", "erased_records")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DECODED_CHECKED_FIELD_NUMBER: _ClassVar[int]
    DECODED_NOT_COVERED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    ERASED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    journal_records: int
    head_seq: int
    head_hash: str
    first_bad_seq: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    decoded_checked: int
    decoded_not_covered: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    erased_records: int
    def __init__(self, ok: bool = ..., records: _Optional[int] = ..., journal_records: _Optional[int] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., first_bad_seq: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ..., decoded_checked: _Optional[int] = ..., decoded_not_covered: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ..., erased_records: _Optional[int] = ...) -> None: ...

class DriftRequest(_message.Message):
    __slots__ = ("since_us", "until_us", "model", "baseline", "reference_since_us", "reference_until_us", "features")
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SINCE_US_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    since_us: int
    until_us: int
    model: str
    baseline: str
    reference_since_us: int
    reference_until_us: int
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., model: _Optional[str] = ..., baseline: _Optional[str] = ..., reference_since_us: _Optional[int] = ..., reference_until_us: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class DriftResponse(_message.Message):
    __slots__ = ("drift", "drifted", "window_rows", "reference", "report_json")
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    drift: bool
    drifted: _containers.RepeatedScalarFieldContainer[str]
    window_rows: int
    reference: str
    report_json: str
    def __init__(self, drift: bool = ..., drifted: _Optional[_Iterable[str]] = ..., window_rows: _Optional[int] = ..., reference: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class BiasRequest(_message.Message):
    __slots__ = ("attribute", "favorable", "since_us", "until_us", "model", "privileged", "bins")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    FAVORABLE_FIELD_NUMBER: _ClassVar[int]
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    favorable: str
    since_us: int
    until_us: int
    model: str
    privileged: str
    bins: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, attribute: _Optional[str] = ..., favorable: _Optional[str] = ..., since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., model: _Optional[str] = ..., privileged: _Optional[str] = ..., bins: _Optional[_Iterable[float]] = ...) -> None: ...

class BiasGroup(_message.Message):
    __slots__ = ("group", "n", "favorable", "rate", "disparate_impact", "statistical_parity_difference", "pvalue", "pvalue_holm")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    FAVORABLE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    DISPARATE_IMPACT_FIELD_NUMBER: _ClassVar[int]
    STATISTICAL_PARITY_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    PVALUE_FIELD_NUMBER: _ClassVar[int]
    PVALUE_HOLM_FIELD_NUMBER: _ClassVar[int]
    group: str
    n: int
    favorable: int
    rate: float
    disparate_impact: float
    statistical_parity_difference: float
    pvalue: float
    pvalue_holm: float
    def __init__(self, group: _Optional[str] = ..., n: _Optional[int] = ..., favorable: _Optional[int] = ..., rate: _Optional[float] = ..., disparate_impact: _Optional[float] = ..., statistical_parity_difference: _Optional[float] = ..., pvalue: _Optional[float] = ..., pvalue_holm: _Optional[float] = ...) -> None: ...

class BiasResponse(_message.Message):
    __slots__ = ("attribute", "favorable", "privileged", "groups", "chi2", "chi2_pvalue", "dof", "has_fisher", "fisher_odds_ratio", "fisher_pvalue", "biased", "verdict", "report_json")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    FAVORABLE_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CHI2_FIELD_NUMBER: _ClassVar[int]
    CHI2_PVALUE_FIELD_NUMBER: _ClassVar[int]
    DOF_FIELD_NUMBER: _ClassVar[int]
    HAS_FISHER_FIELD_NUMBER: _ClassVar[int]
    FISHER_ODDS_RATIO_FIELD_NUMBER: _ClassVar[int]
    FISHER_PVALUE_FIELD_NUMBER: _ClassVar[int]
    BIASED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    favorable: str
    privileged: str
    groups: _containers.RepeatedCompositeFieldContainer[BiasGroup]
    chi2: float
    chi2_pvalue: float
    dof: int
    has_fisher: bool
    fisher_odds_ratio: float
    fisher_pvalue: float
    biased: bool
    verdict: str
    report_json: str
    def __init__(self, attribute: _Optional[str] = ..., favorable: _Optional[str] = ..., privileged: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[BiasGroup, _Mapping]]] = ..., chi2: _Optional[float] = ..., chi2_pvalue: _Optional[float] = ..., dof: _Optional[int] = ..., has_fisher: bool = ..., fisher_odds_ratio: _Optional[float] = ..., fisher_pvalue: _Optional[float] = ..., biased: bool = ..., verdict: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class ViolationsRequest(_message.Message):
    __slots__ = ("since_us", "until_us", "model")
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    since_us: int
    until_us: int
    model: str
    def __init__(self, since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class ViolationCount(_message.Message):
    __slots__ = ("guard", "column", "kind", "count", "refused", "first_seq", "last_seq")
    GUARD_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    guard: str
    column: str
    kind: str
    count: int
    refused: int
    first_seq: int
    last_seq: int
    def __init__(self, guard: _Optional[str] = ..., column: _Optional[str] = ..., kind: _Optional[str] = ..., count: _Optional[int] = ..., refused: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class RateBreach(_message.Message):
    __slots__ = ("seq", "received_us", "guard", "state", "estimate", "low", "high", "min", "max", "n")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_US_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
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
    def __init__(self, seq: _Optional[int] = ..., received_us: _Optional[int] = ..., guard: _Optional[str] = ..., state: _Optional[str] = ..., estimate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., n: _Optional[int] = ...) -> None: ...

class RateState(_message.Message):
    __slots__ = ("guard", "state", "n", "estimate", "low", "high", "min", "max")
    GUARD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    guard: str
    state: str
    n: int
    estimate: float
    low: float
    high: float
    min: float
    max: float
    def __init__(self, guard: _Optional[str] = ..., state: _Optional[str] = ..., n: _Optional[int] = ..., estimate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class ViolationsResponse(_message.Message):
    __slots__ = ("calls", "calls_with_violations", "refused", "violations", "rate_breaches", "rates_now")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CALLS_WITH_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    RATE_BREACHES_FIELD_NUMBER: _ClassVar[int]
    RATES_NOW_FIELD_NUMBER: _ClassVar[int]
    calls: int
    calls_with_violations: int
    refused: int
    violations: _containers.RepeatedCompositeFieldContainer[ViolationCount]
    rate_breaches: _containers.RepeatedCompositeFieldContainer[RateBreach]
    rates_now: _containers.RepeatedCompositeFieldContainer[RateState]
    def __init__(self, calls: _Optional[int] = ..., calls_with_violations: _Optional[int] = ..., refused: _Optional[int] = ..., violations: _Optional[_Iterable[_Union[ViolationCount, _Mapping]]] = ..., rate_breaches: _Optional[_Iterable[_Union[RateBreach, _Mapping]]] = ..., rates_now: _Optional[_Iterable[_Union[RateState, _Mapping]]] = ...) -> None: ...

class GetGuardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetGuardsRequest(_message.Message):
    __slots__ = ("toml", "json")
    TOML_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    toml: str
    json: str
    def __init__(self, toml: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class GuardsResponse(_message.Message):
    __slots__ = ("active", "sha256", "mode", "toml", "rates_now")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOML_FIELD_NUMBER: _ClassVar[int]
    RATES_NOW_FIELD_NUMBER: _ClassVar[int]
    active: bool
    sha256: str
    mode: str
    toml: str
    rates_now: _containers.RepeatedCompositeFieldContainer[RateState]
    def __init__(self, active: bool = ..., sha256: _Optional[str] = ..., mode: _Optional[str] = ..., toml: _Optional[str] = ..., rates_now: _Optional[_Iterable[_Union[RateState, _Mapping]]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("size", "root_hash", "note", "signed", "origin", "key_id", "created_us", "published_us")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_US_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_US_FIELD_NUMBER: _ClassVar[int]
    size: int
    root_hash: str
    note: str
    signed: bool
    origin: str
    key_id: str
    created_us: int
    published_us: int
    def __init__(self, size: _Optional[int] = ..., root_hash: _Optional[str] = ..., note: _Optional[str] = ..., signed: bool = ..., origin: _Optional[str] = ..., key_id: _Optional[str] = ..., created_us: _Optional[int] = ..., published_us: _Optional[int] = ...) -> None: ...

class InclusionProofRequest(_message.Message):
    __slots__ = ("ref", "tree_size")
    REF_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ref: RecordRef
    tree_size: int
    def __init__(self, ref: _Optional[_Union[RecordRef, _Mapping]] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProofResponse(_message.Message):
    __slots__ = ("seq", "leaf_index", "tree_size", "chain_hash", "leaf_hash", "hashes", "root_hash", "checkpoint")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASH_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    leaf_index: int
    tree_size: int
    chain_hash: str
    leaf_hash: str
    hashes: _containers.RepeatedScalarFieldContainer[str]
    root_hash: str
    checkpoint: CheckpointResponse
    def __init__(self, seq: _Optional[int] = ..., leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., chain_hash: _Optional[str] = ..., leaf_hash: _Optional[str] = ..., hashes: _Optional[_Iterable[str]] = ..., root_hash: _Optional[str] = ..., checkpoint: _Optional[_Union[CheckpointResponse, _Mapping]] = ...) -> None: ...

class ConsistencyProofRequest(_message.Message):
    __slots__ = ("from_size", "to_size")
    FROM_SIZE_FIELD_NUMBER: _ClassVar[int]
    TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    from_size: int
    to_size: int
    def __init__(self, from_size: _Optional[int] = ..., to_size: _Optional[int] = ...) -> None: ...

class ConsistencyProofResponse(_message.Message):
    __slots__ = ("from_size", "to_size", "from_root", "to_root", "hashes", "from_checkpoint", "to_checkpoint")
    FROM_SIZE_FIELD_NUMBER: _ClassVar[int]
    TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    FROM_ROOT_FIELD_NUMBER: _ClassVar[int]
    TO_ROOT_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TO_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    from_size: int
    to_size: int
    from_root: str
    to_root: str
    hashes: _containers.RepeatedScalarFieldContainer[str]
    from_checkpoint: CheckpointResponse
    to_checkpoint: CheckpointResponse
    def __init__(self, from_size: _Optional[int] = ..., to_size: _Optional[int] = ..., from_root: _Optional[str] = ..., to_root: _Optional[str] = ..., hashes: _Optional[_Iterable[str]] = ..., from_checkpoint: _Optional[_Union[CheckpointResponse, _Mapping]] = ..., to_checkpoint: _Optional[_Union[CheckpointResponse, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("ledger", "checkpoints", "publisher")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    ledger: LedgerStatus
    checkpoints: CheckpointStatus
    publisher: PublisherStatus
    def __init__(self, ledger: _Optional[_Union[LedgerStatus, _Mapping]] = ..., checkpoints: _Optional[_Union[CheckpointStatus, _Mapping]] = ..., publisher: _Optional[_Union[PublisherStatus, _Mapping]] = ...) -> None: ...

class LedgerStatus(_message.Message):
    __slots__ = ("chain_id", "head_seq", "head_hash", "loaded_seq", "healthy", "writable")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    LOADED_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    head_seq: int
    head_hash: str
    loaded_seq: int
    healthy: bool
    writable: bool
    def __init__(self, chain_id: _Optional[str] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., loaded_seq: _Optional[int] = ..., healthy: bool = ..., writable: bool = ...) -> None: ...

class CheckpointStatus(_message.Message):
    __slots__ = ("state", "detail", "tree_size", "size", "root_hash", "created_us", "age_s", "signed", "origin", "key_id", "failures", "last_error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_US_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    state: str
    detail: str
    tree_size: int
    size: int
    root_hash: str
    created_us: int
    age_s: float
    signed: bool
    origin: str
    key_id: str
    failures: int
    last_error: str
    def __init__(self, state: _Optional[str] = ..., detail: _Optional[str] = ..., tree_size: _Optional[int] = ..., size: _Optional[int] = ..., root_hash: _Optional[str] = ..., created_us: _Optional[int] = ..., age_s: _Optional[float] = ..., signed: bool = ..., origin: _Optional[str] = ..., key_id: _Optional[str] = ..., failures: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class PublisherStatus(_message.Message):
    __slots__ = ("directory", "state", "last_error", "failures", "published_size", "published_us", "age_s")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_SIZE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_US_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    directory: str
    state: str
    last_error: str
    failures: int
    published_size: int
    published_us: int
    age_s: float
    def __init__(self, directory: _Optional[str] = ..., state: _Optional[str] = ..., last_error: _Optional[str] = ..., failures: _Optional[int] = ..., published_size: _Optional[int] = ..., published_us: _Optional[int] = ..., age_s: _Optional[float] = ...) -> None: ...

class EraseRequest(_message.Message):
    __slots__ = ("request_id", "parameter", "value", "since_us", "until_us", "reason", "dry_run", "no_compact")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    NO_COMPACT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    parameter: str
    value: str
    since_us: int
    until_us: int
    reason: str
    dry_run: bool
    no_compact: bool
    def __init__(self, request_id: _Optional[str] = ..., parameter: _Optional[str] = ..., value: _Optional[str] = ..., since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., reason: _Optional[str] = ..., dry_run: bool = ..., no_compact: bool = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class EraseResponse(_message.Message):
    __slots__ = ("dry_run", "matched", "erased", "already_erased", "admin_seq", "seqs", "compacted", "journal_segments", "notes")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_ERASED_FIELD_NUMBER: _ClassVar[int]
    ADMIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    matched: int
    erased: int
    already_erased: int
    admin_seq: int
    seqs: _containers.RepeatedCompositeFieldContainer[SeqRange]
    compacted: bool
    journal_segments: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dry_run: bool = ..., matched: _Optional[int] = ..., erased: _Optional[int] = ..., already_erased: _Optional[int] = ..., admin_seq: _Optional[int] = ..., seqs: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ..., compacted: bool = ..., journal_segments: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
