"""Guards: what a model's inputs and outputs may be, and whether they were.

- `file`: the guard file (TOML): `GuardConfig`, `FieldGuard`, load, validate, write back.
- `rules`: `GuardSet`, a guard file compiled into vectorised per-row checks (`Violation`s).
- `rates`: rate bounds, checked over a sliding window of decisions (`RateTracker`).
- `checks`: the inline checks the sidecar runs on every call, and the record of them.
- `suggestions`: a guard file drafted from a baseline.
- `violations`: guard violations and rate breaches over a window of the ledger, in SQL.
"""
