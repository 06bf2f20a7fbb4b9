"""A 100-feature model for the benchmarks: bigger tensors through the same request path.

    python bench/wide_model.py --out-dir DIR [--rows 5000] [--seed 7]

Writes `wide100.onnx`, `train.csv` and `features.txt` into DIR, like
examples/credit/build_model.py does for the demo model: a scikit-learn StandardScaler +
LogisticRegression on 100 synthetic FP32 features (`f000` … `f099`, standard normal, the
label drawn from a logistic function of the first 20), exported with skl2onnx. One input
`input` (FP32, [None, 100]); outputs `label` (INT64, [None]) and `probabilities` (FP32,
[None, 2]), the demo model's names and types. The model itself stays cheap (one matrix
product) so that what grows is what the servers parse, copy, record and answer per row:
400 B of input per row instead of 24.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from onnx.helper import make_opsetid
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

WIDTH = 100
FEATURES: tuple[str, ...] = tuple(f"f{i:03d}" for i in range(WIDTH))
LABEL = "approved"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # as examples/credit/build_model.py


def make_dataset(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(0.0, 1.0, (rows, WIDTH)), 4)  # rounded: exact through CSV
    weights = np.zeros(WIDTH)
    weights[:20] = rng.normal(0.0, 0.5, 20)
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-(x @ weights)))).astype(np.int64)
    return x, y


def build(out_dir: Path, rows: int = 5000, seed: int = 7) -> Path:
    """Train and export the model; return the ONNX file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = make_dataset(rows, seed)
    pipe = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    pipe.fit(x, y)
    onx = convert_sklearn(
        pipe,
        name="wide100",
        initial_types=[("input", FloatTensorType([None, WIDTH]))],
        options={id(pipe.named_steps["clf"]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx lists opset_import in a hash-seed-dependent order: sort it so the file (and
    # the SHA-256 every record pins) is the same on every build.
    versions: dict[str, int] = {}
    for opset in onx.opset_import:
        versions[opset.domain] = max(opset.version, versions.get(opset.domain, 0))
    del onx.opset_import[:]
    onx.opset_import.extend(make_opsetid(d, v) for d, v in sorted(versions.items()))
    model = out_dir / "wide100.onnx"
    model.write_bytes(onx.SerializeToString())
    with (out_dir / "train.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*FEATURES, LABEL])
        for row, label in zip(x.tolist(), y.tolist(), strict=True):
            writer.writerow([*(repr(v) for v in row), label])
    (out_dir / "features.txt").write_text(",".join(FEATURES) + "\n", encoding="utf-8")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=5000, help="training rows")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    model = build(args.out_dir, args.rows, args.seed)
    print(f"wrote {model} ({model.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
