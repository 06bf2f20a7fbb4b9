"""The in-process fuzz harness (fuzz/fuzz_codec.py, which atheris drives for long runs) on
Hypothesis' examples: request bytes through parsing, the codec's size checks and decoding,
a bit-exact re-encoding, the stored record's decoding and its rows in DuckDB. No server:
hundreds of examples a second, so this covers far more inputs than the served fuzz tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fuzz_requests import build, mutated, plans
from fuzz_support import examples
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from mlwitness.protocol import inference as pb

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_codec.py"


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_codec", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _harness()
SEEDS = harness.seeds()


def test_the_seed_corpus_decodes_and_tabulates() -> None:
    for seed in SEEDS:
        harness.one_input(seed)


@examples(ci=150)
@given(plan=plans(), module=st.sampled_from([pb, service_pb2]))
def test_structured_requests_keep_the_codec_and_row_invariants(plan, module) -> None:
    harness.one_input(build(module, plan))


@examples(ci=150)
@given(data=st.data())
def test_damaged_requests_keep_the_codec_and_row_invariants(data: st.DataObject) -> None:
    harness.one_input(data.draw(mutated(SEEDS), label="payload"))
