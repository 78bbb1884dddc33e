#!/usr/bin/env bash
# End-to-end test of the observability artifacts: the real gateway on the tiny
# fixture model (authentication on, two tenants, one limited to 2 requests per
# minute, Redis deliberately unreachable with fail_open so the Redis panels have
# data, admission at 1 slot and no queue so a 503 is easy, an admin key, room
# for one resident adapter so that a second one evicts the first, the adapter
# store under the temporary folder), scraped every second by a real Prometheus
# that also loads deploy/prometheus/alerts.yml. Then
# scripts/observability-check.py drives traffic (adapter uploads, an eviction
# and a cold reload included), evaluates every dashboard and alert expression
# through Prometheus' API (every dashboard expression must return data), and
# checks that client-chosen values (1,000 unknown model names, 200 bad keys)
# add no series.
#
# Installs Prometheus from Debian if missing. Loopback only, ports chosen
# free, everything under one temporary folder, all processes stopped on exit.
# Uses $LORAGATE_BIN when set (no build); otherwise builds the gateway first.
# Prints `N passed, M failed` last; exits non-zero on any failure.
set -euo pipefail
bin_override="${LORAGATE_BIN:-}"
source "$(dirname "$0")/common.sh"
cd "$ROOT"

work=$(mktemp -d "${TMPDIR:-/tmp}/loragate-obs.XXXXXX")
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    for f in gateway.log prometheus.log; do
      [ -s "$work/$f" ] && { echo "--- last lines of $f"; tail -n 20 "$work/$f"; }
    done
    # The summary stays the last line.
    if [ -s "$work/checks.out" ]; then tail -n 1 "$work/checks.out"
    else echo "0 passed, 1 failed (setup failed before the checks)"; fi
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools -------------------------------------------------------------------
ensure_prometheus prometheus
PY="$LORAGATE_VENV/bin/python"
bash scripts/python-env.sh
if [ -z "$bin_override" ]; then
  log "building the gateway"
  cargo build --locked --bin loragate --bin mock-upstream
fi
cp "${bin_override:-$LORAGATE_BIN}" "$work/loragate"   # immune to a concurrent rebuild
cp "$(dirname "${bin_override:-$LORAGATE_BIN}")/mock-upstream" "$work/mock-upstream"
BIN="$work/loragate"

# ---- gateway on the tiny model, two tenants ----------------------------------------
"$BIN" tiny-model --out "$work/tiny" >/dev/null
"$BIN" tiny-adapter --out "$work/adapter-a1" --seed 1 >/dev/null
"$BIN" tiny-adapter --out "$work/adapter-a2" --seed 2 >/dev/null
new_key() { # prints "KEY HASH" for a new key of tenant $1 (or of an admin: --admin)
  local who=(--tenant "$1"); [ "$1" = --admin ] && who=(--admin)
  "$BIN" keys create "${who[@]}" | awk 'NR==2 {key=$1} NR==4 {gsub(/"/, "", $1); print key, $1}'
}
read -r alpha_key alpha_hash < <(new_key alpha)
read -r beta_key beta_hash < <(new_key beta)
read -r admin_key admin_hash < <(new_key --admin)
gateway_port=$(free_port)
prometheus_port=$(free_port)
dead_redis_port=$(free_port)   # nothing listens there
# The admin key goes into the existing [auth] table (environment overrides
# take scalars only); `enabled` is set through the environment below.
grep -qx '\[auth\]' config/gguf.toml || { log "config/gguf.toml has no [auth] table"; exit 1; }
{ awk -v hash="$admin_hash" '{ print } $0 == "[auth]" { printf "admin_api_keys = [\"%s\"]\n", hash }' config/gguf.toml
  printf '\n[redis]\nurl = "redis://127.0.0.1:%s/0"\non_failure = "fail_open"\ntimeout_ms = 100\n' "$dead_redis_port"
  printf '\n[[tenants]]\nid = "alpha"\napi_keys = ["%s"]\n' "$alpha_hash"
  printf '\n[[tenants]]\nid = "beta"\napi_keys = ["%s"]\n[tenants.limits]\nrequests_per_minute = 2\n' "$beta_hash"
} > "$work/gateway.toml"

log "gateway on 127.0.0.1:$gateway_port (tiny model, auth on, Redis unreachable, 1 resident adapter)"
LORAGATE__ADAPTERS__DIR="$work/adapters" \
LORAGATE__ADAPTERS__MAX_RESIDENT=1 \
LORAGATE__SERVER__BIND="127.0.0.1:$gateway_port" \
LORAGATE__SERVER__WORKERS=2 \
LORAGATE__MODEL__SERVED_NAME=tiny \
LORAGATE__MODEL__PATH="$work/tiny" \
LORAGATE__MODEL__FORMAT=safetensors \
LORAGATE__MODEL__DTYPE=f32 \
LORAGATE__AUTH__ENABLED=true \
LORAGATE__ADMISSION__MAX_IN_FLIGHT=1 \
LORAGATE__ADMISSION__MAX_QUEUED=0 \
LORAGATE__LOGGING__LEVEL=error \
  "$BIN" serve --config "$work/gateway.toml" > "$work/gateway.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$gateway_port/ready" "$!" 60

# ---- a second gateway serving through [upstream]: one live mock replica and one
# dead one, so the upstream panels and alerts have data -------------------------------
mock_port=$(free_port)
fleet_port=$(free_port)
"$work/mock-upstream" --bind "127.0.0.1:$mock_port" --name live > "$work/mock.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$mock_port/health" "$!" 30
cat > "$work/fleet.toml" <<TOML
[server]
bind = "127.0.0.1:$fleet_port"
[model]
served_name = "fleet"
context_length = 4096
[auth]
enabled = false
[logging]
level = "error"
[adapters]
dir = "$work/fleet-adapters"
[upstream]
model = "mock-model"
health_interval_ms = 500
[[upstream.replicas]]
name = "live"
url = "http://127.0.0.1:$mock_port"
[[upstream.replicas]]
name = "dead"
url = "http://127.0.0.1:$dead_redis_port"
TOML
log "upstream-mode gateway on 127.0.0.1:$fleet_port (replicas: live mock, dead port)"
"$BIN" serve --config "$work/fleet.toml" > "$work/fleet.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$fleet_port/ready" "$!" 30
for _ in 1 2 3 4; do
  curl -fsS -o /dev/null "http://127.0.0.1:$fleet_port/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model":"fleet","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
done

# ---- Prometheus, 1 s scrapes, with the alert rules -----------------------------
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: loragate
    static_configs:
      - targets: ["127.0.0.1:$gateway_port", "127.0.0.1:$fleet_port"]
YAML
log "Prometheus on 127.0.0.1:$prometheus_port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus-data" \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$prometheus_port/-/ready" "$!" 60

# ---- the checks --------------------------------------------------------------------
log "traffic, label bounds, dashboard and alert PromQL"
timeout 150 "$PY" -u scripts/observability-check.py "$ROOT" "http://127.0.0.1:$gateway_port" \
  "http://127.0.0.1:$prometheus_port" "$alpha_key" "$beta_key" "$admin_key" "$BIN" \
  "$work/adapter-a1" "$work/adapter-a2" | tee "$work/checks.out"
