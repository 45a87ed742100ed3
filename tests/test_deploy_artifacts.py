"""The deployment artefacts: Dockerfile, config/ and config/k8s/.

Docker, Prometheus, Grafana and Kubernetes do not run here, so these tests check what can
be checked without them, against the real thing wherever there is one:

- every canaryproxy config we ship (config/*.yaml, the ConfigMap's embedded one) parses,
  and config/reference.yaml names every key of the schema, with the schema's defaults;
- every PromQL expression (alert rules, dashboard panels, annotations, variables) is
  well formed and names only series, labels and label values that a running proxy's
  /metrics really exposes (scraped from one started here); with promtool installed
  (Debian package ``prometheus``), promtool parses them too and unit-tests the alerts;
- the Kubernetes manifests wire up: ports, Services, selectors, env, mounts, grace period;
- the Dockerfile keeps the hadolint-style rules we care about (checked by a small linter
  here, itself tested on bad Dockerfiles) and the contract the docs and manifests rely on.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import urlsplit

import aiohttp
import pytest
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from canaryproxy.config.load import Config, parse_config, parse_duration
from tests.support import Backend, make_config, raw_request, service, start_proxy, status_of

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
K8S = CONFIG / "k8s"
ENV = {
    "CANARYPROXY_ADMIN_TOKEN": "test-admin-token",
    "CANARYPROXY_COOKIE_SECRET": "test-secret",
    "POD_NAME": "canaryproxy-abc12",
}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def yaml_files() -> list[Path]:
    return sorted(p for d in (CONFIG, K8S) for p in d.iterdir() if p.suffix in (".yaml", ".yml"))


def role_of(doc: Any) -> str:
    """What a YAML document is; anything unrecognised must be a canaryproxy config."""
    if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
        return "k8s"
    if isinstance(doc, dict) and "groups" in doc:
        return "rules"
    if isinstance(doc, dict) and "scrape_configs" in doc:
        return "prometheus"
    return "canaryproxy"


def k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in load_yaml(p)]


def k8s_doc(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def configmap_configs() -> Iterator[tuple[str, str]]:
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                yield f"{doc['metadata']['name']}#{key}", text


def shipped_configs() -> list[tuple[str, Any]]:
    configs = [
        (str(p.relative_to(ROOT)), doc)
        for p in yaml_files()
        for doc in load_yaml(p)
        if role_of(doc) == "canaryproxy"
    ]
    embedded = [(name, yaml.safe_load(text)) for name, text in configmap_configs()]
    return configs + [(name, doc) for name, doc in embedded if role_of(doc) == "canaryproxy"]


def proxy_config() -> Config:
    (text,) = [text for name, text in configmap_configs() if name == "canaryproxy#canaryproxy.yaml"]
    return parse_config(yaml.safe_load(text), env=ENV)


# --- canaryproxy configs ------------------------------------------------------------------


def test_shipped_configs_are_found() -> None:
    names = {name for name, _ in shipped_configs()}
    assert {"config/reference.yaml", "canaryproxy#canaryproxy.yaml"} <= names


@pytest.mark.parametrize(("name", "data"), shipped_configs(), ids=[n for n, _ in shipped_configs()])
def test_shipped_config_parses(name: str, data: Any) -> None:
    assert parse_config(data, env=ENV).services


def test_canaryproxy_check_accepts_the_reference_config() -> None:
    cmd = [sys.executable, "-m", "canaryproxy", "check", "--config", "config/reference.yaml"]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "config/reference.yaml: OK" in done.stdout
    # The secrets it references are required: without them it is a config error.
    bare = subprocess.run(cmd, cwd=ROOT, env={}, capture_output=True, text=True, timeout=30)
    assert bare.returncode == 2
    assert "environment variable CANARYPROXY_ADMIN_TOKEN is not set" in bare.stderr


def _nested_model(annotation: object) -> tuple[str, type[BaseModel]] | None:
    """The model a field holds, and ".*" for each dict or tuple on the way to it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    hop = ".*" if get_origin(annotation) in (dict, tuple) else ""
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return hop + found[0], found[1]
    return None


def schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if name in getattr(model, "keys_not_in_file", ()):
            continue
        keys.add(prefix + name)
        nested = _nested_model(field.annotation)
        if nested is not None:
            keys |= schema_keys(nested[1], f"{prefix}{name}{nested[0]}.")
    return keys


def document_keys(data: object, path: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(data, list):
        for item in data:
            keys |= document_keys(item, f"{path}.*")
    elif isinstance(data, dict):
        for key, value in data.items():
            # A service's name is not a key of the schema but its place in `services`.
            here = f"{path}.*" if path == "services" else f"{path}.{key}".lstrip(".")
            keys |= document_keys(value, here) | ({here} if path != "services" else set())
    return keys


# Blocks whose example needs files that exist (a TLS pair), and keys that would change
# what the file configures (shared state instead of the file): documented commented out.
COMMENTED_OUT = {"tls": ("tls", "cert", "key"), "state": ("redis", "instance")}


def test_reference_config_names_every_key_of_the_schema() -> None:
    text = (CONFIG / "reference.yaml").read_text()
    (reference,) = load_yaml(CONFIG / "reference.yaml")
    missing = schema_keys(Config) - document_keys(reference)
    lines = [line.strip() for line in text.splitlines()]
    comments = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
    for block, names in COMMENTED_OUT.items():
        missing -= {f"{block}.{name}" for name in names}
        if block == "tls":
            missing.discard(block)
        for name in names:
            assert any(c.startswith(f"{name}:") for c in comments), f"{block}: {name}"
    assert missing == set()
    assert {"limits.drain_timeout", "services.*.outlier_detection.max_ejection_time"} <= (
        schema_keys(Config)
    )


# Keys without a default (off unless set): the reference shows an example value.
EXAMPLE_VALUES = {
    "trusted_proxies",
    "admin.token",
    "sticky.secrets",
    "services.web.canary_weight",
    "services.web.bucket_by",
    "services.web.override_header",
    "services.web.error_budget.max_p99_latency",
    "notify.webhook",
    "services.web.outcomes.header",
    "services.web.outcomes.failure_statuses",
    "services.web.outcomes.slow",
}


def differences_from_defaults(model: BaseModel, path: str) -> list[str]:
    """Every key whose value is not the schema's default (blocks: their keys' defaults)."""
    found: list[str] = []
    for name, field in type(model).model_fields.items():
        here, value = f"{path}.{name}".lstrip("."), getattr(model, name)
        if name in getattr(model, "keys_not_in_file", ()) or field.is_required():
            continue
        if isinstance(value, BaseModel):
            found += differences_from_defaults(value, here)
        elif isinstance(value, dict):
            found += differences_from_defaults(value["web"], f"{here}.web")
        elif here not in EXAMPLE_VALUES and value != field.get_default(call_default_factory=True):
            found.append(f"{here}: {value!r}")
    return found


def test_reference_config_shows_the_defaults() -> None:
    reference = parse_config(load_yaml(CONFIG / "reference.yaml")[0], env=ENV)
    assert differences_from_defaults(reference, "") == []


# --- a running proxy's /metrics -----------------------------------------------------------


@dataclass
class Exposed:
    """Series names a scrape showed, with the label values seen for each."""

    labels: dict[str, dict[str, set[str]]]

    @classmethod
    def parse(cls, text: str) -> Exposed:
        labels: dict[str, dict[str, set[str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                seen = labels.setdefault(sample.name, {})
                for key, value in sample.labels.items():
                    seen.setdefault(key, set()).add(value)
        return cls(labels)


async def _scrape_running_proxy() -> str:
    stable, canary = await Backend("stable").start(), await Backend("canary").start()
    config = make_config(
        {"web": service([stable.url], [canary.url], canary_weight=50, override_header="X-Pool")}
    )
    try:
        async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
            for pool in ("never", "always"):
                for path in ("/", "/status/500"):
                    async with session.get(proxy.url + path, headers={"X-Pool": pool}) as resp:
                        await resp.read()
            # A malformed request, so that canaryproxy_rejected_requests_total has a series.
            assert status_of(await raw_request(proxy.port, b"NOT HTTP\r\n\r\n")) == 400
            async with session.get(proxy.admin_url + "/metrics") as resp:
                assert resp.status == 200
                return await resp.text()
    finally:
        await stable.stop()
        await canary.stop()


@pytest.fixture(scope="module")
def exposed() -> Exposed:
    return Exposed.parse(uvloop.run(_scrape_running_proxy()))


# --- PromQL, checked without Prometheus -----------------------------------------------------

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
AGGREGATIONS |= {"bottomk", "topk", "quantile"}
FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets"}
FUNCTIONS |= {"histogram_quantile", "abs", "ceil", "floor", "round", "clamp", "clamp_min"}
FUNCTIONS |= {"clamp_max", "vector", "scalar", "time", "timestamp", "absent", "absent_over_time"}
FUNCTIONS |= {f"{a}_over_time" for a in ("avg", "min", "max", "sum", "count", "last", "quantile")}
FUNCTIONS |= {"label_replace", "label_join", "sort", "sort_desc", "predict_linear", "exp", "ln"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "le", "inf", "nan"}
# What Grafana puts in place of its variables before the query reaches Prometheus.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"#(\d+)"\s*')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


class PromQLError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


def grafana_to_promql(expr: str, variables: set[str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name in GRAFANA_VARIABLES:
            return GRAFANA_VARIABLES[name]
        if name not in variables:
            raise PromQLError(f"undefined dashboard variable ${name}")
        return ".*"

    return _VARIABLE.sub(value, expr)


def _check_balanced(masked: str) -> None:
    stack: list[str] = []
    for char in masked:
        if char in "([{":
            stack.append({"(": ")", "[": "]", "{": "}"}[char])
        elif char in ")]}" and (not stack or stack.pop() != char):
            raise PromQLError(f"unbalanced {char!r}")
    if stack or masked.count('"') % 2:
        raise PromQLError("unclosed bracket or string")


def parse_promql(expr: str) -> list[Selector]:
    """The selectors of an expression, after a structural check; PromQLError if malformed."""
    strings: list[str] = []

    def mask(match: re.Match[str]) -> str:
        strings.append(match[0][1:-1])
        return f'"#{len(strings) - 1}"'

    masked = _STRING.sub(mask, expr)
    _check_balanced(masked)
    selectors = [_selector(m[1], m[2], strings) for m in _SELECTOR.finditer(masked)]
    rest = _SELECTOR.sub(" ", masked)
    rest = _GROUPING.sub(" ", re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]|\"#\d+\"", " ", rest))
    for name, call in _IDENT.findall(rest):
        if call and name not in FUNCTIONS | AGGREGATIONS:
            raise PromQLError(f"unknown function {name}")
        if not call and name.lower() not in KEYWORDS:
            selectors.append(Selector(name, ()))
    if not selectors:
        raise PromQLError("no metric in expression")
    return selectors


def _selector(metric: str, body: str, strings: list[str]) -> Selector:
    parts = [p for p in body.split(",") if p.strip()]
    matchers = [_MATCHER.fullmatch(p) for p in parts]
    if None in matchers:
        raise PromQLError(f"bad label matchers in {metric}{{{body}}}")
    return Selector(metric, tuple((m[1], m[2], strings[int(m[3])]) for m in matchers if m))


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        ('sum by (service, le) (rate(a_bucket{pool="x", code=~"5.."}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum by (le) (rate(b[1m]))) > 2 * c", {"b", "c"}),
        ("x and on (job, instance) increase(y[5m:1m] offset 1h) >= 1e3", {"x", "y"}),
        ('up{job="p"} == 0', {"up"}),
        ('m{l=~"a{2}(b)"}', {"m"}),
    ],
    ids=["aggregation-matchers", "quantile-comparison", "set-operator-offset", "bare", "regex"],
)
def test_parse_promql_finds_the_metrics(expr: str, metrics: set[str]) -> None:
    assert {s.metric for s in parse_promql(expr)} == metrics


@pytest.mark.parametrize(
    "expr",
    ["sum(rate(x[5m])", "rate(x[5m)]", 'x{a="b}', "histogram_quantil(0.9, x)", "1 + 2", "x{a}"],
    ids=[
        "unclosed-paren",
        "crossed",
        "unclosed-string",
        "unknown-function",
        "no-metric",
        "matcher",
    ],
)
def test_parse_promql_rejects_malformed(expr: str) -> None:
    with pytest.raises(PromQLError):
        parse_promql(expr)


# Series Prometheus itself writes for every target, and the labels it adds to all series.
PROMETHEUS_SERIES = {"up": {"job": set[str](), "instance": set[str]()}}
TARGET_LABELS = {"job", "instance"}
# Labels whose values come from the user's config or Prometheus, so any value may be right.
FREE_LABELS = {"service", "backend", *TARGET_LABELS}


def problems_in(expr: str, exposed: Exposed) -> list[str]:
    problems: list[str] = []
    known = {**exposed.labels, **PROMETHEUS_SERIES}
    for sel in parse_promql(expr):
        labels = known.get(sel.metric)
        if labels is None:
            problems.append(f"{sel.metric} is not exposed")
            continue
        for label, op, value in sel.matchers:
            if label not in labels and label not in TARGET_LABELS:
                problems.append(f"{sel.metric} has no label {label}")
            elif op == "=" and label not in FREE_LABELS and value not in labels[label]:
                problems.append(f"{sel.metric}{{{label}}} is never {value!r}")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(CONFIG / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query in the dashboard, Grafana variables filled in."""
    board = dashboard()
    variables = {v["name"] for v in board["templating"]["list"]}
    found = [
        (f"{p['title']}/{t['refId']}", t["expr"])
        for p in board["panels"]
        for t in p.get("targets", [])
    ]
    found += [
        (f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"] if "expr" in a
    ]
    for var in board["templating"]["list"]:
        if var["type"] == "query":  # label_values(SELECTOR, LABEL) is Grafana's, not PromQL
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"]["query"])
            assert match, var["query"]
            found.append((f"variable {var['name']}", match[1]))
    return [(where, grafana_to_promql(expr, variables)) for where, expr in found]


@pytest.mark.parametrize("rule", alert_rules(), ids=[r["alert"] for r in alert_rules()])
def test_alert_rule_uses_exposed_metrics(rule: dict[str, Any], exposed: Exposed) -> None:
    assert problems_in(rule["expr"], exposed) == []
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert set(rule["annotations"]) == {"summary", "description"}
    assert parse_duration(rule.get("for", "0s")) <= 600


def test_alert_rules_cover_the_issue() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {"CanaryEjected", "CanaryErrorRateOverBudget", "BackendDown"} <= names


@pytest.mark.parametrize(
    ("where", "expr"), dashboard_queries(), ids=[w for w, _ in dashboard_queries()]
)
def test_dashboard_query_uses_exposed_metrics(where: str, expr: str, exposed: Exposed) -> None:
    assert problems_in(expr, exposed) == []


# The metric names of the README's "Metrics" table: the dashboard uses these and no others.
SPEC_METRICS = {
    "canaryproxy_requests_total",
    "canaryproxy_request_duration_seconds",
    "canaryproxy_upstream_errors_total",
    "canaryproxy_canary_weight",
    "canaryproxy_canary_ejected",
    "canaryproxy_ejections_total",
    "canaryproxy_verdict",
    "canaryproxy_backend_healthy",
    "canaryproxy_requests_in_flight",
}


@pytest.mark.parametrize(
    ("where", "expr"), dashboard_queries(), ids=[w for w, _ in dashboard_queries()]
)
def test_dashboard_query_uses_only_spec_metric_names(where: str, expr: str) -> None:
    for selector in parse_promql(grafana_to_promql(expr, set())):
        family = re.sub(r"_(bucket|sum|count)$", "", selector.metric)
        assert selector.metric in SPEC_METRICS or family in SPEC_METRICS, selector.metric


def test_problems_in_catches_wrong_names_labels_and_values(exposed: Exposed) -> None:
    assert problems_in('canaryproxy_requests{pool="canary"}', exposed) == [
        "canaryproxy_requests is not exposed"
    ]
    assert problems_in('canaryproxy_canary_weight{pool="x"}', exposed) == [
        "canaryproxy_canary_weight has no label pool"
    ]
    assert problems_in('canaryproxy_requests_total{pool="canaries"}', exposed) == [
        "canaryproxy_requests_total{pool} is never 'canaries'"
    ]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = dashboard()
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "canaryproxy_requests_total",
        "canaryproxy_request_duration_seconds_bucket",
        "canaryproxy_canary_weight",
        "canaryproxy_canary_ejected",
        "canaryproxy_ejections_total",
        "canaryproxy_verdict",
        "canaryproxy_backend_healthy",
    ):
        assert metric in exprs
    assert set(re.findall(r"histogram_quantile\((0\.\d+)", exprs)) >= {"0.5", "0.95", "0.99"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(set(p["gridPos"]) == {"x", "y", "w", "h"} for p in board["panels"])


# --- promtool (Debian package `prometheus`), when installed ----------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)


@needs_promtool
@pytest.mark.parametrize(
    "args",
    [("check", "config", "config/prometheus.yml"), ("check", "rules", "config/alerts.yml")],
    ids=["prometheus.yml", "alerts.yml"],
)
def test_promtool_accepts(args: tuple[str, ...]) -> None:
    done = promtool(*args[:2], str(ROOT / args[2]))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e}
        for i, (_, e) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_commented_kubernetes_scrape_job_finds_the_proxy_pods() -> None:
    # Debian's promtool is built without Kubernetes discovery, so check the wiring here.
    text = (CONFIG / "prometheus.yml").read_text()
    block = text[text.index("  # - job_name: canaryproxy") :]
    (job,) = yaml.safe_load("\n".join(line.replace("# ", "", 1) for line in block.splitlines()))
    keep = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    pod = k8s_doc("Deployment", "canaryproxy")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (
        ports[keep["__meta_kubernetes_pod_container_port_name"]] == proxy_config().admin.listen.port
    )
    assert (
        pod["metadata"]["labels"]["app.kubernetes.io/name"]
        == keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    )
    assert job["metrics_path"] == "/metrics"


TARGET = 'job="canaryproxy", instance="p:9901"'


def _series(name: str, labels: str, values: str, service: str = "web") -> dict[str, str]:
    return {"series": f'{name}{{{TARGET}, service="{service}"{labels}}}', "values": values}


def _alert(at: str, name: str, *labelsets: dict[str, str]) -> dict[str, Any]:
    base = {"job": "canaryproxy", "instance": "p:9901"}
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": {**base, **labels}} for labels in labelsets],
    }


def _latency_series() -> list[dict[str, str]]:
    """Canary requests all take 0.1–1 s, stable ones under 0.1 s: p99 about 10x stable's."""
    series = []
    for pool, fast in (("canary", "0"), ("stable", "0+100x20")):
        for le, count in (("0.1", fast), ("1", "0+100x20"), ("+Inf", "0+100x20")):
            labels = f', pool="{pool}", le="{le}"'
            series.append(_series("canaryproxy_request_duration_seconds_bucket", labels, count))
        count_name = "canaryproxy_request_duration_seconds_count"
        series.append(_series(count_name, f', pool="{pool}"', "0+100x20"))
    return series


ALERT_SERIES = [
    *_latency_series(),
    _series("canaryproxy_canary_ejected", "", "0 0 1x20"),
    _series("canaryproxy_backend_healthy", ', pool="canary", backend="http://c:80"', "1 0x20"),
    _series("canaryproxy_backend_healthy", ', pool="stable", backend="http://s1:80"', "1 0x20"),
    _series("canaryproxy_backend_healthy", ', pool="stable", backend="http://s2:80"', "1x22"),
    _series("canaryproxy_requests_total", ', pool="canary", code="200"', "0+80x20"),
    _series("canaryproxy_requests_total", ', pool="canary", code="502"', "0+20x20"),
    _series("canaryproxy_requests_total", ', pool="stable", code="200"', "0+1000x20"),
    _series("canaryproxy_requests_total", ', pool="stable", code="500"', "0+1x20"),
    _series("canaryproxy_requests_total", ', pool="stable", code="200"', "0+90x20", "api"),
    _series("canaryproxy_requests_total", ', pool="stable", code="503"', "0+10x20", "api"),
    _series("canaryproxy_verdict", ', verdict="shared_degradation"', "0 0 1x20"),
    {
        "series": f'canaryproxy_config_reloads_total{{{TARGET}, result="failed"}}',
        "values": "0 0 1x20",
    },
    {"series": f"up{{{TARGET}}}", "values": "1 1 0x20"},
    {"series": f"canaryproxy_state_store_up{{{TARGET}}}", "values": "1 1 0x20"},
]

WEB = {"service": "web"}
ALERT_EXPECTATIONS = [
    _alert("1m", "CanaryEjected"),
    _alert("3m", "CanaryEjected", {**WEB, "severity": "warning"}),
    _alert("2m", "BackendDown"),
    _alert(
        "4m",
        "BackendDown",
        *(
            {**WEB, "severity": "warning", "pool": p, "backend": b}
            for p, b in (("canary", "http://c:80"), ("stable", "http://s1:80"))
        ),
    ),
    _alert("4m", "PoolWithoutHealthyBackend", {**WEB, "severity": "critical", "pool": "canary"}),
    _alert("10m", "CanaryErrorRateOverBudget", {**WEB, "severity": "critical"}),
    _alert("10m", "StableErrorRateHigh", {"service": "api", "severity": "critical"}),
    _alert("8m", "CanaryLatencyAboveStable"),
    _alert("15m", "CanaryLatencyAboveStable", {**WEB, "severity": "warning"}),
    _alert("4m", "CanaryJudgementSuspended"),
    _alert(
        "8m",
        "CanaryJudgementSuspended",
        {**WEB, "severity": "warning", "verdict": "shared_degradation"},
    ),
    _alert("3m", "ConfigReloadFailed", {"result": "failed", "severity": "warning"}),
    _alert("2m", "StateStoreDown"),
    _alert("4m", "StateStoreDown", {"severity": "critical"}),
    _alert("2m", "CanaryproxyDown"),
    _alert("4m", "CanaryproxyDown", {"severity": "critical"}),
]


@needs_promtool
def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    (doc,) = load_yaml(CONFIG / "alerts.yml")
    for group in doc["groups"]:  # promtool compares annotations too; their wording is not tested
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    tests = {"interval": "1m", "input_series": ALERT_SERIES, "alert_rule_test": ALERT_EXPECTATIONS}
    suite = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": [tests]}
    (tmp_path / "suite.yml").write_text(yaml.safe_dump(suite))
    done = promtool("test", "rules", str(tmp_path / "suite.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_rule_has_a_promtool_case() -> None:
    tested = {case["alertname"] for case in ALERT_EXPECTATIONS if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}


# --- Kubernetes manifests -------------------------------------------------------------------


def test_k8s_manifests_have_the_expected_kinds() -> None:
    found = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs() if d["kind"] != "Kustomization"}
    assert found == {
        ("Secret", "canaryproxy"),
        ("ConfigMap", "canaryproxy"),
        ("Deployment", "canaryproxy"),
        ("PodDisruptionBudget", "canaryproxy"),
        ("Deployment", "redis"),
        ("PersistentVolumeClaim", "redis-data"),
        ("Service", "redis"),
        ("Service", "canaryproxy"),
        ("Service", "canaryproxy-admin"),
        ("Deployment", "web-stable"),
        ("Service", "web-stable"),
        ("Deployment", "web-canary"),
        ("Service", "web-canary"),
    }
    assert all(
        d["apiVersion"] in ("v1", "apps/v1", "policy/v1")
        for d in k8s_docs()
        if d["kind"] != "Kustomization"
    )


def test_kustomization_applies_everything_but_the_secret_placeholders() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"secret-example.yaml"}


def container_of(deployment: str) -> dict[str, Any]:
    container: dict[str, Any]
    (container,) = k8s_doc("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def container_ports(deployment: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container_of(deployment)["ports"]}


def test_proxy_container_ports_are_the_configs_listen_ports() -> None:
    config = proxy_config()
    ports = container_ports("canaryproxy")
    assert ports == {"http": config.listen.port, "admin": config.admin.listen.port}
    assert config.admin.listen.host == "0.0.0.0"  # probes and Prometheus come from outside
    annotations = k8s_doc("Deployment", "canaryproxy")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert int(annotations["prometheus.io/port"]) == config.admin.listen.port


def selected_deployments(svc: dict[str, Any]) -> list[str]:
    selector = svc["spec"]["selector"].items()
    return [
        d["metadata"]["name"]
        for d in k8s_docs()
        if d["kind"] == "Deployment"
        and selector <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


@pytest.mark.parametrize(
    "name",
    ["canaryproxy", "canaryproxy-admin", "web-stable", "web-canary", "redis"],
    ids=["canaryproxy", "canaryproxy-admin", "web-stable", "web-canary", "redis"],
)
def test_service_reaches_exactly_one_deployments_port(name: str) -> None:
    svc = k8s_doc("Service", name)
    (deployment,) = selected_deployments(svc)
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in container_ports(deployment)
    labels = k8s_doc("Deployment", deployment)["spec"]["selector"]["matchLabels"].items()
    assert (
        labels
        <= k8s_doc("Deployment", deployment)["spec"]["template"]["metadata"]["labels"].items()
    )


def test_proxy_backends_are_the_example_apps_services() -> None:
    config = proxy_config()
    for service_config in config.services.values():
        pools = [("stable", service_config.stable), ("canary", service_config.canary)]
        for pool, pool_config in pools:
            assert pool_config is not None
            for backend in pool_config.backends:
                svc = k8s_doc("Service", backend.host)
                assert backend.port in [p["port"] for p in svc["spec"]["ports"]]
                assert svc["spec"]["selector"]["track"] == pool


def test_proxy_gets_every_variable_its_config_references() -> None:
    (text,) = [t for name, t in configmap_configs() if name == "canaryproxy#canaryproxy.yaml"]
    env = {e["name"]: e["valueFrom"] for e in container_of("canaryproxy")["env"]}
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(env) == set(ENV)
    assert env.pop("POD_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}
    secret = k8s_doc("Secret", "canaryproxy")
    for ref in (source["secretKeyRef"] for source in env.values()):
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]


def test_proxy_mounts_match_the_image_and_the_config() -> None:
    pod = k8s_doc("Deployment", "canaryproxy")["spec"]["template"]["spec"]
    container = container_of("canaryproxy")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (item,) = volumes["config"]["configMap"]["items"]
    assert f"{mounts['config']}/{item['path']}" == dockerfile_cmd()[-1]
    assert set(mounts) == {"config"}  # the state is in Redis, not on a volume
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()


def test_replicas_share_the_redis_service_and_roll_one_at_a_time() -> None:
    config = proxy_config()
    assert config.state.redis is not None
    url = urlsplit(config.state.redis)
    redis_service = k8s_doc("Service", str(url.hostname))
    assert url.port in [p["port"] for p in redis_service["spec"]["ports"]]
    assert config.state.instance == ENV["POD_NAME"]
    assert config.workers >= 2
    spec = k8s_doc("Deployment", "canaryproxy")["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = k8s_doc("PodDisruptionBudget", "canaryproxy")["spec"]
    assert budget["minAvailable"] >= 1
    assert (
        budget["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    )


def test_grace_period_outlasts_the_drain() -> None:
    pod = k8s_doc("Deployment", "canaryproxy")["spec"]["template"]["spec"]
    pre_stop = container_of("canaryproxy")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + proxy_config().limits.drain_timeout
    assert pod["terminationGracePeriodSeconds"] > needed


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (as Docker does)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not pending):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
            pending = ""
    return instructions


def _is_exec_form(args: str) -> bool:
    try:
        value = json.loads(args)
    except ValueError:
        return False
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def lint_dockerfile(instructions: list[Instruction]) -> list[str]:
    """The hadolint-style rules this project keeps; each problem starts with its rule id."""
    problems: list[str] = []
    keywords = [i.keyword for i in instructions]
    stages: set[str] = set()
    for i in instructions:
        problems += _lint_instruction(i, stages)
    users = [(n, i.args) for n, i in enumerate(instructions) if i.keyword == "USER"]
    start = max((n for n, k in enumerate(keywords) if k in ("CMD", "ENTRYPOINT")), default=-1)
    if not users or users[-1][1].split(":")[0] in ("root", "0") or users[-1][0] > start:
        problems.append("DL3002: the last USER must be a non-root user, set before CMD")
    for required in ("HEALTHCHECK", "EXPOSE", "CMD"):
        if required not in keywords:
            problems.append(f"missing {required}")
    return problems


def _lint_instruction(i: Instruction, stages: set[str]) -> list[str]:
    problems: list[str] = []
    if i.keyword == "FROM":
        image, _, stage = i.args.partition(" AS ")
        stages.add(stage.strip().lower())
        tag = image.partition(":")[2]
        is_external = image.lower() not in stages and image != "scratch" and "@" not in image
        if is_external and tag in ("", "latest"):
            problems.append(f"DL3006/DL3007: pin the base image tag, got {image}")
    elif i.keyword == "ADD":
        problems.append("DL3020: use COPY, not ADD")
    elif i.keyword in ("CMD", "ENTRYPOINT") and not _is_exec_form(i.args):
        problems.append(f"DL3025: {i.keyword} must be exec form (a JSON array)")
    elif i.keyword == "HEALTHCHECK" and not _is_exec_form(i.args.partition("CMD ")[2]):
        problems.append("HEALTHCHECK must run a command in exec form")
    elif i.keyword in ("ENV", "ARG") and re.search(r"(TOKEN|SECRET|PASSWORD)\w*=", i.args):
        problems.append(f"secrets come from the environment at run time, not {i.keyword}")
    elif i.keyword == "RUN":
        problems += _lint_run(i.args)
    return problems


def _lint_run(args: str) -> list[str]:
    problems: list[str] = []
    if re.search(r"\bpip3? install\b", args) and "--no-cache-dir" not in args:
        problems.append("DL3042: pip install needs --no-cache-dir")
    if re.search(r"\bapt-get install\b", args):
        if "--no-install-recommends" not in args:
            problems.append("DL3015: apt-get install needs --no-install-recommends")
        if "rm -rf /var/lib/apt/lists/*" not in args:
            problems.append("DL3009: remove /var/lib/apt/lists/* in the same RUN")
    if re.search(r"\bsudo\b", args):
        problems.append("DL3004: do not use sudo")
    return problems


def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def dockerfile_args(keyword: str) -> list[str]:
    return [word for i in dockerfile() if i.keyword == keyword for word in _words(i.args)]


def _words(args: str) -> list[str]:
    if _is_exec_form(args):
        words: list[str] = json.loads(args)
        return words
    return args.split()


def dockerfile_cmd() -> list[str]:
    (cmd,) = [i.args for i in dockerfile() if i.keyword == "CMD"]
    words: list[str] = json.loads(cmd)
    return words


def dockerfile_uid() -> int:
    return int(dockerfile_args("USER")[-1].split(":")[0])


GOOD = """\
FROM python:3.11-slim
RUN pip install --no-cache-dir .
USER 10001
EXPOSE 8080
HEALTHCHECK CMD ["true"]
CMD ["run"]
"""


LINT_CASES = [
    ("untagged", GOOD.replace("python:3.11-slim", "python"), "DL3006"),
    ("latest", GOOD.replace("3.11-slim", "latest"), "DL3007"),
    ("root", GOOD.replace("USER 10001", "USER root"), "DL3002"),
    ("user-after-cmd", GOOD.replace("USER 10001\n", "") + "USER 10001\n", "DL3002"),
    ("pip-cache", GOOD.replace(" --no-cache-dir", ""), "DL3042"),
    ("apt-lists", GOOD + "RUN apt-get install -y --no-install-recommends git\n", "DL3009"),
    (
        "apt-recommends",
        GOOD + "RUN apt-get install -y git && rm -rf /var/lib/apt/lists/*",
        "DL3015",
    ),
    ("add", GOOD + "ADD . /src\n", "DL3020"),
    ("shell-cmd", GOOD.replace('CMD ["run"]', "CMD run"), "DL3025"),
    ("shell-healthcheck", GOOD.replace('CMD ["true"]', "CMD true"), "HEALTHCHECK must"),
    ("no-healthcheck", GOOD.replace('HEALTHCHECK CMD ["true"]\n', ""), "missing HEALTHCHECK"),
    ("no-expose", GOOD.replace("EXPOSE 8080\n", ""), "missing EXPOSE"),
    ("env-secret", GOOD + "ENV CANARYPROXY_ADMIN_TOKEN=abc\n", "secrets"),
    ("sudo", GOOD + "RUN sudo true\n", "DL3004"),
]


@pytest.mark.parametrize(
    ("dockerfile_text", "rule"), [c[1:] for c in LINT_CASES], ids=[c[0] for c in LINT_CASES]
)
def test_lint_catches(dockerfile_text: str, rule: str) -> None:
    assert lint_dockerfile(parse_dockerfile(GOOD)) == []
    assert any(rule in problem for problem in lint_dockerfile(parse_dockerfile(dockerfile_text)))


def test_dockerfile_passes_the_lint() -> None:
    assert lint_dockerfile(dockerfile()) == []


def test_dockerfile_keeps_its_contract() -> None:
    instructions = dockerfile()
    build, base = [i.args for i in instructions if i.keyword == "FROM"]
    assert build == f"{base} AS build"  # the compiler stays in the build stage
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base)
    defaults = Config.model_fields
    assert {int(p) for p in dockerfile_args("EXPOSE")} == {
        defaults["listen"].get_default().port,
        defaults["admin"].get_default().listen.port,
    }
    assert dockerfile_cmd() == [
        "canaryproxy",
        "run",
        "--config",
        "/etc/canaryproxy/canaryproxy.yaml",
    ]
    assert dockerfile_args("STOPSIGNAL") == ["SIGTERM"]
    assert dockerfile_args("VOLUME") == ["/var/lib/canaryproxy"]
    runs = [i.args for i in instructions if i.keyword == "RUN"]
    wheel = "pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels ."
    assert any(r.endswith(wheel) for r in runs)
    # Every install is the lock's: hashed requirements exported by the pinned uv.
    locked = "pip install --no-cache-dir --require-hashes --no-deps -r"
    pip_installs = [part.strip() for r in runs for part in r.split("&&") if "pip install" in part]
    assert all(p.startswith(locked) or p.endswith("--no-deps /wheels/*.whl") for p in pip_installs)
    assert f"{locked} uv-bootstrap.txt" in pip_installs
    assert any("uv export --quiet --frozen --no-emit-project" in r for r in runs)
    assert any(p.startswith(f"{locked} /wheels/requirements.txt") for p in pip_installs)
    (check,) = [i.args for i in instructions if i.keyword == "HEALTHCHECK"]
    assert _words(check.partition("CMD ")[2])[0] == "python"  # slim has no curl or wget
    env = " ".join(dockerfile_args("ENV"))
    assert (
        f"CANARYPROXY_HEALTHCHECK_URL=http://127.0.0.1:{proxy_config().admin.listen.port}/healthz"
        in env
    )
    assert dockerfile_uid() != 0


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matches from the context root, ``**/`` at any depth."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.startswith("**/")
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(Path(prefix).name if anywhere else prefix, bare):
                return True
    return False


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)  # dockerignored() does not do negation
    copied = [w for i in dockerfile() if i.keyword == "COPY" for w in i.args.split()[:-1]]
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", "setup.py", readme, "canaryproxy"} <= set(copied)
    assert {"uv.lock", "uv-bootstrap.txt"} <= set(copied)
    for source in [*copied, "canaryproxy/cli.py"]:
        assert not dockerignored(source, patterns), source
    unwanted = [".git", ".venv", ".tools", "var/state.db", "canaryproxy/__pycache__/x.pyc", ".env"]
    unwanted += ["canaryproxy/engine/server.cpython-311-x86_64-linux-gnu.so"]
    assert not dockerignored("canaryproxy/var.py", ["var"])  # the check itself: root-anchored
    for path in unwanted:
        assert dockerignored(path, patterns), path


def test_the_docker_config_is_fit_for_a_container() -> None:
    (data,) = load_yaml(CONFIG / "docker.yaml")
    config = parse_config(data, env=ENV)
    assert config.listen.host == config.admin.listen.host == "0.0.0.0"  # published ports
    ports = {int(p) for p in dockerfile_args("EXPOSE")}
    assert {config.listen.port, config.admin.listen.port} == ports
    assert config.state.path.startswith(dockerfile_args("VOLUME")[0] + "/")  # on the volume
    hosts = {b.host for s in config.services.values() for b in s.stable.backends}
    assert "127.0.0.1" not in hosts  # the container itself: backends are reached by name
    readme = (CONFIG.parent / "README.md").read_text()
    assert "--stop-timeout" in readme
    assert "config/docker.yaml" in readme
    assert config.limits.drain_timeout < 40  # the README's --stop-timeout outlasts the drain
