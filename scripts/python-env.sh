#!/usr/bin/env bash
# Creates (once) the virtualenv with the official openai SDK, schemathesis and
# pytest pinned in tests/requirements.txt. Idempotent.
set -euo pipefail
source "$(dirname "$0")/common.sh"

stamp="$LORAGATE_VENV/.requirements.sha256"
want=$(sha256sum "$ROOT/tests/requirements.txt" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
log "installing Python test tools into $LORAGATE_VENV"
python3 -m venv "$LORAGATE_VENV"
"$LORAGATE_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
echo "$want" > "$stamp"
