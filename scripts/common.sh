# Shared settings for the project's scripts (sourced, not run).
# Caches live outside the clone so a fresh clone reuses the built engine.
LORAGATE_CACHE="${LORAGATE_CACHE:-$HOME/.cache/loragate}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LORAGATE_CACHE/target}"
LORAGATE_VENV="${LORAGATE_VENV:-$LORAGATE_CACHE/venv}"
LORAGATE_BIN="$CARGO_TARGET_DIR/debug/loragate"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Waits until URL answers 200 or the process PID dies; fails after SECONDS.
wait_ready() {
  local url=$1 pid=$2 seconds=${3:-300}
  for _ in $(seq $((seconds * 5))); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then log "server exited before it was ready"; return 1; fi
    sleep 0.2
  done
  log "server not ready after ${seconds}s"; return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Installs Debian's prometheus package (prometheus and promtool) if $1 is missing.
ensure_prometheus() {
  command -v "$1" >/dev/null && return 0
  if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -qq; fi
  log "installing $1 (Debian package prometheus)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
}
