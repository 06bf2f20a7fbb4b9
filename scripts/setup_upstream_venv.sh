#!/usr/bin/env bash
# Create the separate virtualenv that runs Seldon MLServer, the third-party Open Inference
# Protocol v2 server that the forwarding tests use as an upstream
# (tests/support/upstream_server.py).
# MLServer 1.7.1 needs Python < 3.13 and protobuf < 7 and brings fastapi/uvicorn/etc., so it
# must not share the project's .venv.
#
#   MLWITNESS_UPSTREAM_VENV    venv path (default: <repo>/.venv-upstream)
#   MLWITNESS_UPSTREAM_PYTHON  interpreter that creates it (default: the first of python3,
#                              python3.12, python3.11, python3.10 that is 3.9-3.12)
#
# Idempotent: does nothing when the venv already imports the pinned mlserver. Unattended.
set -euo pipefail

MLSERVER_VERSION=1.7.1
ONNXRUNTIME_VERSION=1.32.0
NUMPY_VERSION=2.4.6

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MLWITNESS_UPSTREAM_VENV:-$repo_root/.venv-upstream}"
base_python="${MLWITNESS_UPSTREAM_PYTHON:-python3}"
started=$SECONDS

check='import mlserver, onnxruntime, numpy, sys; sys.exit(mlserver.__version__ != sys.argv[1])'
if [ -x "$venv/bin/python" ] && [ -x "$venv/bin/mlserver" ] \
    && "$venv/bin/python" -c "$check" "$MLSERVER_VERSION" >/dev/null 2>&1; then
    echo "setup_upstream_venv: $venv already has mlserver $MLSERVER_VERSION; nothing to do"
    exit 0
fi

supported='import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] < (3, 13)))'
if [ -z "${MLWITNESS_UPSTREAM_PYTHON:-}" ]; then
    for candidate in python3 python3.12 python3.11 python3.10; do
        if "$candidate" -c "$supported" >/dev/null 2>&1; then base_python=$candidate; break; fi
    done
fi
if ! "$base_python" -c "$supported" >/dev/null 2>&1; then
    echo "setup_upstream_venv: mlserver $MLSERVER_VERSION needs Python 3.9-3.12 and" \
         "'$base_python' is not one (set MLWITNESS_UPSTREAM_PYTHON)" >&2
    exit 1
fi

echo "setup_upstream_venv: creating $venv with $("$base_python" -V 2>&1)"
"$base_python" -m venv --clear "$venv"

# Full resolved set, pinned so CI installs exactly what was tested (protobuf must stay < 7).
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
cat >"$constraints" <<'PINS'
aiofiles==25.1.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiokafka==0.14.0
aiosignal==1.4.0
annotated-types==0.8.0
anyio==4.16.0
asgiref==3.13.0
async-timeout==5.0.1
attrs==26.1.0
brotli==1.2.1
certifi==2026.10.19.post1
click==8.5.1
fastapi==0.115.14
flatbuffers==25.12.19
frozenlist==1.8.0
gevent==26.9.0
geventhttpclient==2.6.1
googleapis-common-protos==1.76.0
greenlet==3.3.2
grpcio==1.85.3
h11==0.16.0
idna==3.20
importlib_resources==6.5.2
ml_dtypes==0.5.4
multidict==7.2.1
opentelemetry-api==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-instrumentation==0.66b2
opentelemetry-instrumentation-asgi==0.66b2
opentelemetry-instrumentation-fastapi==0.66b2
opentelemetry-instrumentation-grpc==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-util-http==0.66b2
orjson==3.13.0
packaging==26.4
pandas==3.1.1
prometheus_client==0.26.0
propcache==0.5.4
protobuf==6.33.6
py-grpc-prometheus==0.8.0
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
python-dateutil==4.0.0
python-dotenv==1.2.4
python-multipart==0.0.34
python-rapidjson==1.25
starlette==0.46.2
starlette_exporter==0.24.0
tritonclient==2.73.0
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
wrapt==2.5.2
yarl==1.25.1
zope.event==6.2
zope.interface==8.7
PINS

echo "setup_upstream_venv: pip installing mlserver==$MLSERVER_VERSION" \
     "onnxruntime==$ONNXRUNTIME_VERSION numpy==$NUMPY_VERSION"
"$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
    -c "$constraints" \
    "mlserver==$MLSERVER_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" "numpy==$NUMPY_VERSION"

"$venv/bin/python" -c "$check" "$MLSERVER_VERSION"
echo "setup_upstream_venv: ready: $venv ($("$venv/bin/mlserver" --version 2>&1 | tail -n 1))" \
     "in $((SECONDS - started)) s"
