"""deploy/grafana/moodtunes-dashboard.json: a Grafana dashboard over the metrics Prometheus scrapes.

Valid JSON with the fields Grafana needs to import it; every panel's queries select only metrics of
the contract (test_prometheus.CONTRACT, itself checked against the code) with labels they have;
panels do not overlap; and, with promtool installed, every query parses (as a recording rule of a
generated rule file, Grafana's $__rate_interval read as 5m)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import test_prometheus as P

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "moodtunes-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# What the issue asks the dashboard to show, as (panel title words, metric in its queries).
REQUIRED = [
    ("outcome", "moodtunes_task_outcomes_total"),
    ("queue depth", "moodtunes_queue_depth"),
    ("stage latency", "moodtunes_stage_duration_seconds_bucket"),
    ("model call latency", "moodtunes_model_call_duration_seconds_bucket"),
    ("batch size", "moodtunes_model_call_batch_size_sum"),
    ("requests/s by route", "http_requests_total"),
    ("latency p50 / p95 by route", "http_request_duration_seconds_bucket"),
    ("rejections", "moodtunes_gateway_rejections_total"),
    ("unfinished jobs", "moodtunes_jobs_unfinished"),
    ("in flight", "moodtunes_tasks_in_flight"),
]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out += panel.get("panels") or []  # a collapsed row's panels
    return out


def queries() -> list[tuple[str, str]]:
    return [
        (f"{p['title']} {t['refId']}", t["expr"])
        for p in panels(dashboard())
        if p["type"] != "row"
        for t in p["targets"]
    ]


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a template variable Prometheus cannot read: {expr}"
    return expr


def test_the_dashboard_is_importable():
    dash = dashboard()
    assert dash["title"] and re.fullmatch(r"[\w-]{1,40}", dash["uid"])
    assert isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "bargauge", "table"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_panels_fit_the_grid_without_overlapping():
    cells = set()
    for p in panels(dashboard()):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


@pytest.mark.parametrize("where,expr", queries(), ids=[w for w, _ in queries()])
def test_queries_use_only_contract_metrics(where, expr):
    assert not P.contract_problems(as_promql(expr)), P.contract_problems(as_promql(expr))


def test_the_panels_the_issue_asks_for():
    shown = [
        (p["title"].lower(), " ".join(t["expr"] for t in p.get("targets") or [])) for p in panels(dashboard())
    ]
    for words, metric in REQUIRED:
        assert any(words in title and metric in exprs for title, exprs in shown), (
            f"no panel {words!r} on {metric}"
        )


@pytest.mark.skipif(shutil.which("promtool") is None, reason=P.NO_PROMTOOL)
def test_every_query_parses(tmp_path):
    rules = [
        {"record": f"moodtunes:dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
