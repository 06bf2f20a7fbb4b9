"""Deployment artefacts: the container image, the kustomize manifests and the Helm chart.

Every rendering (kustomize base, TLS and native-sidecar overlays, the Helm chart with its
defaults, as a native sidecar, and with TLS, access files, guards and a baseline) is
validated against the Kubernetes schemas and checked for the same invariants: probes on the
plaintext health port, a server no caller can exhaust (liveness asks for service "liveness"),
non-root, volumes wired (every file a flag names comes from the read-only config volume,
the audit access file from a Secret), ports distinct, audit port fenced off, and sidecar
arguments that the real CLI parses into valid settings. One test starts a real sidecar
from the TLS overlay's arguments and files. kubectl (and helm, for rendering the chart)
come from scripts/install_kubectl.sh; the chart's static checks need neither. No Docker
engine runs here: the Dockerfile is checked line by line, and its entrypoint is run from a
venv built the way the Dockerfile builds it.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import models
import pytest
import yaml

from mlwitness import __version__
from mlwitness import settings as settings_mod
from mlwitness.analytics.baseline import Baseline
from mlwitness.auth import Access
from mlwitness.cli import parser
from mlwitness.guards.file import load_guards

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
BASE_CONFIG = KUSTOMIZE / "base" / "config"
CHART = DEPLOY / "helm" / "mlwitness"
DOCKERFILE = DEPLOY / "Dockerfile"
CREDIT_BUILDER = ROOT / "examples" / "credit" / "build_model.py"

KUBE_VERSION = "1.30.0"
MIN_KUBE_VERSION = {False: "1.27.0", True: "1.29.0"}  # regular sidecar / native sidecar
MODEL_SERVER_PORTS = {8000, 8001, 8002, 8080, 8081}  # Triton, KServe
AUDITOR_LABEL = ("mlwitness.io/auditor", "true")
SIDECAR = "mlwitness"
NON_SETTINGS_FLAGS = {"config"}  # --config is a flag but not a setting
CONFIG_DIR = Path("/etc/mlwitness")
# Settings that name a file the sidecar reads: each must come from the config volume.
FILE_SETTINGS = (
    "guards",
    "baseline",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "audit_access",
    "inference_access",
    "upstream_ca",
    "upstream_cert",
    "upstream_key",
    "hash_key",
)
MONITORING_FILES = ("guards", "baseline")  # from a ConfigMap; every other file from a Secret
PLACEHOLDER_SHA256 = "0" * 64  # the example access file's entry: no token hashes to it
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
CONFIGMAP_LIMIT = 1 << 20


def _tool(name: str) -> str | None:
    """A binary on PATH, or next to this interpreter (scripts/install_kubectl.sh can put it
    into the venv's bin/, which is not on PATH when pytest is run as .venv/bin/pytest)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


KUBECTL = _tool("kubectl")
HELM = _tool("helm")
INSTALL_HINT = "install it with scripts/install_kubectl.sh"
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason=f"kubectl is not installed: {INSTALL_HINT}"
)
needs_helm = pytest.mark.skipif(HELM is None, reason=f"helm is not installed: {INSTALL_HINT}")


# ── rendering ──────────────────────────────────────────────────────────────────────────


@dataclasses.dataclass(frozen=True)
class Rendering:
    name: str
    native: bool
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def replicas_of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The objects of the replicas' pods: not the archive's fleet audit server."""
        return [d for d in self.of_kind(kind) if not _is_fleet(d)]

    @property
    def statefulset(self) -> dict[str, Any]:
        (sts,) = self.of_kind("StatefulSet")
        return sts

    @property
    def pod(self) -> dict[str, Any]:
        return self.statefulset["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict[str, str]:
        return self.statefulset["spec"]["template"]["metadata"]["labels"]

    def all_containers(self) -> list[dict[str, Any]]:
        return [*self.pod.get("initContainers", []), *self.pod["containers"]]

    @property
    def sidecar(self) -> dict[str, Any]:
        (container,) = [c for c in self.all_containers() if c["name"] == SIDECAR]
        return container

    @property
    def model_server(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] != SIDECAR]
        return container

    def port(self, container: dict[str, Any], name: str) -> int:
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
        return port

    def volume(self, name: str) -> dict[str, Any]:
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == name]
        return volume

    def configmaps(self) -> dict[str, dict[str, str]]:
        return {cm["metadata"]["name"]: cm.get("data", {}) for cm in self.of_kind("ConfigMap")}

    def secrets(self) -> dict[str, dict[str, bytes]]:
        """The Secrets the rendering itself holds (kustomize's generator), decoded."""
        found: dict[str, dict[str, bytes]] = {}
        for secret in self.of_kind("Secret"):
            data = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
            data.update({k: v.encode() for k, v in secret.get("stringData", {}).items()})
            found[secret["metadata"]["name"]] = data
        return found


def _load_docs(text: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(text) if d)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return done.stdout


def _kustomize_dir(directory: Path) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    return _load_docs(_run([KUBECTL, "kustomize", str(directory)]))


@cache
def _kustomize(relative: str) -> tuple[dict[str, Any], ...]:
    return _kustomize_dir(KUSTOMIZE / relative)


def _helm_cmd(*args: str, kube: str = KUBE_VERSION) -> list[str]:
    assert HELM is not None
    return [
        HELM,
        "template",
        "audit-demo",
        str(CHART),
        "--namespace",
        "credit",
        "--kube-version",
        kube,
        *args,
    ]


@cache
def _helm(*args: str) -> tuple[dict[str, Any], ...]:
    return _load_docs(_run(_helm_cmd(*args)))


# fmt: off
# The kustomize base's example guards and baseline, given to the chart as a user would.
HELM_MONITORING = (
    "--set", "guards.enabled=true",
    "--set-file", f"guards.toml={BASE_CONFIG / 'guards.toml'}",
    "--set", "baseline.enabled=true",
    "--set-file", f"baseline.json={BASE_CONFIG / 'baseline.json'}",
)
HELM_TLS = ("--set", "tls.enabled=true", "--set", "tls.existingSecret=mlwitness-tls")
ARCHIVE_URL = "s3://audit-bucket/credit"
HELM_ARCHIVE = (
    "--set", f"archive.url={ARCHIVE_URL}",
    "--set", "archive.region=eu-west-1",
    "--set", "archive.endpoint=https://minio.example:9000",
    "--set", "archive.credentialsSecret=mlwitness-archive-credentials",
    "--set", "archive.register.enabled=true",
    "--set", "archive.register.catalogSecret.name=iceberg-catalog",
    "--set", "mlwitness.settings.local_retention=30",
    "--set", "mlwitness.settings.archive_object_lock_days=2557",
)

RENDERINGS = {
    # name: (tool needed, native sidecar, render)
    "kustomize-base": ("kubectl", False, lambda: _kustomize(".")),
    "kustomize-native-sidecar": ("kubectl", True, lambda: _kustomize("overlays/native-sidecar")),
    "kustomize-tls": ("kubectl", False, lambda: _kustomize("overlays/tls")),
    "kustomize-native-sidecar-tls": (
        "kubectl",
        True,
        lambda: _kustomize("overlays/native-sidecar-tls"),
    ),
    "kustomize-archive": ("kubectl", False, lambda: _kustomize("overlays/archive")),
    "helm-default": ("helm", False, lambda: _helm()),
    "helm-archive": ("helm", False, lambda: _helm(*HELM_ARCHIVE, *HELM_TLS,
        "--set", "auditAccess.existingSecret=mlwitness-audit-access")),
    "helm-native-sidecar": ("helm", True, lambda: _helm("--set", "nativeSidecar=true")),
    "helm-everything": (
        "helm",
        False,
        lambda: _helm(
            *HELM_MONITORING,
            *HELM_TLS,
            "--set", "model.existingClaim=model-repository",
            "--set", "upstreamTls.enabled=true",
            "--set", "upstreamTls.existingSecret=triton-client-tls",
            "--set", "upstreamTls.clientCert=true",
            "--set", "auditAccess.existingSecret=mlwitness-audit-access",
            "--set", "inferenceAccess.existingSecret=mlwitness-inference-access",
            "--set", "inferenceAccess.key=callers.toml",
            "--set", "hashKey.existingSecret=mlwitness-hash-key",
            "--set", "mlwitness.settings.guard_mode=enforce",
            "--set", "mlwitness.settings.hash_inputs[0]=applicant_id",
            "--set", "mlwitness.settings.redact_inputs[0]=applicant_name",
            "--set", "networkPolicy.inferenceFrom[0].namespaceSelector.matchLabels.team=credit",
        ),
    ),
    "helm-native-sidecar-tls-server-only": (
        "helm",
        True,
        lambda: _helm(
            "--set", "nativeSidecar=true", *HELM_TLS, "--set", "tls.clientAuth=false",
            "--set", "mlwitness.ports.health=9100",
        ),
    ),
}
# fmt: on
KUSTOMIZE_RENDERINGS = sorted(n for n in RENDERINGS if n.startswith("kustomize"))


def _render(name: str) -> Rendering:
    tool, native, render = RENDERINGS[name]
    if {"kubectl": KUBECTL, "helm": HELM}[tool] is None:
        pytest.skip(f"{tool} is not installed: {INSTALL_HINT}")
    return Rendering(name, native, render())


@pytest.fixture(params=sorted(RENDERINGS), ids=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return _render(request.param)


# ── the sidecar's command line, read with the real CLI ─────────────────────────────────


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in container args."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], a) for a in args]


def _sidecar_args(r: Rendering, pod_name: str = "mlwitness-0") -> list[str]:
    container = r.sidecar
    assert "command" not in container, "args must go through the image's ENTRYPOINT"
    return _expand(container["args"], {"POD_NAME": pod_name})


def _sidecar_settings(
    r: Rendering, tmp_path: Path
) -> tuple[argparse.Namespace, settings_mod.Settings]:
    """Parse the sidecar's args with the real parser, with --config pointing at a copy of
    the rendered mlwitness.toml, and build the settings exactly as `serve` does."""
    args = parser().parse_args(_sidecar_args(r))
    assert args.command == "serve"
    if args.config is not None:
        source = _projected_source(r, Path(args.config))
        assert source.kind == "configMap", f"--config {args.config} is not in a ConfigMap"
        content = _source_content(r, source)
        assert content is not None
        copy = tmp_path / Path(args.config).name
        copy.write_bytes(content)
        args.config = copy
    return args, settings_mod.build(args, env={})


def _file_settings(settings: settings_mod.Settings) -> dict[str, Path]:
    return {n: Path(getattr(settings, n)) for n in FILE_SETTINGS if getattr(settings, n)}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a file in a projected volume comes from."""

    kind: str  # configMap or secret
    name: str
    key: str
    optional: bool


def _projected_source(r: Rendering, path: Path) -> Source:
    """The one ConfigMap or Secret key that puts `path` into the sidecar's filesystem."""
    mount = _mount(r.sidecar, path)
    volume = r.volume(mount["name"])
    assert "projected" in volume, f"{path} is on volume {mount['name']}, not the config volume"
    relative = path.relative_to(mount["mountPath"]).as_posix()
    configmaps = r.configmaps()
    found: list[Source] = []
    for entry in volume["projected"]["sources"]:
        for kind in ("configMap", "secret"):
            if kind not in entry:
                continue
            ref = entry[kind]
            optional = bool(ref.get("optional", False))
            if "items" in ref:
                found += [
                    Source(kind, ref["name"], item["key"], optional)
                    for item in ref["items"]
                    if item["path"] == relative
                ]
            elif kind == "configMap" and relative in configmaps.get(ref["name"], {}):
                found.append(Source(kind, ref["name"], relative, optional))
    assert len(found) == 1, f"{path}: expected one source in volume {mount['name']}, got {found}"
    return found[0]


def _projected_paths(r: Rendering, volume_name: str) -> set[str]:
    """Every file (relative path) the projected volume holds."""
    configmaps = r.configmaps()
    paths: set[str] = set()
    for entry in r.volume(volume_name)["projected"]["sources"]:
        for kind in ("configMap", "secret"):
            if kind not in entry:
                continue
            ref = entry[kind]
            if "items" in ref:
                paths |= {item["path"] for item in ref["items"]}
            else:
                assert kind == "configMap", "a Secret without items: unknown file names"
                assert ref["name"] in configmaps, f"ConfigMap {ref['name']} is not rendered"
                paths |= set(configmaps[ref["name"]])
    return paths


def _source_content(r: Rendering, source: Source) -> bytes | None:
    """The file's bytes when the rendering holds its ConfigMap or Secret; None for a Secret
    the user brings (TLS certificates, Helm's existingSecret)."""
    if source.kind == "configMap":
        data = r.configmaps()[source.name]
        return data[source.key].encode()
    secret = r.secrets().get(source.name)
    if secret is None:
        return None
    assert source.key in secret, f"Secret {source.name} has no key {source.key}"
    return secret[source.key]


def _materialize(r: Rendering, settings: settings_mod.Settings, directory: Path) -> dict[str, Path]:
    """Copies of the files the settings name, from their ConfigMap or Secret: the real bytes
    when the rendering holds them, a stand-in for a Secret the user brings."""
    copies: dict[str, Path] = {}
    for name, path in _file_settings(settings).items():
        source = _projected_source(r, path)
        content = _source_content(r, source)
        copy = directory / name / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(
            content if content is not None else f"stand-in for Secret {source.name}".encode()
        )
        copies[name] = copy
    return copies


def _valid_settings(r: Rendering, tmp_path: Path) -> settings_mod.Settings:
    """The rendered settings, with the model and every mounted file replaced by local copies,
    through Settings.validate() as `serve` runs it."""
    _, settings = _sidecar_settings(r, tmp_path)
    stand_in = tmp_path / "model.onnx"
    stand_in.write_bytes(b"onnx")
    files = _materialize(r, settings, tmp_path / "etc")
    return dataclasses.replace(settings, model=stand_in, **files).validate()


def _serve_flags() -> dict[str, str]:
    """Setting name -> flag for every option of `mlwitness serve`, from the real parser."""
    top = parser()
    (subparsers,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    serve = subparsers.choices["serve"]
    return {
        a.dest: a.option_strings[-1]
        for a in serve._actions
        if a.option_strings and a.dest not in ("help", *NON_SETTINGS_FLAGS)
    }


def _mount(container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volumeMount of `container` under which `path` lies (deepest first)."""
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for m in mounts:
        if path == Path(m["mountPath"]) or Path(m["mountPath"]) in path.parents:
            return m
    raise AssertionError(f"{path} is on no volume of container {container['name']}")


def _prestop_sleep(container: dict[str, Any]) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return 0
    assert command[0] == "sleep", command
    return int(command[1])


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    """The container port a probe dials (named ports resolved)."""
    (kind,) = [k for k in ("grpc", "tcpSocket", "httpGet", "exec") if k in probe]
    assert kind != "exec", "an exec probe checks nothing the kubelet can reach"
    port = probe[kind]["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(port)


# ── every rendering: schema validity ───────────────────────────────────────────────────


def test_every_document_validates_against_the_kubernetes_schema(rendering: Rendering) -> None:
    kinds = sorted(d["kind"] for d in rendering.docs)
    assert {"StatefulSet", "Service", "NetworkPolicy", "ConfigMap", "ServiceAccount"} <= set(kinds)
    for version in (MIN_KUBE_VERSION[rendering.native], KUBE_VERSION):
        for doc in rendering.docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                    f"{version} at {where}: {exc.message}"
                )


# ── every rendering: the pod ───────────────────────────────────────────────────────────


def test_sidecar_args_build_valid_settings(rendering: Rendering, tmp_path: Path) -> None:
    settings = _valid_settings(rendering, tmp_path)
    assert settings.upstream is not None, "the sidecar must run in forwarding mode"
    host, _, port = settings.upstream.rpartition(":")
    assert host in ("127.0.0.1", "localhost")
    assert int(port) in {p["containerPort"] for p in rendering.model_server["ports"]}
    assert settings.host == "0.0.0.0"
    assert settings.model_name, "--model-name must match the model server's model name"
    if settings.tls_cert is not None or settings.tls_key is not None:
        assert settings.tls_cert and settings.tls_key, "--tls-cert and --tls-key go together"
    if settings.upstream_cert is not None or settings.upstream_key is not None:
        assert settings.upstream_cert and settings.upstream_key and settings.upstream_ca


def test_mounted_files_load_with_the_sidecars_own_readers(
    rendering: Rendering, tmp_path: Path
) -> None:
    """Guards, baseline and access files the rendering ships parse as `serve` parses them."""
    _, settings = _sidecar_settings(rendering, tmp_path)
    files = _materialize(rendering, settings, tmp_path / "etc")
    for name, copy in files.items():
        if copy.read_bytes().startswith(b"stand-in"):
            continue  # a Secret the user brings
        if name == "guards":
            assert load_guards(copy).sha256
        elif name == "baseline":
            Baseline.from_json(copy.read_text())
            assert copy.stat().st_size < CONFIGMAP_LIMIT
        elif name in ("audit_access", "inference_access"):
            Access.load(copy)


def test_probes_use_the_plaintext_health_port(rendering: Rendering, tmp_path: Path) -> None:
    """The probes dial --health-port: plaintext (kubelet gRPC probes speak no TLS) and a
    server of its own, whose slots no caller of the inference or audit port can take (a
    liveness probe refused for want of a slot would restart a healthy pod)."""
    _, settings = _sidecar_settings(rendering, tmp_path)
    c = rendering.sidecar
    assert all(p in c for p in PROBES)
    assert settings.health_port, "the probes need --health-port"
    assert rendering.port(c, "health") == settings.health_port
    for name in PROBES:
        port = _probe_port(c, c[name])
        assert port == settings.health_port, (name, port)
        assert port not in {settings.port, settings.audit_port}, f"{name} dials a callers' port"


def test_liveness_asks_for_the_liveness_service(rendering: Rendering) -> None:
    """Readiness (and startup) follow service "": ledger healthy and upstream ready. Liveness
    asks for "liveness", SERVING while the process runs, so an unready model server takes
    the pod out of the endpoints without restarting the sidecar."""
    c = rendering.sidecar
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    assert c["readinessProbe"]["grpc"].get("service", "") == ""
    startup = c["startupProbe"]
    if rendering.native:
        # The model server starts after the native sidecar's startup probe passes, and the
        # gRPC health status waits for the model server: the startup probe must not.
        assert set(startup) & {"grpc", "tcpSocket"} == {"tcpSocket"}
    else:
        assert startup["grpc"].get("service", "") == ""


def test_every_container_runs_non_root_with_a_read_only_root(rendering: Rendering) -> None:
    pod_sc = rendering.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in rendering.all_containers():
        sc = {**pod_sc, **c.get("securityContext", {})}
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc.get("runAsUser", 1) != 0, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"], c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
    sidecar_sc = {**pod_sc, **rendering.sidecar["securityContext"]}
    assert sidecar_sc["runAsUser"] == _dockerfile_uid()
    assert pod_sc["fsGroup"] == _dockerfile_uid(), "the ledger claim must be writable"


def test_every_container_has_resource_requests_and_limits(rendering: Rendering) -> None:
    for c in rendering.all_containers():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)


def test_ledger_is_a_per_replica_claim_mounted_where_ledger_points(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    assert "$(POD_NAME)" in " ".join(rendering.sidecar["args"]), "one ledger per pod"
    env = {e["name"]: e for e in rendering.sidecar["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert settings.ledger.name == "mlwitness-0.duckdb"
    mount = _mount(rendering.sidecar, settings.ledger)
    assert not mount.get("readOnly", False)
    claims = {
        t["metadata"]["name"]: t for t in rendering.statefulset["spec"]["volumeClaimTemplates"]
    }
    assert mount["name"] in claims, "the ledger must be on a PersistentVolumeClaim"
    assert mount["name"] not in {v["name"] for v in rendering.pod["volumes"]}
    policy = rendering.statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    for name, path in _file_settings(settings).items():  # the hash key above all
        assert _mount(rendering.sidecar, path)["name"] != mount["name"], (
            f"--{name} must not live on the ledger's volume"
        )


def test_model_file_is_on_a_volume_shared_with_the_model_server(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    assert settings.model is not None
    sidecar_mount = _mount(rendering.sidecar, settings.model)
    assert sidecar_mount.get("readOnly") is True
    server_mounts = {m["name"]: m for m in rendering.model_server["volumeMounts"]}
    assert sidecar_mount["name"] in server_mounts, "the model server must see the same file"
    server_mount = server_mounts[sidecar_mount["name"]]
    assert server_mount["mountPath"] == sidecar_mount["mountPath"]
    repository = [
        a.split("=", 1)[1]
        for a in rendering.model_server.get("args", [])
        if a.startswith("--model-repository=")
    ]
    if repository:  # Triton: <repository>/<model name>/<version>/model.onnx
        relative = settings.model.relative_to(repository[0])
        assert relative.parts == (settings.model_name, settings.model_version, "model.onnx")
    volume = rendering.volume(sidecar_mount["name"])
    if "emptyDir" in volume:  # something must put the file there first
        fetchers = [
            c
            for c in rendering.pod.get("initContainers", [])
            if c["name"] != SIDECAR and any(m["name"] == volume["name"] for m in c["volumeMounts"])
        ]
        assert fetchers, "an emptyDir model volume needs an init container that fills it"
    else:
        assert volume["persistentVolumeClaim"]["readOnly"] is True


def test_container_ports_are_distinct_and_clear_of_model_server_ports(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    ports = [p["containerPort"] for c in rendering.all_containers() for p in c.get("ports", [])]
    assert len(ports) == len(set(ports)), ports
    names = [p["name"] for c in rendering.all_containers() for p in c.get("ports", [])]
    assert len(names) == len(set(names)), names
    sidecar = {p["name"]: p["containerPort"] for p in rendering.sidecar["ports"]}
    expected = {
        "inference": settings.port,
        "audit": settings.audit_port,
        "metrics": settings.metrics_port,
    }
    if settings.health_port:
        expected["health"] = settings.health_port
    assert sidecar == expected
    assert len(set(sidecar.values())) == len(sidecar)
    assert not set(sidecar.values()) & MODEL_SERVER_PORTS


def test_sidecar_placement_matches_the_sidecar_style(rendering: Rendering) -> None:
    init = [c["name"] for c in rendering.pod.get("initContainers", [])]
    main = [c["name"] for c in rendering.pod["containers"]]
    if rendering.native:
        assert SIDECAR in init and SIDECAR not in main
        assert rendering.sidecar["restartPolicy"] == "Always"
        # Regular init containers before it must finish first: the model file is there.
        assert init[-1] == SIDECAR
    else:
        assert SIDECAR in main and SIDECAR not in init
        assert "restartPolicy" not in rendering.sidecar


def test_grace_period_outlasts_prestop_and_drain(rendering: Rendering, tmp_path: Path) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    grace = rendering.pod["terminationGracePeriodSeconds"]
    sidecar_stop = _prestop_sleep(rendering.sidecar) + settings.drain_timeout
    if rendering.native:  # the native sidecar is stopped after the model server exits
        sidecar_stop += _prestop_sleep(rendering.model_server)
    assert grace > 20
    assert grace > sidecar_stop, (grace, sidecar_stop)


def test_service_links_cannot_shadow_mlwitness_settings(rendering: Rendering) -> None:
    # A Service named <x>-audit would inject MLWITNESS_AUDIT_PORT=tcp://... otherwise.
    assert rendering.pod["enableServiceLinks"] is False
    assert rendering.pod["automountServiceAccountToken"] is False


def test_every_file_a_flag_names_comes_from_the_read_only_config_volume(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    config = parser().parse_args(_sidecar_args(rendering)).config
    assert config == CONFIG_DIR / "mlwitness.toml"
    mount = _mount(rendering.sidecar, config)
    assert mount["mountPath"] == str(CONFIG_DIR) and mount["readOnly"] is True
    read_by_flags = {"mlwitness.toml"}
    for name, path in _file_settings(settings).items():
        assert _mount(rendering.sidecar, path) is mount, f"--{name} {path}"
        source = _projected_source(rendering, path)
        expected = "configMap" if name in MONITORING_FILES else "secret"
        assert source.kind == expected, (name, source)
        assert not source.optional, f"--{name}: the pod must not start without the file"
        read_by_flags.add(path.relative_to(CONFIG_DIR).as_posix())
    # and nothing is mounted that no flag reads (a certificate nobody uses is a mistake)
    assert _projected_paths(rendering, mount["name"]) == read_by_flags


def test_audit_access_secret_is_mounted_where_audit_access_points(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    if settings.audit_access is None:
        # Only the chart may leave it off (auditAccess.existingSecret unset; NOTES warn).
        assert rendering.name.startswith("helm"), "the kustomize base must lock the audit port"
        return
    source = _projected_source(rendering, settings.audit_access)
    assert source.kind == "secret" and not source.optional
    assert source.name in {s["secret"]["name"] for s in _secret_sources(rendering)}
    if rendering.name.startswith("kustomize"):  # the base generates the example Secret
        content = rendering.secrets()[source.name][source.key]
        copy = tmp_path / "audit.toml"
        copy.write_bytes(content)
        access = Access.load(copy)
        assert set(access.tokens) == {PLACEHOLDER_SHA256}, "the example must grant nobody"
        assert not access.identities


def _secret_sources(r: Rendering) -> list[dict[str, Any]]:
    mount = _mount(r.sidecar, CONFIG_DIR / "mlwitness.toml")
    return [s for s in r.volume(mount["name"])["projected"]["sources"] if "secret" in s]


@pytest.mark.parametrize("name", KUSTOMIZE_RENDERINGS)
def test_kustomize_runs_guards_baseline_and_audit_access(name: str, tmp_path: Path) -> None:
    r = _render(name)
    _, settings = _sidecar_settings(r, tmp_path)
    assert settings.guards == CONFIG_DIR / "guards.toml"
    assert settings.guard_mode == "observe"
    assert settings.baseline == CONFIG_DIR / "baseline.json"
    assert settings.drift_interval > 0
    assert settings.audit_access is not None
    tls = name.endswith("-tls")
    assert (settings.tls_cert is not None) is tls
    if tls:  # mTLS: callers and auditors present certificates
        assert settings.tls_client_ca is not None
    assert settings.health_port == 8703


# ── every rendering: Services and the NetworkPolicy ────────────────────────────────────


def _is_fleet(doc: dict[str, Any]) -> bool:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "fleet-audit"


def _selects_pods(selector: dict[str, str], r: Rendering) -> bool:
    return bool(selector) and selector.items() <= r.pod_labels.items()


def test_audit_service_selects_the_pods_and_exposes_only_the_audit_port(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    services = rendering.replicas_of_kind("Service")
    audit = [
        s
        for s in services
        if any(p.get("targetPort") in ("audit", settings.audit_port) for p in s["spec"]["ports"])
    ]
    assert len(audit) == 1, "exactly one Service reaches the audit port"
    (svc,) = audit
    assert svc["spec"]["selector"] == rendering.statefulset["spec"]["selector"]["matchLabels"]
    assert _selects_pods(svc["spec"]["selector"], rendering)
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        (settings.audit_port, "audit")
    ]
    inference = [s for s in services if s is not svc and s["spec"].get("clusterIP") != "None"]
    assert len(inference) == 1
    assert [p["targetPort"] for p in inference[0]["spec"]["ports"]] == ["inference"]
    assert _selects_pods(inference[0]["spec"]["selector"], rendering)
    governing = [
        s for s in services if s["metadata"]["name"] == rendering.statefulset["spec"]["serviceName"]
    ]
    assert len(governing) == 1 and governing[0]["spec"]["clusterIP"] == "None"
    exposed = {p.get("targetPort") for s in services for p in s["spec"]["ports"]}
    assert "health" not in exposed and settings.health_port not in exposed


def test_network_policy_admits_the_audit_port_only_from_auditor_namespaces(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    (policy,) = rendering.replicas_of_kind("NetworkPolicy")
    spec = policy["spec"]
    assert _selects_pods(spec["podSelector"]["matchLabels"], rendering)
    assert "Ingress" in spec["policyTypes"]
    model_server_ports = {p["containerPort"] for p in rendering.model_server["ports"]}
    audit_rules = 0
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert ports, "a rule without ports would open every port, the model server's too"
        assert not ports & model_server_ports, "callers must not reach the model server"
        if settings.audit_port in ports:
            audit_rules += 1
            assert ports == {settings.audit_port}
            assert rule["from"], "an empty `from` admits everyone"
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector"}, peer
                labels = peer["namespaceSelector"]["matchLabels"]
                assert labels.items() >= {AUDITOR_LABEL}
    assert audit_rules == 1
    # The health port stays closed to other pods: the kubelet's probes need no rule.
    opened = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert opened == {settings.port, settings.audit_port, settings.metrics_port}


# ── kustomize specifics ────────────────────────────────────────────────────────────────


def _by_key(docs: tuple[dict[str, Any], ...]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _sidecar_of(doc: dict[str, Any]) -> dict[str, Any]:
    pod = doc["spec"]["template"]["spec"]
    (c,) = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == SIDECAR]
    return c


@needs_kubectl
@pytest.mark.parametrize(
    ("plain", "native"),
    [(".", "overlays/native-sidecar"), ("overlays/tls", "overlays/native-sidecar-tls")],
)
def test_native_sidecar_component_changes_only_the_sidecar(plain: str, native: str) -> None:
    base = _by_key(_kustomize(plain))
    moved = _by_key(_kustomize(native))
    assert base.keys() == moved.keys()
    for key in base:
        if key[0] != "StatefulSet":
            assert base[key] == moved[key], key
    sts = ("StatefulSet", "mlwitness")
    assert all(c["name"] != SIDECAR for c in moved[sts]["spec"]["template"]["spec"]["containers"])
    after, before = _sidecar_of(moved[sts]), _sidecar_of(base[sts])
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed == {"restartPolicy", "startupProbe"}
    # "Listening" on the port the readiness probe uses (the health port with TLS).
    assert after["startupProbe"]["tcpSocket"]["port"] == before["readinessProbe"]["grpc"]["port"]


@needs_kubectl
def test_tls_component_adds_certificates_and_leaves_the_probes() -> None:
    base = _by_key(_kustomize("."))
    tls = _by_key(_kustomize("overlays/tls"))
    assert base.keys() == tls.keys()
    for key in base:
        if key[0] != "StatefulSet":
            assert base[key] == tls[key], key
    sts = ("StatefulSet", "mlwitness")
    before, after = _sidecar_of(base[sts]), _sidecar_of(tls[sts])
    assert after["args"][: len(before["args"])] == before["args"]
    assert set(after["args"][len(before["args"]) :]) == {
        "--tls-cert=/etc/mlwitness/tls/tls.crt",
        "--tls-key=/etc/mlwitness/tls/tls.key",
        "--tls-client-ca=/etc/mlwitness/tls/ca.crt",
    }
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed == {"args"}  # the probes were on the plaintext health port already
    pod_before = {**base[sts]["spec"]["template"]["spec"], "containers": None, "volumes": None}
    pod_after = {**tls[sts]["spec"]["template"]["spec"], "containers": None, "volumes": None}
    assert pod_before == pod_after
    volumes_before = {v["name"]: v for v in base[sts]["spec"]["template"]["spec"]["volumes"]}
    volumes_after = {v["name"]: v for v in tls[sts]["spec"]["template"]["spec"]["volumes"]}
    sources_before = volumes_before.pop("config")["projected"]["sources"]
    sources_after = volumes_after.pop("config")["projected"]["sources"]
    assert volumes_before == volumes_after
    assert sources_after[: len(sources_before)] == sources_before
    (added,) = sources_after[len(sources_before) :]
    assert added["secret"]["name"] == "mlwitness-tls" and "optional" not in added["secret"]


@needs_kubectl
def test_an_overlay_replaces_the_example_access_file_under_the_same_name(tmp_path: Path) -> None:
    """Users swap the placeholder Secret for their own from an overlay; the name has no hash
    suffix, so the pod mounts theirs and a later change reaches the pod without a restart."""
    access = tmp_path / "audit-access.toml"
    digest = hashlib.sha256(b"not a real token").hexdigest()
    access.write_text(f'[[tokens]]\nname = "alice"\nrole = "auditor"\nsha256 = "{digest}"\n')
    base = os.path.relpath(KUSTOMIZE / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "secretGenerator": [
                    {
                        "name": "mlwitness-audit-access",
                        "behavior": "replace",
                        "files": ["access.toml=audit-access.toml"],
                    }
                ],
            }
        )
    )
    r = Rendering("user-overlay", False, _kustomize_dir(tmp_path))
    _, settings = _sidecar_settings(r, tmp_path)
    assert settings.audit_access is not None
    source = _projected_source(r, settings.audit_access)
    assert source.name == "mlwitness-audit-access"
    assert r.secrets()[source.name][source.key] == access.read_bytes()


def _build_demo_model(directory: Path) -> Path:
    _run([sys.executable, str(CREDIT_BUILDER), "--out-dir", str(directory)])
    return directory / "credit.onnx"


def test_example_guards_and_baseline_come_from_the_demo_model(tmp_path: Path) -> None:
    """base/config/ holds what `mlwitness baseline` and `mlwitness guards suggest` make from
    the demo model: regenerate them when examples/credit changes."""
    model = _build_demo_model(tmp_path)
    baseline = json.loads((BASE_CONFIG / "baseline.json").read_text())
    assert baseline["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert baseline["settings"]["sample_size"] <= 500, "keep the ConfigMap small"
    guards = (BASE_CONFIG / "guards.toml").read_text()
    assert re.search(r"^# Guards suggested from baseline [0-9a-f]{64}$", guards, re.M)
    config = load_guards(BASE_CONFIG / "guards.toml")
    features = tomllib.loads((BASE_CONFIG / "mlwitness.toml").read_text())["features"]
    inputs = {name for name in config.to_dict().get("features", {})}
    assert set(features) <= inputs
    files = (BASE_CONFIG / "guards.toml", BASE_CONFIG / "baseline.json")
    assert sum(p.stat().st_size for p in files) < CONFIGMAP_LIMIT


def test_no_real_token_is_shipped() -> None:
    access = Access.load(BASE_CONFIG / "audit-access.toml")
    assert set(access.tokens) == {PLACEHOLDER_SHA256} and not access.identities
    text = (BASE_CONFIG / "audit-access.toml").read_text()
    assert "mlwitness token add" in text
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not re.search(r"mlw_[A-Za-z0-9_-]{20,}", path.read_text(errors="replace")), path


@needs_kubectl
def test_tls_overlay_sidecar_probes_in_plaintext_and_serves_callers_over_mtls(
    tmp_path: Path,
) -> None:
    """The TLS overlay's own arguments and files, in a real sidecar: the health port answers
    the kubelet in plaintext (readiness NOT_SERVING while the upstream is down, liveness
    SERVING), the inference port answers only mTLS, and the example access file locks the
    audit port. Guards and the baseline are on the ledger."""
    try:
        import security_support as sec
        from sidecar import closed_port, free_ports, read_ledger, start_sidecar
    except ImportError:
        from tests.sidecar import closed_port, free_ports, read_ledger, start_sidecar

        from tests import security_support as sec
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mlwitness.protocol import audit_pb2

    r = _render("kustomize-tls")
    _, settings = _sidecar_settings(r, tmp_path)
    files = _materialize(r, settings, tmp_path / "etc")
    pki = sec.make_pki(tmp_path / "pki")
    files["tls_cert"].write_bytes(pki.server.cert_pem)
    files["tls_key"].write_bytes(pki.server.key_pem)
    files["tls_client_ca"].write_bytes(pki.ca.cert.read_bytes())
    port, audit_port, health_port = free_ports(3)
    ledger = tmp_path / "mlwitness-0.duckdb"
    live = dataclasses.replace(
        settings,
        **files,
        model=_build_demo_model(tmp_path / "model"),
        host="127.0.0.1",
        port=port,
        audit_port=audit_port,
        health_port=health_port,
        metrics_port=0,
        ledger=ledger,
        upstream=f"127.0.0.1:{closed_port()}",  # the model server is not up (yet)
        durability="write",
        drain_timeout=1.0,
    )
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    def check(channel: grpc.Channel, service: str) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    running = start_sidecar(live)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            assert check(probe, "liveness") == serving
            assert check(probe, "") == not_serving
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                check(plaintext, "liveness")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with sec.channel(f"127.0.0.1:{port}", ca=pki.ca.cert, client=pki.risk_team) as mtls:
            assert check(mtls, "liveness") == serving
        channel, stub = sec.audit_stub(
            f"127.0.0.1:{audit_port}", ca=pki.ca.cert, client=pki.risk_team
        )
        with channel:
            status = sec.status_of(
                lambda: stub.ListRecords(audit_pb2.ListRecordsRequest(page_size=1), timeout=10)
            )
        assert status == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop()
    baseline = json.loads((BASE_CONFIG / "baseline.json").read_text())
    rows = read_ledger(ledger, "SELECT sha256, json FROM baselines")
    assert [json.loads(text) for _, text in rows] == [baseline]
    admin = read_ledger(ledger, "SELECT detail FROM entries WHERE kind = 'admin'")
    actions = {d["action"]: d for d in (json.loads(text) for (text,) in admin)}
    assert actions["baseline"]["sha256"] == rows[0][0]
    assert actions["guards"]["mode"] == "observe"
    assert actions["guards"]["sha256"] == load_guards(BASE_CONFIG / "guards.toml").sha256


# ── Helm: static checks (no helm binary needed) ────────────────────────────────────────


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "mlwitness"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == __version__
    assert chart["kubeVersion"].startswith(">=1.27")


def test_values_schema_accepts_the_default_values() -> None:
    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(_values())
    ports = _values()["mlwitness"]["ports"]
    assert ports["health"] == 8703
    assert len(set(ports.values())) == len(ports) and not set(ports.values()) & MODEL_SERVER_PORTS


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mlwitness", "ports", "audit"), 8001),  # Triton's gRPC port
        (("mlwitness", "ports", "inference"), 8080),  # KServe's
        (("mlwitness", "ports", "health"), 8081),  # KServe's
        (("mlwitness", "settings", "drain_timeout"), 5),  # a flag: mlwitness.drainTimeout
        (("mlwitness", "settings", "tls_cert"), "/x.crt"),  # a flag: tls.*
        (("mlwitness", "settings", "guards"), "/x.toml"),  # a flag: guards.enabled
        (("mlwitness", "settings", "no_such_setting"), 1),
        (("mlwitness", "settings", "durability"), "sometimes"),
        (("mlwitness", "settings", "guard_mode"), "block"),
        (("mlwitness", "settings", "hash_inputs"), "applicant_id"),  # a list
        (("mlwitness", "settings", "drift_interval"), -1),
        (("tls", "enabled"), "yes"),
        (("auditTokens",), {"existingSecret": "old-name"}),
        (("nativeSidecar",), "yes"),
        (("typo_at_top_level",), True),
    ],
)
def test_values_schema_rejects_bad_values(path: tuple[str, ...], value: Any) -> None:
    values = _values()
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(values)


def test_schema_settings_are_the_serve_settings_not_set_as_flags() -> None:
    """Every `mlwitness serve` setting is reachable from the chart, either as a flag the
    templates set or as a key of mlwitness.settings (mlwitness.toml), never both. A new
    serve flag fails here until values.schema.json or templates/_helpers.tpl has it."""
    allowed = set(_schema()["properties"]["mlwitness"]["properties"]["settings"]["properties"])
    serve = set(_serve_flags())
    assert allowed <= serve, f"not settings of `mlwitness serve`: {allowed - serve}"
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    as_flags = {m.replace("-", "_") for m in re.findall(r"^\s+- --([a-z-]+)=", helpers, re.M)}
    as_flags -= NON_SETTINGS_FLAGS
    assert as_flags <= serve, f"flags `mlwitness serve` does not have: {as_flags - serve}"
    assert not allowed & as_flags, "a setting is either a flag or in mlwitness.toml, not both"
    missing = serve - allowed - as_flags
    assert not missing, f"add to values.schema.json (mlwitness.settings): {sorted(missing)}"
    assert set(FILE_SETTINGS) <= as_flags, "file paths are the chart's to set (its mounts)"


def _template_files() -> list[Path]:
    return sorted(p for p in (CHART / "templates").iterdir() if p.is_file())


def test_templates_reference_only_values_that_exist() -> None:
    values = _values()
    used: set[str] = set()
    for path in _template_files():
        for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", path.read_text()):
            keys = ref.lstrip(".").split(".")
            used.add(keys[0])
            node: Any = values
            for i, key in enumerate(keys):
                assert isinstance(node, dict) and key in node, (
                    f"{path.name}: .Values.{'.'.join(keys[: i + 1])} is not in values.yaml"
                )
                node = node[key]
    assert set(values) - used == set(), "values that no template reads"


def test_every_top_level_value_is_in_the_readme_table() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for key in _values():
        assert f"`{key}" in readme, f"deploy/README.md does not document `{key}`"


def test_readme_sizing_section_has_measured_figures() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    sizing = readme.split("## Sizing the ledger", 1)[1].split("\n## ", 1)[0]
    assert "To be measured" not in sizing
    assert "python bench/bench_ledger_size.py" in sizing
    assert re.search(r"\d+ bytes per record", sizing)
    assert (ROOT / "bench" / "bench_ledger_size.py").is_file()


# ── Helm: rendering with the real helm ─────────────────────────────────────────────────


@needs_helm
def test_chart_lints_strictly() -> None:
    _run([HELM, "lint", "--strict", str(CHART)])  # type: ignore[list-item]
    _run([HELM, "lint", "--strict", str(CHART), *HELM_MONITORING, *HELM_TLS])  # type: ignore[list-item]


@needs_helm
@pytest.mark.parametrize(
    ("args", "kube", "message"),
    [
        (["--set", "terminationGracePeriodSeconds=20"], KUBE_VERSION, "must exceed"),
        (
            ["--set", "nativeSidecar=true", "--set", "terminationGracePeriodSeconds=40"],
            KUBE_VERSION,
            "must exceed",
        ),
        (["--set", "nativeSidecar=true"], "1.28.0", "nativeSidecar needs Kubernetes >= 1.29"),
        (["--set", "mlwitness.ports.metrics=8702"], KUBE_VERSION, "four different ports"),
        (["--set", "mlwitness.ports.health=8701"], KUBE_VERSION, "four different ports"),
        (["--set", "mlwitness.ports.audit=8001"], KUBE_VERSION, "mlwitness.ports.audit"),
        (["--set", "mlwitness.settings.drain_timeout=5"], KUBE_VERSION, "drain_timeout"),
        (["--set", "tls.enabled=true"], KUBE_VERSION, "tls.enabled needs tls.existingSecret"),
        (
            ["--set", "upstreamTls.enabled=true"],
            KUBE_VERSION,
            "upstreamTls.enabled needs upstreamTls.existingSecret",
        ),
        (["--set", "guards.enabled=true"], KUBE_VERSION, "guards.enabled needs the guard file"),
        (["--set", "baseline.enabled=true"], KUBE_VERSION, "baseline.enabled needs the baseline"),
    ],
)
def test_chart_refuses_unsafe_values(args: list[str], kube: str, message: str) -> None:
    done = subprocess.run(_helm_cmd(*args, kube=kube), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


@needs_helm
def test_chart_refuses_a_baseline_too_large_for_a_configmap(tmp_path: Path) -> None:
    big = tmp_path / "baseline.json"
    big.write_text(json.dumps({"sample": list(range(200_000))}))
    args = ["--set", "baseline.enabled=true", "--set-file", f"baseline.json={big}"]
    done = subprocess.run(_helm_cmd(*args), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "a ConfigMap holds at most 1 MiB" in done.stderr, done.stderr


@needs_helm
def test_chart_config_changes_roll_the_pods(tmp_path: Path) -> None:
    def checksum(*args: str) -> str:
        (sts,) = [d for d in _helm(*args) if d["kind"] == "StatefulSet"]
        return sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("--set", "mlwitness.settings.log_level=debug")
    edited = tmp_path / "guards.toml"
    edited.write_text((BASE_CONFIG / "guards.toml").read_text() + "\n# edited\n")
    assert checksum(*HELM_MONITORING) != checksum(
        *HELM_MONITORING, "--set-file", f"guards.toml={edited}"
    )


@needs_helm
def test_chart_without_tls_still_probes_the_health_port(tmp_path: Path) -> None:
    r = Rendering("helm-default", False, _helm())
    _, settings = _sidecar_settings(r, tmp_path)
    assert settings.health_port == 8703 and settings.tls_cert is None
    assert r.port(r.sidecar, "health") == 8703
    assert {_probe_port(r.sidecar, r.sidecar[name]) for name in PROBES} == {8703}
    (files,) = r.configmaps().values()
    assert set(files) == {"mlwitness.toml"}, "no guards or baseline unless enabled"


# ── the container image ────────────────────────────────────────────────────────────────


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def _dockerfile_stages() -> list[Stage]:
    """Instructions per stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif keyword != "ARG" or stages:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def _dockerfile_uid() -> int:
    (user,) = _dockerfile_stages()[-1].all("USER")
    return int(user.split(":")[0])


def test_dockerfile_is_multi_stage_slim_and_compiler_free() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    final = stages[-1]
    assert final.base == "${PYTHON_IMAGE}" and final.name is None
    run = " ".join(final.all("RUN"))
    for forbidden in ("gcc", "build-essential", "apt-get install", "pip install", "g++"):
        assert forbidden not in run, forbidden
    copies = final.all("COPY")
    assert copies and all(c.startswith("--from=builder ") for c in copies), (
        "the final stage takes only the built environment from the builder"
    )
    builder_run = " ".join(stages[0].all("RUN"))
    assert "pip wheel --no-deps" in builder_run and "--only-binary=:all:" in builder_run


def test_dockerfile_runs_non_root_with_exec_form_entrypoint() -> None:
    final = _dockerfile_stages()[-1]
    (user,) = final.all("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert _dockerfile_uid() == 10001
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert json.loads(entrypoint) == ["mlwitness"], "exec form, so SIGTERM reaches mlwitness"
    assert json.loads(cmd) == ["serve"]
    assert final.all("WORKDIR")
    assert final.all("VOLUME") == ["/var/lib/mlwitness"]
    assert set(" ".join(final.all("EXPOSE")).split()) == {"8701", "8702", "9090"}
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert not final.all("HEALTHCHECK")


def test_dockerignore_sends_only_the_package_sources() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: nothing enters the build context by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "src"} <= allowed
    assert not allowed & {".venv", ".git", "tests", "deploy"}


def _context_copy(dest: Path) -> Path:
    """What `COPY . /src/` copies, given the .dockerignore allow-list."""
    dest.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", dest)
    for name in ("README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest)
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    return dest


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The builder stage's steps, outside Docker: wheel the context copy, create a venv,
    install the wheel with binary-only dependencies."""
    work = tmp_path_factory.mktemp("image")
    context = _context_copy(work / "src")
    wheels = work / "wheels"
    venv = work / "opt-mlwitness"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    steps = [
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        [sys.executable, "-m", "venv", str(venv)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("mlwitness-*.whl")
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--only-binary=:all:", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    yield venv


@pytest.mark.slow
def test_image_entrypoint_serves_and_stops_on_sigterm(image_venv: Path, tmp_path: Path) -> None:
    """ENTRYPOINT ["mlwitness"] + CMD ["serve"]: the console script from the installed
    wheel, not the source tree, answers --version and serve --help, knows every flag the
    manifests pass, and exits 0 after SIGTERM with the ledger flushed."""
    exe = image_venv / "bin" / "mlwitness"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MLWITNESS_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    version = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert version.returncode == 0 and version.stdout.strip() == f"mlwitness {__version__}"
    helptext = subprocess.run(
        [str(exe), "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert helptext.returncode == 0
    for flag in _serve_flags().values():
        assert flag in helptext.stdout, flag
    # Where the package was imported from: the venv, never this checkout.
    where = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", "import mlwitness; print(mlwitness.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(image_venv)

    model = models.build_affine_fp32(tmp_path / "model.onnx")
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            f"--model={model}",
            f"--ledger={tmp_path / 'ledger.duckdb'}",
            "--port=0",
            "--audit-port=0",
            "--metrics-port=0",
            "--drain-timeout=2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the JSON "ready" line
        assert json.loads(line)["event"] == "ready", line
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=30)
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, stderr
    assert time.monotonic() - started < 10
    assert "stopped; ledger flushed" in stderr
    assert (tmp_path / "ledger.duckdb").exists()


# ── the archive: sidecars ship, the fleet audit server, the register CronJob ───────────

ARCHIVE_RENDERINGS = ("kustomize-archive", "helm-archive")


def _container_args(r: Rendering, container: dict[str, Any]) -> list[str]:
    """A container's args with $(VAR) expanded from its env (ConfigMap values resolved)."""
    env: dict[str, str] = {}
    configmaps = r.configmaps()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        ref = item.get("valueFrom", {}).get("configMapKeyRef")
        if ref is not None:
            data = configmaps.get(ref["name"])
            if data is not None and ref["key"] in data:
                env[item["name"]] = data[ref["key"]]
        if item.get("valueFrom", {}).get("secretKeyRef") is not None:
            env[item["name"]] = f"secret:{item['name']}"
    return _expand(container["args"], env)


def _sidecar_archive(r: Rendering, tmp_path: Path) -> str:
    _, settings = _sidecar_settings(r, tmp_path)
    if settings.archive:
        return settings.archive
    env = {e["name"]: e for e in r.sidecar.get("env", [])}
    ref = env["MLWITNESS_ARCHIVE"]["valueFrom"]["configMapKeyRef"]
    return r.configmaps()[ref["name"]][ref["key"]]


@pytest.mark.parametrize("name", ARCHIVE_RENDERINGS)
def test_archive_sidecars_ship_with_credentials_from_the_environment(
        name: str, tmp_path: Path) -> None:
    r = _render(name)
    assert _sidecar_archive(r, tmp_path) == ARCHIVE_URL
    sidecar = r.sidecar
    env = {e["name"] for e in sidecar.get("env", [])}
    assert {"AWS_REGION", "AWS_ENDPOINT_URL"} <= env
    (source,) = sidecar["envFrom"]
    assert source["secretRef"]["name"] == "mlwitness-archive-credentials"
    assert not any(e["name"].startswith("AWS_SECRET") for e in sidecar.get("env", [])), \
        "credentials come from a Secret, never from values"
    settings = _valid_settings(r, tmp_path)  # the archive settings pass serve's checks
    if name == "helm-archive":
        assert (settings.local_retention, settings.archive_object_lock_days) == (30, 2557)


def _fleet_deployment(r: Rendering) -> dict[str, Any]:
    (deployment,) = [d for d in r.of_kind("Deployment") if _is_fleet(d)]
    return deployment


@pytest.mark.parametrize("name", ARCHIVE_RENDERINGS)
def test_the_fleet_audit_server_is_a_deployment_over_the_sidecars_archive(
        name: str, tmp_path: Path) -> None:
    r = _render(name)
    deployment = _fleet_deployment(r)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parser().parse_args(_container_args(r, container))
    assert args.command == "audit-server"
    settings = settings_mod.build(args, env={}).validate_limits()
    assert settings.archive == _sidecar_archive(r, tmp_path)
    assert settings.audit_access is not None, "auditors authenticate there too"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (settings.archive_cache, settings.audit_trail):
        assert path is not None
        mount = _mount(container, path)
        assert "emptyDir" in volumes[mount["name"]], path
    assert _mount(container, settings.audit_access)["readOnly"] is True
    assert "/tmp" in mounts
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["envFrom"][0]["secretRef"]["name"] == "mlwitness-archive-credentials"
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert not labels.items() <= r.pod_labels.items(), "the StatefulSet must not own these pods"
    assert not r.statefulset["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    (service,) = [s for s in r.of_kind("Service") if _is_fleet(s)]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["fleet-audit"]
    (policy,) = [p for p in r.of_kind("NetworkPolicy") if _is_fleet(p)]
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [settings.audit_port]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])


@pytest.mark.parametrize("name", ARCHIVE_RENDERINGS)
def test_the_register_cronjob_runs_one_registration_at_a_time(name: str, tmp_path: Path) -> None:
    r = _render(name)
    (cron,) = r.of_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parser().parse_args(_container_args(r, container))
    assert (args.command, args.archive_command) == ("archive", "register")
    assert args.archive == _sidecar_archive(r, tmp_path)
    assert args.catalog and args.table == "mlwitness.records"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["restartPolicy"] == "Never"


@needs_helm
def test_chart_without_an_archive_renders_none_of_its_objects() -> None:
    docs = _helm()
    assert not [d for d in docs if d["kind"] in ("Deployment", "CronJob") or _is_fleet(d)]
    assert not any(a.startswith("--archive") for a in _render("helm-default").sidecar["args"])


@needs_helm
@pytest.mark.parametrize(("args", "message"), [
    (("--set", "archive.url=http://bucket/x"), "archive.url"),
    (("--set", "archive.url=s3://bucket/x", "--set", "archive.register.enabled=true"),
     "archive.register.catalog"),
])
def test_chart_refuses_a_bad_archive(args: tuple[str, ...], message: str) -> None:
    done = subprocess.run(_helm_cmd(*args), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr
