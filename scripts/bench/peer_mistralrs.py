"""The peer: mistral.rs 0.9.5's own per-request LoRA (PyPI `mistralrs`, a CPU
build), measured on the same base folder and the same adapter files as the
shared-base engine (benches/shared_base.rs), with the same rows. Prints one
JSON object.

    python peer_mistralrs.py BASE_DIR ADAPTERS_DIR [--tokens 64] [--runs 3] [--adapters 1000]

ADAPTERS_DIR holds a0..a7, fresh0.., and many/ (one adapter loaded under
--adapters aliases), as `shared_base --write-adapters` writes them.

One Runner must not be called from two threads at once (it raises
"Already borrowed"), so requests are submitted from this thread and their
streams read from worker threads.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time

from mistralrs import ChatCompletionRequest, ModelDType, Runner, Which

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def request(tokens, adapter=None):
    return ChatCompletionRequest(
        messages=[{"role": "user", "content": PROMPT}],
        model="default",
        max_tokens=tokens,
        temperature=0.0,
        stream=True,
        adapter=adapter,
    )


def read(stream, started):
    """Drains one stream: (ttft s, decode tok/s, completion tokens)."""
    first = last = None
    completion = 0
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = now
            last = now
        if chunk.usage is not None:
            completion = chunk.usage.completion_tokens
    decode = (last - first) if first and last else 0.0
    rate = (completion - 1) / decode if decode > 0 else float("nan")
    return (first - started if first else float("nan"), rate, completion)


def single(runner, tokens, adapter=None):
    started = time.perf_counter()
    stream = runner.send_chat_completion_request(request(tokens, adapter))
    return read(stream, started)


def concurrent(runner, adapters, tokens):
    started = time.perf_counter()
    streams = [runner.send_chat_completion_request(request(tokens, a)) for a in adapters]
    results = [None] * len(streams)

    def drain(index, stream):
        results[index] = read(stream, started)

    threads = [threading.Thread(target=drain, args=(i, s)) for i, s in enumerate(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(r[2] for r in results)
    return total / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("adapters_dir")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--adapters", type=int, default=1000)
    args = parser.parse_args()

    before = rss_bytes()
    loading = time.perf_counter()
    runner = Runner(
        which=Which.Lora(
            model_id=args.base,
            adapters=[],
            max_adapters=args.adapters + 64,
            dtype=ModelDType.F32,
        ),
        max_seqs=16,
    )
    load_secs = time.perf_counter() - loading
    base_rss = rss_bytes() - before
    load_ms = []
    for i in range(8):
        started = time.perf_counter()
        runner.load_lora_adapter(f"a{i}", os.path.join(args.adapters_dir, f"a{i}"))
        load_ms.append((time.perf_counter() - started) * 1000)
    single(runner, 8)
    ttft, decode, adapter_decode, aggregate_base, aggregate_adapters, first_after_load = (
        [], [], [], [], [], [])
    for run in range(args.runs):
        t, rate, _ = single(runner, args.tokens)
        ttft.append(t * 1000)
        decode.append(rate)
        adapter_decode.append(single(runner, args.tokens, "a0")[1])
        aggregate_base.append(concurrent(runner, [None] * 8, args.tokens))
        aggregate_adapters.append(concurrent(runner, [f"a{i}" for i in range(8)], args.tokens))
        started = time.perf_counter()
        runner.load_lora_adapter(f"fresh{run}", os.path.join(args.adapters_dir, f"fresh{run}"))
        single(runner, 1, f"fresh{run}")
        first_after_load.append((time.perf_counter() - started) * 1000)
    resident = None
    if args.adapters > 0:
        source = os.path.join(args.adapters_dir, "many")
        file_bytes = os.path.getsize(os.path.join(source, "adapter_model.safetensors"))
        # Distinct folders (hard links), so no path-based sharing can help.
        copies = tempfile.mkdtemp()
        try:
            for i in range(args.adapters):
                folder = os.path.join(copies, f"m{i}")
                os.mkdir(folder)
                for name in os.listdir(source):
                    os.link(os.path.join(source, name), os.path.join(folder, name))
            before = rss_bytes()
            for i in range(args.adapters):
                runner.load_lora_adapter(f"many{i}", os.path.join(copies, f"m{i}"))
            grown = rss_bytes() - before
        finally:
            shutil.rmtree(copies, ignore_errors=True)
        resident = {
            "adapters": args.adapters,
            "file_bytes": file_bytes,
            "rss_growth_bytes": grown,
            "rss_per_adapter_mib": grown / args.adapters / 1048576,
            "ratio_to_file": grown / (file_bytes * args.adapters),
        }
    print(json.dumps({
        "engine": "mistralrs-0.9.5",
        "load_secs": load_secs,
        "base_rss_mib": base_rss / 1048576,
        "ttft_ms": statistics.median(ttft),
        "decode_tps": statistics.median(decode),
        "adapter_decode_tps": statistics.median(adapter_decode),
        "aggregate8_base_tps": statistics.median(aggregate_base),
        "aggregate8_adapters_tps": statistics.median(aggregate_adapters),
        "adapter_load_ms": statistics.median(load_ms),
        "load_to_first_token_ms": statistics.median(first_after_load),
        "resident": resident,
    }))


if __name__ == "__main__":
    main()
