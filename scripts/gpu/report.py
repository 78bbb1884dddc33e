#!/usr/bin/env python3
"""Gathers scripts/gpu-check.sh's pieces into OUT/results.json and OUT/results.md.

    report.py OUT_DIR

Reads OUT/env.json, OUT/checks.json (a JSON line per check), OUT/phases.tsv and
OUT/loadgen-{paged,nopaged,shared,shared-paged}.json when present; writes results.json and a markdown
table, and prints the table. Missing pieces are reported as missing, never guessed.
"""

import json
import pathlib
import sys


NAMES = {"paged": "paged", "nopaged": "no-paged", "shared": "shared-base",
         "shared-paged": "shared-base paged"}


def load(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    checks = []
    if (out / "checks.json").exists():
        for line in (out / "checks.json").read_text(encoding="utf-8").splitlines():
            if line.strip():
                checks.append(json.loads(line))
    phases = []
    if (out / "phases.tsv").exists():
        for line in (out / "phases.tsv").read_text(encoding="utf-8").splitlines():
            name, status, secs = line.split("\t")
            phases.append({"phase": name, "status": status, "seconds": float(secs)})
    runs = {}
    for mode in NAMES:
        data = load(out / f"loadgen-{mode}.json")
        runs[mode] = data["levels"] if data else None
    adapter_runs = {}
    for path in sorted(out.glob("loadgen-*-a*.json")):
        data = load(path)
        for lv in (data or {}).get("levels", []):
            mode = str(lv.get("label", "")).rsplit("-", 1)[0]
            adapter_runs.setdefault(mode, []).append(lv)
    peaks = {}
    for mode in NAMES:
        try:
            samples = [int(v) for v in (out / f"memory-{mode}.txt").read_text().split() if v.strip().isdigit()]
            peaks[mode] = max(samples) if samples else None
        except OSError:
            peaks[mode] = None
    result = {"env": load(out / "env.json"), "phases": phases, "checks": checks, "runs": runs,
              "adapter_runs": adapter_runs, "peak_gpu_memory_mib": peaks}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    def cell(mode, conc, fmt):
        levels = runs.get(mode) or []
        for lv in levels:
            if lv["concurrency"] == conc:
                return fmt(lv)
        return "–"

    def ttft(lv):
        if lv["ok"] == 0:
            return f"failed ({lv['errors']} errors)"
        s = f"{lv['ttft_ms_p50']} / {lv['ttft_ms_p90']}"
        return s + (f" ({lv['errors']} err)" if lv["errors"] else "")

    def tps(lv):
        return "–" if lv["output_tokens_per_s"] is None else f"{lv['output_tokens_per_s']:.0f}"

    def per_req(lv):
        v = lv["decode_tokens_per_s_per_request_p50"]
        return "–" if v is None else f"{v:.0f}"

    concs = sorted({lv["concurrency"] for m in runs.values() if m for lv in m})
    env = result["env"] or {}
    lines = [
        "## loragate on " + str(env.get("gpu", "unknown GPU")),
        "",
        f"Model: {env.get('model', '?')}; max_tokens {env.get('max_tokens', '?')}, "
        f"prompt ≈ {env.get('prompt_tokens', '?')} tokens, greedy, streamed. "
        "TTFT = send → first non-empty content delta (ms, p50 / p90); "
        "tok/s = all output tokens / wall time of the level; per-req = one stream's decode tok/s (p50).",
        "",
        "Runs: mistral.rs 0.8.1 with paged attention (paged) and without (no-paged); "
        "the shared-base engine with per-sequence caches (shared-base) and with its paged KV pool "
        "and mistral.rs's paged-attention kernels (shared-base paged).",
        "",
        "| concurrency | " + " | ".join(f"{name} TTFT p50 / p90 | {name} tok/s | {name} per-req" for name in NAMES.values()) + " |",
        "|---:|" + "---:|---:|---:|" * len(NAMES),
    ]
    for c in concs:
        lines.append(f"| {c} | " + " | ".join(
            f"{cell(mode, c, ttft)} | {cell(mode, c, tps)} | {cell(mode, c, per_req)}" for mode in NAMES) + " |")
    if not concs:
        lines.append("| – | no load-generator results |" + " |" * (3 * len(NAMES) - 1))
    lines += ["", "With N distinct rank-16 adapters (request n to adapter n mod N; uploaded "
              "just before, loaded on first use):", "",
              "| run | adapters | concurrency | TTFT p50 / p90 | tok/s | per-req |", "|---|---:|---:|---:|---:|---:|"]
    for mode, levels in adapter_runs.items():
        for lv in sorted(levels, key=lambda lv: (lv.get("models", 0), lv["concurrency"])):
            lines.append(f"| {NAMES.get(mode, mode)} | {lv.get('models', '?')} | {lv['concurrency']} | "
                         f"{ttft(lv)} | {tps(lv)} | {per_req(lv)} |")
    if not adapter_runs:
        lines.append("| – | no adapter rows | | | | |")
    lines += ["", "Peak GPU memory during the load (MiB, nvidia-smi every 250 ms): " + ", ".join(
        f"{NAMES[m]} {peaks[m] if peaks[m] is not None else '–'}" for m in NAMES)]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for ch in checks:
        verdict = "ok" if ch["ok"] else ("failed (advisory)" if ch.get("advisory") else "FAILED")
        detail = str(ch.get("detail", "")).replace("|", "\\|")
        lines.append(f"| {ch['name']} | {verdict} | {detail} |")
    lines += ["", "| phase | status | seconds |", "|---|---|---:|"]
    for ph in phases:
        lines.append(f"| {ph['phase']} | {ph['status']} | {ph['seconds']:.1f} |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
