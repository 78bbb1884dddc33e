#!/usr/bin/env bash
# Gateway vs mistral.rs in-process: TTFT and decode tokens/s, and their ratio.
# Usage: scripts/bench.sh [config.toml] [runs] [max_tokens]
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
config=${1:-config/default.toml}
[ "$config" = config/default.toml ] && bash scripts/fetch-default-model.sh >/dev/null
cargo run --quiet --example gateway_vs_direct -- "$config" "${2:-5}" "${3:-64}"
