"""The inference side: every ModelInfer call answered and recorded, free of gRPC.

- `service`: `InferenceService`, one call → one ledger record, through the inline guards.
- `minimise`: inputs and request parameters stored hashed or redacted.
- `refusals`: calls refused before they are read, tallied into one record an interval.
- `backends`: where a decision is computed — embedded onnxruntime or an upstream v2 server.
"""
