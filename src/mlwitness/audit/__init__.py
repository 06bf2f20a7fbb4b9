"""The audit side: replay decisions, ask what-if questions, answer auditors.

Plain Python over DuckDB (through `mlwitness.ledger.reader`), numpy and onnxruntime;
`mlwitness.wire.audit` serves it over gRPC.
"""
