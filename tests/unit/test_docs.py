"""The README is the user's manual: it must keep up with the CLI, settings, API and metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mlwitness import cli, settings
from mlwitness.metrics import DOCUMENTED
from mlwitness.protocol import audit_pb2

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _commands(parser: argparse.ArgumentParser, prefix: str = "mlwitness") -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found.extend(_commands(sub, f"{prefix} {name}"))
    return found


COMMANDS = _commands(cli.parser())


def test_cli_has_the_commands_the_issues_name() -> None:
    for command in ("mlwitness serve", "mlwitness verify", "mlwitness audit show",
                    "mlwitness audit replay-range", "mlwitness audit-server",
                    "mlwitness baseline", "mlwitness guards suggest", "mlwitness audit drift"):
        assert command in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_cli_command_is_documented(command: str) -> None:
    assert f"`{command}" in README, f"README does not document `{command}`"


@pytest.mark.parametrize("spec", settings.SPECS, ids=lambda s: s.name)
def test_every_setting_has_its_flag_and_environment_variable_documented(spec) -> None:
    assert f"`{spec.flag}`" in README, f"README's configuration table lacks {spec.flag}"
    assert f"`{spec.env}`" in README, f"README's configuration table lacks {spec.env}"


def test_every_serve_flag_is_a_setting() -> None:
    serve = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)
                 ).choices["serve"]
    flags = {o for a in serve._actions for o in a.option_strings if o.startswith("--")}
    known = {s.flag for s in settings.SPECS} | {"--help", "--config"}
    assert flags <= known, f"serve flags not in settings.SPECS: {sorted(flags - known)}"


RPCS = [m.name for m in audit_pb2.DESCRIPTOR.services_by_name["AuditService"].methods]


@pytest.mark.parametrize("rpc", RPCS)
def test_every_audit_rpc_is_in_the_api_reference(rpc: str) -> None:
    assert f"| `{rpc}`" in README, f"README's audit API reference lacks {rpc}"


@pytest.mark.parametrize("metric", sorted(DOCUMENTED))
def test_every_metric_is_documented(metric: str) -> None:
    assert metric in README, f"README's metrics table lacks {metric}"


def test_readme_states_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "bash scripts/demo.sh" in README and "bash scripts/test.sh" in README
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
