#!/usr/bin/env bash
# The GPU machine's one prepared check (an H200 with CUDA 13.0 PyTorch installed
# system-wide, no internet). Needs dist/loragate-cuda.xz from scripts/build-cuda.sh
# carried along (dist/ is git-ignored): see scripts/gpu/README.md.
#
#   bash scripts/gpu-check.sh          (writes into $OUT, or a temp folder)
#
# Steps, each logged to $OUT/gpu-check.log:
#   1. decompress the binary, find the machine's CUDA 13 libraries (PyTorch's),
#      LD_BIND_NOW=1 loragate --version: every library and symbol resolves;
#   2. write a random-weight Llama with Llama-3.2-1B's shape (bf16, on the GPU);
#   3. serve it on device = cuda with paged attention on: /ready, the log shows
#      cuda[0] and PagedAttention;
#   4. stream chat completions at concurrency 1, 8, 32, 128 (TTFT, tokens/s);
#      restart with paged attention off and measure again; then the same on
#      the shared-base engine (bf16 on CUDA), with its paged KV pool and
#      mistral.rs's paged-attention kernels (shared-paged) and with its own
#      per-sequence caches (shared);
#      GPU_CHECK_MODES (default shared-paged,shared,nopaged,paged) picks the runs;
#      three seeded rank-16 adapters are uploaded to the mistral.rs (merged
#      copies) and shared-base (unmerged) runs: each must answer unlike the
#      base, and the two engines' greedy answers must agree;
#   5. $OUT/results.json and results.md; the table is printed last.
# Dry run of the flow on a CPU machine (no GPU checks, tiny model, device = cpu):
#   GPU_CHECK_DRY_RUN=1 GPU_CHECK_BIN=path/to/loragate [GPU_CHECK_PAGED_KEYS=0] bash scripts/gpu-check.sh
# Whole run bounded by GPU_CHECK_BUDGET_S (default 450 s; each phase gets at most
# what is left) and a hard `timeout` backstop. Exit status: 0 only when every
# check passed.
set -uo pipefail

BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
if [[ -z "${GPU_CHECK_INNER:-}" ]]; then
  # Backstop: nothing outlives budget + 60 s, whatever hangs.
  GPU_CHECK_INNER=1 exec timeout -k 10 "$((BUDGET_S + 60))" bash "$0" "$@"
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$(mktemp -d /tmp/gpu-check-out.XXXXXX)}"
mkdir -p "$OUT"
WORK="${GPU_CHECK_WORK:-/tmp/loragate-gpu-check}"
mkdir -p "$WORK"
LOG="$OUT/gpu-check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
: > "$OUT/checks.json"
: > "$OUT/phases.tsv"

START=$SECONDS
DEADLINE=$((SECONDS + BUDGET_S))
MAX_TOKENS="${GPU_CHECK_MAX_TOKENS:-128}"
CONCURRENCY="${GPU_CHECK_CONCURRENCY:-1,8,32,128}"
LEVEL_SECONDS="${GPU_CHECK_LEVEL_SECONDS:-12}"
# Rows with distinct rank-16 adapters (request n to adapter n mod N), at
# these concurrencies; mistral.rs (one merged copy of the base per adapter)
# only up to ADAPTER_MERGED_MAX, what fits beside the base in GPU memory.
ADAPTER_COUNTS="${GPU_CHECK_ADAPTER_COUNTS:-8,64}"
ADAPTER_CONCURRENCY="${GPU_CHECK_ADAPTER_CONCURRENCY:-32}"
ADAPTER_MERGED_MAX=8
MODEL_NAME=bench-1b
PARITY_PROMPT="What is the capital of France? Answer in one word."
DRY="${GPU_CHECK_DRY_RUN:-0}"
PAGED_KEYS="${GPU_CHECK_PAGED_KEYS:-1}"
if [[ $DRY == 1 ]]; then
  DEVICE=cpu DTYPE=f32 MODEL_ARGS=(--small) LAYER_RE='Layers [0-9-]+: cpu'
else
  DEVICE=cuda DTYPE=bf16 MODEL_ARGS=(--device cuda --dtype bf16) LAYER_RE='Layers [0-9-]+: cuda\[[0-9]+\]'
fi
FAILED=0
GW_PID=""

ts() { printf '[%6.1fs]' "$((SECONDS - START))"; }
say() { printf '\n%s === %s\n' "$(ts)" "$*"; }
# check NAME OK(0/1) DETAIL [advisory]: one JSON line in checks.json, printed
# loudly; a failed advisory check is reported but does not fail the run.
check() {
  local name=$1 ok=$2 detail=${3:-} advisory=${4:-}
  python3 -c 'import json,sys; print(json.dumps({"name":sys.argv[1],"ok":sys.argv[2]=="1","detail":sys.argv[3],"advisory":sys.argv[4]!=""}))' \
    "$name" "$ok" "$detail" "$advisory" >> "$OUT/checks.json"
  if [[ $ok == 1 ]]; then echo "$(ts) CHECK OK: $name ${detail:+($detail)}"
  elif [[ -n $advisory ]]; then echo "$(ts) ADVISORY CHECK FAILED: $name ${detail:+($detail)}"
  else echo "$(ts) CHECK FAILED: $name ${detail:+($detail)}"; FAILED=1; fi
}
phase_done() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$OUT/phases.tsv"; }
# left WANT: seconds a phase may take: WANT, or what is left of the budget minus a margin.
left() { local l=$((DEADLINE - SECONDS - 15)); (( l < $1 )) && echo $(( l > 5 ? l : 5 )) || echo "$1"; }
strip_ansi() { sed -e 's/\x1b\[[0-9;]*m//g' "$@"; }

stop_gateway() {
  if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then
    kill "$GW_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$GW_PID" 2>/dev/null
  fi
  GW_PID=""
}

finish() {
  stop_gateway
  say "step 5: results ($OUT/results.json, results.md)"
  python3 "$ROOT/scripts/gpu/report.py" "$OUT" > "$WORK/report.txt" 2>&1 || echo "report.py failed"
  echo "total $((SECONDS - START)) s; $( ((FAILED)) && echo 'SOME CHECKS FAILED' || echo 'all checks passed')"
  echo
  cat "$WORK/report.txt"
  sleep 0.5   # let tee finish the log before $OUT is collected
}
trap finish EXIT
trap 'echo "$(ts) interrupted"; FAILED=1; exit 1' INT TERM

fatal() { check "$1" 0 "$2"; exit 1; }

# ------------------------------------------------------------------------ 1
say "step 1: binary and CUDA libraries"
t0=$SECONDS
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee "$WORK/gpu.txt"
BIN="$WORK/loragate"
[[ -n "${GPU_CHECK_BIN:-}" || -f "$ROOT/dist/loragate-cuda.xz" ]] || fatal "binary present" "dist/loragate-cuda.xz missing: carry dist (built by scripts/build-cuda.sh)"
if [[ -n "${GPU_CHECK_BIN:-}" ]]; then
  cp "$GPU_CHECK_BIN" "$BIN.tmp" || fatal "binary present" "cannot copy $GPU_CHECK_BIN"
elif command -v xz >/dev/null; then
  xz -dc "$ROOT/dist/loragate-cuda.xz" > "$BIN.tmp" || fatal "decompress" "xz -d failed"
else
  python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"), 1<<20)' \
    "$ROOT/dist/loragate-cuda.xz" "$BIN.tmp" || fatal "decompress" "python lzma failed"
fi
mv "$BIN.tmp" "$BIN"; chmod +x "$BIN"
want_sum="$(grep ' loragate-cuda$' "$ROOT/dist/loragate-cuda.sha256" 2>/dev/null | cut -d' ' -f1)"
got_sum="$(sha256sum "$BIN" | cut -d' ' -f1)"
if [[ -z "${GPU_CHECK_BIN:-}" && -n "$want_sum" && "$want_sum" != "$got_sum" ]]; then fatal "binary checksum" "$got_sum != $want_sum"; fi
check "binary decompressed" 1 "$(du -m "$BIN" | cut -f1) MB, sha256 ${got_sum:0:16}; $(cat "$ROOT/dist/loragate-cuda.source" 2>/dev/null || echo 'source unknown')"

# The machine's PyTorch carries the CUDA 13 runtime libraries the binary names.
CUDA_LIBS="$(python3 - <<'EOF'
import glob, os, site, sys
roots = []
try:
    import nvidia
    roots += list(nvidia.__path__)
except ImportError:
    pass
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    roots.append(os.path.join(sp, "nvidia"))
dirs = []
for r in roots:
    for d in [os.path.join(r, "cu13", "lib")] + sorted(glob.glob(os.path.join(r, "*", "lib"))):
        if os.path.isdir(d) and glob.glob(os.path.join(d, "lib*.so*")) and d not in dirs:
            dirs.append(d)
need = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"]
if not all(any(os.path.exists(os.path.join(d, n)) for d in dirs) for n in need):
    try:
        import torch
        d = os.path.join(os.path.dirname(torch.__file__), "lib")
        if d not in dirs:
            dirs.append(d)
    except ImportError:
        pass
missing = [n for n in need if not any(os.path.exists(os.path.join(d, n)) for d in dirs)]
if missing:
    print("missing: " + " ".join(missing), file=sys.stderr)
print(":".join(dirs))
EOF
)"
echo "CUDA library folders: $CUDA_LIBS"
export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_CACHE_MAXSIZE=4294967296   # keep the driver's PTX JIT results for the restart
export NO_COLOR=1
ldd "$BIN" | tee "$WORK/ldd.txt"
if grep -q 'not found' "$WORK/ldd.txt"; then fatal "libraries resolve" "$(grep 'not found' "$WORK/ldd.txt" | tr -s ' \t' ' ' | tr '\n' ';')"; fi
[[ $DRY == 1 ]] || { grep -q 'libcuda.so.1 =>' "$WORK/ldd.txt" && ! grep 'libcuda.so.1 =>' "$WORK/ldd.txt" | grep -q stubs; } \
  || fatal "libraries resolve" "libcuda.so.1 is not the driver's"
if ! version="$(LD_BIND_NOW=1 timeout 30 "$BIN" --version 2>&1)"; then fatal "LD_BIND_NOW=1 loragate --version" "$version"; fi
check "libraries and symbols resolve (LD_BIND_NOW=1)" 1 "$version; libcuda: $(grep -o 'libcuda.so.1 => [^ ]*' "$WORK/ldd.txt")"
phase_done binary ok $((SECONDS - t0))

# ------------------------------------------------------------------------ 2
say "step 2: benchmark model (Llama-3.2-1B shape, random bf16 weights)"
t0=$SECONDS
rm -rf "$WORK/tiny" "$WORK/$MODEL_NAME"
"$BIN" tiny-model --out "$WORK/tiny" > /dev/null || fatal "tokenizer" "loragate tiny-model failed"
if ! timeout "$(left 150)" python3 "$ROOT/scripts/gpu/make_model.py" --tokenizer-dir "$WORK/tiny" \
     --out "$WORK/$MODEL_NAME" "${MODEL_ARGS[@]}" | tee "$WORK/model.json"; then
  fatal "benchmark model" "make_model.py failed"
fi
check "benchmark model written" 1 "$(tail -n1 "$WORK/model.json")"
# Three seeded rank-16 q/v adapters shaped for it: each run serves them, and
# the shared-base engine's greedy answers are compared with mistral.rs's
# (which merges each adapter into its own copy of the base: the reference).
rm -rf "$WORK/adapters"
for i in 1 2 3; do
  "$BIN" tiny-adapter --base "$WORK/$MODEL_NAME" --rank 16 --seed "$i" --out "$WORK/adapters/a$i" > /dev/null \
    || fatal "adapters" "loragate tiny-adapter --base failed"
done
IFS=',' read -r -a COUNTS <<< "$ADAPTER_COUNTS"
MANY=0; for n in "${COUNTS[@]}"; do (( n > MANY )) && MANY=$n; done
for i in $(seq 1 "$MANY"); do
  "$BIN" tiny-adapter --base "$WORK/$MODEL_NAME" --rank 16 --seed "$((100 + i))" --out "$WORK/adapters/b$i" > /dev/null \
    || fatal "adapters" "loragate tiny-adapter --base failed (b$i)"
done
check "adapters written" 1 "3 + $MANY x rank 16, q_proj/v_proj, $(du -sh "$WORK/adapters" | cut -f1)"
phase_done model ok $((SECONDS - t0))

# Reference greedy continuation from transformers, compared with the gateway's
# in step 3 (advisory: bf16 rounding may make two correct implementations part).
t0=$SECONDS
if [[ $DRY == 1 ]] && ! python3 -c 'import torch, transformers' 2>/dev/null; then
  echo "dry run: no torch/transformers here, no reference continuation"
elif timeout "$(left 120)" python3 "$ROOT/scripts/gpu/hf_reference.py" --model "$WORK/$MODEL_NAME" \
     --prompt "$PARITY_PROMPT" --max-tokens 32 --device "$([[ $DRY == 1 ]] && echo cpu || echo cuda)" \
     --out "$OUT/reference-transformers.json"; then
  phase_done reference ok $((SECONDS - t0))
else
  check "transformers reference continuation" 0 "hf_reference.py failed (see log)" advisory
  phase_done reference failed $((SECONDS - t0))
fi

python3 - "$OUT/env.json" "$WORK" "$MAX_TOKENS" <<'EOF'
import json, sys, pathlib
out, work, max_tokens = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
gpu = (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").exists() else "unknown GPU"
model = json.loads((work / "model.json").read_text().strip().splitlines()[-1])
json.dump({"gpu": gpu, "model": f"random Llama, Llama-3.2-1B shape, {model['params']/1e9:.2f} B params, "
           f"{model['dtype']}, vocab {model['vocab_size']}", "max_tokens": max_tokens,
           "prompt_tokens": None, "model_detail": model}, open(out, "w"), indent=2)
EOF

# ------------------------------------------------------------------------ 3, 4
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

write_config() { # MODE(paged|nopaged|shared|shared-paged) FILE
  local enabled=false engine=mistralrs
  # (A dry run on the CPU keeps it off for mistral.rs, which pages on CUDA
  # only; the shared-base engine pages on every device.)
  [[ $1 == paged && $DRY != 1 ]] && enabled=true
  [[ $1 == shared* ]] && engine=shared_base
  [[ $1 == shared-paged ]] && enabled=true
  cat > "$2" <<EOF
[server]
bind = "127.0.0.1:8080"

[model]
served_name = "$MODEL_NAME"
path = "$WORK/$MODEL_NAME"
format = "safetensors"
dtype = "$DTYPE"
device = "$DEVICE"
engine = "$engine"
context_length = 2048
# One engine step batches up to the highest concurrency measured.
max_num_seqs = 128
# Off in both runs so that neither reuses another request's prompt.
prefix_cache_entries = 0
default_max_tokens = $MAX_TOKENS
EOF
  [[ $PAGED_KEYS == 1 && ( $engine == mistralrs || $enabled == true ) ]] && cat >> "$2" <<EOF

[model.paged_attention]
enabled = $enabled
block_size = 32
# KV cache for 128 sequences of 512 tokens (prompt + completion fit in ~400).
context_tokens = 65536
EOF
  cat >> "$2" <<EOF

[admission]
max_in_flight = 128
max_queued = 1024
queue_timeout_ms = 300000

[adapters]
# Each run starts from an empty store of its own.
dir = "$WORK/store-$1"
# Every adapter of the largest row stays loaded (mistral.rs: merged copies).
max_resident = $([[ $1 == shared* ]] && echo "$MANY" || echo "$ADAPTER_MERGED_MAX")

[auth]
enabled = false
# The check uploads its adapters over the admin API, on loopback only.
allow_open_admin = true

[logging]
level = "info"
format = "text"
EOF
}

adapter_rows() { # MODE: load with N distinct adapters, for each N of ADAPTER_COUNTS
  local mode=$1 n i names rc uploaded=0
  for n in "${COUNTS[@]}"; do
    if [[ $mode != shared* ]] && (( n > ADAPTER_MERGED_MAX )); then
      echo "$mode: no $n-adapter row (each merged adapter is a copy of the base)"; continue
    fi
    (( $(left 60) < 30 )) && { echo "$mode: out of time before the $n-adapter row"; break; }
    for i in $(seq $((uploaded + 1)) "$n"); do
      timeout "$(left 30)" "$BIN" upload --url "http://127.0.0.1:$port" --tenant anonymous --name "b$i" \
        --dir "$WORK/adapters/b$i" > "$WORK/upload-$mode-b$i.json" 2>&1 \
        || { check "$mode: $n adapters uploaded" 0 "$(tail -n 2 "$WORK/upload-$mode-b$i.json" | tr '\n' ' ')"; return; }
    done
    uploaded=$n
    names="$(seq -f 'b%g' 1 "$n" | paste -sd, -)"
    rc=0
    timeout "$(left 60)" python3 "$ROOT/scripts/gpu/loadgen.py" --url "http://127.0.0.1:$port" --model "$names" \
      --concurrency "$ADAPTER_CONCURRENCY" --max-tokens "$MAX_TOKENS" --seconds "$LEVEL_SECONDS" --timeout 120 \
      --warmup 0 --label "$mode-$n" --out "$OUT/loadgen-$mode-a$n.json" || rc=$?
    if [[ $rc == 0 ]]; then check "$mode: load over $n adapters" 1 "every request streamed to the end"
    else check "$mode: load over $n adapters" 0 "exit $rc; see loadgen-$mode-a$n.json"; fi
  done
}

run_mode() { # MODE MODES_LEFT (this one included)
  local mode=$1 modes_left=$2 t0=$SECONDS port cfg="$WORK/gateway-$1.toml" glog="$OUT/gateway-$1.log"
  say "step 3 ($mode): serve on $DEVICE, $([[ $mode == shared* ]] && echo "shared-base engine, paged attention $([[ $mode == shared-paged ]] && echo on || echo off)" || echo "mistral.rs, paged attention $([[ $mode == paged ]] && echo on || echo off)")"
  write_config "$mode" "$cfg"
  rm -rf "$WORK/store-$mode"
  if ! "$BIN" check-config --config "$cfg"; then
    check "$mode: config accepted" 0 "loragate check-config refused $cfg (does this binary know [model.paged_attention]?)"
    phase_done "$mode" failed $((SECONDS - t0)); return 1
  fi
  port="$(free_port)"
  LORAGATE__SERVER__BIND="127.0.0.1:$port" RUST_BACKTRACE=1 "$BIN" serve --config "$cfg" > "$glog" 2>&1 &
  GW_PID=$!
  local wait_s ready=0 t_load=$SECONDS
  wait_s="$(left 240)"
  for _ in $(seq $((wait_s * 4))); do
    if python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
         "http://127.0.0.1:$port/ready" 2>/dev/null; then ready=1; break; fi
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.25
  done
  if [[ $ready != 1 ]]; then
    echo "--- last lines of $glog"; strip_ansi "$glog" | tail -n 40
    check "$mode: gateway ready" 0 "not ready after $((SECONDS - t_load)) s (process $(kill -0 "$GW_PID" 2>/dev/null && echo alive || echo exited))"
    stop_gateway; phase_done "$mode" failed $((SECONDS - t0)); return 1
  fi
  check "$mode: gateway ready" 1 "$((SECONDS - t_load)) s from start to /ready"
  strip_ansi "$glog" > "$WORK/gw.txt"
  local dev paged
  if [[ $mode == shared* ]]; then
    # The shared-base engine logs its device and dtype once loaded.
    dev="$(grep -Eo 'device=[A-Za-z]+[^ ]* dtype=[A-Za-z0-9]+' "$WORK/gw.txt" | head -n1)"
    if grep -Eq "device=$([[ $DRY == 1 ]] && echo Cpu || echo 'Cuda')" <<< "$dev"; then check "$mode: engine on device $DEVICE" 1 "$dev"
    else check "$mode: engine on device $DEVICE" 0 "no 'shared-base engine loaded' line naming $DEVICE in $glog (${dev:-none})"; fi
  else
    dev="$(grep -Eo 'Layers [0-9]+-[0-9]+: [^ ]+ \([0-9]+ GB\)' "$WORK/gw.txt" | sort -u | paste -sd ';' -)"
    if grep -Eq "$LAYER_RE" <<< "$dev" && { [[ $DRY == 1 ]] || ! grep -q ': cpu' <<< "$dev"; }; then check "$mode: engine on device $DEVICE" 1 "$dev"
    else check "$mode: engine on device $DEVICE" 0 "no '$LAYER_RE' line in $glog"; fi
  fi
  paged="$(grep -Eo 'Using PagedAttention with block size.*' "$WORK/gw.txt" | head -n1)"
  if [[ $mode == shared* ]]; then
    local want=false; [[ $mode == shared-paged ]] && want=true
    paged="$(grep -Eo 'paged_attention=(true|false)' "$WORK/gw.txt" | head -n1)"
    check "$mode: paged KV $want" "$([[ $paged == "paged_attention=$want" ]] && echo 1 || echo 0)" "${paged:-no paged_attention= field in the engine load line}"
  elif [[ $DRY == 1 ]]; then
    echo "dry run: PagedAttention line: ${paged:-none} (paged attention is CUDA-only)"
  elif [[ $mode == paged ]]; then
    if [[ -n "$paged" ]]; then check "paged: PagedAttention on" 1 "$paged; $(grep -Eo 'Allocating [0-9]+ MB for PagedAttention' "$WORK/gw.txt" | head -n1)"
    else check "paged: PagedAttention on" 0 "no 'Using PagedAttention' line in $glog"; fi
  else
    if [[ -z "$paged" ]]; then check "$mode: PagedAttention off" 1 ""
    else check "$mode: PagedAttention off" 0 "$paged"; fi
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader | sed "s/^/GPU memory after load ($mode): /"

  # Greedy parity: the gateway's completion against transformers' (advisory).
  local parity
  parity="$(timeout 60 python3 - "http://127.0.0.1:$port" "$MODEL_NAME" "$PARITY_PROMPT" \
            "$OUT/reference-transformers.json" "$OUT/parity-$mode.json" <<'EOF'
import json, sys, urllib.request
url, model, prompt, ref_path, out_path = sys.argv[1:6]
body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": 32, "temperature": 0}).encode()
req = urllib.request.Request(url + "/v1/chat/completions", body, {"content-type": "application/json"})
resp = json.load(urllib.request.urlopen(req, timeout=50))
got = resp["choices"][0]["message"]["content"]
res = {"completion": got, "prompt_tokens": resp["usage"]["prompt_tokens"]}
try:
    ref = json.load(open(ref_path))
    n = 0
    while n < min(len(got), len(ref["completion"])) and got[n] == ref["completion"][n]:
        n += 1
    res.update(reference=ref["completion"], reference_prompt_tokens=ref["prompt_tokens"], matching_chars=n)
except OSError:
    pass
json.dump(res, open(out_path, "w"))
print(json.dumps(res))
EOF
)" || parity=""
  echo "parity ($mode): ${parity:-request failed}"
  if [[ -z "$parity" ]]; then
    check "$mode: greedy completion" 0 "the plain (non-streamed) request failed"
  elif grep -q '"matching_chars"' <<< "$parity"; then
    local n; n="$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["matching_chars"])' "$parity")"
    check "$mode: greedy parity with transformers" "$([[ $n -ge 4 ]] && echo 1 || echo 0)" \
      "first $n of 32 characters agree (prompt tokens: gateway $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["prompt_tokens"], "/ transformers", d["reference_prompt_tokens"])' "$parity"))" advisory
  fi

  if [[ $mode != paged ]]; then
    # Each adapter over the admin API, then one greedy answer from each.
    local answers uploaded=1
    for i in 1 2 3; do
      timeout "$(left 60)" "$BIN" upload --url "http://127.0.0.1:$port" --tenant anonymous --name "a$i" \
        --dir "$WORK/adapters/a$i" > "$WORK/upload-$mode-a$i.json" 2>&1 || uploaded=0
    done
    if [[ $uploaded == 1 ]]; then check "$mode: 3 adapters uploaded" 1 ""
    else check "$mode: 3 adapters uploaded" 0 "$(tail -n 3 "$WORK"/upload-"$mode"-a*.json | tr '\n' ' ')"; fi
    answers="$(timeout "$(left 120)" python3 "$ROOT/scripts/gpu/adapter_answers.py" "http://127.0.0.1:$port" \
               "$PARITY_PROMPT" "$OUT/adapters-$mode.json" "$MODEL_NAME" a1 a2 a3)" || answers=""
    echo "adapter answers ($mode): ${answers:-failed}"
    local distinct
    distinct="$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); v=list(a.values()); print(int(None not in v and len(set(v)) == len(v)))' "$OUT/adapters-$mode.json" 2>/dev/null || echo 0)"
    check "$mode: every adapter answers, each unlike the base and the others" "$distinct" "$OUT/adapters-$mode.json"
  fi

  say "step 4 ($mode): load generator, concurrency $CONCURRENCY, max_tokens $MAX_TOKENS"
  # A run may use at most its share of what is left, so the later runs still get their turn.
  local lg_rc=0 lg_budget share
  lg_budget="$(left 200)"
  share=$(( (DEADLINE - SECONDS - 30 * modes_left) / modes_left ))
  (( share < lg_budget )) && lg_budget=$share
  (( lg_budget < 10 )) && lg_budget=10
  echo "load generator budget: ${lg_budget} s"
  # GPU memory sampled every 250 ms while the load runs: the run's peak.
  local sampler=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/memory-$mode.txt" 2>/dev/null &
    sampler=$!
  fi
  timeout "$lg_budget" python3 "$ROOT/scripts/gpu/loadgen.py" --url "http://127.0.0.1:$port" --model "$MODEL_NAME" \
    --concurrency "$CONCURRENCY" --max-tokens "$MAX_TOKENS" --seconds "$LEVEL_SECONDS" --timeout 120 \
    --label "$mode" --out "$OUT/loadgen-$mode.json" || lg_rc=$?
  # Inside the memory sampling: the peak covers the adapter rows too.
  if [[ $mode != paged ]]; then adapter_rows "$mode"; fi
  if [[ -n $sampler ]]; then
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    echo "peak GPU memory ($mode): $(sort -n "$OUT/memory-$mode.txt" | tail -n1) MiB"
  fi
  if [[ $lg_rc == 0 ]]; then check "$mode: load generator" 1 "every request streamed to the end"
  else check "$mode: load generator" 0 "exit $lg_rc (124 = out of time); see loadgen-$mode.json and gateway-$mode.log"; fi
  if ! kill -0 "$GW_PID" 2>/dev/null; then
    check "$mode: gateway survived" 0 "exited; last lines:"; strip_ansi "$glog" | tail -n 30
  fi
  strip_ansi "$glog" | grep -E 'ERROR|panicked' | head -n 5
  stop_gateway
  phase_done "$mode" "$([[ $lg_rc == 0 ]] && echo ok || echo failed)" $((SECONDS - t0))
}

IFS=',' read -r -a MODES <<< "${GPU_CHECK_MODES:-shared-paged,shared,nopaged,paged}"
for i in "${!MODES[@]}"; do
  run_mode "${MODES[$i]}" $(( ${#MODES[@]} - i ))
done

if [[ -f "$OUT/parity-paged.json" && -f "$OUT/parity-nopaged.json" ]]; then
  same="$(python3 -c 'import json,sys; a,b=(json.load(open(p))["completion"] for p in sys.argv[1:3]); print(int(a==b))' \
          "$OUT/parity-paged.json" "$OUT/parity-nopaged.json")"
  check "paged and non-paged greedy completions identical" "$same" "" advisory
fi
for shared in shared shared-paged; do
  if [[ -f "$OUT/adapters-$shared.json" && -f "$OUT/adapters-nopaged.json" ]]; then
    # Unmerged (x.W + x.A.B) against merged (x.(W + B.A)): the same greedy
    # answers, up to bf16 rounding late in the answer.
    agree="$(python3 "$ROOT/scripts/gpu/adapter_answers.py" --compare "$OUT/adapters-$shared.json" "$OUT/adapters-nopaged.json" a1 a2 a3)"
    check "$shared adapters match mistral.rs's merged copies" "${agree%% *}" "${agree#* }"
  fi
done
if [[ -f "$OUT/adapters-shared.json" && -f "$OUT/adapters-shared-paged.json" ]]; then
  agree="$(python3 "$ROOT/scripts/gpu/adapter_answers.py" --compare "$OUT/adapters-shared-paged.json" "$OUT/adapters-shared.json" a1 a2 a3)"
  check "shared-base paged and per-sequence caches answer alike" "${agree%% *}" "${agree#* }"
fi
if [[ -f "$OUT/parity-shared.json" && -f "$OUT/parity-nopaged.json" ]]; then
  same="$(python3 -c 'import json,sys; a,b=(json.load(open(p))["completion"] for p in sys.argv[1:3]); print(int(a==b))' \
          "$OUT/parity-shared.json" "$OUT/parity-nopaged.json")"
  check "shared-base and mistral.rs greedy completions identical" "$same" "" advisory
fi

# Prompt length as the gateway counted it (for the table's header).
python3 - "$OUT" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
env = json.loads((out / "env.json").read_text())
for m in ("shared-paged", "shared", "paged", "nopaged"):
    try:
        lv = json.loads((out / f"loadgen-{m}.json").read_text())["levels"]
        env["prompt_tokens"] = next(l["prompt_tokens"] for l in lv if l["prompt_tokens"])
        break
    except Exception:
        pass
(out / "env.json").write_text(json.dumps(env, indent=2))
EOF
exit "$FAILED"
