"""Deployment artefacts: the container image, the kustomize manifests and the Helm chart.

Every rendering (kustomize base, kustomize native-sidecar overlay, Helm chart with and
without nativeSidecar) is validated against the Kubernetes schemas and checked for the
same invariants: probes, non-root, volumes wired, ports distinct, audit port fenced off,
and sidecar arguments that the real CLI accepts. kubectl (and helm, for rendering the
chart) come from scripts/install_kubectl.sh; the chart's static checks need neither.
No Docker engine runs here: the Dockerfile is checked line by line, and its entrypoint is
run from a venv built the way the Dockerfile builds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlwitness import __version__
from mlwitness import settings as settings_mod
from mlwitness.cli import parser

try:
    from tests import models
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import models

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "mlwitness"
DOCKERFILE = DEPLOY / "Dockerfile"

KUBE_VERSION = "1.30.0"
MIN_KUBE_VERSION = {False: "1.27.0", True: "1.29.0"}  # regular sidecar / native sidecar
MODEL_SERVER_PORTS = {8000, 8001, 8002, 8080, 8081}  # Triton, KServe
AUDITOR_LABEL = ("mlwitness.io/auditor", "true")
SIDECAR = "mlwitness"
NON_SETTINGS_FLAGS = {"config"}  # --config is a flag but not a setting


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


# ── rendering ──────────────────────────────────────────────────────────────────────────


@dataclasses.dataclass(frozen=True)
class Rendering:
    name: str
    native: bool
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

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

    def configmap_files(self) -> dict[str, str]:
        files: dict[str, str] = {}
        for cm in self.of_kind("ConfigMap"):
            files.update(cm.get("data", {}))
        return files


def _load_docs(text: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(text) if d)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return done.stdout


@cache
def _kustomize(relative: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    return _load_docs(_run([KUBECTL, "kustomize", str(KUSTOMIZE / relative)]))


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


RENDERINGS = {
    # name: (tool needed, native sidecar, render)
    "kustomize-base": ("kubectl", False, lambda: _kustomize(".")),
    "kustomize-native-sidecar": ("kubectl", True, lambda: _kustomize("overlays/native-sidecar")),
    "helm-default": ("helm", False, lambda: _helm()),
    "helm-native-sidecar": ("helm", True, lambda: _helm("--set", "nativeSidecar=true")),
    "helm-existing-claim-tls-tokens": (
        "helm",
        False,
        lambda: _helm(
            "--set",
            "model.existingClaim=model-repository",
            "--set",
            "tls.existingSecret=mlwitness-tls",
            "--set",
            "auditTokens.existingSecret=mlwitness-audit-tokens",
            "--set",
            "networkPolicy.inferenceFrom[0].namespaceSelector.matchLabels.team=credit",
        ),
    ),
}


@pytest.fixture(params=sorted(RENDERINGS), ids=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> Rendering:
    tool, native, render = RENDERINGS[request.param]
    if {"kubectl": KUBECTL, "helm": HELM}[tool] is None:
        pytest.skip(f"{tool} is not installed: {INSTALL_HINT}")
    return Rendering(request.param, native, render())


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
        name = Path(args.config).name
        files = r.configmap_files()
        assert name in files, f"--config {args.config} is not in any ConfigMap"
        copy = tmp_path / name
        copy.write_text(files[name], encoding="utf-8")
        args.config = copy
    return args, settings_mod.build(args, env={})


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


def test_sidecar_args_are_accepted_by_the_real_cli(rendering: Rendering, tmp_path: Path) -> None:
    args, settings = _sidecar_settings(rendering, tmp_path)
    assert settings.upstream is not None, "the sidecar must run in forwarding mode"
    host, _, port = settings.upstream.rpartition(":")
    assert host in ("127.0.0.1", "localhost")
    assert int(port) in {p["containerPort"] for p in rendering.model_server["ports"]}
    assert settings.host == "0.0.0.0"
    assert settings.model_name, "--model-name must match the model server's model name"
    # Settings.validate() needs the model file: run it on a stand-in, everything else real.
    stand_in = tmp_path / "model.onnx"
    stand_in.write_bytes(b"onnx")
    dataclasses.replace(settings, model=stand_in).validate()


def test_sidecar_probes_use_grpc_health_on_the_inference_port(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    c = rendering.sidecar
    inference = rendering.port(c, "inference")
    assert inference == settings.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": inference}, probe
    startup = c["startupProbe"]
    if rendering.native:
        # The model server starts after the native sidecar's startup probe passes, and the
        # gRPC health status waits for the model server: the startup probe must not.
        assert startup["tcpSocket"]["port"] == inference
    else:
        assert startup["grpc"] == {"port": inference}


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
    assert sidecar == {
        "inference": settings.port,
        "audit": settings.audit_port,
        "metrics": settings.metrics_port,
    }
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


def test_config_volume_holds_settings_guards_and_baselines(rendering: Rendering) -> None:
    mount = _mount(rendering.sidecar, Path("/etc/mlwitness/guards.toml"))
    assert mount["mountPath"] == "/etc/mlwitness" and mount["readOnly"] is True
    sources = rendering.volume(mount["name"])["projected"]["sources"]
    configmaps = {cm["metadata"]["name"]: cm for cm in rendering.of_kind("ConfigMap")}
    files: set[str] = set()
    for source in sources:
        if "configMap" in source:
            assert source["configMap"]["name"] in configmaps, "a ConfigMap the pod mounts"
            files |= set(configmaps[source["configMap"]["name"]]["data"])
    assert {"mlwitness.toml", "guards.toml", "baselines.json"} <= files
    for source in sources:  # the optional TLS and token Secrets land in their own subfolders
        if "secret" in source:
            paths = [item["path"] for item in source["secret"]["items"]]
            assert all(p.startswith(("tls/", "tokens/")) for p in paths), paths


# ── every rendering: Services and the NetworkPolicy ────────────────────────────────────


def _selects_pods(selector: dict[str, str], r: Rendering) -> bool:
    return bool(selector) and selector.items() <= r.pod_labels.items()


def test_audit_service_selects_the_pods_and_exposes_only_the_audit_port(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    services = rendering.of_kind("Service")
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


def test_network_policy_admits_the_audit_port_only_from_auditor_namespaces(
    rendering: Rendering, tmp_path: Path
) -> None:
    _, settings = _sidecar_settings(rendering, tmp_path)
    (policy,) = rendering.of_kind("NetworkPolicy")
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
    opened = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert opened == {settings.port, settings.audit_port, settings.metrics_port}


# ── kustomize specifics ────────────────────────────────────────────────────────────────


@pytest.mark.skipif(KUBECTL is None, reason=f"kubectl is not installed: {INSTALL_HINT}")
def test_native_sidecar_overlay_changes_only_the_sidecar() -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize(".")}
    native = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize("overlays/native-sidecar")}
    assert base.keys() == native.keys()
    for key in base:
        if key[0] != "StatefulSet":
            assert base[key] == native[key], key
    pod = native[("StatefulSet", "mlwitness")]["spec"]["template"]["spec"]
    (moved,) = [c for c in pod["initContainers"] if c["name"] == SIDECAR]
    (original,) = [
        c
        for c in base[("StatefulSet", "mlwitness")]["spec"]["template"]["spec"]["containers"]
        if c["name"] == SIDECAR
    ]
    changed = {k for k in moved.keys() | original.keys() if moved.get(k) != original.get(k)}
    assert changed == {"restartPolicy", "startupProbe", "livenessProbe"}


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


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mlwitness", "ports", "audit"), 8001),  # Triton's gRPC port
        (("mlwitness", "ports", "inference"), 8080),  # KServe's
        (("mlwitness", "settings", "drain_timeout"), 5),  # a flag: mlwitness.drainTimeout
        (("mlwitness", "settings", "no_such_setting"), 1),
        (("mlwitness", "settings", "durability"), "sometimes"),
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


# ── Helm: rendering with the real helm ─────────────────────────────────────────────────

needs_helm = pytest.mark.skipif(HELM is None, reason=f"helm is not installed: {INSTALL_HINT}")


@needs_helm
def test_chart_lints_strictly() -> None:
    _run([HELM, "lint", "--strict", str(CHART)])  # type: ignore[list-item]


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
        (["--set", "mlwitness.ports.metrics=8702"], KUBE_VERSION, "three different ports"),
        (["--set", "mlwitness.ports.audit=8001"], KUBE_VERSION, "mlwitness.ports.audit"),
        (["--set", "mlwitness.settings.drain_timeout=5"], KUBE_VERSION, "drain_timeout"),
    ],
)
def test_chart_refuses_unsafe_values(args: list[str], kube: str, message: str) -> None:
    done = subprocess.run(_helm_cmd(*args, kube=kube), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


@needs_helm
def test_chart_config_changes_roll_the_pods() -> None:
    def checksum(*args: str) -> str:
        (sts,) = [d for d in _helm(*args) if d["kind"] == "StatefulSet"]
        return sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("--set", "mlwitness.settings.log_level=debug")


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
