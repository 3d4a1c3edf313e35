"""The chart's observability: the Grafana dashboard, the PrometheusRule alerts, /metrics behind a token.

Everything here is off by default; when on, every metric the dashboard and the alerts name must be one the
parts really export (read from their registries), and every one must be documented in docs/metrics.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peerbot.dispatcher.metrics import Metrics
from peerbot.metrics import OperatorMetrics
from tests.chart.rendering import CHART, REPO, Rendered, render

OBSERVABILITY_ON = {
    "metrics.podMonitoring.enabled": "true",
    "metrics.authToken.enabled": "true",
    "secrets.metricsAuthToken": "a-long-random-metrics-token",
    "metrics.grafanaDashboard.enabled": "true",
    "metrics.prometheusRule.enabled": "true",
    "metrics.prometheusRule.labels.release": "kube-prometheus-stack",
}
METRIC = re.compile(r"\bpeerbot_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


@pytest.fixture(scope="module")
def on() -> Rendered:
    return render([], OBSERVABILITY_ON)


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render([], {})


def exported() -> set[str]:
    """Every sample name the dispatcher and the operator can export."""
    names: set[str] = set()
    for registry in (Metrics().registry, OperatorMetrics().registry):
        names |= set(registry._names_to_collectors)  # the registry's own index of sample names
    return names


def referenced(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_everything_is_off_by_default(default: Rendered) -> None:
    assert default.of_kind("PrometheusRule") == []
    assert [c for c in default.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")] == []
    for deployment in default.of_kind("Deployment"):
        env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        assert "METRICS_AUTH_TOKEN" not in env


def test_the_dashboard_is_valid_json_for_grafanas_sidecar(on: Rendered) -> None:
    config_map = on.get("ConfigMap", "peerbot-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["peerbot.json"])
    assert dashboard["uid"] == "peerbot-overview"
    titles = [panel["title"] for panel in dashboard["panels"]]
    for needed in ("Turn error rate", "Availability", "Acknowledgement latency", "Mention to first progress"):
        assert any(title.startswith(needed) for title in titles), needed
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_and_alerts_name_only_metrics_that_exist(on: Rendered) -> None:
    dashboard = on.get("ConfigMap", "peerbot-dashboard")["data"]["peerbot.json"]
    rules = json.dumps(on.of_kind("PrometheusRule")[0]["spec"])
    names = exported()
    unknown = sorted(name for name in referenced(dashboard + rules) if name not in names)
    assert not unknown, f"named by the dashboard or the alerts but exported by no part: {unknown}"


def test_every_exported_metric_is_documented() -> None:
    documented = referenced((REPO / "docs" / "metrics.md").read_text())
    bases = set()
    for name in exported():
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in exported():
                break
        else:
            bases.add(name)
    missing = sorted(name for name in bases if name not in documented and name + "_total" not in documented)
    assert not missing, f"exported but not in docs/metrics.md: {missing}"


def test_alert_thresholds_are_the_playbooks(on: Rendered) -> None:
    rule = on.of_kind("PrometheusRule")[0]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}
    assert alerts["PeerbotTurnErrorRateHigh"]["expr"].strip().endswith("> 0.05")
    assert alerts["PeerbotTurnErrorRateHigh"]["labels"]["severity"] == "warning"
    assert alerts["PeerbotTurnErrorRateCritical"]["expr"].strip().endswith("> 0.1")
    assert alerts["PeerbotTurnErrorRateCritical"]["labels"]["severity"] == "critical"
    for name in (
        "PeerbotDispatcherDown",
        "PeerbotOperatorDown",
        "PeerbotSlowFirstProgress",
        "PeerbotCircuitOpen",
    ):
        assert name in alerts
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (REPO / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    for alert in alerts.values():
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert anchor in headings, f"{anchor}: no such heading in docs/operations.md (GitHub's anchors)"


def test_thresholds_are_values(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("metrics:\n  prometheusRule:\n    errorRateCritical: 0.2\n")
    rendered = render([values], OBSERVABILITY_ON)
    alerts = {
        r["alert"]: r
        for group in rendered.of_kind("PrometheusRule")[0]["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    }
    assert alerts["PeerbotTurnErrorRateCritical"]["expr"].strip().endswith("> 0.2")


def test_metrics_token_reaches_both_parts_and_the_scraper(on: Rendered) -> None:
    secret = on.of_kind("Secret")[0]
    assert "metrics-auth-token" in secret["data"]
    for component in ("dispatcher", "operator"):
        container = on.component("Deployment", component)["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["METRICS_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "metrics-auth-token"
    for monitoring in on.of_kind("PodMonitoring"):
        (endpoint,) = monitoring["spec"]["endpoints"]
        assert endpoint["authorization"]["type"] == "Bearer"
        assert endpoint["authorization"]["credentials"]["secret"]["key"] == "metrics-auth-token"


def test_dashboard_file_is_what_the_chart_ships() -> None:
    # The dashboard lives in files/ so it can be imported into Grafana by hand too.
    assert json.loads((CHART / "files" / "dashboards" / "peerbot.json").read_text())["title"] == "Peerbot"
