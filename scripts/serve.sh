#!/usr/bin/env bash
# Runs the gateway on its embedded default model (fetched once, offline after).
# Extra arguments go to `loragate serve`; LORAGATE__* variables override config.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
bash scripts/fetch-default-model.sh >/dev/null
if [ "${LORAGATE_CONFIG:-}" = config/adapters.toml ]; then bash scripts/convert-default-model.sh >/dev/null; fi
exec cargo run --quiet --bin loragate -- serve --config "${LORAGATE_CONFIG:-config/default.toml}" "$@"
