#!/usr/bin/env bash
# Gateway overhead, side by side with LiteLLM, on loopback.
#
# One mock upstream (src/bin/mock-upstream.rs, 16 tokens, no delay) is driven
# by the open-loop load generator (benches/loadgen.rs) three ways:
#   direct    loadgen -> mock                      (the baseline)
#   loragate  loadgen -> loragate -> mock          (auth, Redis limits, metrics on)
#   litellm   loadgen -> LiteLLM proxy -> mock     (master-key auth on)
# non-streamed and streamed, at rising fixed rates. A target's escalation (per
# mode) stops at the first rate where it breaks: errors > 1% of the requests
# sent, or achieved QPS < 90% of the rate. Overhead = gateway minus direct at
# the same rate and mode (n/a where the baseline broke).
#
# Prints one markdown table on stdout (progress goes to stderr) and writes the
# raw loadgen lines, tagged with target and mode, to $BENCH_OUT/results.jsonl,
# each with server_cpu_ms_per_req: CPU time of the system under test (the
# gateway's process group; the mock for direct) over the step, warm-up
# included, per request sent. Redis's and the mock's share is not in it.
#
# Usage: scripts/bench-overhead.sh
# Environment:
#   BENCH_SECS=10            measured seconds per step (plus BENCH_WARMUP=2)
#   BENCH_RATES="10 50 100 500 1000 2000 5000 10000 20000 50000"
#   BENCH_TARGETS="direct loragate litellm"   (direct first: it is the baseline)
#   BENCH_MODES="non-stream stream"
#   BENCH_OUT=/tmp/loragate-bench
#   LOADGEN_THREADS=1  GATEWAY_WORKERS=1  LITELLM_WORKERS=1  MOCK_WORKERS=1  MOCK_DELAY_MS=0
#
# Not equivalent between the gateways, on purpose or by necessity:
# - LiteLLM's rate limits (tpm/rpm per key) need its Postgres DB and Redis and
#   are not enabled, while loragate enforces its tenant limits through Redis on
#   every request (two Lua scripts and a concurrency lease): this favours LiteLLM.
# - LiteLLM authenticates the master key only (no DB, so no virtual keys, no
#   spend tracking); loragate looks up a hashed tenant key.
# - loragate is the test build (dev profile; its own crate at -O2 and its
#   dependencies at -O3, see Cargo.toml), not a release build with LTO.
# - LiteLLM runs one uvicorn worker process, loragate one actix worker (see
#   GATEWAY_WORKERS below), so each gateway gets one event loop.
set -euo pipefail

# The exact command, with the settings given in the environment.
command_line="bash scripts/bench-overhead.sh"
for var in BENCH_SECS BENCH_WARMUP BENCH_RATES BENCH_TARGETS BENCH_MODES BENCH_OUT LOADGEN_THREADS \
  GATEWAY_WORKERS LITELLM_WORKERS MOCK_WORKERS MOCK_DELAY_MS LITELLM_VENV CARGO_TARGET_DIR; do
  if [ -n "${!var+x}" ]; then command_line="$var=\"${!var}\" $command_line"; fi
done

source "$(dirname "$0")/common.sh"
cd "$ROOT"
for tool in jq curl redis-cli redis-server python3; do
  command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done

BENCH_SECS=${BENCH_SECS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-2}
# 10 and 50 first: LiteLLM saturates below 100 QPS on a 2-core box, and its
# overhead is only meaningful at a rate it sustains.
BENCH_RATES=${BENCH_RATES:-10 50 100 500 1000 2000 5000 10000 20000 50000}
BENCH_TARGETS=${BENCH_TARGETS:-direct loragate litellm}
BENCH_MODES=${BENCH_MODES:-non-stream stream}
BENCH_OUT=${BENCH_OUT:-/tmp/loragate-bench}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
# One actix worker: this machine class has 2 cores, and the load generator, the
# mock upstream and Redis already need about one of them at the rates where the
# gateway is the limit. A second worker only added context switches there
# (higher p50/p99 up to 1000 QPS in trial runs, throughput within noise at
# 2000), and one worker matches LiteLLM's single uvicorn worker. On a bigger
# box raise it (GATEWAY_WORKERS=0 lets actix use one per core).
GATEWAY_WORKERS=${GATEWAY_WORKERS:-1}
LITELLM_WORKERS=${LITELLM_WORKERS:-1}
MOCK_WORKERS=${MOCK_WORKERS:-1}
MOCK_DELAY_MS=${MOCK_DELAY_MS:-0}
LITELLM_VENV=${LITELLM_VENV:-$LORAGATE_CACHE/litellm-venv}
REDIS_URL_HOST=127.0.0.1
REDIS_PORT=6379
KEY_PREFIX=loragate-bench

for target in $BENCH_TARGETS; do
  case $target in direct | loragate | litellm) ;; *) log "unknown target $target"; exit 2 ;; esac
done
for mode in $BENCH_MODES; do
  case $mode in non-stream | stream) ;; *) log "unknown mode $mode"; exit 2 ;; esac
done

# --- processes, all killed on exit -------------------------------------------
work=$(mktemp -d /tmp/loragate-bench-run.XXXXXX)
pids=()
started_redis=0
loadgen_pid=""
# True while PID runs (a zombie, killed but not yet reaped, does not count).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
cleanup() {
  local pid
  if [ -n "$loadgen_pid" ]; then kill "$loadgen_pid" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do
    # Each one was started in its own session (setsid): its group holds its children.
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ "$started_redis" = 1 ]; then
    redis-cli -h "$REDIS_URL_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  elif command -v redis-cli >/dev/null; then
    clear_redis_keys
  fi
  rm -rf "$work"
}
clear_redis_keys() {
  redis-cli -h "$REDIS_URL_HOST" -p "$REDIS_PORT" --scan --pattern "$KEY_PREFIX*" 2>/dev/null |
    xargs -r redis-cli -h "$REDIS_URL_HOST" -p "$REDIS_PORT" del >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" in its own session, output to $work/NAME.log; sets $started_pid.
start() {
  local name=$1
  shift
  setsid "$@" >"$work/$name.log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
}
stop() {
  local pid=$1 p kept=()
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
}
fail_with_log() {
  log "$1 failed to start; its log:"
  tail -n 40 "$work/$1.log" >&2 || true
  exit 1
}

# --- LiteLLM virtualenv (idempotent, like scripts/python-env.sh) --------------
litellm_env() {
  local req="$ROOT/scripts/bench-overhead-requirements.txt"
  local stamp="$LITELLM_VENV/.requirements.sha256"
  local want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$LITELLM_VENV/bin/litellm" ]; then
    return 0
  fi
  log "installing LiteLLM proxy into $LITELLM_VENV"
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
}
case " $BENCH_TARGETS " in *" litellm "*) litellm_env ;; esac

# --- build ---------------------------------------------------------------------
log "building loragate, mock-upstream and loadgen (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --quiet --bin loragate --bin mock-upstream --example loadgen
BIN="$CARGO_TARGET_DIR/debug"
LOADGEN="$BIN/examples/loadgen"

# --- Redis -----------------------------------------------------------------------
if [ "$(redis-cli -h "$REDIS_URL_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" != PONG ]; then
  log "starting redis-server on $REDIS_PORT"
  redis-server --bind "$REDIS_URL_HOST" --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes >/dev/null
  started_redis=1
  for _ in $(seq 50); do
    [ "$(redis-cli -h "$REDIS_URL_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
fi
clear_redis_keys

# --- mock upstream (shared by every target) ---------------------------------------
mock_port=$(free_port)
mock_args=(--bind "127.0.0.1:$mock_port" --name mock --model mock-model --tokens 16 --workers "$MOCK_WORKERS")
[ "$MOCK_DELAY_MS" -gt 0 ] && mock_args+=(--delay-ms "$MOCK_DELAY_MS")
start mock "$BIN/mock-upstream" "${mock_args[@]}"
mock_pid=$started_pid
wait_ready "http://127.0.0.1:$mock_port/health" "$mock_pid" 30 || fail_with_log mock

# --- gateways, each started only for its own runs ---------------------------------
start_loragate() {
  local port out key hash
  port=$(free_port)
  out=$("$BIN/loragate" keys create --tenant bench)
  key=$(grep -o 'lg-[0-9a-f]*' <<<"$out" | head -n1)
  hash=$(grep -o 'sha256:[0-9a-f]*' <<<"$out" | head -n1)
  [ -n "$key" ] && [ -n "$hash" ] || { log "cannot parse 'loragate keys create' output"; exit 1; }
  mkdir -p "$work/adapters"
  cat >"$work/loragate.toml" <<EOF
[server]
bind = "127.0.0.1:$port"
# See GATEWAY_WORKERS in scripts/bench-overhead.sh for why 1.
workers = $GATEWAY_WORKERS
[model]
served_name = "mock-model"
context_length = 4096
[admission]
max_in_flight = 100000
max_queued = 100000
[logging]
level = "warn"
[auth]
enabled = true
admin_api_keys = []
[redis]
url = "redis://$REDIS_URL_HOST:$REDIS_PORT/0"
key_prefix = "$KEY_PREFIX"
[[tenants]]
id = "bench"
api_keys = ["$hash"]
[tenants.limits]
requests_per_minute = 100000000
tokens_per_minute = 100000000000
max_concurrent = 1000000
[adapters]
dir = "$work/adapters"
[upstream]
model = "mock-model"
max_idle_connections = 1024
[[upstream.replicas]]
name = "mock"
url = "http://127.0.0.1:$mock_port"
EOF
  start loragate "$BIN/loragate" serve --config "$work/loragate.toml"
  target_pid=$started_pid
  wait_ready "http://127.0.0.1:$port/ready" "$target_pid" 60 || fail_with_log loragate
  target_url="http://127.0.0.1:$port/v1/chat/completions"
  target_auth="Authorization: Bearer $key"
}

start_litellm() {
  local port master
  port=$(free_port)
  master="sk-bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: dummy
litellm_settings:
  telemetry: false
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
  disable_streaming_logging: true
general_settings:
  master_key: $master
EOF
  # No network on purpose: the bundled model cost map, no telemetry, errors only.
  start litellm env LITELLM_LOG=ERROR LITELLM_LOCAL_MODEL_COST_MAP=True \
    LITELLM_TELEMETRY_DISABLED=true DO_NOT_TRACK=1 ANONYMIZED_TELEMETRY=False \
    "$LITELLM_VENV/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$port" \
    --num_workers "$LITELLM_WORKERS"
  target_pid=$started_pid
  wait_ready "http://127.0.0.1:$port/health/liveliness" "$target_pid" 180 || fail_with_log litellm
  target_url="http://127.0.0.1:$port/v1/chat/completions"
  target_auth="Authorization: Bearer $master"
}

# --- runs ------------------------------------------------------------------------
mkdir -p "$BENCH_OUT"
results="$BENCH_OUT/results.jsonl"
: >"$results"
declare -A base_p50 base_p99 base_broke
rows=()

# broke JSON_LINE: true when errors > 1% of sent or achieved < 90% of the rate.
broke() {
  jq -e '(.errors * 100 > .sent) or (.achieved_qps < 0.9 * .rate) or (.ok == 0)' <<<"$1" >/dev/null
}
# CPU seconds (user + system) used so far by process group PGID.
group_cpu() {
  local tck
  tck=$(getconf CLK_TCK)
  cat /proc/[0-9]*/stat 2>/dev/null |
    awk -v g="$1" -v t="$tck" '{ sub(/^.*\) /, ""); if ($3 == g) s += $12 + $13 } END { printf "%.3f", s / t }'
}
ms() { if [ "$1" = null ]; then echo n/a; else printf '%.2f' "$1"; fi; }
overhead() { # gateway baseline
  if [ "$1" = null ] || [ -z "$2" ] || [ "$2" = null ]; then echo n/a; else
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'
  fi
}

run_target() {
  local target=$1 mode rate line stream_flag p50 p99 errors sent achieved broken o50 o99 key
  for mode in $BENCH_MODES; do
    stream_flag=()
    [ "$mode" = stream ] && stream_flag=(--stream)
    for rate in $BENCH_RATES; do
      log "$target $mode @ $rate QPS (${BENCH_WARMUP}s warm-up + ${BENCH_SECS}s)"
      headers=()
      [ -n "$target_auth" ] && headers=(--header "$target_auth")
      cpu_before=$(group_cpu "$target_pid")
      "$LOADGEN" --url "$target_url" --rate "$rate" --duration-secs "$BENCH_SECS" \
        --warmup-secs "$BENCH_WARMUP" --model mock-model --threads "$LOADGEN_THREADS" \
        "${stream_flag[@]}" "${headers[@]}" >"$work/loadgen.out" 2>"$work/loadgen.err" &
      loadgen_pid=$!
      if ! wait "$loadgen_pid"; then
        loadgen_pid=""
        log "loadgen failed:"; cat "$work/loadgen.err" >&2; exit 1
      fi
      loadgen_pid=""
      line=$(tail -n1 "$work/loadgen.out")
      cpu_after=$(group_cpu "$target_pid")
      line=$(jq -c --argjson cpu "$(awk -v a="$cpu_before" -v b="$cpu_after" -v r="$rate" -v d="$BENCH_SECS" -v w="$BENCH_WARMUP" \
        'BEGIN { printf "%.3f", (b - a) * 1000 / (r * (d + w)) }')" '. + {server_cpu_ms_per_req: $cpu}' <<<"$line")
      grep -v '^$' "$work/loadgen.err" >&2 || true
      jq -c --arg target "$target" --arg mode "$mode" '{target: $target, mode: $mode} + .' \
        <<<"$line" >>"$results"
      p50=$(jq -r .p50_ms <<<"$line")
      p99=$(jq -r .p99_ms <<<"$line")
      errors=$(jq -r .errors <<<"$line")
      sent=$(jq -r .sent <<<"$line")
      achieved=$(jq -r .achieved_qps <<<"$line")
      broken=0
      broke "$line" && broken=1
      key="$mode:$rate"
      if [ "$target" = direct ]; then
        base_p50[$key]=$p50
        base_p99[$key]=$p99
        base_broke[$key]=$broken
        o50="—"
        o99="—"
      elif [ "${base_broke[$key]:-1}" = 1 ]; then
        o50=n/a
        o99=n/a
      else
        o50=$(overhead "$p50" "${base_p50[$key]}")
        o99=$(overhead "$p99" "${base_p99[$key]}")
      fi
      local rate_cell=$rate errors_cell=$errors
      [ "$broken" = 1 ] && rate_cell="$rate (broke)"
      [ "$errors" != 0 ] && errors_cell="$errors ($(awk -v e="$errors" -v s="$sent" 'BEGIN { printf "%.1f%%", 100 * e / s }'))"
      rows+=("| $target | $mode | $rate_cell | $achieved | $(ms "$p50") | $(ms "$p99") | $o50 | $o99 | $errors_cell |")
      log "  -> achieved $achieved QPS, p50 $(ms "$p50") ms, p99 $(ms "$p99") ms, errors $errors/$sent, server CPU $(jq -r .server_cpu_ms_per_req <<<"$line") ms/req$([ "$broken" = 1 ] && echo ', BROKE')"
      [ "$broken" = 1 ] && break
      sleep 1 # let closed connections and queues settle between steps
    done
  done
}

for target in $BENCH_TARGETS; do
  target_auth=""
  target_pid=""
  case $target in
    direct)
      target_url="http://127.0.0.1:$mock_port/v1/chat/completions"
      target_pid=$mock_pid
      ;;
    loragate) start_loragate ;;
    litellm) start_litellm ;;
  esac
  run_target "$target"
  if [ "$target" != direct ]; then stop "$target_pid"; fi
done

# --- report ---------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
litellm_version=$("$LITELLM_VENV/bin/pip" show litellm 2>/dev/null | awk '/^Version:/ { print $2 }' || true)
{
  echo "Gateway overhead vs direct-to-mock — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), nproc $(nproc), CPU: $cpu"
  echo "Command: $command_line"
  echo "loragate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (dev profile: own crate -O2, deps -O3; $GATEWAY_WORKERS worker(s)), LiteLLM ${litellm_version:-?} ($LITELLM_WORKERS worker(s)), mock: 16 tokens, ${MOCK_DELAY_MS} ms delay; loadgen: open loop, ${LOADGEN_THREADS} thread(s), latency from the scheduled send instant to the end of the body"
  echo
  echo "| gateway | mode | rate | achieved QPS | p50 ms | p99 ms | p50 overhead ms | p99 overhead ms | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Raw results: $results"
} | tee "$BENCH_OUT/table.md"
