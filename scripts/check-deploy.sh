#!/usr/bin/env bash
# Validates deploy/ without a cluster, a Docker engine or Grafana:
#   - promtool: prometheus.yml, alerts.yml, the alert unit tests
#     (alerts.test.yml), and every dashboard expression parsed as PromQL;
#   - the dashboard JSON is what deploy/grafana/dashboard.py generates;
#   - scripts/check-deploy.py: dashboard structure (variables, datasource,
#     layout, $__rate_interval, metric names against src/metrics.rs), alert
#     metadata, compose file, Dockerfiles, Kubernetes manifests (rendered with
#     `kubectl kustomize` when kubectl is installed, else as written);
#   - `loragate check-config` on every configuration shipped in deploy/ with the
#     environment its deployment sets (when a built gateway binary exists):
#     refused as shipped where the deployment must supply secrets (the
#     Kubernetes Secret's placeholders, compose without a scrape token), and
#     accepted once real random values are supplied.
# Installs promtool (Debian package `prometheus`) and PyYAML (project venv) if
# missing. Idempotent. Prints `N passed, M failed` last; exits 1 on failure.
set -euo pipefail
bin_override="${LORAGATE_BIN:-}"
source "$(dirname "$0")/common.sh"
cd "$ROOT"

passed=0 failed=0 skipped=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "skip $*"; }
run_check() { # NAME COMMAND...: one check, output shown only on failure
  local name=$1 out; shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name"; printf '%s\n' "$out" | sed 's/^/     /'; fi
}
run_refused() { # NAME PATTERN COMMAND...: passes when COMMAND fails saying PATTERN
  local name=$1 pattern=$2 out; shift 2
  if out=$("$@" 2>&1); then fail "$name (was accepted)"
  elif grep -q -- "$pattern" <<<"$out"; then ok "$name"
  else fail "$name (refused for another reason)"; printf '%s\n' "$out" | sed 's/^/     /'; fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- tools -------------------------------------------------------------------
ensure_prometheus promtool
PY="$LORAGATE_VENV/bin/python"
bash scripts/python-env.sh

# ---- Prometheus ----------------------------------------------------------------
# promtool insists that the scrape token's credentials_file exists; compose
# mounts it at run time, so check a copy that points at a stand-in file.
mkdir -p "$work/prometheus"
cp deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml "$work/prometheus/"
echo stand-in > "$work/prometheus/token"
sed -i "s|credentials_file: /run/secrets/loragate_metrics_token|credentials_file: $work/prometheus/token|" \
  "$work/prometheus/prometheus.yml"
run_check "promtool check config deploy/prometheus/prometheus.yml (token file stood in)" \
  promtool check config "$work/prometheus/prometheus.yml"
run_check "promtool check rules deploy/prometheus/alerts.yml" \
  promtool check rules deploy/prometheus/alerts.yml
run_check "promtool test rules deploy/prometheus/alerts.test.yml (every alert fires and stays quiet as intended)" \
  promtool test rules deploy/prometheus/alerts.test.yml

# ---- Grafana -------------------------------------------------------------------
run_check "dashboard JSON matches deploy/grafana/dashboard.py" "$PY" deploy/grafana/dashboard.py --check
# Every panel and variable expression, with Grafana's variables substituted,
# as recording rules: promtool then parses each one as PromQL.
"$PY" - "$work/dashboard-rules.yml" <<'PY'
import json, re, sys, yaml
d = json.load(open("deploy/grafana/dashboards/loragate.json"))
exprs = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            exprs.append(t["expr"])
        walk(p.get("panels", []))
walk(d["panels"])
for v in d["templating"]["list"]:
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
    if m:
        exprs.append(f"count by ({m[2]}) ({m[1]})")
subst = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$tenant": ".*"}
def sub(e):
    for k, v in subst.items():
        e = e.replace(k, v)
    return e
rules = [{"record": f"dashboard:expr_{i}", "expr": sub(e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PY
run_check "every dashboard expression parses (promtool, $(grep -c 'record:' "$work/dashboard-rules.yml") expressions)" \
  promtool check rules "$work/dashboard-rules.yml"

# ---- structure: dashboard, compose, Dockerfiles, Kubernetes ---------------------
rendered=()
if command -v kubectl >/dev/null; then
  if kubectl kustomize deploy/kubernetes/base > "$work/base.yaml" 2> "$work/kustomize.err" \
     && kubectl kustomize deploy/kubernetes/overlays/gpu > "$work/gpu.yaml" 2>> "$work/kustomize.err"; then
    ok "kubectl kustomize renders deploy/kubernetes/base and overlays/gpu"
    rendered=("$work/base.yaml" "$work/gpu.yaml")
  else
    fail "kubectl kustomize"; sed 's/^/     /' "$work/kustomize.err"
  fi
else
  skip "kubectl not installed (Debian ships none): Kubernetes checks run on the files as written"
fi
if "$PY" scripts/check-deploy.py "$ROOT" "$work" "${rendered[@]}" > "$work/structure.out"; then :; fi
grep -v " passed, " "$work/structure.out" || true
read -r p f < <(awk '/ passed, / {print $1, $3}' "$work/structure.out" | tail -1)
passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1}))

# ---- the shipped configurations, through the gateway's own validation ----------
bin="${bin_override:-$LORAGATE_BIN}"
if [ -x "$bin" ]; then
  cp "$bin" "$work/loragate"   # a private copy: a concurrent rebuild may replace the original
  : > "$work/model.gguf"       # check-config only needs the model file to exist
  check_config() { # NAME CONFIG [NAME=VALUE...]
    local name=$1 config=$2; shift 2
    run_check "loragate check-config: $name" \
      env "$@" LORAGATE__MODEL__PATH="$work/model.gguf" "$work/loragate" check-config --config "$config"
  }
  refused_config() { # NAME PATTERN CONFIG [NAME=VALUE...]
    local name=$1 pattern=$2 config=$3; shift 3
    run_refused "loragate check-config refuses $name" "$pattern" \
      env "$@" LORAGATE__MODEL__PATH="$work/model.gguf" "$work/loragate" check-config --config "$config"
  }
  random() { "$PY" -c 'import secrets; print(secrets.token_hex(32))'; }
  compose_env=(LORAGATE__SERVER__BIND=0.0.0.0:8080 LORAGATE__REDIS__URL=redis://redis:6379/0)
  refused_config "deploy/config/container.toml without a scrape token" "metrics.bearer_token_env" \
    deploy/config/container.toml "${compose_env[@]}" LORAGATE_METRICS_TOKEN=
  check_config "deploy/config/container.toml (compose environment, real token and admin hash)" \
    deploy/config/container.toml "${compose_env[@]}" LORAGATE_METRICS_TOKEN="$(random)" \
    LORAGATE__AUTH__ADMIN_API_KEYS="[\"sha256:$(random)\"]"
  for label in base gpu; do
    [ -s "$work/k8s-$label.toml" ] || { fail "no ConfigMap config extracted for $label"; continue; }
    mapfile -t envs < "$work/k8s-$label.env"
    # A CPU binary refuses device = cuda; everything else is checked as deployed.
    refused_config "Kubernetes $label with the Secret's placeholders" "LORAGATE_JWT_SECRET" \
      "$work/k8s-$label.toml" "${envs[@]}" LORAGATE__MODEL__DEVICE=cpu
    refused_config "Kubernetes $label with the Secret's placeholder scrape token" "LORAGATE_METRICS_TOKEN" \
      "$work/k8s-$label.toml" "${envs[@]}" LORAGATE_JWT_SECRET="$(random)" LORAGATE__MODEL__DEVICE=cpu
    check_config "Kubernetes $label ConfigMap + Deployment env + Secret with real values" "$work/k8s-$label.toml" \
      "${envs[@]}" LORAGATE_JWT_SECRET="$(random)" LORAGATE_METRICS_TOKEN="$(random)" \
      LORAGATE__AUTH__ADMIN_API_KEYS="[\"sha256:$(random)\"]" LORAGATE__MODEL__DEVICE=cpu
  done
else
  skip "no gateway binary at $bin: configs not checked with loragate check-config (run scripts/test.sh once)"
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
