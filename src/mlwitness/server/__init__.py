"""The wiring: components built from `Settings`, the gRPC servers, their lifecycle.

- `sidecar`: `Sidecar` (creates, starts and stops every component and port) and `serve`.
- `audit_server`: the audit port, and `mlwitness audit-server` (`serve_audit`).
- `port`: `GrpcPort`, one listening gRPC server with health, reflection and TLS.
- `watch`: health refreshed and edited guard, access and model files picked up.
- `columns`: the ledger's column names for the model; start-up checks of named columns.
- `admin`: what goes on the ledger besides calls: features, baseline, guards, model versions.
- `lifecycle`: `run_until_signal`, shared by `serve` and `audit-server`.
"""
