"""Baselines: a profile of the training data (and of the model's outputs on it).

A baseline is what drift is measured against. It is built from a CSV or Parquet file read
with DuckDB and serialised as canonical JSON (sorted keys, no whitespace), whose SHA-256
identifies it; it is stored in the ledger's ``baselines`` table.

Conventions
-----------
* **Missing** = NULL, NaN or ±inf: no mean, quantile or bin can be formed from them.
  ``count`` is the number of finite values, so ``count + missing == n_rows``.
* Numeric columns: ``mean``; ``std`` is the sample standard deviation (ddof = 1, ``None``
  below 2 values); quantiles at 1, 5, 25, 50, 75, 95, 99 % use linear interpolation
  (numpy's default, DuckDB's ``quantile_cont``), keyed ``"p1"`` … ``"p99"``.
  ``edges`` = :func:`stats.quantile_edges` (first −inf, last +inf), ``counts`` =
  :func:`stats.bin_counts` over the same values; ``sample`` is sorted ascending: every
  finite value when there are at most ``sample_size``, else ``sample_size`` values drawn
  without replacement by ``numpy.random.default_rng(seed)``.
* Text (and boolean, date…) columns: value frequencies of the non-NULL values as text.
* Model outputs are profiled under the column names the ledger gives them
  (:class:`~mlwitness.ledger.rows.Tabulator`: ``label``, ``probabilities_0``, …). A numeric
  output whose finite values are all integers with at most ``MAX_CATEGORIES`` distinct
  values is *also* profiled as categorical, keyed by the integer as text (``"0"``, ``"1"``);
  so is the ``label`` column of the data file (the class rates of the training set).
* JSON has no infinities or NaN: ±inf is written as the strings ``"Infinity"`` /
  ``"-Infinity"`` and NaN as ``null`` (:func:`json_safe`).
* ``rows`` (format ``mlwitness.baseline/2``): a joint sample of whole feature rows, in
  ``feature_names`` order and rounded like the features — the reference set `mlwitness
  audit explain` compares a decision with needs rows, not per-column samples, whose values
  would pair one applicant's income with another's debt. Rows with a missing feature are
  left out; of the rest, every row when there are at most ``reference_rows``, else
  ``reference_rows`` of them drawn without replacement by
  ``numpy.random.default_rng((seed, 1))``, kept in file order. A baseline without rows
  (``reference_rows = 0``, or one made before rows were kept) is written exactly as format
  ``mlwitness.baseline/1`` was, so its SHA-256 does not change.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from mlwitness.analytics import stats
from mlwitness.errors import DataLoss, InvalidInput, RecordNotFound

FORMAT = "mlwitness.baseline/1"
FORMAT_ROWS = "mlwitness.baseline/2"  # with joint feature rows (`Baseline.rows`)
QUANTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)
MAX_CATEGORIES = 20
_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE",
                  "DECIMAL", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")


@dataclass
class NumericProfile:
    min: float
    max: float
    mean: float
    std: float | None
    quantiles: dict[str, float]
    edges: list[float]
    counts: list[int]
    sample: list[float]


@dataclass
class ColumnProfile:
    """One column: ``numeric`` and/or ``categorical`` (value → count) are set."""

    count: int
    missing: int
    numeric: NumericProfile | None = None
    categorical: dict[str, int] | None = None


@dataclass
class Baseline:
    """A profile of a training set; see the module docstring for every convention."""

    source: dict[str, str]  # file (name), sha256 (of the bytes), format (csv | parquet)
    created_at: str  # ISO 8601, UTC
    n_rows: int
    feature_names: list[str]  # the model's input columns, in order
    label: str | None
    columns: dict[str, ColumnProfile]  # every column of the data file
    outputs: dict[str, ColumnProfile] = field(default_factory=dict)
    model: dict[str, str] | None = None  # file, sha256, input
    settings: dict[str, Any] = field(default_factory=dict)  # bins, sample_size, seed, …
    rows: list[list[float]] = field(default_factory=list)  # joint feature rows (format 2)
    _sha256: str = field(default="", init=False, repr=False, compare=False)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, compact separators, no NaN/inf literals. Without
        `rows`, exactly the format-1 document (the same SHA-256 as before rows existed)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        doc["columns"] = {k: _plain(v) for k, v in self.columns.items()}
        doc["outputs"] = {k: _plain(v) for k, v in self.outputs.items()}
        if not self.rows:
            del doc["rows"]
        return json.dumps({"format": FORMAT_ROWS if self.rows else FORMAT, **doc},
                          sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def sha256(self) -> str:
        """SHA-256 of :meth:`to_json`; computed once (a baseline is a value: don't mutate
        it after reading its hash)."""
        if not self._sha256:
            self._sha256 = hashlib.sha256(self.to_json().encode()).hexdigest()
        return self._sha256

    @classmethod
    def from_json(cls, text: str) -> Baseline:
        data = json.loads(text)
        if data.pop("format", None) not in (FORMAT, FORMAT_ROWS):
            raise InvalidInput(f"not a baseline document (expected format {FORMAT} or "
                               f"{FORMAT_ROWS})")
        data["columns"] = {k: _column(v) for k, v in data["columns"].items()}
        data["outputs"] = {k: _column(v) for k, v in data.get("outputs", {}).items()}
        return cls(**data)


def json_safe(value: Any) -> Any:
    """``value`` with NaN → None and ±inf → "Infinity"/"-Infinity", recursively; numpy
    scalars become Python numbers. Dict keys are kept; tuples become lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _plain(column: ColumnProfile) -> dict[str, Any]:
    """A column as JSON-ready dicts without deep-copying the sample (only edges, the one
    field holding infinities, is converted; the other floats are finite by construction)."""
    plain = dict(vars(column))
    if column.numeric is not None:
        plain["numeric"] = {**vars(column.numeric), "edges": json_safe(column.numeric.edges)}
    return plain


def _float(value: Any) -> float:
    if value == "Infinity":
        return math.inf
    if value == "-Infinity":
        return -math.inf
    return math.nan if value is None else float(value)


def _column(data: dict[str, Any]) -> ColumnProfile:
    numeric = data.get("numeric")
    if numeric is not None:
        numeric["edges"] = [_float(e) for e in numeric["edges"]]
        numeric = NumericProfile(**numeric)
    return ColumnProfile(data["count"], data["missing"], numeric, data.get("categorical"))


def category_key(value: float) -> str:
    """Text key of a numeric category: integers without a decimal point ("1"), else repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def profile_numeric(
    values: np.ndarray, *, bins: int, sample_size: int, rng: np.random.Generator,
    categorical: bool = False, name: str = "",
) -> ColumnProfile:
    """Profile one numeric column (any float array; non-finite values count as missing).
    With ``categorical``, integer-valued columns with few values also get frequencies."""
    finite = values[np.isfinite(values)]
    column = ColumnProfile(int(finite.size), int(values.size - finite.size))
    if finite.size == 0:
        return column
    with np.errstate(over="ignore"):
        mean = float(np.mean(finite))
        std = float(np.std(finite, ddof=1)) if finite.size > 1 else None
    if not math.isfinite(mean) or (std is not None and not math.isfinite(std)):
        raise InvalidInput(f"{name or 'a column'}: values up to {float(np.max(np.abs(finite))):.3g}"
                           " are too large to profile (their mean or spread overflows float64)")
    edges = stats.quantile_edges(finite, bins)
    if finite.size <= sample_size:
        sample = np.sort(finite)
    else:
        sample = np.sort(rng.choice(finite, size=sample_size, replace=False))
    column.numeric = NumericProfile(
        min=float(finite.min()),
        max=float(finite.max()),
        mean=mean,
        std=std,
        quantiles={f"p{q}": float(v) for q, v in
                   zip(QUANTILES, np.quantile(finite, np.array(QUANTILES) / 100), strict=True)},
        edges=[float(e) for e in edges],
        counts=[int(c) for c in stats.bin_counts(finite, edges)],
        sample=[float(v) for v in sample],
    )
    if categorical and np.all(finite == np.round(finite)):
        distinct, counts = np.unique(finite, return_counts=True)
        if distinct.size <= MAX_CATEGORIES:
            column.categorical = {category_key(v): int(c) for v, c in
                                  zip(distinct, counts, strict=True)}
    return column


def profile_text(values: np.ndarray) -> ColumnProfile:
    """Profile one text column (object array; None is missing)."""
    present = [str(v) for v in values if v is not None]
    distinct, counts = np.unique(np.array(present, dtype=object), return_counts=True)
    return ColumnProfile(len(present), int(values.size) - len(present),
                         categorical={str(v): int(c) for v, c in
                                      zip(distinct, counts, strict=True)})


def _read(con: duckdb.DuckDBPyConnection, data: Path) -> tuple[str, list[tuple[str, bool]]]:
    """Register the file as view ``src``; return its format and [(column, is_numeric)]."""
    if not data.is_file():
        raise InvalidInput(f"data file {data} does not exist")
    fmt = "parquet" if data.suffix.lower() in (".parquet", ".pq") else "csv"
    reader = "read_parquet" if fmt == "parquet" else "read_csv_auto"
    path = str(data).replace("'", "''")
    con.execute(f"CREATE VIEW src AS SELECT * FROM {reader}('{path}')")
    described = con.execute("DESCRIBE SELECT * FROM src").fetchall()
    return fmt, [(row[0], str(row[1]).split("(")[0] in _NUMERIC_TYPES) for row in described]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def build_baseline(
    data: Path, *, model: Path | None = None, features: list[str] | None = None,
    label: str | None = None, bins: int = 10, sample_size: int = 20000, seed: int = 0,
    feature_dtype: str | None = None, reference_rows: int = 1000,
) -> Baseline:
    """Profile ``data`` (CSV or Parquet) and, with ``model``, the model's outputs on it.

    The model must have one 2-D input; it is fed the ``features`` columns in order
    (default: the numeric columns except ``label``, in file order), cast to the input's
    datatype, NULL as NaN. Raises InvalidInput for a missing file or column, or when the
    number of features does not match the model input's width.

    The features are profiled as the model receives them: rounded to ``feature_dtype``
    (default: the model input's datatype, e.g. FP32; FP64 without a model). The ledger
    holds the values callers sent in that datatype, and float32(0.7) < 0.7: a baseline
    of the float64 text values would put such values on the wrong side of a bin edge and
    report drift on unchanged traffic.
    """
    data = Path(data)
    if sample_size < 1:
        raise InvalidInput(f"sample_size must be positive, got {sample_size}")
    if reference_rows < 0:
        raise InvalidInput(f"reference_rows must not be negative, got {reference_rows}")
    rounding = _feature_rounding(model, feature_dtype)
    rng = np.random.default_rng(seed)
    con = duckdb.connect()
    try:
        fmt, described = _read(con, data)
        names = [name for name, _ in described]
        if label is not None and label not in names:
            raise InvalidInput(f"label column {label!r} is not in {data.name}: {names}")
        numeric = [name for name, is_num in described if is_num]
        n_rows = int(con.execute("SELECT count(*) FROM src").fetchall()[0][0])
        matrix = con.execute(
            "SELECT " + ", ".join(f"coalesce(CAST({_quote(c)} AS DOUBLE), 'NaN'::DOUBLE)"
                                  for c in numeric) + " FROM src"
        ).fetchnumpy() if numeric else {}
        arrays = dict(zip(numeric, (np.asarray(v, np.float64) for v in matrix.values()),
                          strict=True))
        if features is None:
            features = [c for c in numeric if c != label]
        if rounding is not None:
            for name in features:
                if name in arrays:
                    arrays[name] = arrays[name].astype(rounding).astype(np.float64)
        columns: dict[str, ColumnProfile] = {}
        for name, is_num in described:
            if is_num:
                columns[name] = profile_numeric(arrays[name], bins=bins,
                                                sample_size=sample_size, rng=rng,
                                                categorical=name == label, name=name)
            else:
                text = con.execute(f"SELECT CAST({_quote(name)} AS VARCHAR) FROM src"
                                   ).fetchnumpy()
                columns[name] = profile_text(np.asarray(next(iter(text.values())), object))
    finally:
        con.close()
    unknown = [f for f in features if f not in arrays]
    if unknown:
        raise InvalidInput(f"features {unknown} are not numeric columns of {data.name}; "
                           f"numeric columns: {numeric}")
    baseline = Baseline(
        source={"file": data.name, "sha256": _file_sha256(data), "format": fmt},
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        n_rows=n_rows, feature_names=list(features), label=label, columns=columns,
        settings={"bins": bins, "sample_size": sample_size, "seed": seed,
                  "feature_dtype": _DTYPE_NAMES.get(rounding, "FP64")},
    )
    x = np.column_stack([arrays[f] for f in features]) if features else np.zeros((n_rows, 0))
    if model is not None:
        baseline.model, baseline.outputs = _profile_model(Path(model), x, bins=bins,
                                                          sample_size=sample_size, rng=rng)
    if reference_rows and features:
        baseline.settings["reference_rows"] = reference_rows
        baseline.rows = joint_rows(x, reference_rows, seed)
    return baseline


def joint_rows(x: np.ndarray, rows: int, seed: int) -> list[list[float]]:
    """The baseline's joint row sample (see the module docstring) of feature matrix `x`."""
    whole = x[np.all(np.isfinite(x), axis=1)]
    if whole.shape[0] > rows:
        pick = np.random.default_rng((seed, 1)).choice(whole.shape[0], size=rows,
                                                        replace=False)
        whole = whole[np.sort(pick)]
    return [[float(v) for v in row] for row in whole]


_ROUNDINGS = {"FP16": np.float16, "FP32": np.float32, "FP64": None}
_DTYPE_NAMES = {np.float16: "FP16", np.float32: "FP32"}


def _feature_rounding(model: Path | None, feature_dtype: str | None) -> Any:
    """The numpy type features are rounded through (None: float64, no rounding)."""
    if feature_dtype is None and model is not None:
        from mlwitness.model.runtime import OnnxModel

        specs = OnnxModel(Path(model).read_bytes()).signature.inputs
        feature_dtype = specs[0].datatype if len(specs) == 1 else None
        return _ROUNDINGS.get(feature_dtype or "FP64")  # integer inputs: left as read
    if feature_dtype is None:
        return None
    if feature_dtype.upper() not in _ROUNDINGS:
        raise InvalidInput(f"feature dtype must be one of {', '.join(_ROUNDINGS)}, "
                           f"got {feature_dtype!r}")
    return _ROUNDINGS[feature_dtype.upper()]


def _profile_model(
    path: Path, x: np.ndarray, *, bins: int, sample_size: int, rng: np.random.Generator,
    chunk: int = 65536,
) -> tuple[dict[str, str], dict[str, ColumnProfile]]:
    from mlwitness.codec import numpy_dtype, tensor_from_array
    from mlwitness.ledger.rows import Tabulator
    from mlwitness.model.runtime import OnnxModel

    onnx = OnnxModel(path.read_bytes())
    specs = onnx.signature.inputs
    if len(specs) != 1 or len(specs[0].shape) != 2:
        raise InvalidInput(f"model {path.name} must have exactly one 2-D input to be profiled "
                           f"on a table; it takes {[s.describe() for s in specs]}")
    spec = specs[0]
    if spec.shape[1] >= 0 and spec.shape[1] != x.shape[1]:
        raise InvalidInput(f"model input {spec.describe()} takes {spec.shape[1]} columns but "
                           f"{x.shape[1]} features were given; pass features= in model order")
    dtype = numpy_dtype(spec.datatype)
    tabulator = Tabulator()
    num: list[np.ndarray] = []
    text: list[np.ndarray] = []
    num_names: tuple[str, ...] = ()
    text_names: tuple[str, ...] = ()
    whole_numbers: set[str] = set()  # columns of integer or BOOL outputs: class labels
    for start in range(0, x.shape[0], chunk):
        tensor = tensor_from_array(spec.name, x[start:start + chunk].astype(dtype))
        outputs = onnx.run([tensor])
        rows = tabulator.rows(outputs)
        num_names, text_names = rows.num_names, rows.text_names
        for out in outputs:
            if out.array.dtype.kind in "biu" and out.array.ndim in (1, 2):
                whole_numbers.update(tabulator.columns_of(out.name, out.array.shape))
        num.append(rows.num_values)
        text.append(rows.text_values)
    profiles: dict[str, ColumnProfile] = {}
    if num:
        values = np.vstack(num)
        for j, name in enumerate(num_names):
            # A float output (a probability) that happened to be 0/1 in training is still
            # a number: only integer and BOOL outputs are also profiled as categories.
            profiles[name] = profile_numeric(values[:, j], bins=bins, sample_size=sample_size,
                                             rng=rng, categorical=name in whole_numbers,
                                             name=name)
        texts = np.vstack(text)
        for j, name in enumerate(text_names):
            profiles[name] = profile_text(texts[:, j])
    return {"file": path.name, "sha256": onnx.sha256, "input": spec.name}, profiles


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ── storage in the ledger ──────────────────────────────────────────────────────────────

def store_baseline(con: duckdb.DuckDBPyConnection, baseline: Baseline, name: str) -> str:
    """Store ``baseline`` under its SHA-256 (idempotent: a stored hash keeps its first
    name); return the hash. Writes: in a sidecar, run it through ``LedgerWriter.write``."""
    sha = baseline.sha256
    con.execute("INSERT INTO baselines VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [sha, name, baseline.to_json(), time.time_ns() // 1000])
    return sha


def latest_baseline(con: duckdb.DuckDBPyConnection) -> str:
    """SHA-256 of the most recently stored baseline; RecordNotFound if there is none."""
    rows = con.execute("SELECT sha256 FROM baselines ORDER BY created_us DESC LIMIT 1"
                       ).fetchall()
    if not rows:
        raise RecordNotFound("no baseline is stored in this ledger: serve with --baseline "
                             "FILE, or compare with a reference window")
    return str(rows[0][0])


def load_baseline(con: duckdb.DuckDBPyConnection, sha_or_name: str) -> Baseline:
    """The baseline whose SHA-256 is or starts with ``sha_or_name`` (at least 6 hex
    digits), else the newest one stored under that name. RecordNotFound if none; a prefix
    matching several hashes is InvalidInput; JSON that no longer hashes to its key is
    DataLoss. Read-only connections are fine."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'baselines'"
    ).fetchall()[0][0]
    if not exists or not sha_or_name:
        raise RecordNotFound(f"no baseline {sha_or_name!r} in the ledger")
    key = sha_or_name.lower()
    rows: list[tuple[Any, ...]] = []
    if len(key) >= 6 and all(c in "0123456789abcdef" for c in key):
        rows = con.execute("SELECT sha256, json FROM baselines WHERE starts_with(sha256, ?)",
                           [key]).fetchall()
        if len(rows) > 1:
            raise InvalidInput(f"baseline prefix {sha_or_name!r} matches {len(rows)} hashes")
    if not rows:
        rows = con.execute("SELECT sha256, json FROM baselines WHERE name = ? "
                           "ORDER BY created_us DESC LIMIT 1", [sha_or_name]).fetchall()
    if not rows:
        raise RecordNotFound(f"no baseline {sha_or_name!r} in the ledger")
    baseline = Baseline.from_json(rows[0][1])
    if baseline.sha256 != rows[0][0]:
        raise DataLoss(f"stored baseline {rows[0][0]} no longer matches its SHA-256")
    return baseline
