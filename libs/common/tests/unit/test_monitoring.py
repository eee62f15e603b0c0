"""deploy/monitoring holds alert rules and a dashboard: they parse, and every metric and label they query is
one lumiku_common.metrics defines (a renamed metric fails here, not silently in production)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from lumiku_common import metrics

MONITORING = Path(__file__).parents[4] / "deploy" / "monitoring"
SELECTOR = re.compile(r"\b(lumiku_[a-z0-9_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
QUERY_LABELS = {"le"}  # histogram buckets' label


def defined() -> dict[str, set[str]]:
    """Every series name the code exposes, with its labels."""
    suffixes = {Counter: ("_total",), Gauge: ("",), Histogram: ("_bucket", "_count", "_sum")}
    names: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        for kind, endings in suffixes.items():
            if isinstance(metric, kind):
                base = metric._name  # without the _total a Counter adds
                labels = set(metric._labelnames)
                names.update(
                    {f"{base}{ending}": labels | ({"le"} if ending == "_bucket" else set()) for ending in endings}
                )
    return names


def alert_rules() -> list[dict]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def check_query(expr: str, known: dict[str, set[str]]) -> None:
    used = SELECTOR.findall(expr)
    assert used, f"queries no lumiku metric: {expr}"
    assert expr.count("(") == expr.count(")"), f"unbalanced: {expr}"
    labels_in_query: set[str] = set()
    for name, matchers in used:
        assert name in known, f"{name} is not defined in lumiku_common.metrics ({expr})"
        for label in MATCHER.findall(matchers):
            assert label in known[name], f"{name} has no label {label!r} ({expr})"
        labels_in_query |= known[name]
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in labels_in_query | QUERY_LABELS, f"no metric here has label {label!r} ({expr})"


def test_the_code_defines_the_metrics_the_issue_asks_for() -> None:
    known = defined()
    for name in (
        "lumiku_http_request_duration_seconds_count", "lumiku_outbox_pending",
        "lumiku_outbox_oldest_pending_age_seconds",
        "lumiku_outbox_published_total", "lumiku_outbox_publish_failures_total", "lumiku_consumer_messages_total",
        "lumiku_consumer_handler_duration_seconds_bucket", "lumiku_queue_messages", "lumiku_dlq_messages",
        "lumiku_credits_holds_active", "lumiku_credits_holds_expired_total", "lumiku_generation_jobs",
        "lumiku_provider_request_duration_seconds_bucket", "lumiku_provider_errors_total",
        "lumiku_avatars_upload_stage_duration_seconds_bucket", "lumiku_gateway_rate_limited_total",
    ):  # fmt: skip
        assert name in known


def test_alert_rules_cover_the_issue_and_query_only_defined_metrics() -> None:
    rules, known = alert_rules(), defined()
    for rule in rules:
        assert rule["alert"].startswith("Lumiku") and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        check_query(rule["expr"], known)
    queried = " ".join(rule["expr"] for rule in rules)
    for needed in (
        "lumiku_dlq_messages", "lumiku_outbox_oldest_pending_age_seconds", 'status=~"5.."',
        "lumiku_credits_holds_expired_total", "lumiku_provider_errors_total", "lumiku_queue_messages",
    ):  # fmt: skip
        assert needed in queried
    assert re.search(r"lumiku_outbox_oldest_pending_age_seconds\)\s*>\s*30\b", queried)


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_queries_only_defined_metrics(expr: str) -> None:
    check_query(expr, defined())


def test_the_checks_catch_drift() -> None:
    known = defined()
    for broken in (
        "max(lumiku_dlq_depth) > 0",  # a name the code does not define
        'sum(rate(lumiku_http_request_duration_seconds_count{code="500"}[5m]))',  # a label it does not have
        "sum by (route) (lumiku_queue_messages)",  # grouping by a label no metric here has
    ):
        with pytest.raises(AssertionError):
            check_query(broken, known)
