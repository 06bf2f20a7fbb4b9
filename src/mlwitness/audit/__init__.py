"""The audit side: read the ledger, replay decisions, ask what-if questions.

Plain Python over DuckDB, numpy and onnxruntime; `mlwitness.wire.audit` serves it over gRPC.
"""
