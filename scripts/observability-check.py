#!/usr/bin/env python3
"""The checks of scripts/observability-test.sh, against a live gateway and a
Prometheus scraping it every second (both started by that script).

  1. traffic: non-streamed and streamed completions; adapters for the
     unlimited tenant (the gateway keeps one resident): a1 uploaded through the
     admin API (loaded on upload), a2 uploaded with `loragate upload` (loaded,
     evicts a1), a chat with a1 (cold reload, evicts a2), so 3 loads, 2
     evictions, 1 resident; 404 (unknown model), 401 (bad and missing key), 429
     (tenant limit), 503 (admission queue full), a stream cancelled by its
     client;
  2. label bounds: 1,000 distinct unknown model names and 200 distinct bad keys
     add no series to /metrics;
  3. every PromQL expression of the dashboard (panels and variables) and of
     alerts.yml is evaluated through Prometheus' HTTP API: all must parse, all
     dashboard expressions must return data; every alert rule must evaluate
     healthily;
  4. the numbers Prometheus holds match the traffic.

usage: observability-check.py ROOT GATEWAY_URL PROMETHEUS_URL KEY_UNLIMITED KEY_LIMITED
                              ADMIN_KEY LORAGATE_BIN ADAPTER_DIR_1 ADAPTER_DIR_2
(the unlimited tenant is "alpha"; each adapter folder holds adapter_config.json
and adapter_model.safetensors). Prints one ok/FAIL line per check and
`N passed, M failed` last.
"""

import http.client
import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT, GATEWAY, PROMETHEUS, KEY, LIMITED_KEY, ADMIN_KEY, BIN, ADAPTER_1, ADAPTER_2 = sys.argv[1:10]
ROOT = Path(ROOT)
MODEL = "tiny"
TENANT = "alpha"  # the tenant of KEY

# Panels whose values must be numbers, not NaN (a quantile over buckets that
# did not move in the window is NaN, which would still count as "data").
MUST_BE_NUMBERS = {"Adapter load duration p50/p95"}

# Grafana's variables, as the test sets them ("All" tenants is `.*`).
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "5m",
    "${__range}": "5m",
    "${tenant:regex}": ".*",
    "${tenant}": ".*",
    "$tenant": ".*",
}

passed = failed = 0


def check(name, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}{': ' + str(detail) if detail != '' else ''}")
    return condition


# ------------------------------------------------------------------- HTTP bits
gw = urllib.parse.urlsplit(GATEWAY)


def connection():
    return http.client.HTTPConnection(gw.hostname, gw.port, timeout=30)


def chat_body(model=MODEL, stream=False, max_tokens=8):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body)


def chat(key, model=MODEL, stream=False, conn=None):
    """One completion; returns (status, body text). Streams are read to the end."""
    own = conn is None
    conn = conn or connection()
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    conn.request("POST", "/v1/chat/completions", chat_body(model, stream), headers)
    response = conn.getresponse()
    text = response.read().decode("utf-8", "replace")
    if own:
        conn.close()
    return response.status, text


def get(path, key=None):
    request = urllib.request.Request(GATEWAY + path)
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_get(path):
    status, text = get(path, ADMIN_KEY)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def upload_adapter(tenant, name, folder):
    """POST /admin/v1/tenants/{tenant}/adapters as multipart/form-data; returns (status, body)."""
    boundary = "loragate-obs-boundary-7f3a9c"
    parts = [(b'name="name"', name.encode())]
    for field, filename in (("adapter_config", "adapter_config.json"),
                            ("adapter_model", "adapter_model.safetensors")):
        parts.append((f'name="{field}"; filename="{filename}"\r\ncontent-type: application/octet-stream'.encode(),
                      (Path(folder) / filename).read_bytes()))
    body = b"".join(
        b"--" + boundary.encode() + b"\r\ncontent-disposition: form-data; " + head + b"\r\n\r\n" + data + b"\r\n"
        for head, data in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    conn = http.client.HTTPConnection(gw.hostname, gw.port, timeout=150)
    conn.request("POST", f"/admin/v1/tenants/{tenant}/adapters", body, {
        "authorization": f"Bearer {ADMIN_KEY}",
        "content-type": f"multipart/form-data; boundary={boundary}",
    })
    response = conn.getresponse()
    text = response.read().decode("utf-8", "replace")
    conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def exposed(text, family, **labels):
    """The value of one series of the gateway's own exposition (None if absent)."""
    for line in series_lines(text, family):
        name_labels, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', name_labels))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def open_stream(key, max_tokens=1900):
    """Starts a long stream on a raw socket and returns it after the first bytes of body."""
    body = chat_body(stream=True, max_tokens=max_tokens).encode()
    s = socket.create_connection((gw.hostname, gw.port), timeout=30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: loragate\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = b""
    while b"data:" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def prom(path, **params):
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 400 for a parse error, with a JSON body
        return json.loads(e.read() or b"{}") | {"status": "error", "http": e.code}


def query(expr):
    return prom("/api/v1/query", query=expr)


def scalar(expr):
    result = query(expr).get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def series_lines(text, family=None):
    lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    if family:
        lines = [l for l in lines if l.startswith(family + "{") or l.startswith(family + " ")]
    return lines


# ------------------------------------------------------------------- 1. traffic
def wait_for(predicate, seconds, step=0.25):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def main():
    check("Prometheus scrapes the gateway (up == 1)", wait_for(lambda: scalar('up{job="loragate"}') == 1, 20))

    statuses = [chat(KEY)[0] for _ in range(3)]
    check("non-streamed completions answer 200", statuses == [200] * 3, statuses)
    streams = [chat(KEY, stream=True) for _ in range(3)]
    check("streamed completions answer 200 and end with [DONE]",
          all(s == 200 and "data: [DONE]" in t for s, t in streams), [s for s, _ in streams])
    check("GET /v1/models answers 200", get("/v1/models", KEY)[0] == 200)

    # ------------------------------------------------------------- adapters
    metrics = get("/metrics")[1]
    check("adapter counters are primed at zero for the tenants (failures series present)",
          all(exposed(metrics, "loragate_adapter_loads_total", tenant=t, result=r) == 0
              for t in ("alpha", "beta") for r in ("ok", "error"))
          and all(exposed(metrics, "loragate_adapter_evictions_total", tenant=t) == 0 for t in ("alpha", "beta")))
    load_count = f'sum(loragate_adapter_load_duration_seconds_count{{tenant="{TENANT}"}})'

    status, body = upload_adapter(TENANT, "a1", ADAPTER_1)
    check("upload of a1 through the admin API answers 201, loaded (warm on upload)",
          status == 201 and isinstance(body, dict) and body.get("resident") is True, (status, body))
    # A scrape between the loads, so that rate() over the load-duration
    # histogram sees an increase (its series appear with the first load).
    check("Prometheus has scraped the first adapter load",
          wait_for(lambda: (scalar(load_count) or 0) >= 1, 20))

    cli = subprocess.run([BIN, "upload", "--url", GATEWAY, "--key", ADMIN_KEY, "--tenant", TENANT,
                          "--name", "a2", "--dir", ADAPTER_2],
                         capture_output=True, text=True, timeout=150)
    check("upload of a2 with `loragate upload` succeeds", cli.returncode == 0,
          (cli.returncode, (cli.stdout + cli.stderr)[-400:]))
    a1, a2 = admin_get(f"/admin/v1/tenants/{TENANT}/adapters/a1"), admin_get(f"/admin/v1/tenants/{TENANT}/adapters/a2")
    check("a2 is resident and a1 was evicted (max_resident = 1)",
          a1[0] == 200 and a2[0] == 200 and a2[1].get("resident") is True and a1[1].get("resident") is False,
          (a1, a2))
    check("Prometheus has scraped the second adapter load",
          wait_for(lambda: (scalar(load_count) or 0) >= 2, 20))

    # The generation slot may still be settling after the last stream.
    for attempt in range(40):
        status, text = chat(KEY, model="a1")
        if status != 503:
            break
        time.sleep(0.1)
    check("chat with the evicted adapter a1 answers 200 (cold reload)"
          + (f" after {attempt} refusals while the slot settled" if attempt else ""),
          status == 200, (status, text[:300]))
    a1, a2 = admin_get(f"/admin/v1/tenants/{TENANT}/adapters/a1"), admin_get(f"/admin/v1/tenants/{TENANT}/adapters/a2")
    check("a1 is resident again and a2 was evicted",
          a1[0] == 200 and a2[0] == 200 and a1[1].get("resident") is True and a2[1].get("resident") is False,
          (a1, a2))

    metrics = get("/metrics")[1]
    for family, labels, expected in (
        ("loragate_adapter_loads_total", {"tenant": TENANT, "result": "ok"}, 3),
        ("loragate_adapter_loads_total", {"tenant": TENANT, "result": "error"}, 0),
        ("loragate_adapter_evictions_total", {"tenant": TENANT}, 2),
        ("loragate_adapter_load_duration_seconds_count", {"tenant": TENANT}, 3),
        ("loragate_adapter_loads_total", {"tenant": "beta", "result": "ok"}, 0),
        ("loragate_adapter_evictions_total", {"tenant": "beta"}, 0),
        ("loragate_adapters_resident", {}, 1),
    ):
        value = exposed(metrics, family, **labels)
        selector = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        check(f"/metrics {family}{{{selector}}} == {expected} (is {value})", value == expected)
    value = exposed(metrics, "loragate_adapters_resident_bytes")
    check(f"/metrics loragate_adapters_resident_bytes > 0 (is {value})", value is not None and value > 0)

    status, text = chat(KEY, model="no-such-model")
    check("unknown model answers 404", status == 404 and "model_not_found" in text, status)
    check("bad key answers 401", chat("lg-not-a-real-key")[0] == 401)
    check("missing key answers 401", chat(None)[0] == 401)
    limited = [chat(LIMITED_KEY)[0] for _ in range(3)]
    check("tenant over requests_per_minute = 2 gets 429", limited == [200, 200, 429], limited)

    # A long stream holds the only generation slot (max_in_flight = 1,
    # max_queued = 0): the next request is refused; then its client goes away.
    held, head = open_stream(KEY)
    check("held stream started", head.startswith(b"HTTP/1.1 200"), head[:40])
    status, text = chat(KEY)
    check("request while the slot is held answers 503 (queue full)",
          status == 503 and "server_overloaded" in text, status)
    held.close()
    # Accounted once the generation notices the disconnect (before the label-bound
    # check, so that no series appears while it counts).
    check("the abandoned stream is counted as cancelled",
          wait_for(lambda: 'reason="cancelled"' in get("/metrics")[1], 10))
    time.sleep(0.5)

    # --------------------------------------------------------------- 2. label bounds
    class Client:
        """Keep-alive requests, reconnecting if the server closes the connection."""

        def __init__(self):
            self.conn = connection()

        def status(self, key, model=MODEL):
            for attempt in range(2):
                try:
                    return chat(key, model=model, conn=self.conn)[0]
                except (http.client.HTTPException, ConnectionError):
                    self.conn.close()
                    self.conn = connection()
            return None


    before = get("/metrics")[1]
    client = Client()
    unknown_models = [client.status(KEY, model=f"no-such-model-{i:04d}") for i in range(1000)]
    bad_keys = [client.status(f"lg-bogus-{i:04d}") for i in range(200)]
    client.conn.close()
    after = get("/metrics")[1]
    check("1,000 distinct unknown models all answer 404", set(unknown_models) == {404}, set(unknown_models))
    check("200 distinct bad keys all answer 401", set(bad_keys) == {401}, set(bad_keys))
    for family in ("loragate_http_requests_total", "loragate_requests_finished_total", "loragate_auth_failures_total"):
        b, a = len(series_lines(before, family)), len(series_lines(after, family))
        check(f"{family}: series count unchanged by them ({b} -> {a})", a == b and a > 0)
    b, a = len(series_lines(before)), len(series_lines(after))
    check(f"whole exposition: series count unchanged ({b} -> {a})", a == b)
    check("no client-chosen model name or key appears in /metrics",
          "no-such-model" not in after and "lg-bogus" not in after)


    # Prometheus must have scraped everything above at least twice (rate() needs two samples).
    check("Prometheus has scraped the traffic",
          wait_for(lambda: (scalar('sum(loragate_http_requests_total{status="404"})') or 0) >= 1001, 20))
    time.sleep(2.5)

    # --------------------------------------------------- 3. dashboard and alert PromQL
    def substitute(expr):
        for variable, value in SUBSTITUTIONS.items():
            expr = expr.replace(variable, value)
        return expr


    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/loragate.json").read_text())
    exprs = []  # (panel title, expression)


    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))


    walk(dashboard.get("panels", []))
    variable_values = {}
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q or "")
        expr = f"count by ({m[2]}) ({m[1]})" if m else q
        exprs.append((f"variable ${v['name']}", expr))
        if m:
            variable_values[v["name"]] = m[2]

    check("dashboard has expressions to check", len(exprs) > 30, len(exprs))
    for title, expr in exprs:
        promql = substitute(expr)
        leftover = re.findall(r"\$\{?\w+", promql)
        if leftover:
            check(f"[{title}] no unknown Grafana variable", False, leftover)
            continue
        answer = query(promql)
        if not check(f"[{title}] parses: {expr[:90]}", answer.get("status") == "success",
                     answer.get("error", answer)):
            continue
        result = answer["data"]["result"]
        check(f"[{title}] returns data", len(result) > 0, "empty result")
        if title in MUST_BE_NUMBERS and result:
            values = [float(r["value"][1]) for r in result]
            check(f"[{title}] is a number, not NaN", all(math.isfinite(v) for v in values), values)
        if title.startswith("variable $") and variable_values:
            label = variable_values.get(title.split("$", 1)[1])
            values = sorted(r["metric"].get(label, "") for r in result)
            check(f"[{title}] lists both tenants", {"alpha", "beta"} <= set(values), values)

    missing_titles = MUST_BE_NUMBERS - {t for t, _ in exprs}
    check("MUST_BE_NUMBERS names existing panels", not missing_titles, missing_titles)

    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alert_count = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            alert_count += 1
            answer = query(rule["expr"])
            check(f"[alert {rule['alert']}] parses and evaluates", answer.get("status") == "success",
                  answer.get("error", answer))


    def rules_evaluated():
        data = prom("/api/v1/rules").get("data", {}).get("groups", [])
        loaded = [r for g in data for r in g["rules"]]
        evaluated = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in loaded)
        return len(loaded) == alert_count and evaluated, loaded


    wait_for(lambda: rules_evaluated()[0], 10)
    done, loaded = rules_evaluated()
    unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r.get("health") != "ok"]
    check(f"Prometheus loaded alerts.yml ({len(loaded)}/{alert_count} rules) and evaluates them healthily",
          done and not unhealthy, unhealthy or f"{len(loaded)} rules loaded")

    # ------------------------------------------------------- 4. the numbers make sense
    sanity = {
        'sum(loragate_ratelimit_rejections_total{tenant="beta", limit="requests"})': 1,
        'sum(loragate_admission_rejections_total{reason="queue_full"})': 1,
        'sum(loragate_requests_finished_total{tenant="alpha", reason="cancelled"})': 1,
        'sum(loragate_requests_finished_total{tenant="alpha", reason=~"stop|length"})': 6,
        'sum(loragate_auth_failures_total)': 202,
        'sum(loragate_ratelimit_redis_fallbacks_total{policy="fail_open"})': 3,
        'sum(loragate_redis_errors_total)': 3,
        'sum(loragate_completion_tokens_total{tenant="alpha"})': 6,
        'sum(loragate_time_to_first_token_seconds_count{tenant="alpha", model="tiny"})': 6,
        'sum(loragate_http_requests_total{route="/v1/chat/completions", status="404"})': 1001,
        'count(count by (status) (loragate_http_requests_total{route="/v1/chat/completions", status=~"200|401|404|429|503"}))': 5,
        'sum(loragate_requests_finished_total{tenant="alpha", model="a1", reason=~"stop|length"})': 1,
        'sum(loragate_adapters_resident_bytes)': 1,
    }
    for expr, minimum in sanity.items():
        value = scalar(expr)
        check(f"{expr} >= {minimum} (is {value})", value is not None and value >= minimum)
    exact = {
        'sum(loragate_adapter_loads_total{tenant="alpha", result="ok"})': 3,
        'sum(loragate_adapter_loads_total{tenant="alpha", result="error"})': 0,
        'sum(loragate_adapter_evictions_total{tenant="alpha"})': 2,
        'sum(loragate_adapter_load_duration_seconds_count{tenant="alpha"})': 3,
        'sum(loragate_adapter_loads_total{tenant="beta"})': 0,
        'sum(loragate_adapters_resident)': 1,
    }
    for expr, expected in exact.items():
        value = scalar(expr)
        check(f"{expr} == {expected} (is {value})", value == expected)



try:
    main()
except Exception:  # noqa: BLE001 - any crash is one failure, reported
    import traceback

    check("the checks ran to the end", False, traceback.format_exc())
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
