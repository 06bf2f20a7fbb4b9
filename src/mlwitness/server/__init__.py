"""The wiring: components built from `Settings`, the gRPC servers, their lifecycle.

- `app`: the sidecar (`Sidecar`, `serve`) and the standalone audit server (`serve_audit`).
"""
