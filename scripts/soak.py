#!/usr/bin/env python3
"""Load-and-soak run against real gateways (issue 18). Not a timed test: it
prints a table and exits non-zero when a target is missed.

For --minutes, mixed traffic on each gateway given (the default model and/or
the tiny fixture model, one gateway each, authentication on, rate limits in
Redis):

  busy     streamed and non-streamed chats of varied prompt and answer
           lengths (and, on a gateway with adapters, chats through a tenant
           adapter that is replaced and rolled back meanwhile);
  cancel   streams the client drops after a few chunks;
  limited  a tenant sending faster than its requests_per_minute (429s
           expected);
  admin    adapter uploads, replacements and rollbacks under that traffic
           (gateways serving a safetensors model);
  Redis    restarted once, part-way (`redis-cli shutdown nosave`, then
           `redis-server --daemonize yes ...`);
  drain    at the end, streams in flight when the gateway gets SIGTERM.

Targets: no 5xx and no failed stream; completion_tokens <= max_tokens on
every answer; metered usage (the gateway's Prometheus counters
loragate_{prompt,completion}_tokens_total) equal to the sum of the usage the
clients saw, for the tenants whose every request ran to the end (busy,
limited); RSS and open file descriptors growing under 5% from the end of
the warm-up to the end; every stream in flight at SIGTERM finishing; no panic
in any gateway log.

Standard library only (an HTTP/1.1 client on asyncio), so it needs no
virtualenv. Usually run through scripts/soak.sh, which builds and fetches
what is needed.
"""

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

TENANTS = ("busy", "cancel", "limited", "drain")
LIMITED_RPM = 20


# --------------------------------------------------------------------- HTTP


class Response:
    def __init__(self, status, headers, reader, writer):
        self.status, self.headers = status, headers
        self.reader, self.writer = reader, writer

    async def chunks(self):
        """The body, as it arrives (chunked or sized or until close)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise ConnectionError("connection closed inside a chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = await self.reader.read(min(left, 65536))
                if not data:
                    raise ConnectionError("connection closed inside a sized body")
                left -= len(data)
                yield data
        else:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                yield data

    async def read(self):
        parts = [part async for part in self.chunks()]
        return b"".join(parts)

    def close(self):
        try:
            self.writer.close()
        except Exception:
            pass


async def request(port, method, path, body=b"", headers=None, content_type="application/json"):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             f"Content-Length: {len(body)}"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        writer.close()
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers_in = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers_in[name.strip().lower()] = value.strip()
    return Response(status, headers_in, reader, writer)


def sse_frames(buffer):
    """Complete `data:` payloads in buffer, and the unfinished rest."""
    *frames, rest = buffer.split("\n\n")
    return [f[len("data: "):] for f in frames if f.startswith("data: ")], rest


# ------------------------------------------------------------------ records


class Book:
    """Everything the clients saw."""

    def __init__(self):
        self.outcomes = collections.Counter()  # (gateway, kind, status, outcome)
        self.usage = collections.defaultdict(lambda: [0, 0])  # (gateway, tenant) -> [prompt, completion]
        self.over_budget = []
        self.failures = []
        self.cancel_received = collections.Counter()  # gateway -> text chunks received

    def outcome(self, gateway, kind, status, outcome, detail=None):
        self.outcomes[(gateway, kind, status, outcome)] += 1
        if outcome in ("stream_error", "server_error", "connection_error", "unexpected") and detail:
            if len(self.failures) < 20:
                self.failures.append(f"{gateway} {kind} {status} {outcome}: {detail[:300]}")

    def seen(self, gateway, tenant, usage, max_tokens, detail):
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self.usage[(gateway, tenant)][0] += prompt
        self.usage[(gateway, tenant)][1] += completion
        if completion > max_tokens:
            self.over_budget.append(f"{gateway} {detail}: completion_tokens {completion} > max_tokens {max_tokens}")


# ---------------------------------------------------------------- gateways


class Gateway:
    def __init__(self, name, model, port, process, log, supports_adapters, max_tokens):
        self.name, self.model, self.port = name, model, port
        self.process, self.log = process, log
        self.supports_adapters = supports_adapters
        self.max_tokens = max_tokens  # longest answer asked for in traffic
        self.adapter = None  # current adapter model name once uploaded

    def sample(self):
        pid = self.process.pid
        rss_kib = 0
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_kib = int(line.split()[1])
        return rss_kib, len(os.listdir(f"/proc/{pid}/fd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_key():
    key = "lg-" + secrets.token_hex(32)
    return key, "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


def write_config(path, port, model, adapters_dir, admin_hash, tenant_hashes, prefix):
    lines = ["[server]", f'bind = "127.0.0.1:{port}"', "workers = 2", "", "[model]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in model.items()]
    lines += ["", "[admission]", "max_in_flight = 4", "max_queued = 256",
              # Load, not queueing, is measured: nothing may time out waiting.
              "queue_timeout_ms = 600000", "",
              "[adapters]", f"dir = {json.dumps(str(adapters_dir))}", "max_resident = 2", "",
              "[auth]", "enabled = true", f"admin_api_keys = [{json.dumps(admin_hash)}]", "",
              "[redis]", 'url = "redis://127.0.0.1:6379"', f"key_prefix = {json.dumps(prefix)}", "",
              "[logging]", 'level = "warn"', ""]
    for tenant, key_hash in tenant_hashes.items():
        lines += ["[[tenants]]", f'id = "{tenant}"', f"api_keys = [{json.dumps(key_hash)}]"]
        if tenant == "limited":
            lines += ["[tenants.limits]", f"requests_per_minute = {LIMITED_RPM}"]
        lines.append("")
    path.write_text("\n".join(lines))


async def wait_ready(gateway, seconds=900):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise SystemExit(f"{gateway.name}: gateway exited while loading; see {gateway.log}")
        try:
            response = await request(gateway.port, "GET", "/ready")
            await response.read()
            response.close()
            if response.status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"{gateway.name}: not ready after {seconds}s; see {gateway.log}")


# ------------------------------------------------------------------ traffic

WORDS = ("the quick brown fox jumps over a lazy dog while seven tenants share one "
         "gateway and every token must be counted exactly once").split()


def prompt_text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120)))


async def chat(gateway, book, key, tenant, kind, model, max_tokens, stream, rng, cancel_after=None):
    """One chat; records its outcome and (when it ran to the end) its usage."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt_text(rng)}],
        "max_tokens": max_tokens,
        "temperature": rng.choice([0, 0.7]),
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    try:
        response = await request(gateway.port, "POST", "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Authorization": f"Bearer {key}"})
    except OSError as error:
        book.outcome(gateway.name, kind, 0, "connection_error", repr(error))
        return
    try:
        if response.status != 200:
            text = (await response.read()).decode(errors="replace")
            outcome = ("rate_limited" if response.status == 429 else
                       "server_error" if response.status >= 500 else "unexpected")
            book.outcome(gateway.name, kind, response.status, outcome, text)
            return
        if not stream:
            answer = json.loads(await response.read())
            finish = answer["choices"][0].get("finish_reason")
            if finish not in ("stop", "length"):
                book.outcome(gateway.name, kind, 200, "unexpected", json.dumps(answer))
                return
            book.seen(gateway.name, tenant, answer["usage"], max_tokens, kind)
            book.outcome(gateway.name, kind, 200, "ok")
            return
        buffer, finish, usage, error, done, texts = "", None, None, None, False, 0
        async for data in response.chunks():
            buffer += data.decode(errors="replace")
            frames, buffer = sse_frames(buffer)
            for frame in frames:
                if frame == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(frame)
                if "error" in chunk:
                    error = frame
                    continue
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        texts += 1
                    finish = choice.get("finish_reason") or finish
                if chunk.get("usage"):
                    usage = chunk["usage"]
            if cancel_after is not None and texts >= cancel_after:
                book.cancel_received[gateway.name] += texts
                book.outcome(gateway.name, kind, 200, "cancelled")
                return
        if error or not done or finish is None or usage is None:
            book.outcome(gateway.name, kind, 200, "stream_error",
                         error or f"done={done} finish={finish} usage={usage}")
            return
        if texts > usage["completion_tokens"]:
            book.over_budget.append(f"{gateway.name} {kind}: {texts} text chunks for "
                                    f"{usage['completion_tokens']} completion tokens")
        if cancel_after is not None:
            book.cancel_received[gateway.name] += texts  # finished before the cut
            book.outcome(gateway.name, kind, 200, "finished_before_cancel")
            return
        book.seen(gateway.name, tenant, usage, max_tokens, kind)
        book.outcome(gateway.name, kind, 200, "ok")
    except (OSError, ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError, KeyError) as error:
        book.outcome(gateway.name, kind, response.status, "connection_error", repr(error))
    finally:
        response.close()


async def busy_client(gateway, book, keys, deadline, seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        model = gateway.model
        kind = "chat"
        if gateway.adapter and rng.random() < 0.3:
            model, kind = gateway.adapter, "adapter_chat"
        stream = rng.random() < 0.5
        await chat(gateway, book, keys["busy"], "busy", kind + ("_stream" if stream else ""), model,
                   rng.randint(1, gateway.max_tokens), stream, rng)


async def cancel_client(gateway, book, keys, deadline, seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        await chat(gateway, book, keys["cancel"], "cancel", "cancelled_stream", gateway.model,
                   gateway.max_tokens, True, rng, cancel_after=rng.randint(1, 8))
        await asyncio.sleep(rng.uniform(0.2, 1.0))


async def limited_client(gateway, book, keys, deadline, seed):
    rng = random.Random(seed)
    sent = set()
    while time.monotonic() < deadline:
        # Six times its requests_per_minute whatever the answers take, so
        # past its burst most are refused with 429; but never more than four
        # outstanding, so a slow model is not buried under a backlog the
        # admission queue then times out (503s that measure the CPU, not
        # the gateway).
        sent = {task for task in sent if not task.done()}
        if len(sent) < 4:
            sent.add(asyncio.create_task(chat(gateway, book, keys["limited"], "limited", "limited_chat",
                                              gateway.model, rng.randint(1, 16), rng.random() < 0.5, rng)))
        await asyncio.sleep(60 / (6 * LIMITED_RPM))
    await asyncio.gather(*sent)


def multipart(fields, files):
    boundary = "soak" + uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def admin_op(gateway, book, admin_key, op, method, path, body=b"", content_type="application/json",
                   headers=None):
    headers = dict(headers or {}, Authorization=f"Bearer {admin_key}")
    try:
        response = await request(gateway.port, method, path, body, headers, content_type)
        text = (await response.read()).decode(errors="replace")
        response.close()
    except (OSError, ConnectionError) as error:
        book.outcome(gateway.name, op, 0, "connection_error", repr(error))
        return None
    ok = response.status in (200, 201)
    book.outcome(gateway.name, op, response.status,
                 "ok" if ok else "server_error" if response.status >= 500 else "unexpected", text)
    return json.loads(text) if ok else None


async def admin_client(gateway, book, admin_key, adapter_dirs, deadline, seed):
    rng = random.Random(seed)
    path = "/admin/v1/tenants/busy/adapters"

    def files(n):
        folder = adapter_dirs[n % len(adapter_dirs)]
        return {"adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
                "adapter_model": ("adapter_model.safetensors", (folder / "adapter_model.safetensors").read_bytes())}

    body, content_type = multipart({"name": "soak"}, files(0))
    created = await admin_op(gateway, book, admin_key, "adapter_upload", "POST", path, body, content_type)
    if created is None:
        return
    generation = created.get("generation")
    gateway.adapter = "soak"
    n = 1
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(5, 12))
        if time.monotonic() >= deadline:
            break
        if n % 3 == 0:
            answer = await admin_op(gateway, book, admin_key, "adapter_rollback", "POST",
                                    f"{path}/soak/rollback", b"", headers={"If-Match": f'"{generation}"'})
        else:
            body, content_type = multipart({"name": "soak"}, files(n))
            answer = await admin_op(gateway, book, admin_key, "adapter_replace", "POST", path, body, content_type,
                                    headers={"If-Match": f'"{generation}"'})
        if answer is not None:
            generation = answer.get("generation", generation)
        n += 1


async def restart_redis(book, at):
    await asyncio.sleep(at)
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(2)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
                    "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, check=True)
    for _ in range(100):
        if subprocess.run(["redis-cli", "ping"], capture_output=True).stdout.strip() == b"PONG":
            book.outcomes[("redis", "restart", 0, "ok")] += 1
            return
        await asyncio.sleep(0.1)
    book.outcomes[("redis", "restart", 0, "failed")] += 1


async def metrics(gateway):
    response = await request(gateway.port, "GET", "/metrics")
    text = (await response.read()).decode()
    response.close()
    totals = collections.defaultdict(lambda: [0, 0])
    pattern = re.compile(r'^loragate_(prompt|completion)_tokens_total\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        totals[labels.get("tenant", "")][0 if match.group(1) == "prompt" else 1] += int(float(match.group(3)))
    return totals


async def drain_at_sigterm(gateway, key, count, max_tokens):
    """Opens `count` streams, waits for each one's first text, sends SIGTERM,
    and reads them to the end. Returns (in flight, finished, exit code)."""
    rng = random.Random(7)
    streams = []
    for _ in range(count):
        body = {"model": gateway.model, "messages": [{"role": "user", "content": prompt_text(rng)}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True}
        response = await request(gateway.port, "POST", "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Authorization": f"Bearer {key}"})
        streams.append((response, response.chunks()))
    buffers = []
    for response, chunks in streams:
        buffer = ""
        while response.status == 200 and '"content":"' not in buffer.replace('"content":""', ""):
            try:
                buffer += (await chunks.__anext__()).decode(errors="replace")
            except StopAsyncIteration:
                break
        buffers.append(buffer)
    gateway.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    finished = 0
    for (response, chunks), buffer in zip(streams, buffers):
        try:
            async for data in chunks:
                buffer += data.decode(errors="replace")
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        frames, _ = sse_frames(buffer)
        ended = [f for f in frames if f != "[DONE]" and '"finish_reason":"' in f]
        if response.status == 200 and frames and frames[-1] == "[DONE]" and ended and '"error"' not in buffer:
            finished += 1
        response.close()
    ended_after = time.monotonic() - signalled
    try:
        code = await asyncio.wait_for(asyncio.to_thread(gateway.process.wait), 120)
    except asyncio.TimeoutError:
        gateway.process.kill()
        code = "killed"
    return count, finished, code, ended_after


# --------------------------------------------------------------------- main


async def run(args):
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    keys, hashes = {}, {}
    for tenant in TENANTS:
        keys[tenant], hashes[tenant] = new_key()
    admin_key, admin_hash = new_key()
    prefix = f"loragate-soak-{uuid.uuid4().hex[:12]}"
    adapter_dirs = [Path(d) for d in args.adapter] if args.adapter else []

    models = []
    if args.default_config:
        model = dict(tomllib.loads(Path(args.default_config).read_text())["model"])
        model["path"] = os.path.expanduser(model["path"])
        if not os.path.isabs(model["path"]):
            model["path"] = str((Path(args.default_config).parent / model["path"]).resolve())
        models.append(("default", model, args.default_max_tokens))
    if args.tiny_model:
        model = {"served_name": "tiny", "path": args.tiny_model, "format": "safetensors", "dtype": "f32",
                 "engine": args.tiny_engine, "max_num_seqs": 16}
        models.append(("tiny", model, args.tiny_max_tokens))
    if not models:
        raise SystemExit("nothing to soak: give --default-config and/or --tiny-model")

    gateways = []
    for name, model, max_tokens in models:
        port = free_port()
        config = work / f"{name}.toml"
        write_config(config, port, model, work / f"adapters-{name}", admin_hash, hashes, f"{prefix}-{name}")
        log = work / f"{name}.log"
        process = subprocess.Popen([args.bin, "serve", "--config", str(config)], stdout=open(log, "w"),
                                   stderr=subprocess.STDOUT)
        # The --adapter folders are made for the tiny fixture model's shapes.
        supports_adapters = name == "tiny" and bool(adapter_dirs)
        gateways.append(Gateway(name, model["served_name"], port, process, log, supports_adapters, max_tokens))
    try:
        for gateway in gateways:
            await wait_ready(gateway)
        return await soak(args, gateways, keys, admin_key, adapter_dirs)
    finally:
        for gateway in gateways:
            if gateway.process.poll() is None:
                gateway.process.kill()


async def soak(args, gateways, keys, admin_key, adapter_dirs):
    book = Book()
    duration = args.minutes * 60
    warmup = min(args.warmup, duration / 3)
    samples = {g.name: {"start": g.sample()} for g in gateways}
    started = time.monotonic()
    deadline = started + duration
    tasks = []
    for i, gateway in enumerate(gateways):
        seed = 1000 * i
        clients = args.default_clients if gateway.name == "default" else args.clients
        tasks += [busy_client(gateway, book, keys, deadline, seed + n) for n in range(clients)]
        tasks += [cancel_client(gateway, book, keys, deadline, seed + 100 + n) for n in range(2)]
        tasks.append(limited_client(gateway, book, keys, deadline, seed + 200))
        if gateway.supports_adapters:
            tasks.append(admin_client(gateway, book, admin_key, adapter_dirs, deadline, seed + 300))
    if not args.no_redis_restart:
        tasks.append(restart_redis(book, duration * 0.4))

    async def sample_after_warmup():
        await asyncio.sleep(warmup)
        for gateway in gateways:
            samples[gateway.name]["warm"] = gateway.sample()

    async def progress():
        while time.monotonic() < deadline:
            await asyncio.sleep(60)
            done = sum(book.outcomes.values())
            print(f"  {int(time.monotonic() - started)}s: {done} requests", file=sys.stderr, flush=True)

    await asyncio.gather(*tasks, sample_after_warmup(), progress())
    await asyncio.sleep(2)  # settlements run as each request's guards drop
    for gateway in gateways:
        samples[gateway.name]["end"] = gateway.sample()
    metered = {g.name: await metrics(g) for g in gateways}
    drains = {}
    for gateway in gateways:
        # Short answers: they must finish inside the server's shutdown grace.
        drains[gateway.name] = await drain_at_sigterm(gateway, keys["drain"], args.drain_streams,
                                                      min(gateway.max_tokens, args.drain_max_tokens))
    return report(args, gateways, book, samples, metered, drains, time.monotonic() - started)


def report(args, gateways, book, samples, metered, drains, elapsed):
    missed = []
    print(f"\n## soak: {args.minutes} min, {len(gateways)} gateway(s) "
          f"({', '.join(g.name + '=' + g.model for g in gateways)}), {elapsed:.0f}s wall\n")
    print("| gateway | request | status | outcome | count |")
    print("|---|---|---|---|---|")
    for (gateway, kind, status, outcome), count in sorted(book.outcomes.items(), key=lambda kv: tuple(map(str, kv[0]))):
        print(f"| {gateway} | {kind} | {status or '-'} | {outcome} | {count} |")
    server_errors = sum(c for (g, k, s, o), c in book.outcomes.items() if isinstance(s, int) and s >= 500)
    failed = sum(c for (g, k, s, o), c in book.outcomes.items()
                 if o in ("stream_error", "connection_error", "unexpected", "failed"))
    limited = sum(c for (g, k, s, o), c in book.outcomes.items() if o == "rate_limited")
    total = sum(c for (g, k, s, o), c in book.outcomes.items() if g != "redis")
    print(f"\nrequests: {total}; 5xx: {server_errors} (target 0); failed otherwise: {failed} (target 0); "
          f"429: {limited} (expected)")
    if server_errors:
        missed.append(f"{server_errors} 5xx")
    if failed:
        missed.append(f"{failed} failed requests")
    if limited == 0:
        missed.append("no 429 from the limited tenant (the limit was not reached)")
    print(f"usage over max_tokens: {len(book.over_budget)} (target 0)")
    if book.over_budget:
        missed.append("usage over budget")
    for line in book.failures + book.over_budget[:10]:
        print(f"  {line}")

    print("\n| gateway | tenant | metered prompt | seen prompt | metered completion | seen completion | equal |")
    print("|---|---|---|---|---|---|---|")
    for gateway in gateways:
        for tenant in ("busy", "limited"):
            m = metered[gateway.name].get(tenant, [0, 0])
            s = book.usage.get((gateway.name, tenant), [0, 0])
            equal = list(m) == list(s)
            if not equal:
                missed.append(f"{gateway.name}/{tenant}: metered {m} != seen {s}")
            print(f"| {gateway.name} | {tenant} | {m[0]} | {s[0]} | {m[1]} | {s[1]} | {'yes' if equal else 'NO'} |")
        m = metered[gateway.name].get("cancel", [0, 0])
        print(f"| {gateway.name} | cancel | {m[0]} | - | {m[1]} | >= {book.cancel_received[gateway.name]} text chunks received | - |")

    print("\n| gateway | RSS start | RSS warm | RSS end | growth | fds start | fds warm | fds end | growth |")
    print("|---|---|---|---|---|---|---|---|---|")
    for gateway in gateways:
        s = samples[gateway.name]
        warm = s.get("warm", s["start"])
        rss_growth = (s["end"][0] - warm[0]) / max(warm[0], 1) * 100
        fd_growth = (s["end"][1] - warm[1]) / max(warm[1], 1) * 100
        if rss_growth >= 5 and not args.no_growth_target:
            missed.append(f"{gateway.name}: RSS grew {rss_growth:.1f}% after warm-up")
        if fd_growth >= 5 and not args.no_growth_target:
            missed.append(f"{gateway.name}: open fds grew {fd_growth:.1f}% after warm-up")
        print(f"| {gateway.name} | {s['start'][0] // 1024} MiB | {warm[0] // 1024} MiB | {s['end'][0] // 1024} MiB | "
              f"{rss_growth:+.1f}% | {s['start'][1]} | {warm[1]} | {s['end'][1]} | {fd_growth:+.1f}% |")

    print("\n| gateway | streams in flight at SIGTERM | finished | streams ended after | exit code | panics in log |")
    print("|---|---|---|---|---|---|")
    for gateway in gateways:
        in_flight, finished, code, ended_after = drains[gateway.name]
        log = gateway.log.read_text(errors="replace")
        panics = log.count("panicked at")
        if finished != in_flight:
            missed.append(f"{gateway.name}: {in_flight - finished} of {in_flight} streams cut at SIGTERM")
        if code != 0:
            missed.append(f"{gateway.name}: exit code {code} after SIGTERM")
        if panics:
            missed.append(f"{gateway.name}: {panics} panics in {gateway.log}")
        print(f"| {gateway.name} | {in_flight} | {finished} | {ended_after:.1f}s | {code} | {panics} |")

    print()
    if missed:
        print("TARGETS MISSED:")
        for line in missed:
            print(f"  - {line}")
        return 1
    print("all targets met")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the loragate binary")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=120, help="seconds before the 'warm' sample")
    parser.add_argument("--default-config", help="serve this config's [model] (e.g. config/default.toml)")
    parser.add_argument("--default-max-tokens", type=int, default=64)
    parser.add_argument("--tiny-model", help="folder of the tiny fixture model (loragate tiny-model)")
    parser.add_argument("--tiny-engine", default="auto", choices=["auto", "mistralrs", "shared_base"])
    parser.add_argument("--tiny-max-tokens", type=int, default=256)
    parser.add_argument("--adapter", action="append", help="tiny-model adapter folder (repeat)")
    parser.add_argument("--clients", type=int, default=12, help="busy clients on the tiny model")
    parser.add_argument("--default-clients", type=int, default=4,
                        help="busy clients on the default model (slower: a few keep its slots busy)")
    parser.add_argument("--drain-streams", type=int, default=4)
    parser.add_argument("--drain-max-tokens", type=int, default=32)
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument("--no-growth-target", action="store_true",
                        help="report RSS and fd growth without a target (runs too short to settle)")
    parser.add_argument("--work", required=True, help="scratch folder: configs, logs, adapter stores")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
