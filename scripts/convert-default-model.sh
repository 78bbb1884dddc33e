#!/usr/bin/env bash
# Converts the default model (the SmolLM2 GGUF from fetch-default-model.sh)
# into a safetensors folder, the form LoRA adapters apply to. Needs the built
# binary; idempotent (redone only when the source file changes).
# Prints the folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
source_file=$(bash scripts/fetch-default-model.sh)
out="$LORAGATE_CACHE/models/smollm2-135m-instruct-f32"
stamp="$out/.source.sha256"
want=$(sha256sum "$source_file" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then echo "$out"; exit 0; fi
[ -x "$LORAGATE_BIN" ] || cargo build --quiet --bin loragate
log "converting $(basename "$source_file") to safetensors (f32)"
rm -rf "$out.partial"
"$LORAGATE_BIN" convert-gguf --in "$source_file" --out "$out.partial" >/dev/null
echo "$want" > "$out.partial/.source.sha256"
rm -rf "$out" && mv "$out.partial" "$out"
echo "$out"
