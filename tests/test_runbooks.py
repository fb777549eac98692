"""Runbooks: one per shipped alert, served by the sidecar at the URL the alert links to.

Each alert of rules/prometheus/ has docs/runbooks/<alert>.md; its ``runbook_url`` path is
``/runbooks/<alert>`` and resolves on a running sidecar (no credentials, like /metrics).
Unknown names are 404, paths cannot leave the runbooks, and Markdown cannot smuggle HTML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp.test_utils import TestClient

from sidecar.runtime import Components
from sidecar.web.runbooks import render_runbooks
from tests.support.settings import configuration_keys

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules" / "prometheus" / "incident-sla-alerts.yaml"
DOCS = REPO / "docs" / "runbooks"
CHART_DIR = REPO / "helm" / "incident-sla-sidecar"


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule shipped."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


ALERTS = [rule["alert"] for rule in alerts()]


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    """docs/runbooks/ holds exactly one Markdown file per shipped alert, titled with its name."""
    assert ALERTS
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(ALERTS)
    for alert in ALERTS:
        assert (DOCS / f"{alert}.md").read_text(encoding="utf-8").startswith(f"# {alert}\n")


@pytest.mark.parametrize("rule", alerts(), ids=ALERTS)
async def test_each_runbook_link_resolves_without_credentials(
    client: TestClient[Any, Any], rule: dict[str, Any]
) -> None:
    """The path of the alert's runbook_url answers 200 with its runbook as HTML, no token."""
    path = urlsplit(rule["annotations"]["runbook_url"]).path
    assert path == f"/runbooks/{rule['alert']}"
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    text = await response.text()
    assert f"<h1>{rule['alert']}</h1>" in text
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_index_lists_every_runbook(client: TestClient[Any, Any]) -> None:
    """GET /runbooks/ links each runbook."""
    response = await client.get("/runbooks/")
    assert response.status == 200
    text = await response.text()
    for alert in ALERTS:
        assert f'<a href="{alert}">{alert}</a>' in text


@pytest.mark.parametrize(
    "path",
    [
        "/runbooks/NoSuchAlert",
        "/runbooks/incidentslabreached",
        "/runbooks/IncidentSLABreached.md",
        "/runbooks/..%2F..%2Fpyproject.toml",
        "/runbooks/%2e%2e",
        "/runbooks/../web/openapi.yaml",
        "/runbooks/..%2Fweb%2Fopenapi.yaml",
    ],
)
async def test_unknown_names_and_traversal_are_not_found(
    client: TestClient[Any, Any], path: str
) -> None:
    """Anything but a shipped alert's name is 404 with a JSON reason; no file is ever read."""
    response = await client.get(path)
    assert response.status == 404
    body = await response.json()
    assert body["error"]


def test_markdown_cannot_inject_html(tmp_path: Path) -> None:
    """Raw HTML in a runbook is escaped and javascript: links are not made links."""
    (tmp_path / "Evil.md").write_text(
        "# Evil\n\n<script>alert(1)</script>\n\n[click](javascript:alert(1))\n",
        encoding="utf-8",
    )
    page = render_runbooks(tmp_path)["Evil"]
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page
    assert "<h1>Evil</h1>" in page


def _quoted() -> list[tuple[str, str]]:
    """Every backticked span of every runbook, with the runbook's name."""
    return [
        (path.stem, span)
        for path in sorted(DOCS.glob("*.md"))
        for span in re.findall(r"`([^`]+)`", path.read_text(encoding="utf-8"))
    ]


def test_runbooks_name_only_metrics_paths_and_keys_that_exist(components: Components) -> None:
    """Metric names, HTTP paths, configuration keys and chart values a runbook names all exist.

    So that a runbook does not rot when a metric, a route or a setting is renamed.
    """
    samples = {
        f"{family.name}{suffix}"
        for family in components.registry.collect()
        for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    spec = yaml.safe_load((REPO / "sidecar/web/openapi.yaml").read_text(encoding="utf-8"))
    routes = [
        re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$")
        for path in spec["paths"]
    ]
    settings = set(configuration_keys())
    sections = {key.split(".")[0] for key in settings}
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    wrong = []
    for runbook, span in _quoted():
        for metric in re.findall(r"\bincident_sla_[a-z_]+", span):
            if metric not in samples:
                wrong.append(f"{runbook}: metric {metric}")
        for path in re.findall(r"(?:^|(?:GET|POST) )(/[^\s?`]*)", span):
            if not any(route.match(path) for route in routes):
                wrong.append(f"{runbook}: path {path}")
        if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", span) and span.split(".")[0] in sections:
            if span not in settings:
                wrong.append(f"{runbook}: configuration key {span}")
        elif re.fullmatch(r"[a-z][A-Za-z]*(\.[A-Za-z]+)+", span) and span.split(".")[0] in values:
            node: Any = values
            for part in span.split("."):
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    wrong.append(f"{runbook}: chart value {span}")
                    break
    assert wrong == []
    assert len(_quoted()) > 20  # the check reads the runbooks at all
