"""Analytics over recorded decisions and what became of them.

- `stats`: the statistics core (PSI, KS, χ², Fisher, Wilson…) from counts and sorted values.
- `baseline`: a profile of the training data (and of the model's outputs on it).
- `drift`, `bias`: a ledger window against a baseline or another window, and outcome rates
  across groups, computed by DuckDB queries over the ledger's views plus `stats`.
- `quality`: model quality once outcomes are known (accuracy, precision, recall, ROC AUC,
  Brier score, calibration, error rates by group), outcome coverage and label delay.
- `review`: how often people review the model's decisions, override them, agree with them.
- `intervals`: the `Estimate` every figure comes as — value, interval, method — and the
  interval methods (Wilson, Newcombe, DeLong, normal).

`stats`, `quality`, `review` and `intervals` are pure functions of arrays: callers fetch
the columns (SQL aggregates or arrays) and pass them in, so the same code serves the audit
service, the CLI and the auditor's report. `baseline`, `drift` and `bias` read the ledger
through a DuckDB connection they are given.
"""
