"""`SessionConfig`: the onnxruntime session options a decision is computed with, written to
the environment fingerprint and read back from it to build a session that computes alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlwitness.errors import FailedPrecondition
from mlwitness.model.runtime import CPU, OnnxModel, SessionConfig

ENVIRONMENT = {
    "intra_op_num_threads": 2,
    "inter_op_num_threads": 1,
    "graph_optimization_level": "ORT_ENABLE_BASIC",
    "execution_mode": "ORT_SEQUENTIAL",
    "enable_cpu_mem_arena": False,
    "use_deterministic_compute": True,
    "providers": [{"name": CPU, "options": {}}],
    "config_entries": {"session.set_denormal_as_zero": "1"},
}


def test_a_session_is_built_with_the_recorded_options_and_reports_them(
        affine_model: Path) -> None:
    config = SessionConfig.from_environment({"session_options": ENVIRONMENT})
    assert config is not None
    model = OnnxModel(affine_model.read_bytes(), config)
    assert model.session_config == config  # as onnxruntime reports its session's options
    assert model.session_config.to_environment() == ENVIRONMENT
    assert model.unavailable == []


def test_the_default_is_what_the_sidecar_served_with_before(affine_model: Path) -> None:
    reported = OnnxModel(affine_model.read_bytes()).session_config
    assert reported == SessionConfig()
    assert (reported.intra_op_num_threads, reported.inter_op_num_threads) == (1, 1)


def test_an_environment_without_session_options_names_none() -> None:
    assert SessionConfig.from_environment({"onnxruntime": "1.17.0"}) is None


def test_only_numeric_config_entries_are_taken_from_a_ledger() -> None:
    recorded = {**ENVIRONMENT, "config_entries": {
        "session.set_denormal_as_zero": "1",
        "session.optimized_model_external_initializers_file_name": "/tmp/x"}}
    config = SessionConfig.from_environment({"session_options": recorded})
    assert config is not None
    assert config.config_entries == (("session.set_denormal_as_zero", "1"),)


@pytest.mark.parametrize("change", [
    {"intra_op_num_threads": -1},
    {"intra_op_num_threads": "2"},
    {"intra_op_num_threads": True},
    {"graph_optimization_level": "ORT_ENABLE_EVERYTHING"},
    {"execution_mode": 1},
    {"enable_cpu_mem_arena": "yes"},
    {"providers": []},
    {"providers": [{"options": {}}]},
    {"config_entries": {"session.set_denormal_as_zero": 1}},
])
def test_malformed_session_options_are_refused_by_name(change: dict[str, Any]) -> None:
    with pytest.raises(FailedPrecondition, match="session_options are malformed"):
        SessionConfig.from_environment({"session_options": {**ENVIRONMENT, **change}})


def test_a_provider_missing_here_is_named_and_cpu_runs_in_its_place(affine_model: Path) -> None:
    config = SessionConfig(providers=(("NoSuchExecutionProvider", (("device_id", "0"),)),
                                      (CPU, ())))
    model = OnnxModel(affine_model.read_bytes(), config)
    assert model.unavailable == ["NoSuchExecutionProvider"]
    assert model.providers == [CPU]
    assert model.session_config.providers == ((CPU, ()),)
