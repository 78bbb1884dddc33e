#!/usr/bin/env bash
# Builds the GPU binary (`--features cuda`) on a machine with no GPU and no CUDA
# toolkit, with NVIDIA's CUDA 13.0 wheels from PyPI (see scripts/gpu/README.md),
# and packs it as dist/loragate-cuda.xz for the GPU machine.
#
#   scripts/build-cuda.sh            toolchain (once) + build + dist/ (idempotent)
#   scripts/build-cuda.sh --toolchain-only
#                                    wheels, fix-ups and driver stub only
#   scripts/build-cuda.sh --check    link check of dist/loragate-cuda.xz on this
#                                    CPU machine (scripts/cuda/link-check.sh)
#   scripts/build-cuda.sh --env      print the build environment (to `eval`)
#   scripts/build-cuda.sh --ref REF  build the committed tree REF (e.g. HEAD), exported
#                                    with `git archive` to $LORAGATE_CACHE/cuda-src,
#                                    instead of the working tree (which may be mid-edit)
#
# Everything goes under ${LORAGATE_CACHE:-~/.cache/loragate}: the wheels in
# cuda-venv/, the build in target-cuda/ (never the CPU target dir). cargo runs
# under `nice -n 19` so CPU builds and tests keep priority. A full build takes
# about 30 minutes on 2 cores; a second run with nothing changed does nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LORAGATE_CACHE="${LORAGATE_CACHE:-$HOME/.cache/loragate}"
CUDA_VENV="${LORAGATE_CUDA_VENV:-$LORAGATE_CACHE/cuda-venv}"
# Deliberately not $CARGO_TARGET_DIR: that is the CPU build's.
CUDA_TARGET="${LORAGATE_CUDA_TARGET:-$LORAGATE_CACHE/target-cuda}"
DIST="$ROOT/dist"

# Pinned CUDA 13.0 wheels (measured in shared/GPU-BUILD.md). 13.0 because the GPU
# machine's PyTorch carries the CUDA 13 runtime libraries the binary names
# (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10).
CUDA_WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.0.19
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
)
# Compute capability 9.0 (H100/H200): kernels are built for sm_90a only.
CUDA_COMPUTE_CAP_WANTED=90
CUDARC_VERSION_WANTED=13000

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mbuild-cuda: %s\033[0m\n' "$*" >&2; exit 1; }

MODE=build
REF=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --check) MODE=check ;;
    --toolchain-only) MODE=toolchain ;;
    --env) MODE=env ;;
    --ref) REF="${2:?--ref needs a git revision}"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# The source to build: the working tree, or a `git archive` of REF. git archive
# gives every file the commit's time, so re-exporting the same commit leaves
# cargo's fingerprints fresh.
SRC="$ROOT"
SOURCE_DESC="working tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
export_ref() {
  local commit
  commit="$(git -C "$ROOT" rev-parse --verify "$REF^{commit}")" || die "not a commit: $REF"
  SRC="$LORAGATE_CACHE/cuda-src"
  SOURCE_DESC="commit $commit ($REF)"
  if [[ -f "$SRC/.loragate-commit" && "$(cat "$SRC/.loragate-commit")" == "$commit" ]]; then
    log "source: $SRC already holds $commit"
    return
  fi
  log "source: git archive $commit -> $SRC"
  rm -rf "$SRC.new"
  mkdir -p "$SRC.new"
  git -C "$ROOT" archive "$commit" | tar -x -C "$SRC.new"
  echo "$commit" > "$SRC.new/.loragate-commit"
  rm -rf "$SRC"
  mv "$SRC.new" "$SRC"
}
[[ -z "$REF" ]] || export_ref

# ---------------------------------------------------------------- (a) wheels
install_wheels() {
  local py="${PYTHON:-python3}"
  local want
  want="$(printf '%s\n' "${CUDA_WHEELS[@]}" "$("$py" -c 'import sys; print(sys.version_info[:2])')" \
          | sha256sum | cut -c1-16)"
  local stamp="$CUDA_VENV/.loragate-cuda-wheels"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$CUDA_VENV/bin/python" ]]; then
    log "CUDA 13.0 wheels already installed in $CUDA_VENV"
    return
  fi
  log "installing CUDA 13.0 wheels into $CUDA_VENV"
  [[ -x "$CUDA_VENV/bin/python" ]] || "$py" -m venv "$CUDA_VENV"
  "$CUDA_VENV/bin/python" -m pip install --disable-pip-version-check -q "${CUDA_WHEELS[@]}"
  echo "$want" > "$stamp"
}

cuda_root() {
  local root
  root="$("$CUDA_VENV/bin/python" - <<'EOF'
import os, nvidia
for p in nvidia.__path__:
    c = os.path.join(p, "cu13")
    if os.path.isdir(os.path.join(c, "bin")):
        print(c)
        break
EOF
)"
  [[ -n "$root" && -x "$root/bin/nvcc" ]] || die "no nvidia/cu13 tree with bin/nvcc in $CUDA_VENV"
  printf '%s\n' "$root"
}

# ---------------------------------------------------------------- (b) fix-ups
fix_tree() {
  local root=$1 lib name target
  lib="$root/lib"
  for name in libcudart libcublas libcublasLt libnvrtc libcurand; do
    # The versioned file the wheel ships (libcudart.so.13, libcurand.so.10, ...).
    target="$(cd "$lib" && ls -1 "$name".so.[0-9]* 2>/dev/null | sort | head -n1 || true)"
    [[ -n "$target" ]] || die "$lib/$name.so.* not found"
    if [[ "$(readlink "$lib/$name.so" 2>/dev/null || true)" != "$target" ]]; then
      ln -sfn "$target" "$lib/$name.so"
    fi
  done
  if [[ -L "$root/lib64" ]]; then
    [[ "$(readlink "$root/lib64")" == lib ]] || ln -sfn lib "$root/lib64"
  elif [[ -e "$root/lib64" ]]; then
    die "$root/lib64 exists and is not a symlink"
  else
    ln -s lib "$root/lib64"
  fi
  # nvcc finds cicc and libdevice under <root>/nvvm (from the nvidia-nvvm wheel).
  [[ -x "$root/nvvm/bin/cicc" ]] || die "$root/nvvm/bin/cicc missing (nvidia-nvvm wheel)"
}

# ------------------------------------------------------- (c) driver stub libcuda.so
cudarc_dirs() {
  # Every cudarc in the lock file (the union of their driver functions is harmless
  # and survives a cudarc bump in mistral.rs/candle).
  (cd "$SRC" && cargo fetch -q)
  (cd "$SRC" && cargo metadata --format-version 1 --features cuda -q) | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
dirs = sorted({os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"})
if not dirs:
    sys.exit("build-cuda: no cudarc package in cargo metadata")
print("\n".join(dirs))'
}

make_stub() {
  local root=$1 stubs="$1/lib/stubs" dirs=()
  mkdir -p "$stubs"
  mapfile -t dirs < <(cudarc_dirs)
  [[ ${#dirs[@]} -gt 0 ]] || die "no cudarc sources found"
  local header_args=()
  [[ -f "$root/include/cuda.h" ]] && header_args=(--cuda-header "$root/include/cuda.h")
  python3 "$ROOT/scripts/cuda/make_driver_stub.py" --out "$stubs/libcuda_stub.c.new" \
    "${header_args[@]}" "${dirs[@]}"
  if [[ -f "$stubs/libcuda.so" ]] && cmp -s "$stubs/libcuda_stub.c.new" "$stubs/libcuda_stub.c"; then
    rm -f "$stubs/libcuda_stub.c.new"
    log "driver stub up to date ($stubs/libcuda.so)"
    return
  fi
  mv "$stubs/libcuda_stub.c.new" "$stubs/libcuda_stub.c"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so.1" "$stubs/libcuda_stub.c"
  ln -sfn libcuda.so.1 "$stubs/libcuda.so"
  log "driver stub: $(nm -D --defined-only "$stubs/libcuda.so.1" | grep -c ' T cu') functions in $stubs/libcuda.so.1"
}

# ---------------------------------------------------------------- (d) environment
export_env() {
  local root=$1
  export CUDA_HOME="$root" CUDA_ROOT="$root" CUDA_PATH="$root"
  export PATH="$root/bin:$root/nvvm/bin:$PATH"
  export CUDA_COMPUTE_CAP="$CUDA_COMPUTE_CAP_WANTED"   # else the kernel build calls nvidia-smi
  export CUDARC_CUDA_VERSION="$CUDARC_VERSION_WANTED"
  # Link against the wheel libraries and the stub; build scripts never load libcuda.
  export LIBRARY_PATH="$root/lib:$root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CARGO_TARGET_DIR="$CUDA_TARGET"
}

toolchain() {
  install_wheels
  CUDA_ROOT_DIR="$(cuda_root)"
  fix_tree "$CUDA_ROOT_DIR"
  make_stub "$CUDA_ROOT_DIR"
  export_env "$CUDA_ROOT_DIR"
  "$CUDA_ROOT_DIR/bin/nvcc" --version | tail -n2 >&2
}

# ---------------------------------------------------------------- (e)-(g) build, pack
build_and_pack() {
  log "cargo build --release --features cuda --bin loragate of the $SOURCE_DESC (target $CARGO_TARGET_DIR, nice 19)"
  local t0=$SECONDS
  (cd "$SRC" && nice -n 19 cargo build --release --features cuda --bin loragate)
  log "cargo finished in $((SECONDS - t0)) s"

  local bin="$CARGO_TARGET_DIR/release/loragate" stripped="$CARGO_TARGET_DIR/release/loragate-cuda.stripped"
  [[ -x "$bin" ]] || die "$bin not built"
  strip -o "$stripped.tmp" "$bin"
  mv "$stripped.tmp" "$stripped"
  local sum xz_sum
  sum="$(sha256sum "$stripped" | cut -d' ' -f1)"
  mkdir -p "$DIST"
  if [[ -f "$DIST/loragate-cuda.xz" && -f "$DIST/loragate-cuda.sha256" ]] \
     && grep -q "^$sum  loragate-cuda\$" "$DIST/loragate-cuda.sha256" \
     && (cd "$DIST" && grep ' loragate-cuda.xz$' loragate-cuda.sha256 | sha256sum -c --status); then
    log "dist/loragate-cuda.xz is up to date (binary sha256 $sum)"
  else
    log "xz -9 of the stripped binary ($(du -m "$stripped" | cut -f1) MB)"
    nice -n 19 xz -9 -T1 -c "$stripped" > "$DIST/loragate-cuda.xz.tmp"
    mv "$DIST/loragate-cuda.xz.tmp" "$DIST/loragate-cuda.xz"
    xz_sum="$(sha256sum "$DIST/loragate-cuda.xz" | cut -d' ' -f1)"
    # sha256sum format: the compressed file, and the binary it decompresses to.
    printf '%s  loragate-cuda.xz\n%s  loragate-cuda\n' "$xz_sum" "$sum" > "$DIST/loragate-cuda.sha256"
    printf 'built %s from the %s\n' "$(date -u +%FT%TZ)" "$SOURCE_DESC" > "$DIST/loragate-cuda.source"
  fi
  log "$(du -h "$bin" | cut -f1) built, $(du -h "$stripped" | cut -f1) stripped, $(du -h "$DIST/loragate-cuda.xz" | cut -f1) dist/loragate-cuda.xz"
}

case "$MODE" in
  toolchain) toolchain ;;
  env)
    toolchain 2>/dev/null
    for v in CUDA_HOME CUDA_ROOT CUDA_PATH PATH CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION LIBRARY_PATH LD_LIBRARY_PATH CARGO_TARGET_DIR; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done ;;
  build) toolchain; build_and_pack ;;
  check)
    install_wheels
    CUDA_ROOT_DIR="$(cuda_root)"
    fix_tree "$CUDA_ROOT_DIR"
    make_stub "$CUDA_ROOT_DIR"
    exec bash "$ROOT/scripts/cuda/link-check.sh" "$CUDA_ROOT_DIR" ;;
esac
