"""Why this decision: attributions, reason codes and the nearest change that flips it.

Plain numpy over a model function ``f(X[n, M]) -> y[n]`` (for the audit service, a replay
of the recorded ONNX bytes): no gRPC, no ledger. Methods: `exact_shapley` (all 2^M
coalitions, one batched model call), `kernel_shapley` (KernelSHAP, seeded) and `tree_shap`
(interventional TreeSHAP read from a `TreeEnsemble`, no model call). `reasons` ranks the
features that pushed a decision away from the favourable outcome; `flip` finds the
smallest single-feature (or pair) change that changes the decision.
"""
