"""Analytics over recorded decisions and what became of them, as pure functions of arrays.

- `quality`: model quality once outcomes are known (accuracy, precision, recall, ROC AUC,
  Brier score, calibration, error rates by group), outcome coverage and label delay.
- `review`: how often people review the model's decisions, override them, agree with them.
- `intervals`: the `Estimate` every figure comes as — value, interval, method — and the
  interval methods (Wilson, Newcombe, DeLong, normal).

Nothing here reads the ledger: callers fetch the columns (SQL aggregates or arrays) and pass
them in, so the same code serves the audit service, the CLI and the auditor's report.
"""
