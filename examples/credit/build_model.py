"""Build the demo credit-approval model that mlwitness serves in the examples.

Importable module and script::

    python examples/credit/build_model.py --out-dir DIR [--rows N] [--seed S] [--variant v2]

Writes ``credit.onnx`` (or ``credit_v2.onnx``), ``train.csv`` and ``features.txt``.
The ONNX model has one input ``input`` (FP32, [None, 6], columns as in ``FEATURES``) and
two outputs: ``label`` (INT64, [None]) and ``probabilities`` (FP32, [None, 2]).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import ModelProto
from onnx.helper import make_opsetid
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FEATURES: tuple[str, ...] = (
    "income",
    "debt_ratio",
    "fico",
    "age",
    "years_employed",
    "open_loans",
)
AGE_BANDS: tuple[str, ...] = ("18-25", "26-40", "41-60", "61+")
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
MODEL_FILES: dict[str, str] = {"v1": "credit.onnx", "v2": "credit_v2.onnx"}


@dataclass(frozen=True)
class BuildOutputs:
    """Paths written by :func:`train_and_export`."""

    model: Path
    train_csv: Path
    features: Path


def age_band(age: np.ndarray) -> np.ndarray:
    """Map ages to the bands in ``AGE_BANDS`` ("18-25", "26-40", "41-60", "61+")."""
    idx = np.digitize(age, [26, 41, 61])
    return np.asarray(AGE_BANDS, dtype=object)[idx]


def make_dataset(n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Draw a deterministic synthetic credit-applicant data set.

    Returns a dict of equal-length columns: the six float64 features in ``FEATURES``
    order, ``age_band`` (object array of str) and ``approved`` (int64, 0/1). Values are
    rounded so that they survive a CSV round trip exactly. The label is drawn from a
    logistic function of the features with an approval rate of roughly 40%.
    """
    rng = np.random.default_rng(seed)
    income = np.round(np.exp(rng.normal(np.log(55_000.0), 0.5, n_rows)), 2)
    age = np.clip(np.round(18.0 + rng.gamma(2.5, 9.0, n_rows)), 18, 90)
    fico = np.round(rng.normal(690.0, 70.0, n_rows) + 40.0 * np.log(income / 55_000.0))
    fico = np.clip(fico, 300, 850)
    debt_ratio = np.round(np.clip(rng.beta(2.0, 5.0, n_rows) * 1.5, 0.0, 1.5), 4)
    years_employed = np.minimum(age - 18.0, rng.gamma(2.0, 4.0, n_rows))
    years_employed = np.round(np.clip(years_employed, 0.0, 45.0), 1)
    open_loans = np.clip(rng.poisson(3.0, n_rows), 0, 15).astype(np.float64)

    logit = (
        -0.75
        + 1.0 * np.log(income / 55_000.0)
        - 4.0 * (debt_ratio - 0.43)
        + 0.025 * (fico - 690.0)
        + 0.05 * (years_employed - 7.0)
        - 0.12 * (open_loans - 3.0)
        + 0.005 * (age - 40.0)
    )
    approved = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return {
        "income": income,
        "debt_ratio": debt_ratio,
        "fico": fico,
        "age": age,
        "years_employed": years_employed,
        "open_loans": open_loans,
        "age_band": age_band(age),
        "approved": approved,
    }


def feature_matrix(data: dict[str, np.ndarray]) -> np.ndarray:
    """Stack the numeric features of ``data`` into a float32 [n, 6] model input."""
    return np.column_stack([data[name] for name in FEATURES]).astype(np.float32)


def make_pipeline(variant: str = "v1") -> Pipeline:
    """Return the untrained sklearn pipeline for ``variant`` ("v1" or "v2")."""
    if variant == "v1":
        clf: LogisticRegression | GradientBoostingClassifier = LogisticRegression(
            C=1.0, max_iter=1000
        )
    elif variant == "v2":
        clf = GradientBoostingClassifier(n_estimators=60, max_depth=2, random_state=0)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(MODEL_FILES)}")
    return Pipeline([("scaler", StandardScaler()), ("clf", clf)])


def canonicalize(model: ModelProto) -> ModelProto:
    """Dedupe and sort ``opset_import``: skl2onnx emits it in hash-seed-dependent order."""
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        versions[opset.domain] = max(opset.version, versions.get(opset.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(make_opsetid(d, v) for d, v in sorted(versions.items()))
    return model


def write_csv(data: dict[str, np.ndarray], path: Path) -> None:
    """Write the data set as CSV: the six features, age_band, approved."""
    columns = [*FEATURES, "age_band", "approved"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in zip(*(data[c].tolist() for c in columns), strict=True):
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row])


def train_and_export(
    out_dir: str | Path, n_rows: int = 20_000, seed: int = 7, variant: str = "v1"
) -> BuildOutputs:
    """Train the ``variant`` model on ``make_dataset(n_rows, seed)`` and write its files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = make_dataset(n_rows, seed)
    x = np.column_stack([data[name] for name in FEATURES])
    pipe = make_pipeline(variant)
    pipe.fit(x, data["approved"])

    onx = convert_sklearn(
        pipe,
        name=f"credit_{variant}",
        initial_types=[("input", FloatTensorType([None, len(FEATURES)]))],
        options={id(pipe.named_steps["clf"]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    outputs = BuildOutputs(
        model=out / MODEL_FILES[variant],
        train_csv=out / "train.csv",
        features=out / "features.txt",
    )
    outputs.model.write_bytes(canonicalize(onx).SerializeToString())
    write_csv(data, outputs.train_csv)
    outputs.features.write_text(",".join(FEATURES) + "\n", encoding="utf-8")
    return outputs


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path, help="output directory")
    parser.add_argument("--rows", type=int, default=20_000, help="training rows")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    parser.add_argument("--variant", choices=sorted(MODEL_FILES), default="v1")
    args = parser.parse_args(argv)
    outputs = train_and_export(args.out_dir, n_rows=args.rows, seed=args.seed, variant=args.variant)
    for path in (outputs.model, outputs.train_csv, outputs.features):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
