"""Side by side: the default model as converted safetensors on the shared-base
engine (config/default.toml) and as the original Q4_1 GGUF on mistral.rs 0.8.1
(config/gguf.toml). For each: load time (start to /ready), RSS once ready,
single-stream decode tokens/s and time to first token (streamed, greedy,
median of runs), and the greedy answers to a few fixed prompts.

Usage: compare_default_models.py BIN [--runs 3] [--tokens 64] [--json OUT]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CONFIGS = [("safetensors f32, shared-base engine", "config/default.toml"),
           ("GGUF Q4_1, mistral.rs 0.8.1", "config/gguf.toml")]
PROMPTS = ["What is the capital of France?",
           "Name three primary colours.",
           "Write one sentence about the sea."]
MODEL = "smollm2-135m-instruct"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post(url, body, stream=False):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=600)


def streamed(url, prompt, tokens):
    started = time.perf_counter()
    first, count = None, 0
    body = {"model": MODEL, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}
    usage = None
    with post(f"{url}/v1/chat/completions", body) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
    ended = time.perf_counter()
    count = usage["completion_tokens"]
    return (first - started) * 1000, (count - 1) / (ended - first) if count > 1 else float("nan")


def answer(url, prompt):
    body = {"model": MODEL, "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": prompt}]}
    with post(f"{url}/v1/chat/completions", body) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def measure(binary, config, runs, tokens):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, LORAGATE__SERVER__BIND=f"127.0.0.1:{port}", LORAGATE__LOGGING__LEVEL="warn",
               LORAGATE__ADAPTERS__DIR=tempfile.mkdtemp(prefix="loragate-compare-"))
    started = time.perf_counter()
    process = subprocess.Popen([binary, "serve", "--config", config], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if process.poll() is not None:
                sys.exit(f"{config}: the gateway exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        load = time.perf_counter() - started
        streamed(url, "Hello", 8)  # warm-up
        results = [streamed(url, "Tell me a long story about a lighthouse keeper.", tokens) for _ in range(runs)]
        return {
            "load_seconds": load,
            "rss_mib": rss_mib(process.pid),
            "ttft_ms": statistics.median(r[0] for r in results),
            "decode_tokens_per_second": statistics.median(r[1] for r in results),
            "answers": {prompt: answer(url, prompt) for prompt in PROMPTS},
        }
    finally:
        process.terminate()
        process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = {name: measure(args.binary, config, args.runs, args.tokens) for name, config in CONFIGS}
    names = list(rows)
    print(f"| | {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    for label, key, form in [("load to ready", "load_seconds", "{:.2f} s"),
                             ("RSS once ready", "rss_mib", "{:.0f} MiB"),
                             (f"single-stream decode ({args.tokens} tokens, median of {args.runs})",
                              "decode_tokens_per_second", "{:.1f} tok/s"),
                             ("time to first token", "ttft_ms", "{:.0f} ms")]:
        print(f"| {label} | {' | '.join(form.format(rows[n][key]) for n in names)} |")
    for prompt in PROMPTS:
        cells = " | ".join(rows[n]["answers"][prompt].replace("\n", " ").replace("|", "\\|") for n in names)
        print(f"| \"{prompt}\" | {cells} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
