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
    __slots__ = ("since_us", "until_us", "model", "status", "caller", "page_size", "page_token")
    SINCE_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    since_us: int
    until_us: int
    model: str
    status: str
    caller: str
    page_size: int
    page_token: str
    def __init__(self, since_us: _Optional[int] = ..., until_us: _Optional[int] = ..., model: _Optional[str] = ..., status: _Optional[str] = ..., caller: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RecordSummary(_message.Message):
    __slots__ = ("seq", "request_id", "received_us", "model_name", "model_sha256", "status", "latency_us", "caller", "batch_size", "first_output")
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
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., received_us: _Optional[int] = ..., model_name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., status: _Optional[str] = ..., latency_us: _Optional[int] = ..., caller: _Optional[str] = ..., batch_size: _Optional[int] = ..., first_output: _Optional[_Union[Row, _Mapping]] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RecordSummary]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[RecordSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OutputDiff(_message.Message):
    __slots__ = ("name", "identical", "max_abs_diff", "max_rel_diff", "elements_differing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    name: str
    identical: bool
    max_abs_diff: float
    max_rel_diff: float
    elements_differing: int
    def __init__(self, name: _Optional[str] = ..., identical: bool = ..., max_abs_diff: _Optional[float] = ..., max_rel_diff: _Optional[float] = ..., elements_differing: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("seq", "request_id", "recorded_model_sha256", "replayed_model_sha256", "bit_identical", "outputs", "environment_differences", "recorded_outputs", "replayed_outputs", "decisions_changed", "decision_output")
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
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., recorded_model_sha256: _Optional[str] = ..., replayed_model_sha256: _Optional[str] = ..., bit_identical: bool = ..., outputs: _Optional[_Iterable[_Union[OutputDiff, _Mapping]]] = ..., environment_differences: _Optional[_Iterable[_Union[EnvDifference, _Mapping]]] = ..., recorded_outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., replayed_outputs: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., decisions_changed: _Optional[_Iterable[int]] = ..., decision_output: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("records", "rows", "identical", "changed", "failed", "decisions_changed", "records_per_second", "replayed_model_sha256", "max_abs_diff", "failures")
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
    def __init__(self, records: _Optional[int] = ..., rows: _Optional[int] = ..., identical: _Optional[int] = ..., changed: _Optional[int] = ..., failed: _Optional[int] = ..., decisions_changed: _Optional[int] = ..., records_per_second: _Optional[float] = ..., replayed_model_sha256: _Optional[str] = ..., max_abs_diff: _Optional[float] = ..., failures: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyLedgerResponse(_message.Message):
    __slots__ = ("ok", "records", "journal_records", "head_seq", "head_hash", "first_bad_seq", "problems")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    journal_records: int
    head_seq: int
    head_hash: str
    first_bad_seq: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: bool = ..., records: _Optional[int] = ..., journal_records: _Optional[int] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., first_bad_seq: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...
