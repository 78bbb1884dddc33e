#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (real engine on the tiny
# fixture model, real HTTP), the official openai SDK end to end on the default
# model, and schemathesis against the live OpenAPI spec. Installs what it needs.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server"; apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  log "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "Redis did not start"; return 1
}

pids=()
scratch=$(mktemp -d "${TMPDIR:-/tmp}/loragate-test.XXXXXX")
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT

# Starts the gateway with CONFIG on a free port; sets URL.
start_gateway() {
  local config=$1 port; port=$(free_port)
  URL="http://127.0.0.1:$port"
  # Each gateway gets a scratch adapter store, not the repository's adapters/.
  LORAGATE__ADAPTERS__DIR="$scratch/adapters-$port" \
  LORAGATE__SERVER__BIND="127.0.0.1:$port" "$LORAGATE_BIN" serve --config "$config" \
    > "$scratch/gateway-$port.log" 2>&1 &
  pids+=($!)
  wait_ready "$URL/ready" "$!" 600 || { cat "$scratch/gateway-$port.log"; return 1; }
}

ensure_redis
MODEL_PATH=$(bash scripts/fetch-default-model.sh)
bash scripts/python-env.sh

log "cargo fmt --check"
cargo fmt --check

log "building (dev profile: dependencies at -O3, the gateway at -O2)"
cargo build --locked --bins --tests

log "the default model converted to safetensors (the form adapters apply to)"
DEFAULT_MODEL_DIR=$(bash scripts/convert-default-model.sh)

log "Rust tests"
cargo test --locked -- --test-threads="${LORAGATE_TEST_THREADS:-2}"
log "shared-base engine on the default model against mistral.rs and independent merges"
LORAGATE_SMOLLM2_DIR="$DEFAULT_MODEL_DIR" cargo test --locked --test integration shared_base:: -- --ignored

log "openai SDK end to end on the default model (shared-base engine, converted $MODEL_PATH)"
start_gateway config/default.toml
LORAGATE_URL="$URL" LORAGATE_MODEL=smollm2-135m-instruct \
  "$LORAGATE_VENV/bin/python" -m pytest -q tests/sdk/test_openai_sdk.py tests/sdk/test_demo_adapters.py tests/sdk/test_tools_sdk.py
LORAGATE_URL="$URL" LORAGATE_MODEL=smollm2-135m-instruct bash scripts/node-sdk-test.sh

log "the same SDK tests through a second gateway relaying to it ([upstream])"
cat > "$scratch/relay.toml" <<TOML
[model]
served_name = "smollm2-135m-instruct"
context_length = 2048
[auth]
enabled = false
[logging]
level = "warn"
[upstream]
[[upstream.replicas]]
url = "$URL"
TOML
start_gateway "$scratch/relay.toml"
LORAGATE_URL="$URL" LORAGATE_MODEL=smollm2-135m-instruct \
  "$LORAGATE_VENV/bin/python" -m pytest -q tests/sdk/test_openai_sdk.py tests/sdk/test_tools_sdk.py
kill "${pids[-1]}" "${pids[-2]}"

log "tools, tool messages and logprobs through [upstream] to a replica that answers calls itself"
mock_port=$(free_port)
"$CARGO_TARGET_DIR/debug/mock-upstream" --bind "127.0.0.1:$mock_port" --name mock --tokens 4 \
  > "$scratch/mock.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$mock_port/health" "$!" 60
cat > "$scratch/mock-relay.toml" <<TOML
[model]
served_name = "fleet"
context_length = 2048
[auth]
enabled = false
[logging]
level = "warn"
[upstream]
model = "mock-model"
[[upstream.replicas]]
url = "http://127.0.0.1:$mock_port"
TOML
start_gateway "$scratch/mock-relay.toml"
LORAGATE_URL="$URL" LORAGATE_MODEL=fleet LORAGATE_MOCK_UPSTREAM=1 \
  "$LORAGATE_VENV/bin/python" -m pytest -q tests/sdk/test_tools_sdk.py
kill "${pids[-1]}" "${pids[-2]}"

log "the default model's GGUF on mistral.rs (config/gguf.toml): same SDK tests"
start_gateway config/gguf.toml
LORAGATE_URL="$URL" LORAGATE_MODEL=smollm2-135m-instruct \
  "$LORAGATE_VENV/bin/python" -m pytest -q tests/sdk/test_openai_sdk.py
kill "${pids[-1]}"

log "tiny fixture model with tenants: schemathesis, then the SDK against limits"
# The tiny model is served under the default name so the spec's examples
# reach a real model instead of stopping at 404.
tiny="$LORAGATE_CACHE/tiny-model"
"$LORAGATE_BIN" tiny-model --out "$tiny" >/dev/null
new_key() { # prints "KEY HASH" for a new key: `new_key --tenant ID` or `new_key --admin`
  "$LORAGATE_BIN" keys create "$@" | awk 'NR==2 {key=$1} NR==4 {gsub(/"/, "", $1); print key, $1}'
}
read -r schema_key schema_hash < <(new_key --tenant schema)
read -r sdk_key sdk_hash < <(new_key --tenant sdk)
read -r admin_key admin_hash < <(new_key --admin)
{ sed -e "s|^path = .*|path = \"$tiny\"|" -e 's|^format = "gguf"|format = "safetensors"|' \
      -e 's|^dtype = .*|dtype = "f32"|' -e "s|^enabled = false|enabled = true\\nadmin_api_keys = [\"$admin_hash\"]|" \
      config/gguf.toml
  printf '\n[[tenants]]\nid = "schema"\napi_keys = ["%s"]\n' "$schema_hash"
  printf '\n[[tenants]]\nid = "sdk"\napi_keys = ["%s"]\n[tenants.limits]\nrequests_per_minute = 3\n' "$sdk_hash"
} > "$LORAGATE_CACHE/tiny-tenants.toml"
start_gateway "$LORAGATE_CACHE/tiny-tenants.toml"
bash scripts/schemathesis.sh "$URL" "$schema_key" "$admin_key"
LORAGATE_URL="$URL" LORAGATE_MODEL=smollm2-135m-instruct LORAGATE_TENANT_KEY="$sdk_key" \
  "$LORAGATE_VENV/bin/python" -m pytest -q tests/sdk/test_tenancy_sdk.py
kill "${pids[-1]}"

log "one-minute soak on the tiny model: no 5xx, exact metering, no panic, clean SIGTERM"
bash scripts/soak.sh --ci

log "deployment files"
LORAGATE_BIN="$LORAGATE_BIN" bash scripts/check-deploy.sh
log "Prometheus against the live gateway: every dashboard and alert expression"
LORAGATE_BIN="$LORAGATE_BIN" bash scripts/observability-test.sh
