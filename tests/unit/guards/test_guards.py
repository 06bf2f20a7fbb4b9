"""Guards and rate bounds: suggested from a baseline, written and read as real files,
checked on rows made by the real Tabulator; Wilson intervals checked against scipy."""

from __future__ import annotations

import json
import math
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from mlwitness.codec import tensor_from_array
from mlwitness.errors import ConfigError, GuardViolation
from mlwitness.guards.checks import InlineChecks, unknown_names
from mlwitness.guards.file import FieldGuard, GuardConfig, dumps_toml, load_guards, loads_guards
from mlwitness.guards.rates import TIME_BUCKETS, RateGuard, RateTracker
from mlwitness.guards.rules import GuardSet, Violation, refusal
from mlwitness.guards.suggestions import suggest, suggest_toml
from mlwitness.ledger.rows import Rows, Tabulator

FEATURES = ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans")
TABULATOR = Tabulator({"input": FEATURES})

BASELINE = {
    "features": {
        "income": {"kind": "numeric", "count": 1000, "missing": 0, "min": 1000.0,
                   "max": 251000.0, "quantiles": {"p01": 2000.0, "p99": 240000.0}},
        "debt_ratio": {"kind": "numeric", "count": 1000, "missing": 12, "min": 0.0, "max": 1.5},
        "fico": {"kind": "numeric", "count": 1000, "missing": 0, "min": 300.0, "max": 850.0},
        "age": {"kind": "numeric", "count": 1000, "missing": 0, "min": 18.0, "max": 88.0},
        "years_employed": {"kind": "numeric", "count": 1000, "missing": 0, "min": 0.0,
                           "max": 40.0},
        "open_loans": {"kind": "numeric", "count": 1000, "missing": 0, "min": 0.0, "max": 10.0},
        "age_band": {"kind": "categorical", "count": 1000, "missing": 0,
                     "frequencies": {"18-25": 150, "26-40": 400, "41-60": 300, "61+": 150}},
    },
    "outputs": {
        "label": {"kind": "categorical", "count": 1000, "missing": 0,
                  "frequencies": {"0": 600, "1": 400}},
        "probabilities_0": {"kind": "numeric", "count": 1000, "missing": 0, "min": 0.02,
                            "max": 0.97},
        "probabilities_1": {"kind": "numeric", "count": 1000, "missing": 0, "min": 0.03,
                            "max": 0.98},
    },
}  # fmt: skip

IN_RANGE = [52000.0, 0.3, 700.0, 35.0, 5.0, 2.0]


def request_rows(features: list[list[float]], bands: list[str] | None = None) -> Rows:
    tensors = [tensor_from_array("input", np.array(features, dtype=np.float32))]
    if bands is not None:
        tensors.append(tensor_from_array("age_band", np.array([b.encode() for b in bands])))
    return TABULATOR.rows(tensors)


def response_rows(labels: list[int], p1: list[float]) -> Rows:
    p = np.array(p1, dtype=np.float32)
    return TABULATOR.rows(
        [
            tensor_from_array("label", np.array(labels, dtype=np.int64)),
            tensor_from_array("probabilities", np.stack([1 - p, p], axis=1)),
        ]
    )


def summary(violations: list[Violation]) -> list[tuple]:
    return [(v.row, v.column, v.kind, v.bound) for v in violations]


@pytest.fixture
def guard_file(tmp_path: Path) -> Path:
    path = tmp_path / "guards.toml"
    path.write_text(suggest_toml(BASELINE), encoding="utf-8")
    return path


@pytest.fixture
def guards(guard_file: Path) -> GuardSet:
    return GuardSet(load_guards(guard_file))


# ── suggested guards on inputs ────────────────────────────────────────────────────────


def test_suggested_guard_file_has_expected_bounds(guard_file: Path) -> None:
    text = guard_file.read_text()
    assert text.startswith("# Guards suggested from baseline ")
    assert "EDIT BEFORE USE" in text
    assert "# baseline: min 1000, max 251000, p01 2000, p99 240000, 0 missing" in text
    config = load_guards(guard_file)
    assert config == suggest(BASELINE)
    f, o = config.features, config.outputs
    assert f["income"] == FieldGuard(min=0.0, max=276000.0)  # 1000 − 25000 clamps at 0
    assert f["fico"] == FieldGuard(min=245.0, max=905.0)
    assert f["age"] == FieldGuard(min=11.0, max=95.0)
    assert f["debt_ratio"] == FieldGuard(min=0.0, max=1.65, allow_nan=True)  # had missing
    assert f["age_band"] == FieldGuard(allowed=("18-25", "26-40", "41-60", "61+"))
    assert o["label"] == FieldGuard(allowed=("0", "1"))
    assert o["probabilities_1"] == FieldGuard(min=0.0, max=1.0)  # a score: clamped to [0, 1]
    assert config.rates == (
        RateGuard("label_1_rate", "label", equals="1", min=0.25, max=0.55, window=1000),
    )


def test_suggested_guards_catch_out_of_range_nan_and_unseen_inputs(guards: GuardSet) -> None:
    rows = request_rows(
        [
            IN_RANGE,
            [-5.0, 0.3, 700.0, 35.0, 5.0, 2.0],
            [52000.0, math.nan, 950.0, math.nan, 5.0, 2.0],
            IN_RANGE,
            [300000.0, 0.3, 200.0, 35.0, 5.0, 11.5],
        ],
        ["26-40", "26-40", "41-60", "99+", "61+"],
    )
    violations = guards.check_inputs(rows)
    assert summary(violations) == [
        (1, "income", "below_min", 0.0),
        (2, "fico", "above_max", 905.0),
        (2, "age", "nan", None),  # debt_ratio NaN is allowed: the baseline had missing values
        (3, "age_band", "unseen_category", ("18-25", "26-40", "41-60", "61+")),
        (4, "income", "above_max", 276000.0),
        (4, "fico", "below_min", 245.0),
        (4, "open_loans", "above_max", 11.0),
    ]
    assert [v.value for v in violations[:2]] == [-5.0, 950.0]
    assert violations[3].value == "99+"
    assert violations[0].message() == "row 1: income = -5 is below min 0 (guard features.income)"


def test_in_range_rows_give_no_violations(guards: GuardSet) -> None:
    rng = np.random.default_rng(7)
    lows = np.array([1000, 0, 300, 18, 0, 0])
    highs = np.array([251000, 1.5, 850, 88, 40, 10])
    features = rng.uniform(lows, highs, size=(500, 6))
    features[rng.random(500) < 0.1, 1] = np.nan  # allowed NaN in debt_ratio
    bands = rng.choice(["18-25", "26-40", "41-60", "61+"], 500).tolist()
    assert guards.check_inputs(request_rows(features.tolist(), bands)) == []
    for i in range(20):
        assert guards.check_inputs(request_rows([features[i].tolist()], [bands[i]])) == []
    p = rng.uniform(0, 1, 500)
    assert guards.check_outputs(response_rows((p > 0.5).astype(int).tolist(), p.tolist())) == []


def test_single_row_path_agrees_with_batch_path(guards: GuardSet) -> None:
    rng = np.random.default_rng(11)
    features = rng.uniform([-50000, -0.5, 100, 0, -5, -2], [400000, 2, 1000, 120, 50, 14],
                           size=(300, 6))  # fmt: skip
    features[rng.random((300, 6)) < 0.05] = np.nan
    bands = rng.choice(["18-25", "26-40", "61+", "70+", ""], 300).tolist()
    batch = guards.check_inputs(request_rows(features.tolist(), bands))
    assert len(batch) > 100
    one_by_one = []
    for i in range(300):
        for v in guards.check_inputs(request_rows([features[i].tolist()], [bands[i]])):
            one_by_one.append((i, v.column, v.kind, v.bound))
    assert summary(batch) == one_by_one


def test_single_row_path_agrees_with_batch_path_on_outputs(guards: GuardSet) -> None:
    rng = np.random.default_rng(12)
    labels = rng.choice([0.0, 1.0, 2.0, math.nan], 200)
    p = rng.uniform(-0.2, 1.2, (200, 2))
    p[rng.random((200, 2)) < 0.05] = np.nan

    def rows(i: slice) -> Rows:
        return TABULATOR.rows(
            [tensor_from_array("label", labels[i]), tensor_from_array("probabilities", p[i])]
        )

    batch = guards.check_outputs(rows(slice(None)))
    assert {v.kind for v in batch} == {"unseen_category", "nan", "below_min", "above_max"}
    one_by_one = [
        (i, v.column, v.kind, v.bound)
        for i in range(200)
        for v in guards.check_outputs(rows(slice(i, i + 1)))
    ]
    assert summary(batch) == one_by_one


def test_nan_in_a_categorical_numeric_column_follows_allow_nan() -> None:
    for allow_nan, expected in ((True, []), (False, [(1, "label", "nan", None)])):
        config = GuardConfig(outputs={"label": FieldGuard(allowed=("0", "1"), allow_nan=allow_nan)})
        rows = TABULATOR.rows([tensor_from_array("label", np.array([1.0, math.nan, 0.0]))])
        assert summary(GuardSet(config).check_outputs(rows)) == expected
        one = TABULATOR.rows([tensor_from_array("label", np.array([math.nan]))])
        assert len(GuardSet(config).check_outputs(one)) == len(expected)


def test_guard_on_request_parameter(guards: GuardSet) -> None:
    rows = request_rows([IN_RANGE])  # age_band is not a tensor here
    assert guards.check_inputs(rows) == []  # absent and not required: skipped
    assert guards.check_inputs(rows, {"age_band": "41-60"}) == []
    [violation] = guards.check_inputs(rows, {"age_band": "70+", "other": "x"})
    assert (violation.row, violation.column, violation.value, violation.kind) == (
        None, "age_band", "70+", "unseen_category")  # fmt: skip
    assert violation.message() == (
        "request parameter: age_band = '70+' is not an allowed value "
        "['18-25', '26-40', '41-60', '61+'] (guard features.age_band)"
    )


def test_required_feature_is_missing_and_text_under_range_is_read_as_number() -> None:
    config = GuardConfig.from_dict(
        {
            "version": 1,
            "features": {
                "zip": {"required": True, "allowed": ["10115"]},
                "score": {"min": 0, "max": 10},
                "code": {"allowed": [1, 2]},
            },
        }
    )
    rows = Rows(3, ("code",), np.array([[1.0], [3.0], [2.0]]), ("score",),
                np.array([["5"], ["x"], ["12"]], dtype=object))  # fmt: skip
    violations = GuardSet(config).check_inputs(rows, {"score": "99"})
    assert summary(violations) == [
        (None, "zip", "missing", None),
        (1, "code", "unseen_category", ("1", "2")),
        (1, "score", "not_numeric", None),
        (2, "score", "above_max", 10.0),
    ]
    assert violations[0].message() == "zip is missing (guard features.zip has required = true)"
    assert violations[2].message() == "row 1: score = 'x' is not a number (guard features.score)"


def test_output_guards(guards: GuardSet) -> None:
    rows = response_rows([0, 1, 2, 1], [0.2, 0.9, 0.5, math.nan])
    violations = guards.check_outputs(rows)
    assert summary(violations) == [
        (2, "label", "unseen_category", ("0", "1")),
        (3, "probabilities_0", "nan", None),
        (3, "probabilities_1", "nan", None),
    ]
    assert violations[0].value == 2.0
    over = TABULATOR.rows([tensor_from_array("probabilities", np.array([[-0.5, 1.5]]))])
    assert summary(guards.check_outputs(over)) == [
        (0, "probabilities_0", "below_min", 0.0),
        (0, "probabilities_1", "above_max", 1.0),
    ]
    assert guards.check_inputs(rows) == []  # output guards do not apply to inputs


def test_violation_to_dict_is_json_and_refusal_is_invalid_argument(guards: GuardSet) -> None:
    rows = request_rows([[math.nan, 0.3, 700, 35, 5, 2]] * 5)
    violations = guards.check_inputs(rows)
    assert len(violations) == 5
    data = json.loads(json.dumps([v.to_dict() for v in violations], allow_nan=False))
    assert data[0] == {"row": 0, "column": "income", "value": "nan", "kind": "nan",
                       "bound": None, "guard": "features.income"}  # fmt: skip
    assert violations[0].message() == (
        "row 0: income = NaN is not allowed (guard features.income has allow_nan = false)"
    )
    error = refusal(violations)
    assert isinstance(error, GuardViolation) and error.status == "INVALID_ARGUMENT"
    assert error.message.startswith("refused by guards: row 0: income = NaN")
    assert error.message.endswith("; and 2 more")


# ── the guard file ────────────────────────────────────────────────────────────────────

HAND_EDITED = """\
version = 1
[features.income]
min = 0.0
max = 500000.0
allow_nan = false
[features.age_band]          # a text input, or a request parameter
allowed = ["18-25", "26-40", "41-60", "61+"]
[outputs.probabilities_1]
min = 0
max = 1
[[rates]]
name = "approval_rate"
output = "label"
equals = "1"
min = 0.25
max = 0.55
window = 1000
confidence = 0.95
min_samples = 100
[[rates]]
name = "high_score_rate"
output = "probabilities_1"
at_least = 0.5
max = 0.6
window_seconds = 3600
"""


def test_hand_edited_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "guards.toml"
    path.write_text(HAND_EDITED)
    config = load_guards(path)
    assert config.features == {
        "income": FieldGuard(min=0.0, max=500000.0),
        "age_band": FieldGuard(allowed=("18-25", "26-40", "41-60", "61+")),
    }
    assert config.outputs == {"probabilities_1": FieldGuard(min=0.0, max=1.0)}
    assert config.rates == (
        RateGuard("approval_rate", "label", equals="1", min=0.25, max=0.55, window=1000),
        RateGuard("high_score_rate", "probabilities_1", at_least=0.5, min=0.0, max=0.6,
                  window_seconds=3600.0),
    )  # fmt: skip
    as_json = tmp_path / "guards.json"
    as_json.write_text(json.dumps(config.to_dict()))
    assert load_guards(as_json) == config
    assert load_guards(as_json).sha256 == config.sha256


def test_toml_round_trip(tmp_path: Path) -> None:
    config = GuardConfig(
        features={
            "income": FieldGuard(min=-1e-7, max=1e16, allow_nan=True, required=True),
            "odd name.with dots": FieldGuard(max=0.1),
            'quote"back\\slash\ttab\x7f': FieldGuard(allowed=('a"b', "c\\d", "e\nf", "ünï")),
            "many": FieldGuard(allowed=tuple(f"category-{i:03d}" for i in range(40))),
            "only_nan_rule": FieldGuard(),
        },
        outputs={"probabilities_1": FieldGuard(min=0.0, max=1.0)},
        rates=(
            RateGuard("r1", "label", equals="yes", min=0.1, window=50, min_samples=10),
            RateGuard("r2", "score", at_least=0.5, max=0.3, window_seconds=0.25,
                      confidence=0.99),
        ),
    )  # fmt: skip
    text = dumps_toml(config, header="line one\nline two", notes={"features.income": "note"})
    assert text.startswith("# line one\n# line two\nversion = 1\n")
    assert "# note\n[features.income]" in text
    assert GuardConfig.from_dict(tomllib.loads(text)) == config
    path = tmp_path / "written.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_guards(path)
    assert loaded == config
    assert loaded.sha256 == config.sha256 and len(config.sha256) == 64
    assert GuardConfig.from_dict(json.loads(config.canonical_json())) == config


def test_sha256_is_the_content_not_the_spelling(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text("version = 1\n[features.x]\nmax = 5\nallow_nan = false\n")
    b.write_text("# a comment\nversion=1\n[features]\nx = { max = 5.0 }\n")
    assert load_guards(a).sha256 == load_guards(b).sha256
    b.write_text("version=1\n[features]\nx = { max = 6.0 }\n")
    assert load_guards(a).sha256 != load_guards(b).sha256


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[features.x]\nmin = 5\nmax = 1\n", "features.x: min 5 is greater than max 1"),
        ("[features.x]\nmaximum = 1\n", "features.x: unknown key 'maximum'"),
        ("[inputs.x]\nmax = 1\n", "unknown top-level key 'inputs'"),
        ("[features.x]\nallowed = []\n", "'allowed' must be a non-empty list"),
        ("[features.x]\nallowed = ['a']\nmin = 0\n", "use either 'allowed' or 'min'/'max'"),
        ("[features.x]\nallow_nan = 'no'\n", "'allow_nan' must be true or false"),
        ("[features.x]\nmin = nan\n", "features.x: 'min' must be a number"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.2\nwindow=0\n',
         "rates[0] (r): 'window' must be an integer from 1 to 10,000,000 decisions, got 0"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.2\nwindow=-5\n',
         "'window' must be an integer from 1 to"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.2\nwindow_seconds=0\n',
         "'window_seconds' must be positive"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.2\nwindow=10\nconfidence=1\n',
         "rates[0] (r): 'confidence' must be in (0, 1), got 1"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.2\nwindow=10\nconfidence=0\n',
         "'confidence' must be in (0, 1)"),
        ('[[rates]]\nname="r"\noutput="label"\nmin=0.2\nwindow=10\n',
         "rates[0] (r): set exactly one of 'equals' or 'at_least'"),
        ('[[rates]]\nname="r"\noutput="s"\nequals="1"\nat_least=0.5\nmin=0.2\nwindow=10\n',
         "set exactly one of 'equals' or 'at_least'"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.2\n',
         "set exactly one of 'window' or 'window_seconds'"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.6\nmax=0.5\nwindow=10\n',
         "rates[0] (r): min 0.6 is greater than max 0.5"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmax=1.5\nwindow=10\n',
         "min and max are rates and must lie in [0, 1]"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nwindow=10\n',
         "set 'min' and/or 'max'"),
        ('[[rates]]\nname="r"\noutput="label"\nequals="1"\nmin=0.1\nwindow=10\nmin_samples=50\n',
         "'min_samples' 50 exceeds 'window' 10"),
        ('[[rates]]\nname="r"\noutput="l"\nequals="1"\nmin=0.1\nwindow=10\nmin_samples=1\n'
         '[[rates]]\nname="r"\noutput="m"\nequals="1"\nmin=0.1\nwindow=10\nmin_samples=1\n',
         "rates: the name 'r' is used more than once"),
        ('[[rates]]\noutput="label"\nequals="1"\nmin=0.2\nwindow=10\n', "'name'"),
        ("[features.x\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_config_errors_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "guards.toml"
    path.write_text("version = 1\n" + body)
    with pytest.raises(ConfigError) as caught:
        load_guards(path)
    assert caught.value.message.startswith(f"{path}: ")
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"version": 1, "features": {"x": {"min": 1' + "0" * 400 + '}}}',
         "features.x: 'min' must be finite"),
        ('{"version": 1, "features": {"\\ud800": {"min": 0}}}', "is not valid Unicode text"),
        ('{"version": 1, "rates": [{"name": "r", "output": "s", "at_least": 0, "max": 1, '
         '"window": 1' + "0" * 30 + "}]}", "'window' must be an integer from 1 to 10,000,000"),
        ('{"version": 1, "rates": [{"name": "r", "output": "s", "at_least": 0, "max": 1, '
         '"window_seconds": 1e12}]}', "'window_seconds' must be at most"),
    ],
)  # fmt: skip
def test_json_guards_beyond_what_can_be_held_are_config_errors(text: str, message: str) -> None:
    """Through SetGuards these were INTERNAL (OverflowError, UnicodeEncodeError) or a
    gigabyte allocation."""
    with pytest.raises(ConfigError) as caught:
        loads_guards(text, "json")
    assert message in caught.value.message and len(caught.value.message) < 300


@pytest.mark.parametrize(("text", "fmt"), [
    ("version = 1\nx = " + "[" * 5_000 + "]" * 5_000, "toml"),
    ('{"version": 1, "x": ' + "[" * 5_000 + "]" * 5_000 + "}", "json"),
])
def test_guards_nested_too_deeply_to_parse_are_config_errors(text: str, fmt: str) -> None:
    """Found by fuzzing SetGuards: the parsers' RecursionError was INTERNAL."""
    with pytest.raises(ConfigError, match=f"not valid {fmt.upper()}: nested too deeply"):
        loads_guards(text, fmt)


def test_a_guard_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "guards.toml"
    path.write_bytes("version = 1\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_guards(path)


def test_guards_naming_no_model_column_are_warned_at_every_replacement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    columns = ({"income", "fico"}, {"label", "score"})
    typo = loads_guards('version = 1\n[features.incmoe]\nmin = 0\n[outputs.scroe]\nmax = 1\n'
                        '[[rates]]\nname = "high"\noutput = "scroe"\nat_least = 0.5\n'
                        'max = 0.9\nwindow = 100\n')
    assert unknown_names(typo, *columns) == [
        "feature guards incmoe name no input column (known: fico, income); they judge only "
        "request parameters of that name. Check --features.",
        "output guards scroe name no output column (known: label, score); they never judge "
        "anything.",
        "rate guards high (output 'scroe') name no output column (known: label, score); they "
        "never judge anything."]
    good = loads_guards("version = 1\n[features.income]\nmin = 0\n")
    checks = InlineChecks(good, "observe", TABULATOR, columns=columns)
    with caplog.at_level("WARNING", logger="mlwitness.guards.checks"):
        assert checks.replace(typo) == unknown_names(typo, *columns)
        assert checks.replace(good) == []
    assert sum("rate guards high" in r.getMessage() for r in caplog.records) == 1


def test_config_errors_for_version_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "guards.toml"
    path.write_text("[features.x]\nmax = 1\n")
    with pytest.raises(ConfigError, match="'version' must be 1 .*start the file with"):
        load_guards(path)
    with pytest.raises(ConfigError, match="cannot read guard file"):
        load_guards(tmp_path / "absent.toml")


# ── suggestion rules ──────────────────────────────────────────────────────────────────


def test_suggest_rules() -> None:
    baseline = {
        "features": {
            "delta": {"kind": "numeric", "min": -10.0, "max": 10.0, "missing": 0, "count": 5},
            "const": {"kind": "numeric", "min": 7.0, "max": 7.0, "missing": 0, "count": 5},
            "empty": {"kind": "numeric", "min": None, "max": None, "missing": 5, "count": 5},
        },
        "outputs": {
            "score": {"kind": "numeric", "min": 0.5, "max": 3.0, "missing": 0, "count": 5},
            "flag": {"kind": "categorical", "frequencies": {"0": 5, "1": 95}, "missing": 0},
            "cls": {"kind": "categorical", "frequencies": {"0": 5, "1": 5, "2": 5}, "missing": 1},
        },
    }
    config = suggest(baseline, margin=0.25)
    assert config.features == {
        "delta": FieldGuard(min=-15.0, max=15.0),  # negative training min: no clamp at 0
        "const": FieldGuard(min=5.25, max=8.75),  # zero range: margin × |min|
        "empty": FieldGuard(allow_nan=True),
    }
    assert config.outputs["score"] == FieldGuard(min=0.0, max=3.625)  # not a [0, 1] score
    assert config.outputs["cls"] == FieldGuard(allowed=("0", "1", "2"), allow_nan=True)
    assert config.rates == (
        RateGuard("flag_1_rate", "flag", equals="1", min=0.8, max=1.0, window=1000),
    )  # 0.95 + 0.15 clipped to 1; multi-class "cls" gets no rate guard
    assert suggest(baseline, margin=0).features["delta"] == FieldGuard(min=-10.0, max=10.0)
    assert suggest_toml({**baseline, "sha256": "ab" * 32}).startswith(
        f"# Guards suggested from baseline {'ab' * 32}\n"
    )


def column(numeric: dict | None, categorical: dict | None, missing: int = 0) -> dict:
    return {"count": 100 - missing, "missing": missing, "numeric": numeric,
            "categorical": categorical}  # fmt: skip


def test_suggest_reads_the_baseline_document_format() -> None:
    document = {
        "format": "mlwitness.baseline/1",
        "label": "approved",
        "feature_names": ["income", "open_loans"],
        "columns": {
            "income": column({"min": 10.0, "max": 110.0, "quantiles": {"p1": 11.0}}, None, 3),
            "open_loans": column({"min": 0.0, "max": 5.0}, {str(i): 20 for i in range(5)}),
            "age_band": column(None, {"18-25": 60, "61+": 40}),
            "approved": column({"min": 0.0, "max": 1.0}, {"0": 70, "1": 30}),
        },
        "outputs": {
            "label": column({"min": 0.0, "max": 1.0}, {"0": 65, "1": 35}),
            "probabilities_1": column({"min": 0.1, "max": 0.9}, None),
        },
    }
    config = suggest(document)
    assert config.features == {
        "income": FieldGuard(min=0.0, max=120.0, allow_nan=True),
        "open_loans": FieldGuard(min=0.0, max=5.5),  # numeric as a feature
        "age_band": FieldGuard(allowed=("18-25", "61+")),
    }  # the training label "approved" is not a feature
    assert config.outputs == {
        "label": FieldGuard(allowed=("0", "1")),  # categorical as an output
        "probabilities_1": FieldGuard(min=0.02, max=0.98),  # rounded, not 0.0199999…
    }
    assert [(r.name, r.min, r.max) for r in config.rates] == [("label_1_rate", 0.2, 0.5)]
    assert "# baseline: min 10, max 110, p1 11, 3 missing" in suggest_toml(document)


def test_suggest_from_a_baseline_built_by_mlwitness(tmp_path: Path) -> None:
    baseline = pytest.importorskip("mlwitness.analytics.baseline")
    rng = np.random.default_rng(3)
    csv = tmp_path / "train.csv"
    lines = ["income,debt_ratio,age_band,approved"]
    for i in range(300):
        debt = "" if i % 30 == 0 else f"{rng.uniform(0, 1.5):.3f}"
        band = rng.choice(["18-25", "26-40", "41-60", "61+"])
        lines.append(f"{rng.uniform(1000, 250000):.1f},{debt},{band},{int(rng.random() < 0.4)}")
    csv.write_text("\n".join(lines) + "\n")
    built = baseline.build_baseline(csv, label="approved")
    path = tmp_path / "baseline.json"
    path.write_text(built.to_json())
    document = json.loads(path.read_text())
    guards_path = tmp_path / "guards.toml"
    guards_path.write_text(suggest_toml(document))
    assert guards_path.read_text().startswith(f"# Guards suggested from baseline {built.sha256}\n")
    config = load_guards(guards_path)
    assert set(config.features) == {"income", "debt_ratio", "age_band"}
    assert config.features["debt_ratio"].allow_nan and not config.features["income"].allow_nan
    assert config.features["age_band"].allowed == ("18-25", "26-40", "41-60", "61+")
    rows = request_rows([[-1.0, 0.5, 700, 35, 5, 2]], ["26-40"])
    assert summary(GuardSet(config).check_inputs(rows)) == [(0, "income", "below_min", 0.0)]


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"kind": "histogram", "missing": 0}, "baseline features.x: 'kind' must be"),
        ({"kind": "numeric", "min": 0.0, "max": 1.0}, "baseline features.x: 'missing' must be"),
        ({"kind": "categorical", "missing": 0}, "'frequencies' must be an object"),
        ({"kind": "numeric", "min": "a", "max": 1.0, "missing": 0}, "'min' must be a number"),
    ],
)
def test_suggest_rejects_malformed_baselines(profile: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        suggest({"features": {"x": profile}})


# ── rate bounds ───────────────────────────────────────────────────────────────────────

APPROVAL = RateGuard("approval_rate", "label", equals="1", min=0.25, max=0.55, window=1000)


def feed(tracker: RateTracker, labels: np.ndarray, batch: int = 1, **kw) -> list[list]:
    statuses = []
    for start in range(0, len(labels), batch):
        chunk = labels[start : start + batch]
        rows = TABULATOR.rows([tensor_from_array("label", chunk.astype(np.int64))])
        statuses.append(tracker.observe(rows, **kw))
    return statuses


def test_in_distribution_rate_never_breaches() -> None:
    labels = (np.random.default_rng(2024).random(5000) < 0.40).astype(int)
    tracker = RateTracker([APPROVAL])
    states = [s.state for [s] in feed(tracker, labels)]
    assert set(states[:99]) == {"insufficient"}
    assert set(states[99:]) == {"ok"}
    [last] = tracker.status()
    assert (last.n, last.successes) == (1000, int(labels[-1000:].sum()))


def test_shifted_rate_breaches_high_after_enough_samples_not_before() -> None:
    labels = (np.random.default_rng(99).random(5000) < 0.70).astype(int)
    tracker = RateTracker([APPROVAL])
    states = [s.state for [s] in feed(tracker, labels)]
    first = states.index("breach_high")
    assert first >= APPROVAL.min_samples - 1  # the 100th decision is the first judged
    assert set(states[: APPROVAL.min_samples - 1]) == {"insufficient"}
    assert first < 200
    assert set(states[1000:]) == {"breach_high"}
    [status] = tracker.status()
    assert status.breached and status.interval[0] > 0.55
    assert status.message().endswith("is above max 0.55")


def test_low_rate_breaches_low() -> None:
    labels = (np.random.default_rng(5).random(2000) < 0.05).astype(int)
    tracker = RateTracker([APPROVAL])
    [[status]] = feed(tracker, labels, batch=2000)
    assert status.state == "breach_low" and status.interval[1] < 0.25


@pytest.mark.parametrize("batch", [1, 7, 333, 1500])
def test_window_counts_and_wilson_interval_match_scipy(batch: int) -> None:
    rng = np.random.default_rng(batch)
    labels = (rng.random(4321) < 0.42).astype(int)
    guard = RateGuard("r", "label", equals="1", min=0.3, max=0.5, window=1000, confidence=0.9)
    tracker = RateTracker([guard])
    seen = 0
    for step, statuses in enumerate(feed(tracker, labels, batch=batch)):
        seen = min(seen + batch, len(labels))
        window = labels[max(0, seen - 1000) : seen]
        [s] = statuses
        assert (s.n, s.successes) == (len(window), int(window.sum()))
        if step % max(1, 20 // batch) and seen < len(labels):
            continue  # binomtest is slow: every 20th decision at batch 1
        ci = binomtest(s.successes, s.n).proportion_ci(confidence_level=0.9, method="wilson")
        assert s.interval == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert s.estimate == pytest.approx(window.mean())


def test_time_window_evicts_old_decisions() -> None:
    guard = RateGuard("r", "label", equals="1", min=0.3, max=0.8, window_seconds=60,
                      min_samples=5)  # fmt: skip
    tracker = RateTracker([guard])
    feed(tracker, np.ones(10, dtype=int), batch=10, now=1000.0)
    feed(tracker, np.zeros(10, dtype=int), batch=1, now=1030.0)
    [s] = tracker.status(now=1059.9)
    assert (s.n, s.successes, s.state) == (20, 10, "ok")
    grace = 60 / TIME_BUCKETS + 1e-6  # dropped at the latest this long after 60 s (bucketed)
    [s] = tracker.status(now=1060.0 + grace)
    assert (s.n, s.successes, s.state) == (10, 0, "breach_low")
    [s] = tracker.status(now=1090.0 + grace)
    assert (s.n, s.successes, s.state) == (0, 0, "insufficient")
    assert math.isnan(s.estimate) and s.interval == (0.0, 1.0)
    feed(tracker, np.ones(30, dtype=int), batch=3, now=1000.0)  # clock went back: counts as now
    [s] = tracker.status(now=1090.0 + grace)
    assert (s.n, s.successes, s.state) == (30, 30, "breach_high")


def test_rate_on_scores_text_labels_and_absent_or_nan_outputs() -> None:
    tracker = RateTracker(
        [
            RateGuard("high_score", "probabilities_1", at_least=0.5, max=0.9, window=10,
                      min_samples=1),
            RateGuard("approved", "decision", equals="approve", min=0.1, window=10,
                      min_samples=1),
        ]
    )  # fmt: skip
    high, approved = tracker.observe(response_rows([1, 0, 1], [0.7, 0.2, math.nan]))
    assert (high.n, high.successes) == (2, 1)  # NaN is not a decision
    assert approved.n == 0  # no such column in this response
    text = TABULATOR.rows([tensor_from_array("decision", np.array([b"approve", b"deny"]))])
    high, approved = tracker.observe(text)
    assert (high.n, approved.n, approved.successes) == (2, 2, 1)
    high, _ = tracker.observe(response_rows([1], [0.6]))
    assert (high.n, high.successes) == (3, 2)
    assert high.to_dict()["estimate"] == pytest.approx(2 / 3)


def test_rate_tracker_is_thread_safe() -> None:
    guard = RateGuard("r", "label", equals="1", min=0.1, window=100_000, min_samples=1)
    tracker = RateTracker([guard])
    ones = TABULATOR.rows([tensor_from_array("label", np.array([1], dtype=np.int64))])
    mixed = TABULATOR.rows([tensor_from_array("label", np.array([1, 0, 0], dtype=np.int64))])

    def work() -> None:
        for _ in range(2000):
            tracker.observe(ones)
            tracker.observe(mixed)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [s] = tracker.status()
    assert (s.n, s.successes) == (4 * 2000 * 4, 4 * 2000 * 2)


@pytest.mark.parametrize("seed", range(6))
def test_bulk_counts_agree_with_judging_every_cell_and_the_list_is_its_first_part(
    seed: int,
) -> None:
    """Many rows: breaking cells are counted by numpy, and the listed ones judged one by
    one (the reference semantics). Both must agree on NaN, ±inf, bounds and sets."""
    config = loads_guards(
        "version = 1\n"
        "[features.income]\nmin = 1000.0\nmax = 250000.0\n"
        "[features.debt_ratio]\nmax = 1.5\nallow_nan = true\n"
        "[features.fico]\nmin = 300.0\nmax = 850.0\n"
        "[features.open_loans]\nallowed = ['0', '1', '2', '3']\n"
        "[features.age_band]\nallowed = ['18-25', '26-40']\n"
    )
    guards = GuardSet(config)
    rng = np.random.default_rng(seed)
    n = 400
    x = np.tile(np.array(IN_RANGE, np.float32), (n, 1))
    specials = np.array([np.nan, np.inf, -np.inf, 999.0, 1000.0, 250000.0, 250001.0, 1.5,
                         1.6, 299.9, 850.0, 4.0, 3.0, -0.0], np.float32)
    mask = rng.random(x.shape) < 0.3
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    bands = list(rng.choice(["18-25", "26-40", "61+", ""], size=n))
    rows = request_rows(x.tolist(), bands)
    everything = guards.judge_inputs(rows, limit=None)
    judged: dict[tuple[str, str, str], int] = {}
    for v in everything.listed:
        judged[(v.guard, v.column, v.kind)] = judged.get((v.guard, v.column, v.kind), 0) + 1
    assert everything.counts == judged and everything.total > 100
    assert {k[2] for k in judged} >= {"below_min", "above_max", "nan", "unseen_category"}
    def plain(found: list[Violation]) -> list[dict]:  # NaN values compare as "nan"
        return [v.to_dict() for v in found]

    first = guards.judge_inputs(rows, limit=7)
    assert plain(first.listed) == plain(everything.listed[:7])
    assert first.counts == everything.counts
    assert plain(guards.check_inputs(rows)) == plain(everything.listed)


@pytest.mark.parametrize("content", [b"income,fico\n1,2\n", b"[]", "{\"é\": 1}".encode("latin-1")])
def test_guards_suggest_on_a_file_that_is_no_baseline_exits_2_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    from mlwitness.cli import main

    path = tmp_path / "train.csv"
    path.write_bytes(content)
    assert main(["guards", "suggest", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a baseline" in err and "mlwitness baseline TRAIN.csv" in err
    assert "Traceback" not in err


def test_a_rate_guard_on_a_bool_output_takes_true_and_false(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BOOL outputs become 0/1 columns: equals = "true" must count the 1s (it was dropped
    and the guard stayed 'insufficient' forever); an operator that cannot apply warns."""
    approved = TABULATOR.rows([tensor_from_array("approved", np.array([True] * 30 + [False] * 10))])
    tracker = RateTracker([
        RateGuard("yes", "approved", equals="true", max=0.5, window=40, min_samples=20),
        RateGuard("no", "approved", equals="False", max=0.5, window=40, min_samples=20),
        RateGuard("typo", "approved", equals="approve", max=0.5, window=40, min_samples=20),
    ])
    with caplog.at_level("WARNING", logger="mlwitness.guards.rates"):
        yes, no, typo = tracker.observe(approved)
    assert (yes.n, yes.successes, yes.state) == (40, 30, "breach_high")
    assert (no.n, no.successes, no.state) == (40, 10, "ok")
    assert (typo.n, typo.state) == (0, "insufficient")
    assert any("rate guard typo never judges a decision" in r.getMessage()
               for r in caplog.records)
