#!/usr/bin/env bash
# The shared-base engine against mistral.rs 0.8.1 (in-process, merged
# adapters) and the peer, mistral.rs 0.9.5's own per-request LoRA (PyPI, CPU
# build), in one run on one base folder and the same adapter files. Prints a
# Markdown table. Usage: scripts/bench-shared-base.sh [BASE_DIR] [RUNS] [ADAPTERS]
# (default: the converted default model, 3 runs, 1000 resident adapters)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
base=${1:-}
[ -n "$base" ] || base=$(bash scripts/convert-default-model.sh)
runs=${2:-3}
many=${3:-1000}
peer_venv="$LORAGATE_CACHE/peer-venv"
if ! "$peer_venv/bin/python" -c 'import mistralrs' 2>/dev/null; then
  log "installing the peer (mistralrs==0.9.5 from PyPI) into $peer_venv"
  python3 -m venv "$peer_venv"
  "$peer_venv/bin/pip" install --quiet --disable-pip-version-check mistralrs==0.9.5
fi
log "building the benchmark"
cargo build --quiet --example shared_base
bench="$CARGO_TARGET_DIR/debug/examples/shared_base"
# Results stay (one folder per run) so a failed row never loses the others.
work="$LORAGATE_CACHE/bench/shared-base-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$work"
log "results in $work"
"$bench" "$base" --write-adapters "$work/adapters"
log "shared-base engine ($runs runs, $many resident adapters)"
"$bench" "$base" --adapters-dir "$work/adapters" --runs "$runs" --adapters "$many" --json > "$work/ours.json"
log "mistral.rs 0.8.1 (merged adapters; no many-adapter row: each is a copy of the base)"
"$bench" "$base" --adapters-dir "$work/adapters" --runs "$runs" --adapters 0 --engine mistralrs --json > "$work/v081.json"
log "mistral.rs 0.9.5 (PyPI, per-request LoRA)"
# mistralrs's own tracing writes to stdout: the result is the last line.
"$peer_venv/bin/python" scripts/bench/peer_mistralrs.py "$base" "$work/adapters" --runs "$runs" --adapters "$many" > "$work/peer.log" 2>&1 \
  || { log "the peer failed; its log: $work/peer.log"; tail -20 "$work/peer.log" >&2; exit 1; }
tail -n 1 "$work/peer.log" > "$work/peer.json"
for result in ours v081 peer; do
  [ -s "$work/$result.json" ] || { log "$work/$result.json is empty"; exit 1; }
done
python3 - "$work/ours.json" "$work/v081.json" "$work/peer.json" <<'PY'
import json, sys
ours, v081, peer = (json.load(open(p)) for p in sys.argv[1:])
def f(v, unit="", digits=1):
    return "–" if v is None else f"{v:.{digits}f}{unit}"
def res(r, key):
    return None if not r else r[key]
rows = [
    ("base: single-stream decode tok/s", "decode_tps", True),
    ("base: TTFT ms", "ttft_ms", False),
    ("one adapter: single-stream decode tok/s", "adapter_decode_tps", True),
    ("8 concurrent, base: aggregate tok/s", "aggregate8_base_tps", True),
    ("8 concurrent, 8 adapters: aggregate tok/s", "aggregate8_adapters_tps", True),
    ("adapter load ms", "adapter_load_ms", False),
    ("adapter load → first token ms", "load_to_first_token_ms", False),
]
print("| | shared-base engine | mistral.rs 0.8.1 (merged) | mistral.rs 0.9.5 (peer) | ours vs peer |")
print("|---|---|---|---|---|")
for label, key, higher in rows:
    a, b, c = ours.get(key), v081.get(key), peer.get(key)
    ratio = (a / c if higher else c / a) if a and c else None
    print(f"| {label} | {f(a)} | {f(b)} | {f(c)} | {f(ratio, '×', 2)} |")
for label, key in [("resident adapters: RSS per adapter MiB", "rss_per_adapter_mib"),
                   ("resident adapters: RSS growth / file size", "ratio_to_file")]:
    a, c = res(ours["resident"], key), res(peer["resident"], key)
    print(f"| {label} | {f(a, '', 2)} | – | {f(c, '', 2)} | {f(c / a if a and c else None, '×', 2)} |")
print()
print(f"base load s: ours {ours['load_secs']:.2f}, 0.8.1 {v081['load_secs']:.2f}, 0.9.5 {peer['load_secs']:.2f}; "
      f"RSS after load MiB: ours {ours['base_rss_mib']:.0f}, 0.8.1 {v081['base_rss_mib']:.0f}, 0.9.5 {peer['base_rss_mib']:.0f}")
print(f"aggregate/single (base): ours {ours['aggregate8_base_tps']/ours['decode_tps']:.2f}×, peer {peer['aggregate8_base_tps']/peer['decode_tps']:.2f}×; "
      f"8 adapters / base at 8: ours {ours['aggregate8_adapters_tps']/ours['aggregate8_base_tps']:.2f}×, peer {peer['aggregate8_adapters_tps']/peer['aggregate8_base_tps']:.2f}×")
PY
