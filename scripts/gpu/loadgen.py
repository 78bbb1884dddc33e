#!/usr/bin/env python3
"""Streaming load generator for an OpenAI-compatible /v1/chat/completions (standard library only).

    loadgen.py --url http://127.0.0.1:PORT --model NAME[,NAME...] [--concurrency 1,8,32,128]
               [--max-tokens 128] [--requests N] [--seconds S] [--label L] [--out FILE.json]

For each concurrency level C, C client threads send streamed chat completions
(`stream: true`, `stream_options.include_usage`, greedy `temperature: 0`, fixed
`max_tokens`) back to back until the level has sent its requests (--requests,
default max(4, 2*C)) or --seconds have passed since it started (no new request
after that; those running finish). Each prompt starts with its own number so
the prefix cache cannot serve one request from another. With several models
(adapters), request n goes to model n mod their number.

Per level it reports: TTFT (send -> first non-empty `delta.content`) p50/p90/max,
time to the first SSE event of any kind, aggregate output tokens/s (the sum of
`usage.completion_tokens` over the wall time from the first send to the last
end), per-request decode tokens/s p50 ((completion_tokens - 1) / (end - first
content)), and errors. Prints one JSON line per level; --out writes them all.
Exits 1 when any request failed.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

FILLER = ("The quick brown fox jumps over the lazy dog while the gateway counts every token "
          "it streams back to the client, one server-sent event at a time. ")


def pct(values, q):
    """Nearest-rank percentile; None for an empty list."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def one_request(host, port, path, body, timeout, api_key=None):
    """Sends one streamed request; returns a dict of timings and token counts."""
    r = {"ok": False, "ttft": None, "first_event": None, "completion_tokens": 0,
         "prompt_tokens": None, "content_chars": 0, "error": None}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            r["error"] = f"HTTP {resp.status}: {resp.read(300).decode('utf-8', 'replace')}"
            return r
        done = False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            now = time.perf_counter()
            if r["first_event"] is None:
                r["first_event"] = now - t0
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                r["error"] = f"stream error: {ev['error']}"
                return r
            for ch in ev.get("choices") or []:
                content = (ch.get("delta") or {}).get("content")
                if content:
                    if r["ttft"] is None:
                        r["ttft"] = now - t0
                        r["t_first_content"] = now
                    r["content_chars"] += len(content)
            if ev.get("usage"):
                r["completion_tokens"] = ev["usage"].get("completion_tokens") or 0
                r["prompt_tokens"] = ev["usage"].get("prompt_tokens")
        r["end"] = time.perf_counter()
        r["latency"] = r["end"] - t0
        if not done:
            r["error"] = "stream ended without [DONE]"
        elif not r["completion_tokens"]:
            r["error"] = "no usage in the stream (include_usage)"
        else:
            r["ok"] = True
        if r["ttft"] is not None and r["completion_tokens"] > 1 and r["end"] > r["t_first_content"]:
            r["decode_tps"] = (r["completion_tokens"] - 1) / (r["end"] - r["t_first_content"])
        return r
    except Exception as e:  # noqa: BLE001 - reported per request
        r["error"] = f"{type(e).__name__}: {e}"
        return r
    finally:
        r["start"] = t0
        r.setdefault("end", time.perf_counter())
        conn.close()


def run_level(args, conc, counter_start):
    u = urllib.parse.urlsplit(args.url)
    host, port = u.hostname, u.port or 80
    path = (u.path.rstrip("/") or "") + "/v1/chat/completions"
    total = args.requests if args.requests else max(4, 2 * conc)
    models = [m for m in args.model.split(",") if m]
    lock = threading.Lock()
    state = {"sent": 0}
    results = []
    deadline = time.perf_counter() + args.seconds

    def worker():
        while True:
            with lock:
                if state["sent"] >= total or time.perf_counter() > deadline:
                    return
                n = counter_start + state["sent"]
                state["sent"] += 1
            prompt = f"Request {n}. " + (FILLER * 20)[: args.prompt_chars]
            body = json.dumps({
                "model": models[n % len(models)],
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            })
            res = one_request(host, port, path, body, args.timeout, args.api_key)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    first = [r["first_event"] for r in ok if r["first_event"] is not None]
    decode = [r["decode_tps"] for r in ok if r.get("decode_tps")]
    tokens = sum(r["completion_tokens"] for r in ok)
    span = (max(r["end"] for r in ok) - min(r["start"] for r in ok)) if ok else 0.0
    errors = [r["error"] for r in results if not r["ok"]]
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
    return {
        "label": args.label,
        "concurrency": conc,
        "models": len(models),
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": errors[:3],
        "max_tokens": args.max_tokens,
        "completion_tokens": tokens,
        "mean_completion_tokens": round(tokens / len(ok), 1) if ok else None,
        "prompt_tokens": ok[0]["prompt_tokens"] if ok else None,
        "no_content": sum(1 for r in ok if r["ttft"] is None),
        "ttft_ms_p50": ms(pct(ttft, 50)),
        "ttft_ms_p90": ms(pct(ttft, 90)),
        "ttft_ms_max": ms(max(ttft) if ttft else None),
        "first_event_ms_p50": ms(pct(first, 50)),
        "latency_s_p50": round(pct([r["latency"] for r in ok], 50), 3) if ok else None,
        "output_tokens_per_s": round(tokens / span, 1) if span > 0 else None,
        "decode_tokens_per_s_per_request_p50": round(statistics.median(decode), 1) if decode else None,
        "wall_s": round(wall, 2),
    }, len(results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", required=True, help="one name, or several comma-separated (round robin)")
    p.add_argument("--concurrency", default="1,8,32,128", help="comma-separated levels")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-chars", type=int, default=200, help="prompt length after its number")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default max(4, 2*C))")
    p.add_argument("--seconds", type=float, default=60.0, help="stop sending new requests after this")
    p.add_argument("--timeout", type=float, default=120.0, help="socket timeout per request")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests before the first level")
    p.add_argument("--api-key", default=None, help="sent as Authorization: Bearer (if auth is on)")
    p.add_argument("--label", default="")
    p.add_argument("--out", help="write the levels' JSON here")
    a = p.parse_args()

    levels = [int(c) for c in a.concurrency.split(",") if c.strip()]
    # Prompt numbers all have 8 digits, so every prompt has the same token count.
    counter = 10_000_000
    if a.warmup:
        w = argparse.Namespace(**{**vars(a), "requests": a.warmup, "label": a.label + ":warmup"})
        res, n = run_level(w, 1, counter)
        counter += n
        print(json.dumps({"warmup": res}), flush=True)
        if res["ok"] == 0:
            print("loadgen: the warm-up request failed; not measuring", file=sys.stderr)
            if a.out:
                with open(a.out, "w", encoding="utf-8") as f:
                    json.dump({"warmup": res, "levels": []}, f, indent=2)
            return 1
    out = []
    for c in levels:
        res, n = run_level(a, c, counter)
        counter += n
        out.append(res)
        print(json.dumps(res), flush=True)
        if a.out:  # after every level, so a run cut short keeps what it measured
            with open(a.out + ".tmp", "w", encoding="utf-8") as f:
                json.dump({"levels": out, "complete": len(out) == len(levels)}, f, indent=2)
            os.replace(a.out + ".tmp", a.out)
    return 1 if any(r["errors"] for r in out) else 0


if __name__ == "__main__":
    sys.exit(main())
