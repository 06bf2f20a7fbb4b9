"""The ledger: append-only, hash-chained records in DuckDB, made durable through a journal."""

from mlwitness.ledger.record import Record

__all__ = ["Record"]
