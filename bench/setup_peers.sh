#!/usr/bin/env bash
# Create the virtualenvs of the servers users compare mlwitness with, for bench/ only
# (never for CI or tests): KServe's Python ModelServer in .venv-kserve (bench/kserve_server.py
# runs in it) and Seldon MLServer in .venv-upstream (made by scripts/setup_upstream_venv.sh,
# which the forwarding tests use too). Each gets its own venv because each pins its own
# fastapi/starlette/pandas/grpc stack, unlike the project's .venv.
#
#   MLWITNESS_KSERVE_VENV      KServe venv path (default: <repo>/.venv-kserve)
#   MLWITNESS_KSERVE_PYTHON    interpreter that creates it (default: the first of python3,
#                              python3.13 … python3.10 that is 3.10-3.13, as KServe 0.21 needs)
#   MLWITNESS_UPSTREAM_VENV    MLServer venv path (see scripts/setup_upstream_venv.sh)
#
# Idempotent: does nothing for a venv that already imports the pinned version. Unattended.
set -euo pipefail

KSERVE_VERSION=0.21.0
ONNXRUNTIME_VERSION=1.32.0
NUMPY_VERSION=2.4.6

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MLWITNESS_KSERVE_VENV:-$repo_root/.venv-kserve}"
base_python="${MLWITNESS_KSERVE_PYTHON:-python3}"
started=$SECONDS

setup_kserve() {
    local check='import importlib.metadata as m, sys; import kserve, onnxruntime, numpy
sys.exit(m.version("kserve") != sys.argv[1])'
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" "$KSERVE_VERSION" >/dev/null 2>&1
    then
        echo "setup_peers: $venv already has kserve $KSERVE_VERSION; nothing to do"
        return
    fi
    local supported='import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 14)))'
    if [ -z "${MLWITNESS_KSERVE_PYTHON:-}" ]; then
        for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
            if "$candidate" -c "$supported" >/dev/null 2>&1; then base_python=$candidate; break; fi
        done
    fi
    if ! "$base_python" -c "$supported" >/dev/null 2>&1; then
        echo "setup_peers: kserve $KSERVE_VERSION needs Python 3.10-3.13 and '$base_python'" \
             "is not one (set MLWITNESS_KSERVE_PYTHON)" >&2
        exit 1
    fi
    echo "setup_peers: creating $venv with $("$base_python" -V 2>&1)"
    "$base_python" -m venv --clear "$venv"

    # The full resolved set, pinned so every benchmark run measures the same KServe stack.
    local constraints
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' RETURN
    cat >"$constraints" <<'PINS'
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiohttp-retry==2.9.1
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cloudevents==1.13.0
cryptography==51.0.1
deprecation==2.1.0
durationpy==0.12
fastapi==0.165.0
flatbuffers==25.12.19
frozenlist==1.8.0
grpc-interceptor==0.15.4
grpcio==1.85.4
grpcio-tools==1.81.1
h11==0.16.0
httpcore==1.0.9
httptools==0.9.0
httpx==0.29.0
idna==3.21
kubernetes==37.0.3
multidict==7.2.1
oauthlib==4.0.1
opentelemetry-api==1.45.3
orjson==3.13.0
packaging==26.4
pandas==2.3.3
pillow==13.0.0
prometheus_client==0.26.0
propcache==0.5.4
protobuf==6.33.6
psutil==5.9.8
pyasn1==0.6.5
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
PyJWT==2.15.1
python-dateutil==2.9.0.post0
python-dotenv==1.2.4
python-multipart==0.0.34
pytz==2026.6
PyYAML==6.0.4
requests==2.34.2
requests-oauthlib==2.0.0
six==1.17.0
starlette==1.10.0
tabulate==0.10.0
timing-asgi==0.3.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvicorn==0.55.0
uvloop==0.23.0
watchfiles==1.3.0
websocket-client==1.9.2
websockets==17.4
yarl==1.25.1
PINS

    echo "setup_peers: pip installing kserve==$KSERVE_VERSION onnxruntime==$ONNXRUNTIME_VERSION" \
         "numpy==$NUMPY_VERSION"
    "$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
        -c "$constraints" \
        "kserve==$KSERVE_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" "numpy==$NUMPY_VERSION"
    "$venv/bin/python" -c "$check" "$KSERVE_VERSION"
    echo "setup_peers: ready: $venv (kserve $KSERVE_VERSION)"
}

setup_kserve
bash "$repo_root/scripts/setup_upstream_venv.sh"
echo "setup_peers: done in $((SECONDS - started)) s"
