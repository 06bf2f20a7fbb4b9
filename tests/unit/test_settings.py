"""Settings are declared once, as fields of `Settings`: the flag, environment variable, TOML
key, parser and check of each come from its field."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from mlwitness import settings
from mlwitness.errors import ConfigError
from mlwitness.settings import SPECS, Settings


def test_every_field_is_a_declared_setting() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert [spec.name for spec in SPECS] == names
    for f in dataclasses.fields(Settings):
        assert f.metadata.get("help"), f"{f.name} has no help"
        assert set(f.metadata["commands"]) <= {"serve", "audit-server"}, f.name
        assert f.metadata["check"] in (None, *settings._CHECKS), f.name


def test_the_standalone_audit_server_takes_what_its_fields_say() -> None:
    assert "audit_trail" in settings.AUDIT_SERVER_ONLY
    assert set(settings.AUDIT_SERVER) == {s.name for s in SPECS if "audit-server" in s.commands}
    assert "ledger" in settings.AUDIT_SERVER and "model" not in settings.AUDIT_SERVER


def _text(spec: settings.Spec) -> tuple[str, object]:
    """A value for `spec` as the environment gives it, and what it must become."""
    hint = typing.get_type_hints(Settings)[spec.name]
    if spec.choices:
        return spec.choices[-1], spec.choices[-1]
    if spec.switch:
        return "true", True
    if "list" in str(hint):
        return "a, b", ["a", "b"]
    if "Path" in str(hint):
        return "some/file", Path("some/file")
    if "int" in str(hint):
        return "7", 7
    if "float" in str(hint):
        return "2.5", 2.5
    return "text", "text"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_setting_is_read_from_its_flag_environment_variable_and_toml_key(
    spec: settings.Spec, tmp_path: Path
) -> None:
    text, value = _text(spec)
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    flag = [spec.flag] if spec.switch else [spec.flag, text]
    assert getattr(settings.build(parser.parse_args(flag), env={}), spec.name) == value
    assert getattr(settings.build(None, env={spec.env: text}), spec.name) == value
    config = tmp_path / "mlwitness.toml"
    toml_value = "true" if spec.switch else f'"{text}"'
    config.write_text(f"{spec.name} = {toml_value}\n")
    from_file = settings.build(None, env={"MLWITNESS_CONFIG": str(config)})
    assert getattr(from_file, spec.name) == value
    assert getattr(Settings(), spec.name) == spec.default  # not given: the declared default


@pytest.mark.parametrize("spec", [s for s in SPECS if s.choices], ids=lambda s: s.name)
def test_a_choice_outside_its_list_is_refused_naming_the_choices(
    spec: settings.Spec, tmp_path: Path
) -> None:
    # e.g. MLWITNESS_TABLE_BUILDER=subprocess: refused at start, not taken for the default
    assert spec.choices is not None
    config = tmp_path / "mlwitness.toml"
    config.write_text(f'{spec.name} = "no-such-{spec.name}"\n')
    for env in ({spec.env: f"no-such-{spec.name}"}, {"MLWITNESS_CONFIG": str(config)}):
        with pytest.raises(ConfigError) as caught:
            settings.build(None, env=env)
        assert f"must be one of {', '.join(spec.choices)}" in caught.value.message


def test_a_default_list_is_not_shared_between_settings() -> None:
    first, second = Settings(), Settings()
    first.record_metadata.append("x-extra")
    assert "x-extra" not in second.record_metadata


@pytest.mark.parametrize(("name", "value", "words"), [
    ("ort_threads", 0, "--ort-threads must be positive, got 0"),
    ("max_backlog", -1, "--max-backlog must be positive"),
    ("guards", Path("no/such/guards.toml"), "--guards file no/such/guards.toml does not exist"),
    ("max_concurrent_rpcs", 2**31, "--max-concurrent-rpcs must be a positive whole number"),
])  # fmt: skip
def test_a_value_that_fails_its_check_is_refused_naming_the_flag(
    tmp_path: Path, name: str, value: object, words: str
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07")
    with pytest.raises(ConfigError) as caught:
        Settings(model=model, **{name: value}).validate()
    assert words in caught.value.message


@pytest.mark.parametrize(("name", "value"), [
    ("audit_memory_bytes", 0), ("max_candidate_bytes", -5), ("audit_run_timeout", 0.0),
    ("ort_threads", 0), ("drain_timeout", -1.0), ("audit_port", 70000),
])  # fmt: skip
def test_the_audit_server_checks_every_limit_it_takes(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name.replace("_", "-")):
        Settings(**{name: value}).validate_limits()


# ── the archive's settings ─────────────────────────────────────────────────────────────


def _serve(tmp_path: Path, **values: object) -> Settings:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    return Settings(model=model, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["s3://audit-bucket/credit", "s3://audit-bucket",
                                 "file:///var/lib/archive"])
def test_an_archive_url_of_either_kind_passes(url: str, tmp_path: Path) -> None:
    assert _serve(tmp_path, archive=url, local_retention=30.0).validate().archive == url


@pytest.mark.parametrize("url", ["http://audit-bucket/x", "audit-bucket/credit", "s3://",
                                 "file://", "gs://bucket/x"])
def test_an_archive_url_of_another_kind_is_refused_naming_the_flag(
        url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--archive must be s3://bucket/prefix"):
        _serve(tmp_path, archive=url).validate()


@pytest.mark.parametrize(("name", "flag"), [("local_retention", "--local-retention"),
                                            ("archive_object_lock_days",
                                             "--archive-object-lock-days")])
def test_retention_and_object_lock_need_an_archive(name: str, flag: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{flag} need --archive"):
        _serve(tmp_path, **{name: 7}).validate()


@pytest.mark.parametrize(("name", "value"), [("local_retention", -1.0),
                                             ("local_retention", float("nan")),
                                             ("archive_object_lock_days", -3),
                                             ("archive_interval", 0.0),
                                             ("archive_records", 0)])
def test_archive_numbers_out_of_range_are_refused(name: str, value: object,
                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--" + name.replace("_", "-")):
        _serve(tmp_path, archive="s3://audit-bucket/x", **{name: value}).validate()
