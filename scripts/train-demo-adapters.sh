#!/usr/bin/env bash
# Trains the demo LoRA adapters (pirate, support, shouty) on the default model,
# on the CPU, reproducibly, into config/demo-adapters/ (see
# scripts/train_demo_adapters.py for what each one does and how).
#
#   scripts/train-demo-adapters.sh                 # all adapters: 15 to 20 minutes on 2 busy cores
#   scripts/train-demo-adapters.sh --smoke         # a few steps on the tiny fixture model, into a temp dir
#   scripts/train-demo-adapters.sh --base DIR --out DIR --steps N --only pirate
#
# The Python tools (torch, transformers, peft; pinned in
# scripts/demo-adapters-requirements.txt) go into ~/.cache/loragate/train-venv
# once. The base model is the default model converted to safetensors by
# scripts/convert-default-model.sh (run here when its folder is missing).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

TRAIN_VENV="${LORAGATE_TRAIN_VENV:-$LORAGATE_CACHE/train-venv}"
REQUIREMENTS="$ROOT/scripts/demo-adapters-requirements.txt"

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --base DIR    base model folder (safetensors; default: the converted default model)
  --out DIR     where the adapters go (default: config/demo-adapters; --smoke: a new temp dir)
  --steps N     optimiser steps per adapter (default: each adapter's own, 6 with --smoke)
  --only NAME   train only this adapter (repeatable)
  --smoke       a few steps on the tiny fixture model ($LORAGATE_TINY_MODEL, or written
                by the built binary into ~/.cache/loragate/tiny-model)
EOF
}

base="" out="" steps="" smoke=0 only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    --smoke) smoke=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown option: $1"; usage >&2; exit 2 ;;
  esac
done

# The virtualenv, made once per version of the requirements file. Every
# package is pinned there and installed without dependency resolution (PyPI's
# torch would otherwise pull in CUDA tools it does not need on the CPU).
ensure_train_venv() {
  local stamp="$TRAIN_VENV/.requirements.sha256" want
  want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "Python tools: $TRAIN_VENV (up to date)"
    return 0
  fi
  log "installing torch (CPU use), transformers and peft into $TRAIN_VENV (2.3 GB to download, 4.3 GB on disk, a few minutes, once)"
  rm -rf "$TRAIN_VENV"
  python3 -m venv "$TRAIN_VENV"
  "$TRAIN_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$REQUIREMENTS"
  log "checking that torch imports and trains on the CPU"
  "$TRAIN_VENV/bin/python" - <<'PY'
import torch, transformers, peft
x = torch.randn(4, 4, requires_grad=True)
(x @ x).sum().backward()
assert x.grad is not None
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
PY
  echo "$want" > "$stamp"
}

ensure_train_venv

if [ "$smoke" = 1 ]; then
  if [ -z "$base" ]; then
    base="${LORAGATE_TINY_MODEL:-}"
    if [ -z "$base" ]; then
      [ -x "$LORAGATE_BIN" ] || { log "--smoke needs LORAGATE_TINY_MODEL or the built binary $LORAGATE_BIN"; exit 1; }
      base="$LORAGATE_CACHE/tiny-model"
      log "writing the tiny fixture model to $base"
      "$LORAGATE_BIN" tiny-model --out "$base" >/dev/null
    fi
  fi
  if [ -z "$out" ]; then out=$(mktemp -d "${TMPDIR:-/tmp}/loragate-demo-adapters.XXXXXX"); fi
elif [ -z "$base" ]; then
  base="$LORAGATE_CACHE/models/smollm2-135m-instruct-f32"
  if [ ! -f "$base/model.safetensors" ]; then
    log "the converted default model is missing: running scripts/convert-default-model.sh"
    base=$(bash scripts/convert-default-model.sh)
  fi
fi
out="${out:-$ROOT/config/demo-adapters}"
[ -f "$base/config.json" ] || { log "no model at $base (config.json missing)"; exit 1; }

args=(--base "$base" --out "$out")
[ -n "$steps" ] && args+=(--steps "$steps")
[ "$smoke" = 1 ] && args+=(--smoke)
for name in "${only[@]}"; do args+=(--only "$name"); done

log "training on $base into $out"
# The script fixes torch's thread count (1, whatever the machine: the bytes
# depend on it); the pools sized before torch starts match it. Fixed string
# hashing; offline: nothing is fetched from a hub.
PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  "$TRAIN_VENV/bin/python" scripts/train_demo_adapters.py "${args[@]}"
log "done: $out"
