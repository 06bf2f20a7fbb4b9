#!/usr/bin/env bash
# mlwitness demo, from a fresh clone: set up, build the demo credit model with its
# baseline and suggested guards, serve it, make a few hundred real calls with tritonclient,
# ask the audit service about them (replay, what-if, sensitivity, traffic replay on a v2
# model, drift, bias, violations), query the ledger with SQL and verify its hash chain.
#
#   bash scripts/demo.sh            (re-runs reuse .venv; everything goes to demo-run/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=${MLWITNESS_DEMO_DIR:-$ROOT/demo-run}
PORT=${MLWITNESS_DEMO_PORT:-8701}
AUDIT_PORT=${MLWITNESS_DEMO_AUDIT_PORT:-8702}

bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

rm -rf "$RUN" && mkdir -p "$RUN"
echo "== 1. build the demo credit model (scikit-learn → ONNX) and its training data"
python examples/credit/build_model.py --out-dir "$RUN" --rows 20000
python examples/credit/build_model.py --out-dir "$RUN" --rows 20000 --variant v2 >/dev/null
mlwitness baseline "$RUN/train.csv" --model "$RUN/credit.onnx" --label approved \
  --out "$RUN/baseline.json"
mlwitness guards suggest "$RUN/baseline.json" --out "$RUN/guards.toml"

echo "== 2. start the sidecar in front of it (embedded onnxruntime, durable ledger)"
mlwitness serve --model "$RUN/credit.onnx" --ledger "$RUN/ledger.duckdb" \
  --port "$PORT" --audit-port "$AUDIT_PORT" --metrics-port 0 \
  --features income,debt_ratio,fico,age,years_employed,open_loans \
  --baseline "$RUN/baseline.json" --guards "$RUN/guards.toml" --guard-mode observe \
  >"$RUN/sidecar.out" 2>"$RUN/sidecar.log" &
SIDECAR=$!
trap 'kill "$SIDECAR" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '"event": "ready"' "$RUN/sidecar.out" 2>/dev/null && break
  kill -0 "$SIDECAR" 2>/dev/null || { cat "$RUN/sidecar.log"; exit 1; }
  sleep 0.2
done
grep -q '"event": "ready"' "$RUN/sidecar.out" || { echo "sidecar did not start"; cat "$RUN/sidecar.log"; exit 1; }

echo "== 3. a loan service calls it with the stock Triton client"
python examples/credit/send_requests.py --target "127.0.0.1:$PORT" --count 300

export MLWITNESS_AUDIT_TARGET="127.0.0.1:$AUDIT_PORT"
echo "== 4. an auditor asks about application-00042"
mlwitness audit show application-00042
echo; mlwitness audit replay application-00042
echo; mlwitness audit whatif application-00042 --set income=45000 --set debt_ratio=0.2
echo; mlwitness audit sensitivity application-00042 --feature income --from 20000 --to 200000 --steps 10
echo; echo "== 5. how many of these decisions would the v2 model change?"
mlwitness audit replay-range --candidate "$RUN/credit_v2.onnx" --max-listed 5

echo "== 6. monitoring: drift vs the training baseline, bias by age band, guard violations"
mlwitness audit drift
mlwitness audit bias --attribute age_band --favorable label=1
mlwitness audit violations

echo "== 7. stop the sidecar (SIGTERM drains and flushes), then SQL and verify"
kill -TERM "$SIDECAR"; wait "$SIDECAR" || true; trap - EXIT
mlwitness sql --ledger "$RUN/ledger.duckdb" \
  "SELECT status, count(*) AS calls, round(avg(latency_us)) AS avg_latency_us FROM records GROUP BY status"
mlwitness sql --ledger "$RUN/ledger.duckdb" \
  "SELECT parameters['age_band'] AS age_band, count(*) AS n, round(avg(outputs['label']), 3) AS approval_rate FROM decisions GROUP BY 1 ORDER BY 1"
mlwitness verify --ledger "$RUN/ledger.duckdb"
echo "demo done: ledger at $RUN/ledger.duckdb"
