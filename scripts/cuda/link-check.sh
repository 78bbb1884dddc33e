#!/usr/bin/env bash
# Proves, on a machine WITHOUT a GPU, that the packed CUDA binary's libraries and
# symbols all resolve: dist/loragate-cuda.xz is decompressed (and its sha256
# checked), then run with LD_LIBRARY_PATH on the CUDA 13 wheel libraries plus the
# driver stub and LD_BIND_NOW=1 (every symbol bound at start, not lazily).
#
#   scripts/cuda/link-check.sh CUDA_ROOT     (normally via scripts/build-cuda.sh --check)
#
# Exits non-zero on a missing library, an unresolved symbol, a checksum mismatch,
# or a binary that does not start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CUDA_ROOT_DIR="${1:?usage: link-check.sh CUDA_ROOT (the wheels nvidia/cu13 folder)}"
DIST="$ROOT/dist"
fail() { printf 'link-check: FAIL: %s\n' "$*" >&2; exit 1; }
step() { printf '\n--- %s\n' "$*"; }

[[ -f "$DIST/loragate-cuda.xz" ]] || fail "$DIST/loragate-cuda.xz missing: run scripts/build-cuda.sh"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BIN="$WORK/loragate-cuda"

step "decompress and verify"
xz -dc "$DIST/loragate-cuda.xz" > "$BIN"
chmod +x "$BIN"
(cd "$DIST" && grep ' loragate-cuda.xz$' loragate-cuda.sha256 | sha256sum -c -) || fail "xz checksum"
(cd "$WORK" && grep ' loragate-cuda$' "$DIST/loragate-cuda.sha256" | sha256sum -c -) || fail "binary checksum"
ls -l "$DIST/loragate-cuda.xz" "$BIN"

export LD_LIBRARY_PATH="$CUDA_ROOT_DIR/lib:$CUDA_ROOT_DIR/lib/stubs"
export LD_BIND_NOW=1

step "NEEDED entries"
readelf -d "$BIN" | grep NEEDED

step "ldd -r (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
ldd -r "$BIN" > "$WORK/ldd.txt" 2>&1 || true
cat "$WORK/ldd.txt"
if grep -E 'not found|undefined symbol' "$WORK/ldd.txt"; then
  fail "unresolved library or symbol (above)"
fi
for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  if readelf -d "$BIN" | grep -q "\[$lib\]"; then
    grep -q "$lib => $CUDA_ROOT_DIR" "$WORK/ldd.txt" || fail "$lib does not resolve into $CUDA_ROOT_DIR"
  fi
done

step "LD_BIND_NOW=1 loragate --version"
"$BIN" --version || fail "the binary does not start with every symbol bound"

step "the CUDA path is compiled in (device = cuda must reach the stub driver here)"
# With the stub, the engine's first driver call returns CUDA_ERROR_STUB_LIBRARY
# (34): proof that device = cuda goes through libcuda rather than the CPU.
"$BIN" tiny-model --out "$WORK/tiny" >/dev/null || fail "loragate tiny-model"
cat > "$WORK/cuda.toml" <<EOF
[server]
bind = "127.0.0.1:0"
[model]
served_name = "tiny"
path = "$WORK/tiny"
format = "safetensors"
dtype = "f32"
device = "cuda"
[auth]
enabled = false
EOF
set +e
timeout 60 "$BIN" serve --config "$WORK/cuda.toml" > "$WORK/serve.log" 2>&1
rc=$?
set -e
sed -e 's/\x1b\[[0-9;]*m//g' "$WORK/serve.log" | grep -E 'ERROR|panicked' | head -n 3
echo "serve with device = cuda exited with $rc"
grep -q 'CUDA_ERROR_STUB_LIBRARY' "$WORK/serve.log" \
  || fail "serving on device = cuda did not reach the driver (no CUDA_ERROR_STUB_LIBRARY in the log)"

printf '\nlink-check: OK: every library and symbol resolves with LD_BIND_NOW=1\n'
