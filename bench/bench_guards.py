"""Cost of the guard path per ModelInfer call: check_inputs + check_outputs + observe.

    python bench/bench_guards.py [--seconds 0.2] [--repeats 15]

Guards are suggested from a credit-like baseline (6 numeric features, 1 categorical
`age_band` tensor; outputs `label` and `probabilities` [N, 2]; one count-window rate
guard), rows are made by the real Tabulator from v2-style tensors, as the sidecar does.
Each figure is the best of `--repeats` runs of ~`--seconds` each, cycling through 1,000
distinct pre-built requests (label ~ Bernoulli(0.4), so the rate guard sits in "ok").
The budget is 10% of a ~300 µs request: 30 µs for the whole guard path at batch 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import cpu_model  # bench/machine.py (scripts run from bench/)

from mlwitness.analytics.stats import wilson_interval  # noqa: E402
from mlwitness.codec import tensor_from_array  # noqa: E402
from mlwitness.guards.checks import InlineChecks  # noqa: E402
from mlwitness.guards.rates import RateTracker, _wilson  # noqa: E402
from mlwitness.guards.rules import GuardSet  # noqa: E402
from mlwitness.guards.suggestions import suggest  # noqa: E402
from mlwitness.ledger.rows import Rows, Tabulator  # noqa: E402

FEATURES = ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans")
LOWS = np.array([1000.0, 0.0, 300.0, 18.0, 0.0, 0.0])
HIGHS = np.array([251000.0, 1.5, 850.0, 88.0, 40.0, 10.0])
BANDS = ("18-25", "26-40", "41-60", "61+")
TABULATOR = Tabulator({"input": FEATURES})
POOL = 1000


def baseline() -> dict:
    numeric = {
        name: {"kind": "numeric", "count": 10000, "missing": 0, "min": lo, "max": hi}
        for name, lo, hi in zip(FEATURES, LOWS.tolist(), HIGHS.tolist(), strict=True)
    }
    freqs = {band: 2500 for band in BANDS}
    return {
        "features": {**numeric, "age_band": {"kind": "categorical", "count": 10000,
                                             "missing": 0, "frequencies": freqs}},
        "outputs": {
            "label": {"kind": "categorical", "count": 10000, "missing": 0,
                      "frequencies": {"0": 6000, "1": 4000}},
            "probabilities_0": {"kind": "numeric", "count": 10000, "missing": 0, "min": 0.01,
                                "max": 0.99},
            "probabilities_1": {"kind": "numeric", "count": 10000, "missing": 0, "min": 0.01,
                                "max": 0.99},
        },
    }  # fmt: skip


def requests(batch: int, rng: np.random.Generator) -> list[tuple[Rows, Rows]]:
    pool = []
    for _ in range(POOL):
        x = rng.uniform(LOWS, HIGHS, size=(batch, 6)).astype(np.float32)
        bands = np.array([b.encode() for b in rng.choice(BANDS, batch)], dtype=object)
        p1 = rng.uniform(0.05, 0.95, batch).astype(np.float32)
        label = (rng.random(batch) < 0.4).astype(np.int64)
        inputs = TABULATOR.rows(
            [tensor_from_array("input", x), tensor_from_array("age_band", bands)]
        )
        outputs = TABULATOR.rows(
            [
                tensor_from_array("label", label),
                tensor_from_array("probabilities", np.stack([1 - p1, p1], axis=1)),
            ]
        )
        pool.append((inputs, outputs))
    return pool


def per_call_us(fn: Callable[[int], object], seconds: float, repeats: int) -> float:
    """Best of `repeats` runs of ~`seconds`, in µs of this thread's CPU time per call
    (`time.thread_time`: time spent descheduled on a busy machine is not counted); fn(i)
    is one call."""
    clock = time.thread_time
    calls = 64
    while True:
        start = clock()
        for i in range(calls):
            fn(i)
        elapsed = clock() - start
        if elapsed >= seconds / 4:
            break
        calls *= 2
    calls = max(calls, int(calls * seconds / elapsed))
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        for i in range(calls):
            fn(i)
        best = min(best, (clock() - start) / calls)
    return best * 1e6


def machine() -> str:
    cpu = cpu_model()
    return (
        f"{cpu}; {os.cpu_count()} CPUs; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; numpy {np.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    config = suggest(baseline())
    guards = GuardSet(config)
    print(f"machine: {machine()}")
    print(
        f"guards: {len(config.features)} features, {len(config.outputs)} outputs, "
        f"{len(config.rates)} rate guard(s); config sha256 {config.sha256[:16]}…"
    )
    rng = np.random.default_rng(0)
    print(f"{'batch':>5} {'inputs':>9} {'outputs':>9} {'observe':>9} {'total':>9} "
          f"{'per row':>9}   (CPU µs per call; best of {args.repeats})")  # fmt: skip
    totals = {}
    for batch in (1, 256):
        pool = requests(batch, rng)
        tracker = RateTracker(config.rates)
        for inputs, outputs in pool:  # fill the window once; steady state from here on
            assert guards.check_inputs(inputs) == [] and guards.check_outputs(outputs) == []
            tracker.observe(outputs)

        def inputs_only(i: int, pool: list = pool) -> object:
            return guards.check_inputs(pool[i % POOL][0])

        def outputs_only(i: int, pool: list = pool) -> object:
            return guards.check_outputs(pool[i % POOL][1])

        def observe_only(i: int, pool: list = pool, tracker: RateTracker = tracker) -> object:
            return tracker.observe(pool[i % POOL][1])

        def whole(i: int, pool: list = pool, tracker: RateTracker = tracker) -> object:
            inputs, outputs = pool[i % POOL]
            guards.check_inputs(inputs)
            guards.check_outputs(outputs)
            return tracker.observe(outputs)

        figures = [
            per_call_us(fn, args.seconds, args.repeats)
            for fn in (inputs_only, outputs_only, observe_only, whole)
        ]
        totals[batch] = figures[-1]
        print(f"{batch:>5} " + " ".join(f"{f:>9.2f}" for f in figures)
              + f" {figures[-1] / batch:>9.3f}")  # fmt: skip
        states = {s.state for s in tracker.status()}
        assert states == {"ok"}, states

    # The whole path as the sidecar runs it per call: InlineChecks.before/after on the
    # call's tensors (tabulating them into rows first), the refusal check and the verdict
    # JSON, for both the inputs and the outputs.
    checks = InlineChecks(config, "observe", TABULATOR)
    tensors = []
    for _ in range(POOL):
        x = rng.uniform(LOWS, HIGHS, size=(1, 6)).astype(np.float32)
        p1 = rng.uniform(0.05, 0.95, 1).astype(np.float32)
        tensors.append((
            [tensor_from_array("input", x),
             tensor_from_array("age_band", np.array([rng.choice(BANDS).encode()], object))],
            [tensor_from_array("label", (rng.random(1) < 0.4).astype(np.int64)),
             tensor_from_array("probabilities", np.stack([1 - p1, p1], axis=1))]))

    def in_service(i: int) -> object:
        inputs, outputs = tensors[i % POOL]
        verdict = checks.before(inputs, None)
        checks.refuse(verdict, verdict.counts)
        verdict.to_json()
        checks.refuse(verdict, checks.after(verdict, outputs).counts)
        return verdict.to_json()

    whole_path = per_call_us(in_service, args.seconds, args.repeats)
    print(f"batch 1, the sidecar's whole guard path (InlineChecks on tensors, tabulation "
          f"included): {whole_path:.2f} µs")
    bad = request_with_violation()
    slow = per_call_us(lambda i: guards.check_inputs(bad), args.seconds, args.repeats)
    print(f"batch 1 with one out-of-range value (builds a Violation): {slow:.2f} µs")
    _wilson.cache_clear()
    cold = per_call_us(lambda i: wilson_interval(i % 997 + 1, 1000 + i), args.seconds / 4, 1)
    print(
        f"uncached stats.wilson_interval: {cold:.1f} µs (paid only when a window's estimate "
        "is outside [min, max] and (k, n) is not in the LRU cache)"
    )
    budget = 0.10 * 300.0
    verdict = "within" if whole_path <= budget else "OVER"
    print(f"batch-1 whole guard path {whole_path:.2f} µs vs budget {budget:.0f} µs "
          f"(10% of a 300 µs request): {verdict}")  # fmt: skip


def request_with_violation() -> Rows:
    x = np.array([[-5.0, 0.3, 700.0, 35.0, 5.0, 2.0]], dtype=np.float32)
    bands = np.array([b"26-40"], dtype=object)
    return TABULATOR.rows([tensor_from_array("input", x), tensor_from_array("age_band", bands)])


if __name__ == "__main__":
    main()
