#!/usr/bin/env bash
# The official `openai` Node SDK (pinned), unmodified, against a running
# gateway: tool calls and the Responses API. Installs the SDK once into the
# cache. Needs LORAGATE_URL and LORAGATE_MODEL.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

OPENAI_NODE_VERSION=7.59.0
dir="$LORAGATE_CACHE/node-openai-$OPENAI_NODE_VERSION"
if [ ! -f "$dir/node_modules/openai/package.json" ]; then
  log "installing openai@$OPENAI_NODE_VERSION for Node into $dir"
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --prefix "$dir" "openai@$OPENAI_NODE_VERSION" >/dev/null
fi
NODE_PATH="$dir/node_modules" node --test tests/sdk/node/tools.test.mjs
