#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/loragate.json, the Grafana dashboard.

The JSON is committed (Grafana provisioning reads it); this script is its
source, so panels are reviewed as PromQL rather than as layout noise:

    python3 deploy/grafana/dashboard.py          # rewrite the JSON
    python3 deploy/grafana/dashboard.py --check  # fail if the JSON drifted

Every rate() window is $__rate_interval; per-tenant panels filter on the
`tenant` variable (multi-value, "All" = `.*`). scripts/observability-test.sh
evaluates every expression here against a live gateway.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "loragate.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
# Probes and scrapes are left out of request rates and error ratios.
API = 'route!~"/metrics|/health|/ready"'
TENANT = 'tenant=~"$tenant"'
ERROR = 'result="error"'


def sel(metric: str, *matchers: str) -> str:
    """`metric{m1, m2}` (just `metric` without matchers)."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(selector: str) -> str:
    return f"rate({selector}[{RI}])"


def quantiles(metric: str, by: str, *matchers: str, qs=(0.5, 0.95, 0.99)):
    """p50/p95/p99 of a histogram, one target each, legend `pNN {{by}}`."""
    group = f"le, {by}" if by else "le"
    targets = []
    for q in qs:
        name = f"p{q * 100:g}"
        legend = f"{name} {{{{{by}}}}}" if by else name
        expr = f"histogram_quantile({q}, sum by ({group}) ({rate(sel(metric + '_bucket', *matchers))}))"
        targets.append((expr, legend))
    return targets


class Layout:
    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def _id(self):
        self.next_id += 1
        return self.next_id - 1

    def row(self, title):
        if self.x:
            self.y += self.row_height
        self.x, self.row_height = 0, 0
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _targets(self, targets, instant=False, fmt="time_series"):
        out = []
        for i, (expr, legend) in enumerate(targets):
            out.append(
                {
                    "datasource": DS,
                    "editorMode": "code",
                    "expr": expr,
                    "legendFormat": legend,
                    "range": not instant,
                    "instant": instant,
                    "format": fmt,
                    "refId": chr(ord("A") + i),
                }
            )
        return out

    def timeseries(self, title, description, targets, unit, w=8, h=8, stack=False, bars=False):
        self.panels.append(
            {
                "type": "timeseries",
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": self._place(w, h),
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "min": 0,
                        "color": {"mode": "palette-classic"},
                        "custom": {
                            "drawStyle": "bars" if bars else "line",
                            "lineWidth": 1,
                            "fillOpacity": 20 if stack else 10,
                            "showPoints": "never",
                            "spanNulls": False,
                            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                        },
                    },
                    "overrides": [],
                },
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": self._targets(targets),
            }
        )

    def stat(self, title, description, expr, unit, w=4, h=4, thresholds=None, legend=""):
        steps = [{"color": "green", "value": None}] + [
            {"color": color, "value": value} for value, color in (thresholds or [])
        ]
        self.panels.append(
            {
                "type": "stat",
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": self._place(w, h),
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "color": {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": steps},
                    },
                    "overrides": [],
                },
                "options": {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value",
                    "graphMode": "area",
                    "justifyMode": "auto",
                    "textMode": "auto",
                    "orientation": "auto",
                },
                "targets": self._targets([(expr, legend)]),
            }
        )

    def table(self, title, description, expr, w=8, h=4):
        self.panels.append(
            {
                "type": "table",
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": self._place(w, h),
                "fieldConfig": {"defaults": {}, "overrides": []},
                "options": {"showHeader": True, "cellHeight": "sm"},
                "transformations": [
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True, "Value": True, "__name__": True},
                            "indexByName": {"instance": 0, "version": 1, "engine": 2, "cuda": 3},
                        },
                    }
                ],
                "targets": self._targets([(expr, "")], instant=True, fmt="table"),
            }
        )


def build():
    d = Layout()
    api_total = f"sum({rate(sel('loragate_http_requests_total', API))})"

    def ratio(status):
        matcher = 'status=~"%s"' % status
        errors = "sum(%s)" % rate(sel("loragate_http_requests_total", API, matcher))
        return f"({errors} or vector(0)) / {api_total}"

    # ---------------------------------------------------------------- overview
    d.row("Overview")
    d.stat("Request rate", "API requests per second (probes and scrapes excluded).", api_total, "reqps")
    d.stat("5xx ratio", "Share of API requests answered 5xx.", ratio("5.."), "percentunit",
           thresholds=[(0.01, "orange"), (0.05, "red")])
    d.stat("Completion tokens/s", "Completion tokens delivered per second (selected tenants).",
           f"sum({rate(sel('loragate_completion_tokens_total', TENANT))})", "short")
    d.stat("Queue depth", "Requests waiting for a generation slot.",
           "sum(loragate_admission_queue_depth)", "short", thresholds=[(1, "orange"), (32, "red")])
    d.stat("Uptime", "Since the youngest gateway process started.",
           "min(time() - (process_start_time_seconds and on (instance, job) loragate_build_info))", "s")
    d.table("Build", "loragate_build_info of every scraped gateway: version, engine, CUDA build.",
            "loragate_build_info", w=4)

    # ------------------------------------------------------ traffic and errors
    d.row("Traffic and errors")
    d.timeseries("Requests by route and status", "HTTP requests per second by route pattern and status.",
                 [(f"sum by (route, status) ({rate('loragate_http_requests_total')})", "{{route}} {{status}}")],
                 "reqps", stack=True)
    d.timeseries("Error ratio (4xx, 5xx)", "Share of API requests answered 4xx and 5xx.",
                 [(ratio("4.."), "4xx"), (ratio("5.."), "5xx")], "percentunit")
    d.timeseries("Errors by status", "4xx and 5xx per second: 401 auth, 404 unknown model, 429 tenant limit, 503 overload.",
                 [("sum by (status) (%s)" % rate(sel("loragate_http_requests_total", 'status=~"[45].."')), "{{status}}")],
                 "reqps", stack=True)
    d.timeseries("HTTP latency p50/p95/p99", "Until the response head (the first event for streams), by route.",
                 quantiles("loragate_http_request_duration_seconds", "route", API), "s", w=16)
    d.timeseries("HTTP requests in flight", "Requests being served (streams included).",
                 [("sum(loragate_http_requests_in_flight)", "in flight")], "short")

    # ------------------------------------------------------ inference latency
    d.row("Inference latency")
    d.timeseries("Time to first token p50/p95/p99", "From admission to the first generated text, by model.",
                 quantiles("loragate_time_to_first_token_seconds", "model", TENANT), "s")
    d.timeseries("Inter-token latency p50/p95/p99", "Between consecutive text deltas of one generation, by model.",
                 quantiles("loragate_inter_token_latency_seconds", "model", TENANT), "s")
    d.timeseries("Generation duration p50/p95/p99", "From admission to the last token, by model.",
                 quantiles("loragate_generation_duration_seconds", "model", TENANT), "s")

    # ------------------------------------------------------ tokens and outcomes
    d.row("Tokens and outcomes")
    d.timeseries("Prompt tokens/s by tenant", "Prompt tokens of finished and aborted requests.",
                 [(f"sum by (tenant) ({rate(sel('loragate_prompt_tokens_total', TENANT))})", "{{tenant}}")],
                 "short", w=6, stack=True)
    d.timeseries("Completion tokens/s by tenant", "Completion tokens of finished and aborted requests.",
                 [(f"sum by (tenant) ({rate(sel('loragate_completion_tokens_total', TENANT))})", "{{tenant}}")],
                 "short", w=6, stack=True)
    d.timeseries("Engine sampled tokens/s by model",
                 "Tokens sampled inside the engine, delivered or not (all tenants); well above completion tokens/s means cancelled work.",
                 [(f"sum by (model) ({rate('loragate_engine_sampled_tokens_total')})", "{{model}}")], "short", w=6)
    d.timeseries("Finished requests by reason", "Generations per second by outcome: stop, length, cancelled, error.",
                 [(f"sum by (reason) ({rate(sel('loragate_requests_finished_total', TENANT))})", "{{reason}}")],
                 "reqps", w=6, stack=True)

    # ---------------------------------------------------------------- admission
    d.row("Admission")
    d.timeseries("Admission queue depth", "Requests waiting for a generation slot (admission.max_queued caps it).",
                 [("sum(loragate_admission_queue_depth)", "queued")], "short")
    d.timeseries("Queue wait p50/p95", "Time waiting for a generation slot.",
                 quantiles("loragate_queue_wait_seconds", "", qs=(0.5, 0.95)), "s")
    d.timeseries("Admission rejections by reason", "503s from admission control: queue_full, queue_timeout, engine_start_timeout (waiting inside mistral.rs for another cache size).",
                 [(f"sum by (reason) ({rate('loragate_admission_rejections_total')})", "{{reason}}")], "reqps", stack=True)
    d.timeseries("Paged KV: free blocks", "Free blocks of the shared-base engine's paged KV pool (model.paged_attention); near zero means sequences wait for blocks or get preempted.",
                 [("sum(loragate_engine_kv_blocks_free)", "free blocks")], "short", w=12)
    d.timeseries("Paged KV: preemptions/s", "Sequences that gave their KV blocks back to be recomputed because the pool ran out; sustained means the pool (context_tokens) is too small for the load.",
                 [(f"sum({rate('loragate_engine_kv_preemptions_total')})", "preemptions")], "ops", w=12)

    # ------------------------------------------------------------ tenancy, Redis
    d.row("Fair share between tenants")
    d.timeseries("Queued requests by tenant", "Requests of each tenant waiting for a slot. Under fair admission a tenant holds at most its weighted share of a full queue.",
                 [(f"sum by (tenant) ({sel('loragate_tenant_queue_depth', TENANT)})", "{{tenant}}")], "short")
    d.timeseries("Queue wait by tenant (p95)", "How long each tenant's requests waited for a slot; a tenant within its share should not wait behind another's burst.",
                 quantiles("loragate_tenant_queue_wait_seconds", "tenant", TENANT, qs=(0.95,)), "s")
    d.timeseries("Admitted requests by tenant", "Generations started per second by tenant: under contention their ratio follows the tenants' weights.",
                 [(f"sum by (tenant) ({rate(sel('loragate_tenant_queue_wait_seconds_count', TENANT))})", "{{tenant}}")], "reqps")
    d.row("Tenancy, limits and Redis")
    d.timeseries("Rate-limit rejections by tenant and limit", "429s by tenant and limit (requests, tokens, concurrency).",
                 [(f"sum by (tenant, limit) ({rate(sel('loragate_ratelimit_rejections_total', TENANT))})", "{{tenant}} {{limit}}")],
                 "reqps", w=6, stack=True)
    d.timeseries("Auth failures by reason", "Refused credentials (401/403) by reason.",
                 [(f"sum by (reason) ({rate('loragate_auth_failures_total')})", "{{reason}}")], "reqps", w=6, stack=True)
    d.timeseries("Redis errors by operation", "Failed or timed-out Redis calls; any sustained rate means degraded limits.",
                 [(f"sum by (operation) ({rate('loragate_redis_errors_total')})", "{{operation}}")], "ops", w=6)
    d.timeseries("Redis fallbacks by policy",
                 "Limit decisions taken without Redis: fail_open (per-process limits) or fail_closed (503).",
                 [(f"sum by (policy) ({rate('loragate_ratelimit_redis_fallbacks_total')})", "{{policy}}")], "ops", w=6)

    # ----------------------------------------------------------------- adapters
    d.row("Adapters")
    d.timeseries("Resident adapters", "LoRA adapters loaded in the engine.",
                 [("sum(loragate_adapters_resident)", "resident")], "short", w=6)
    d.timeseries("Resident adapter memory", "Estimated memory held by resident adapters.",
                 [("sum(loragate_adapters_resident_bytes)", "bytes")], "bytes", w=6)
    d.timeseries("Adapter loads by result", "Adapter loads per second by tenant and result (ok, error).",
                 [(f"sum by (tenant, result) ({rate(sel('loragate_adapter_loads_total', TENANT))})", "{{tenant}} {{result}}")],
                 "ops", w=6, stack=True)
    d.timeseries("Adapter load failures", "Failed adapter loads by tenant; the tenant's requests fail while this is non-zero.",
                 [(f"sum by (tenant) ({rate(sel('loragate_adapter_loads_total', TENANT, ERROR))})", "{{tenant}}")],
                 "ops", w=6)
    d.timeseries("Adapter evictions", "Adapters unloaded to stay within the residency budget, by tenant.",
                 [(f"sum by (tenant) ({rate(sel('loragate_adapter_evictions_total', TENANT))})", "{{tenant}}")], "ops", w=12)
    d.timeseries("Adapter load duration p50/p95", "Time to load an adapter into the engine.",
                 quantiles("loragate_adapter_load_duration_seconds", "", TENANT, qs=(0.5, 0.95)), "s", w=12)

    # ----------------------------------------------------------------- upstream
    d.row("Upstream replicas")
    d.timeseries("Replicas in rotation", "1 while a replica passes its health check and is not ejected (with [upstream]).",
                 [("max by (replica) (loragate_upstream_replica_up)", "{{replica}}")], "short", w=8)
    d.timeseries("Upstream requests by replica and outcome",
                 "Requests sent to each replica: ok, refused (failed over), timeout, error (502), rejected (4xx/429).",
                 [(f"sum by (replica, outcome) ({rate('loragate_upstream_requests_total')})", "{{replica}} {{outcome}}")],
                 "reqps", w=8, stack=True)
    d.timeseries("Upstream ejections", "Replicas taken out of rotation after consecutive failed requests.",
                 [(f"sum by (replica) ({rate('loragate_upstream_ejections_total')})", "{{replica}}")], "ops", w=8)

    # ------------------------------------------------------------------ process
    d.row("Process")
    gateway = "and on (instance, job) loragate_build_info"
    d.timeseries("CPU", "CPU seconds per second of each gateway process.",
                 [(f"{rate('process_cpu_seconds_total')} {gateway}", "{{instance}}")], "short")
    d.timeseries("Resident memory", "Resident set size of each gateway process (model weights included).",
                 [(f"process_resident_memory_bytes {gateway}", "{{instance}}")], "bytes")
    d.timeseries("Open file descriptors", "Sockets and files held by each gateway process.",
                 [(f"process_open_fds {gateway}", "{{instance}}")], "short")

    tenant_query = "label_values(loragate_prompt_tokens_total, tenant)"
    return {
        "__inputs": [],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "loragate: OpenAI-compatible multi-tenant LLM gateway over mistral.rs.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": d.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["loragate", "llm"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "skipUrlSync": False,
                },
                {
                    "name": "tenant",
                    "label": "Tenant",
                    "type": "query",
                    "datasource": DS,
                    "definition": tenant_query,
                    "query": {"qryType": 1, "query": tenant_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "options": [],
                    "refresh": 2,
                    "regex": "",
                    "skipUrlSync": False,
                    "sort": 1,
                },
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "loragate",
        "uid": "loragate",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if sys.argv[1:] == ["--check"]:
        if not OUT.is_file() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run python3 deploy/grafana/dashboard.py")
        print(f"{OUT.name}: up to date")
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
