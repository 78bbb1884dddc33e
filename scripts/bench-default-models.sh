#!/usr/bin/env bash
# The default model two ways, side by side (a table for the README): converted
# safetensors on the shared-base engine vs the original GGUF on mistral.rs.
#   scripts/bench-default-models.sh [--runs 3] [--tokens 64] [--json OUT]
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
cargo build --quiet --bin loragate
bash scripts/fetch-default-model.sh >/dev/null
bash scripts/convert-default-model.sh >/dev/null
python3 scripts/bench/compare_default_models.py "$LORAGATE_BIN" "$@"
