"""mlwitness: an Open Inference Protocol v2 sidecar that puts every model decision on a
hash-chained DuckDB ledger, and an audit service that replays and questions them."""

__version__ = "0.1.0"
