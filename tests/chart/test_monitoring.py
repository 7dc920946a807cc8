"""The PrometheusRule's alerts on the API server's own admission webhook metrics (kube-apiserver,
staging/src/k8s.io/apiserver/pkg/admission/metrics): failing open must be visible, not only our
target being down. Names and labels are those of kube-apiserver 1.30 and later."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from e2e.cluster.plane import prometheus_path
from tests.chart.rendering import of_kind, one, rendered

APISERVER_ALERTS = {
    "ComptrollerWebhookFailingOpen": {"apiserver_admission_webhook_fail_open_count"},
    "ComptrollerWebhookCallErrors": {
        "apiserver_admission_webhook_fail_open_count",
        "apiserver_admission_webhook_rejection_count",
        "apiserver_admission_webhook_request_total",
    },
    "ComptrollerWebhookLatencyNearTimeout": {"apiserver_admission_webhook_admission_duration_seconds_bucket"},
}
NAME_MATCHER = re.compile(r'name=~"((?:[^"\\]|\\.)*)"')


def alerts(values: dict) -> dict[str, dict]:
    rule = one(rendered({"prometheusRule": {"enabled": True}, **values}), "PrometheusRule")
    groups = rule["spec"]["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def webhook_names(values: dict) -> set[str]:
    """The webhooks the chart registers with these values, as rendered."""
    objects = rendered(values)
    return {
        hook["name"]
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
        for config in of_kind(objects, kind)
        for hook in config["webhooks"]
    }


def matched_names(expr: str) -> list[re.Pattern[str]]:
    """Every `name=~"..."` matcher of `expr`, as the regular expression Prometheus compiles (anchored)."""
    matchers = NAME_MATCHER.findall(expr)
    assert matchers, f"no name matcher in {expr}"
    # A PromQL double-quoted string unescapes like Go: `\\.` is the regex `\.`.
    return [re.compile(json.loads(f'"{m}"')) for m in matchers]


WEBHOOK_VALUES = [
    {},
    {"webhook": {"mutating": {"enabled": False}}},
    {"webhook": {"validating": {"enabled": False}}},
]


@pytest.mark.parametrize("values", WEBHOOK_VALUES, ids=["both", "validating-only", "mutating-only"])
def test_apiserver_alerts_name_exactly_the_webhooks_the_chart_registers(values):
    names = webhook_names(values)
    assert names
    rules = alerts(values)
    for alert, metrics in APISERVER_ALERTS.items():
        expr = rules[alert]["expr"]
        for metric in metrics:
            assert re.search(rf"\b{metric}\{{", expr), f"{alert}: {metric} missing from {expr}"
        # Balanced, and every selector of an API server metric is scoped to our webhooks.
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        selectors = re.findall(r"apiserver_admission_webhook_\w+\{([^}]*)\}", expr)
        assert len(selectors) == len(matched_names(expr)), f"{alert}: a selector without `name=~`"
        for pattern in matched_names(expr):
            assert {n for n in names if pattern.fullmatch(n)} == names
            assert not pattern.fullmatch("validate.finops.comptroller.dev.evil")
            assert not pattern.fullmatch("validateXfinopsXcomptrollerXdev")
        assert rules[alert]["labels"]["severity"] in {"warning", "critical"}
        assert "{{ $labels.name }}" in rules[alert]["annotations"]["summary"]


def test_no_apiserver_alerts_without_webhooks():
    rules = alerts({"webhook": {"validating": {"enabled": False}, "mutating": {"enabled": False}}})
    assert not set(APISERVER_ALERTS) & set(rules)


def test_fail_open_alert_counts_increases_of_the_fail_open_counter():
    expr = alerts({})["ComptrollerWebhookFailingOpen"]["expr"]
    increase = r"increase\(apiserver_admission_webhook_fail_open_count\{[^}]*\}\[\w+\]\)"
    assert re.search(increase + r"\)\s*>\s*0", expr)


def test_call_errors_alert_counts_calling_and_internal_errors_not_denials():
    expr = alerts({})["ComptrollerWebhookCallErrors"]["expr"]
    assert 'error_type=~"calling_webhook_error|apiserver_internal_error"' in expr
    assert "no_error" not in expr  # a webhook's own denial is not an error
    assert expr.rstrip().endswith("> 0.05")
    assert float(alerts({"prometheusRule": {"enabled": True, "webhookErrorRatio": 0.2}})[
        "ComptrollerWebhookCallErrors"]["expr"].rstrip().rsplit(">", 1)[1]) == 0.2


@pytest.mark.parametrize(("policy", "severity"), [("Ignore", "warning"), ("Fail", "critical")])
def test_call_errors_severity_follows_the_failure_policy(policy, severity):
    rule = alerts({"webhook": {"failurePolicy": policy}})["ComptrollerWebhookCallErrors"]
    assert rule["labels"]["severity"] == severity
    assert ("admitted unchecked" if policy == "Ignore" else "refused") in rule["annotations"]["description"]


@pytest.mark.parametrize("timeout", [3, 10])
def test_latency_alert_fires_at_80_percent_of_the_webhook_timeout(timeout):
    expr = alerts({"webhook": {"timeoutSeconds": timeout}})["ComptrollerWebhookLatencyNearTimeout"]["expr"]
    assert "histogram_quantile(0.99," in expr
    assert "by (name, le)" in expr
    assert float(expr.rstrip().rsplit(">", 1)[1]) == pytest.approx(0.8 * timeout)


def test_extra_alert_labels_reach_the_apiserver_alerts():
    rules = alerts({"prometheusRule": {"enabled": True, "additionalAlertLabels": {"team": "platform"}}})
    for alert in APISERVER_ALERTS:
        assert rules[alert]["labels"]["team"] == "platform"


@pytest.mark.skipif(not prometheus_path().exists(), reason="no cached Prometheus (bash e2e/cluster/build.sh)")
@pytest.mark.parametrize("values", [{}, {"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10}}],
                         ids=["defaults", "fail-closed"])
def test_prometheus_loads_the_rules(values, tmp_path):
    """No promtool is cached, but Prometheus itself parses every rule file at startup and exits 2
    on one it cannot parse: it must get as far as "ready"."""
    rule = one(rendered({"prometheusRule": {"enabled": True}, **values}), "PrometheusRule")
    spec = copy.deepcopy(rule["spec"])
    (tmp_path / "rules.yml").write_text(json.dumps(spec))
    (tmp_path / "prometheus.yml").write_text(json.dumps({"rule_files": ["rules.yml"]}))
    assert prometheus_accepts(tmp_path), "Prometheus refused the rules"
    # The check can fail: a broken expression is refused.
    spec["groups"][0]["rules"][0]["expr"] += " )"
    (tmp_path / "rules.yml").write_text(json.dumps(spec))
    assert not prometheus_accepts(tmp_path)


def prometheus_accepts(directory: Path) -> bool:
    with tempfile.TemporaryDirectory() as data, subprocess.Popen(
        [str(prometheus_path()), f"--config.file={directory / 'prometheus.yml'}",
         f"--storage.tsdb.path={data}", "--web.listen-address=127.0.0.1:0", "--log.level=info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if "Server is ready to receive web requests" in line:
                    return True
                if "Error loading" in line:
                    return False
            return False
        finally:
            process.terminate()
            process.wait(timeout=30)
