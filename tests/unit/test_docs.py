"""The docs are the user's manual: they must keep up with the CLI, settings, API and metrics,
their links must lead somewhere, and the README stays a front page."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from mlwitness import cli, settings
from mlwitness.cli import docs as generated
from mlwitness.metrics import DOCUMENTED
from mlwitness.protocol import audit_pb2

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


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
def test_every_cli_command_is_in_the_hand_written_command_table(command: str) -> None:
    """Not only in the generated flag tables: someone said what it is for."""
    hand_written = page("cli.md").split(generated.GENERATED, 1)[0]
    assert f"`{command}" in hand_written, f"docs/cli.md's command table lacks `{command}`"


@pytest.mark.parametrize("spec", settings.SPECS, ids=lambda s: s.name)
def test_every_setting_has_its_flag_environment_variable_and_toml_key_documented(spec) -> None:
    configuration = page("configuration.md")
    for name in (spec.flag, spec.env, spec.name):
        assert f"`{name}`" in configuration, f"docs/configuration.md lacks {name}"


@pytest.mark.parametrize("path", sorted(generated.pages(DOCS)), ids=lambda p: p.name)
def test_generated_reference_pages_are_current(path: Path) -> None:
    assert path.read_text(encoding="utf-8") == generated.pages(DOCS)[path], \
        f"{path.relative_to(ROOT)} is stale: run python -m mlwitness.cli.docs"


def test_every_serve_flag_is_a_setting() -> None:
    serve = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)
                 ).choices["serve"]
    flags = {o for a in serve._actions for o in a.option_strings if o.startswith("--")}
    known = {s.flag for s in settings.SPECS} | {"--help", "--config"}
    assert flags <= known, f"serve flags not in settings.SPECS: {sorted(flags - known)}"


def test_every_flag_says_what_it_is_for() -> None:
    parsers = [cli.parser()]
    missing = []
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif not (action.help or "").strip():
                missing.append(f"{parser.prog}: {'/'.join(action.option_strings)}")
    assert not missing, missing


RPCS = [m.name for m in audit_pb2.DESCRIPTOR.services_by_name["AuditService"].methods]


@pytest.mark.parametrize("rpc", RPCS)
def test_every_audit_rpc_is_in_the_api_reference(rpc: str) -> None:
    assert f"| `{rpc}`" in page("audit.md"), f"docs/audit.md's audit API table lacks {rpc}"


@pytest.mark.parametrize("metric", sorted(DOCUMENTED))
def test_every_metric_is_documented(metric: str) -> None:
    assert f"`{metric}" in page("monitoring.md"), f"docs/monitoring.md's metrics lack {metric}"


def test_readme_states_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "bash scripts/demo.sh" in README and "bash scripts/test.sh" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def test_readme_is_a_front_page() -> None:
    lines = README.count("\n")
    assert lines <= 150, f"README.md has {lines} lines: move the detail into docs/"


# ── links ──────────────────────────────────────────────────────────────────────────────

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """Markdown without fenced blocks and code spans: where links and headings are."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated id numbered -1, -2…"""
    seen: dict[str, int] = {}
    ids = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "bench").glob("*.md"),
                ROOT / "deploy" / "README.md"])


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text(encoding="utf-8")))
            if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto: are not ours to check


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(
                resolved.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, broken


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        path = todo.pop()
        for target in _links(path):
            linked = (path.parent / target.partition("#")[0]).resolve()
            if linked.suffix == ".md" and linked.exists() and linked not in reached:
                reached.add(linked)
                todo.append(linked)
    unreached = sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in reached)
    assert not unreached, f"no link leads to docs/{unreached}"


def test_anchors_follow_github() -> None:
    assert anchors("# What `verify` checks\n## The `detail` keys\n## A, b (c)\n## A, b (c)\n"
                   "```\n# not a heading\n```\n") == {
        "what-verify-checks", "the-detail-keys", "a-b-c", "a-b-c-1"}
