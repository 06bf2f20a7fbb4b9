"""The model: an ONNX file as mlwitness loads, describes and runs it.

- `runtime`: `OnnxModel`, the model in onnxruntime (serving, replay, baselines).
- `signature`: its tensor signature (names, v2 datatypes, shapes) and the checks a request
  must pass against it.
- `external_data`: the check that a model is self-contained (no external data files).
- `modelfile`: the forwarding sidecar's pin on the model file an upstream serves.
- `sandbox`: a worker process that runs auditors' models bounded in memory and time.
"""
