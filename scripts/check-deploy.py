#!/usr/bin/env python3
"""Static checks of deploy/ that need no cluster, Docker engine or Grafana
(run by scripts/check-deploy.sh, which adds promtool and `loragate
check-config`). Needs PyYAML.

usage: check-deploy.py ROOT OUT_DIR [RENDERED_BASE.yaml RENDERED_GPU.yaml]

With the two rendered files (from `kubectl kustomize`) the Kubernetes checks
run on exactly what would be applied; without them, on the base files and the
GPU patch as written. Writes OUT_DIR/k8s-LABEL.toml (the ConfigMap's config)
and OUT_DIR/k8s-LABEL.env (the container's environment, Secret values
resolved) for `loragate check-config`. Prints one `ok`/`FAIL` line per check
and, last, `N passed, M failed`; exits 1 on any failure.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(sys.argv[1]).resolve()
DEPLOY = ROOT / "deploy"
OUT_DIR = Path(sys.argv[2])
RENDERED = [Path(p) for p in sys.argv[3:5]]
PORT = 8080
results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        results["passed"] += 1
        print(f"ok   {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name}{': ' + detail if detail else ''}")
    return condition


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ------------------------------------------------------------ metric families
def known_metrics():
    """Series names the gateway exports, read from src/metrics.rs."""
    source = (ROOT / "src" / "metrics.rs").read_text()
    names = set()
    for kind, name in re.findall(r'\b(counter|histogram|gauge|opts)\(\s*"([a-z_]+)"', source):
        full = f"loragate_{name}"
        names.add(full)
        if kind == "histogram":
            names.update(f"{full}_{s}" for s in ("bucket", "sum", "count"))
    # The one label-less histogram is built with HistogramOpts::from(opts(..)).
    for name in re.findall(r'HistogramOpts::from\(opts\(\s*"([a-z_]+)"', source):
        names.update(f"loragate_{name}_{s}" for s in ("bucket", "sum", "count"))
    names.update(
        f"process_{n}"
        for n in ("cpu_seconds_total", "open_fds", "max_fds", "virtual_memory_bytes",
                  "resident_memory_bytes", "start_time_seconds", "threads")
    )
    names.add("up")
    return names


METRICS = known_metrics()
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "and", "on", "or", "vector", "time", "min",
    "max", "avg", "count", "without", "ignoring", "group_left", "group_right", "le", "unless", "bool",
    "offset", "absent", "irate", "delta", "topk", "bottomk", "label_values", "clamp_min", "clamp_max",
}


def metric_names(expr):
    """Identifiers in a PromQL expression that look like metric names."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # and matchers
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)  # and ranges
    stripped = re.sub(r"\((?:by|on|without|ignoring)?\s*\)", "()", stripped)
    stripped = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", stripped)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+(e\d+)?", w)}


# -------------------------------------------------------------------- Grafana
def dashboard_exprs(dashboard):
    panels = []

    def walk(items):
        for p in items:
            panels.append(p)
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return panels


def check_grafana():
    path = DEPLOY / "grafana" / "dashboards" / "loragate.json"
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        check("dashboard JSON parses", False, str(e))
        return
    check("dashboard JSON parses", True)
    check("dashboard schemaVersion >= 38", dashboard.get("schemaVersion", 0) >= 38,
          str(dashboard.get("schemaVersion")))
    check("dashboard has a uid and a title", bool(dashboard.get("uid")) and bool(dashboard.get("title")))
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    tenant = variables.get("tenant", {})
    query = tenant.get("query")
    query = query.get("query") if isinstance(query, dict) else query
    check("tenant variable: label_values(loragate_prompt_tokens_total, tenant), multi, include all",
          query == "label_values(loragate_prompt_tokens_total, tenant)"
          and tenant.get("multi") is True and tenant.get("includeAll") is True, json.dumps(tenant)[:200])
    ds = variables.get("datasource", {})
    check("datasource variable of type prometheus",
          ds.get("type") == "datasource" and ds.get("query") == "prometheus")

    panels = dashboard_exprs(dashboard)
    ids = [p.get("id") for p in panels]
    check("panel ids are unique", len(ids) == len(set(ids)), str(ids))
    boxes = []
    bad_grid = []
    for p in panels:
        g = p.get("gridPos", {})
        if not all(k in g for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
            bad_grid.append(p.get("title"))
        else:
            boxes.append((p.get("title"), g))
    check("every panel has a gridPos inside 24 columns", not bad_grid, str(bad_grid))
    overlaps = [
        (a, b)
        for i, (a, ga) in enumerate(boxes)
        for b, gb in boxes[i + 1:]
        if ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
        and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]
    ]
    check("no two panels overlap", not overlaps, str(overlaps[:3]))

    no_ds, no_targets, bad_windows, unknown = [], [], [], []
    for p in panels:
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") not in ("${datasource}", "prometheus"):
            no_ds.append(p.get("title"))
        targets = p.get("targets", [])
        if not targets or not all(t.get("expr") for t in targets):
            no_targets.append(p.get("title"))
        for t in targets:
            if t.get("datasource", {}).get("uid") not in ("${datasource}", "prometheus"):
                no_ds.append(p.get("title"))
            expr = t.get("expr", "")
            for window in re.findall(r"\[([^\]]*)\]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
                if window != "$__rate_interval":
                    bad_windows.append(f"{p.get('title')}: [{window}]")
            for name in metric_names(expr.replace("$", "")):
                if name not in METRICS:
                    unknown.append(f"{p.get('title')}: {name}")
    check("every panel uses the datasource variable", not no_ds, str(no_ds))
    check("every panel has PromQL targets", not no_targets, str(no_targets))
    check("every range window is $__rate_interval", not bad_windows, str(bad_windows))
    check("every metric in the dashboard is exported by src/metrics.rs", not unknown, str(unknown))
    titles = " | ".join(p.get("title", "") for p in panels).lower()
    wanted = ["request", "latency", "time to first token", "inter-token", "prompt tokens", "completion tokens",
              "finished", "queue depth", "queue wait", "rate-limit", "auth failures", "redis errors",
              "redis fallbacks", "resident adapters", "adapter loads", "adapter evictions",
              "adapter load failures", "build"]
    missing = [w for w in wanted if w not in titles]
    check("dashboard covers every required panel", not missing, str(missing))

    ds_file = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    try:
        datasources = yaml.safe_load(ds_file.read_text())["datasources"]
        check("Grafana datasource provisioning: uid prometheus",
              any(d.get("uid") == "prometheus" and d.get("type") == "prometheus" for d in datasources))
    except Exception as e:  # noqa: BLE001 - report any malformed file
        check("Grafana datasource provisioning parses", False, str(e))
    prov_file = DEPLOY / "grafana" / "provisioning" / "dashboards" / "loragate.yml"
    try:
        providers = yaml.safe_load(prov_file.read_text())["providers"]
        check("Grafana dashboard provisioning parses", bool(providers))
        return providers[0]["options"]["path"]
    except Exception as e:  # noqa: BLE001
        check("Grafana dashboard provisioning parses", False, str(e))


# ----------------------------------------------------------------- Prometheus
def check_alert_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    unknown, unlabelled = [], []
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                if name not in METRICS:
                    unknown.append(f"{rule.get('alert')}: {name}")
            labels = rule.get("labels", {})
            if labels.get("severity") not in ("critical", "warning", "info") or not rule.get("annotations", {}).get("summary"):
                unlabelled.append(rule.get("alert"))
    check("every metric in alerts.yml is exported by src/metrics.rs", not unknown, str(unknown))
    check("every alert has a severity and a summary", not unlabelled, str(unlabelled))


# -------------------------------------------------------------------- compose
def check_compose(grafana_dashboards_path):
    path = DEPLOY / "docker-compose.yml"
    try:
        compose = yaml.safe_load(path.read_text())
    except Exception as e:  # noqa: BLE001
        check("docker-compose.yml parses", False, str(e))
        return
    check("docker-compose.yml parses", True)
    services = compose.get("services", {})
    check("compose services: gateway, redis, prometheus, grafana",
          {"gateway", "redis", "prometheus", "grafana"} <= set(services), str(list(services)))
    named = set((compose.get("volumes") or {}).keys())
    missing_sources, undeclared = [], []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                if not (DEPLOY / source).resolve().exists():
                    missing_sources.append(f"{name}: {source}")
            elif source not in named:
                undeclared.append(f"{name}: {source}")
        for dep in service.get("depends_on", []) or []:
            if dep not in services:
                undeclared.append(f"{name}: depends_on {dep}")
    check("compose bind mounts exist", not missing_sources, str(missing_sources))
    check("compose named volumes and dependencies are declared", not undeclared, str(undeclared))
    gateway = services.get("gateway", {})
    test = " ".join(gateway.get("healthcheck", {}).get("test", []))
    check("gateway healthcheck probes /health and /ready", "/health" in test and "/ready" in test, test)
    mounts = gateway.get("volumes", [])
    check("adapters on a named volume at /app/adapters",
          any(v.split(":")[0] in named and v.split(":")[1] == "/app/adapters" for v in mounts), str(mounts))
    build = gateway.get("build", {})
    dockerfile = (DEPLOY / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
    check("gateway build dockerfile exists", dockerfile.is_file(), str(dockerfile))
    check("gateway port 8080 published on loopback",
          any(str(p).startswith("127.0.0.1:") and str(p).endswith(f":{PORT}") for p in gateway.get("ports", [])))
    prom = services.get("prometheus", {})
    prom_mounts = " ".join(prom.get("volumes", []))
    check("prometheus mounts prometheus.yml and alerts.yml",
          "prometheus/prometheus.yml:" in prom_mounts and "prometheus/alerts.yml:" in prom_mounts, prom_mounts)
    graf_mounts = " ".join(services.get("grafana", {}).get("volumes", []))
    check("grafana mounts provisioning and the dashboards where the provider looks",
          "grafana/provisioning:/etc/grafana/provisioning" in graf_mounts
          and f"grafana/dashboards:{grafana_dashboards_path}" in graf_mounts, graf_mounts)
    prom_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom_config["scrape_configs"] if job["job_name"] == "loragate"
               for sc in job.get("static_configs", []) for t in sc["targets"]]
    check("prometheus.yml scrapes the gateway service every 15s",
          f"gateway:{PORT}" in targets and prom_config["global"]["scrape_interval"] == "15s", str(targets))
    check_compose_scrape_token(compose, gateway, prom, prom_config)
    try:
        gpu = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text())
        g = gpu["services"]["gateway"]
        devices = g["deploy"]["resources"]["reservations"]["devices"]
        check("GPU compose override: Dockerfile.cuda and one nvidia device",
              (ROOT / g["build"]["dockerfile"]).is_file() and devices[0]["driver"] == "nvidia")
    except Exception as e:  # noqa: BLE001
        check("GPU compose override parses", False, str(e))


def check_compose_scrape_token(compose, gateway, prom, prom_config):
    """/metrics needs the token named in container.toml; the gateway gets it
    from the environment and Prometheus the same value as a secret file."""
    container = tomllib.loads((DEPLOY / "config" / "container.toml").read_text())
    variable = container.get("metrics", {}).get("bearer_token_env")
    check("container.toml: authentication on, /metrics behind metrics.bearer_token_env",
          container.get("auth", {}).get("enabled") is True and bool(variable), str(variable))
    env = gateway.get("environment", {})
    check(f"compose gateway gets {variable} and admin key hashes from the environment",
          variable in env and "LORAGATE__AUTH__ADMIN_API_KEYS" in env, str(list(env)))
    secrets = compose.get("secrets") or {}
    from_env = [name for name, s in secrets.items() if s.get("environment") == variable]
    mounted = [name for name in prom.get("secrets", []) if name in from_env]
    job = next((j for j in prom_config["scrape_configs"] if j["job_name"] == "loragate"), {})
    credentials = job.get("authorization", {}).get("credentials_file", "")
    check("Prometheus scrapes the gateway with the same token (a compose secret from that variable)",
          bool(mounted) and credentials == f"/run/secrets/{mounted[0]}"
          and job.get("authorization", {}).get("type", "Bearer") == "Bearer", f"{mounted} {credentials}")


# ---------------------------------------------------------------- Dockerfiles
def check_dockerfile(name, features=None):
    path = DEPLOY / name
    text = path.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)
    froms = re.findall(r"--from=(\S+)", text)
    check(f"{name}: every --from names a stage", all(f in stages for f in froms), f"{froms} vs {stages}")
    sources = []
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        sources += parts[:-1]
    missing = [s for s in sources if not (ROOT / s).exists()]
    check(f"{name}: COPY sources exist in the build context", not missing, str(missing))
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    clash = [s for s in sources if any(s.rstrip("/") == i.strip("/") for i in ignored)]
    check(f"{name}: .dockerignore keeps the COPY sources", not clash, str(clash))
    check(f"{name}: exposes {PORT}, runs as non-root, health-checks /ready",
          f"EXPOSE {PORT}" in text and re.search(r"^USER\s+(?!root)", text, re.M) and "/ready" in text)
    check(f"{name}: builds --locked --release", "cargo build --release --locked" in text)
    if features:
        check(f"{name}: builds with --features {features}", f"--features {features}" in text)
    check(f"{name}: runtime has ca-certificates", "ca-certificates" in text)


# ----------------------------------------------------------------- Kubernetes
def k8s_documents():
    if RENDERED:
        return [load_yaml_docs(p) for p in RENDERED]
    base_dir = DEPLOY / "kubernetes" / "base"
    kustomization = yaml.safe_load((base_dir / "kustomization.yaml").read_text())
    base = [d for r in kustomization["resources"] for d in load_yaml_docs(base_dir / r)]
    # What kustomize's `labels` transformer would add.
    for entry in kustomization.get("labels", []):
        pairs = entry.get("pairs", {})
        for d in base:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if not entry.get("includeSelectors"):
                continue
            if d.get("kind") == "Deployment":
                d["spec"]["selector"]["matchLabels"].update(pairs)
                d["spec"]["template"]["metadata"].setdefault("labels", {}).update(pairs)
            elif d.get("kind") == "Service":
                d["spec"].setdefault("selector", {}).update(pairs)
    return [base, None]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def check_k8s_set(label, docs):
    bad = [d for d in docs if not (d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"))]
    check(f"k8s {label}: every document has apiVersion, kind, metadata.name", not bad, str(bad)[:200])
    kinds = {d["kind"] for d in docs}
    want = {"Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceMonitor"}
    check(f"k8s {label}: has {', '.join(sorted(want))}", want <= kinds, str(kinds))
    deployments = by_kind(docs, "Deployment")
    if not deployments:
        return None
    dep = deployments[0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    check(f"k8s {label}: Deployment selector matches its pod labels",
          all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()))
    c = pod["spec"]["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check(f"k8s {label}: container port http = {PORT}", ports.get("http") == PORT, str(ports))

    def probe(name):
        return c.get(name, {}).get("httpGet", {})

    def port_ok(p):
        return p.get("port") in ("http", PORT)

    check(f"k8s {label}: readinessProbe GET /ready on {PORT}", probe("readinessProbe").get("path") == "/ready"
          and port_ok(probe("readinessProbe")))
    check(f"k8s {label}: livenessProbe GET /health on {PORT}", probe("livenessProbe").get("path") == "/health"
          and port_ok(probe("livenessProbe")))
    res = c.get("resources", {})
    check(f"k8s {label}: resources requests and limits", bool(res.get("requests")) and bool(res.get("limits")))
    env = {e["name"]: e for e in c.get("env", [])}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    ref = env.get("LORAGATE_JWT_SECRET", {}).get("valueFrom", {}).get("secretKeyRef", {})
    secret = secrets.get(ref.get("name"), {})
    check(f"k8s {label}: LORAGATE_JWT_SECRET from a Secret that has the key",
          ref.get("key") in {**secret.get("stringData", {}), **secret.get("data", {})}, str(ref))
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else ""
    cm_volume = volumes.get(mounts.get(str(Path(config_path).parent), ""), {})
    cm = configmaps.get(cm_volume.get("configMap", {}).get("name"), {})
    check(f"k8s {label}: --config file comes from a ConfigMap that has it",
          Path(config_path).name in cm.get("data", {}), config_path)
    pvcs = {d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
    adapters = volumes.get(mounts.get("/app/adapters", ""), {})
    check(f"k8s {label}: /app/adapters on the PersistentVolumeClaim",
          adapters.get("persistentVolumeClaim", {}).get("claimName") in pvcs, str(adapters))
    for svc in by_kind(docs, "Service"):
        sel = svc["spec"].get("selector", {})
        check(f"k8s {label}: Service {svc['metadata']['name']} selects the pods",
              sel and all(labels.get(k) == v for k, v in sel.items()), str(sel))
        check(f"k8s {label}: Service targets the http port",
              all(p.get("targetPort") in ("http", PORT) for p in svc["spec"]["ports"]))
    # /metrics needs the token named in the ConfigMap; the pod and the
    # ServiceMonitor read it from the same Secret key.
    config_toml = tomllib.loads(cm.get("data", {}).get(Path(config_path).name, "") or "")
    variable = config_toml.get("metrics", {}).get("bearer_token_env", "")
    token_ref = env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef", {})
    token_secret = secrets.get(token_ref.get("name"), {})
    check(f"k8s {label}: /metrics needs a token ({variable or 'metrics.bearer_token_env unset'}) from a Secret that has it",
          bool(variable) and token_ref.get("key") in {**token_secret.get("stringData", {}), **token_secret.get("data", {})},
          str(token_ref))
    annotations = pod["metadata"].get("annotations", {}) or {}
    check(f"k8s {label}: no prometheus.io/scrape annotation (it cannot send the token)",
          "prometheus.io/scrape" not in annotations, str(annotations))
    for sm in by_kind(docs, "ServiceMonitor"):
        match = sm["spec"]["selector"].get("matchLabels", {})
        services = [s for s in by_kind(docs, "Service")
                    if all(s["metadata"].get("labels", {}).get(k) == v for k, v in match.items())]
        port_names = {p.get("name") for s in services for p in s["spec"]["ports"]}
        check(f"k8s {label}: ServiceMonitor selects a Service and scrapes /metrics on its port",
              bool(services) and all(e.get("port") in port_names and e.get("path", "/metrics") == "/metrics"
                                      for e in sm["spec"]["endpoints"]), str(match))
        auth = [e.get("authorization", {}) for e in sm["spec"]["endpoints"]]
        check(f"k8s {label}: ServiceMonitor sends the pod's scrape token from the same Secret key",
              all(a.get("type", "Bearer") == "Bearer"
                  and a.get("credentials", {}).get("name") == token_ref.get("name")
                  and a.get("credentials", {}).get("key") == token_ref.get("key") for a in auth) and bool(auth),
              str(auth))
    # For `loragate check-config` in check-deploy.sh: the config and the env.
    lines = []
    for name, e in env.items():
        if "value" in e:
            lines.append(f"{name}={e['value']}")
        elif "secretKeyRef" in e.get("valueFrom", {}):
            r = e["valueFrom"]["secretKeyRef"]
            lines.append(f"{name}={secrets.get(r['name'], {}).get('stringData', {}).get(r['key'], '')}")
    slug = label.split()[0]
    (OUT_DIR / f"k8s-{slug}.toml").write_text(cm.get("data", {}).get(Path(config_path).name, ""))
    (OUT_DIR / f"k8s-{slug}.env").write_text("\n".join(lines) + "\n")


def check_k8s():
    base, gpu = k8s_documents()
    check_k8s_set("base", base)
    if gpu is not None:
        check_k8s_set("gpu overlay", gpu)
        c = by_kind(gpu, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        check("k8s gpu overlay: nvidia.com/gpu: 1, CUDA image, device cuda",
              str(c["resources"]["limits"].get("nvidia.com/gpu")) == "1" and c["image"].endswith(":cuda")
              and env.get("LORAGATE__MODEL__DEVICE") == "cuda", json.dumps(c["resources"]))
    else:
        gpu_dir = DEPLOY / "kubernetes" / "overlays" / "gpu"
        k = yaml.safe_load((gpu_dir / "kustomization.yaml").read_text())
        patch = yaml.safe_load((gpu_dir / k["patches"][0]["path"]).read_text())
        c = patch["spec"]["template"]["spec"]["containers"][0]
        base_names = {d["metadata"]["name"] for d in by_kind(base, "Deployment")}
        check("k8s gpu overlay (unrendered): patch targets the base Deployment, asks nvidia.com/gpu: 1",
              patch["metadata"]["name"] in base_names and str(c["resources"]["limits"].get("nvidia.com/gpu")) == "1")


def main():
    check("metric families read from src/metrics.rs", len([m for m in METRICS if m.startswith("loragate_")]) >= 20,
          "the counter(\"name\", ...) pattern no longer matches; update known_metrics()")
    def section(name, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a malformed or missing file is one failure
            check(f"{name} checks ran", False, f"{type(e).__name__}: {e}")

    dashboards_path = section("Grafana", check_grafana)
    section("alert", check_alert_metrics)
    section("compose", check_compose, dashboards_path or "/etc/grafana/dashboards")
    section("Dockerfile", check_dockerfile, "Dockerfile")
    section("Dockerfile.cuda", check_dockerfile, "Dockerfile.cuda", features="cuda")
    section("Kubernetes", check_k8s)
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
