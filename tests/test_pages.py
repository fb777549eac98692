"""The pages for people, in process: what they show, who may read them, and their forms.

The browser test (tests/test_browser.py) drives the same pages in Chromium; these
check the details quickly: escaping, CSRF, the credentials matrix, paging.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sidecar.clock import FakeClock
from sidecar.config import load_config
from sidecar.errors import ConfigError
from sidecar.runtime import Components
from tests.conftest import API_TOKEN, READ_AUTH, WEBHOOK_TOKEN, write_config
from tests.payloads import alert, body, notification
from tests.support.readers import basic_auth_header, write_users_file

Client = TestClient[Any, Any]
HOOK = "/webhook/alertmanager"
NOBODY = {"Authorization": ""}


async def fire(client: Client, auth: dict[str, str], **kw: Any) -> str:
    group = kw.pop("group_key", '{}:{alertname="DBDown"}')
    resp = await client.post(
        HOOK, data=body(notification(alert(**kw), group_key=group)), headers=auth
    )
    assert resp.status == 200, await resp.text()
    incident_id: str = (await resp.json())["changed"][0]["id"]
    return incident_id


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the page has no form token"
    return found.group(1)


async def test_the_incident_page_shows_clocks_alerts_links_and_the_review(
    client: Client, auth: dict[str, str], clock: FakeClock
) -> None:
    incident_id = await fire(client, auth, labels={"severity": "critical", "service": "db"})
    clock.advance(60)
    resp = await client.get(f"/incidents/{incident_id}")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-store"
    page = await resp.text()
    assert "DBDown: DBDown is happening" in page
    assert "signed in as <strong>reader</strong>" in page
    # Every SLA of P0 with its target; the acknowledgment clock is running.
    for title in ("Time to detect", "Time to acknowledge", "Status update cadence"):
        assert title in page
    assert re.search(r"Time to acknowledge</td><td[^>]*>5m</td>.*?>4m left</td>", page, re.S)
    assert "breached" in page  # declared 10 minutes after it started: detection missed
    # The alert's source and its Alertmanager, escaped into attributes.
    assert 'href="http://prometheus.example:9090/graph?g0.expr=DBDown"' in page
    assert 'href="http://alertmanager.example:9093/#/alerts?silenced=false&amp;filter=' in page
    assert f'href="/incidents/{incident_id}/review.md"' in page
    assert "<h1>" in page and "Post-incident review" in page
    assert 'action="/incidents/' + incident_id + '/acknowledge"' in page


async def test_the_list_puts_open_incidents_first_and_filters(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], clock: FakeClock
) -> None:
    first = await fire(client, auth, name="Old", fingerprint="1" * 16, group_key="g1")
    clock.advance(10)
    second = await fire(
        client,
        auth,
        name="Crit",
        fingerprint="2" * 16,
        group_key="g2",
        labels={"severity": "critical", "service": "db"},
    )
    resp = await client.post(f"/api/v1/incidents/{first}/resolve", headers=api_auth)
    assert resp.status == 200
    page = await (await client.get("/incidents")).text()
    open_part, _, resolved_part = page.partition("<h2>Resolved")
    assert f"/incidents/{second}" in open_part and f"/incidents/{first}" not in open_part
    assert f"/incidents/{first}" in resolved_part
    assert "acknowledge: " in open_part and " left" in open_part
    only_db = await (await client.get("/incidents?team=db")).text()
    assert f"/incidents/{second}" in only_db and f"/incidents/{first}" not in only_db
    only_p2 = await (await client.get("/incidents?severity=P2&state=resolved")).text()
    assert f"/incidents/{first}" in only_p2 and f"/incidents/{second}" not in only_p2
    for query in ("state=closed", "severity=P9", "team=nobody", "page=0", "page=x"):
        bad = await client.get(f"/incidents?{query}")
        assert bad.status == 400, query
        assert (await bad.json())["error"]


async def test_number_status_and_incident_commander_show_in_the_list_and_on_the_page(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], clock: FakeClock
) -> None:
    incident_id = await fire(client, auth)
    roles = {"incident_commander": "alice", "smes": ["bob", "carol"]}
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/roles", json={"roles": roles}, headers=api_auth
    )
    assert resp.status == 200, await resp.text()
    clock.advance(120)
    update = {"message": "found it", "status": "Identified"}
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/updates", json=update, headers=api_auth
    )
    assert resp.status == 200, await resp.text()
    number = (await resp.json())["number"]
    assert number == "2023-11-14-001"
    listed = await (await client.get("/incidents")).text()
    assert number in listed
    assert 'data-label="Status">Identified</td>' in listed
    assert 'data-label="IC">alice</td>' in listed
    # The page by its plan number is the page by its id.
    by_number = await client.get(f"/incidents/{number}")
    assert by_number.status == 200
    page = await by_number.text()
    assert page == await (await client.get(f"/incidents/{incident_id}")).text()
    assert f'<strong class="number">{number}</strong>' in page
    assert f"war room <code>#incident-{number}</code>" in page
    assert re.search(
        r'status <strong class="status">Identified</strong> <small>since 2023-11-14 22:25:20 UTC',
        page,
    )
    assert "<dt>Incident Commander</dt><dd>alice</dd>" in page
    assert "<dt>Subject Matter Experts</dt><dd>bob, carol</dd>" in page
    assert '<dt>Scribe</dt><dd><span class="empty">not assigned</span></dd>' in page
    missing = await client.get("/incidents/2023-11-14-002")
    assert missing.status == 404


BUSINESS_RULES = """\
name: evenings
severities:
  - name: P1
    title: High
    paging: page
    pagerduty_severity: error
    sla: {acknowledge: {target: 4h, calendar: evenings}, resolve: 1d}
teams: [ops]
default_severity: P1
default_team: ops
time_intervals:
  - name: tuesday-evening
    time_intervals:
      - {weekdays: [tuesday], times: [{start_time: '22:00', end_time: '23:00'}], location: UTC}
calendars:
  - {name: evenings, active_time_intervals: [tuesday-evening]}
"""


async def test_a_business_time_clock_shows_the_time_counted_and_its_calendar(
    aiohttp_client: Any, tmp_path: Path, clock: FakeClock
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.web import create_app

    rules = tmp_path / "evenings.yaml"
    rules.write_text(BUSINESS_RULES, encoding="utf-8")
    config = load_config(write_config(tmp_path, {"rules": {"file": str(rules)}}))
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    # Tuesday 22:23:20 UTC; 90 minutes later 36m 40s of the evening hour have been counted.
    incident_id = await fire(client, {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, labels={})
    clock.advance(90 * 60)
    page = await (await client.get(f"/incidents/{incident_id}")).text()
    acknowledge = re.search(r"Time to acknowledge</td>(.*?)</tr>", page, re.S)
    assert acknowledge, page
    row = acknowledge.group(1)
    assert ">4h <small>business time</small></td>" in row
    assert 'class="counted">36m 40s <small>calendar <code>evenings</code></small></td>' in row
    resolve = re.search(r"Time to resolve</td>(.*?)</tr>", page, re.S)
    # On the wall clock: measured and left as wall time, no business time shown.
    assert resolve and 'class="counted"></td>' in resolve.group(1)
    assert ">22h 20m left</td>" in resolve.group(1)


async def test_resolved_incidents_are_paged(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], clock: FakeClock
) -> None:
    ids = []
    for i in range(27):
        clock.advance(1)
        ids.append(
            await fire(client, auth, name=f"A{i}", fingerprint=f"{i:016x}", group_key=f"g{i}")
        )
        assert (await client.post(f"/api/v1/incidents/{ids[-1]}/resolve", headers=api_auth)).ok
    first = await (await client.get("/incidents?state=resolved")).text()
    second = await (await client.get("/incidents?state=resolved&page=2")).text()
    # Newest first, 25 a page; the second holds the two oldest.
    assert f"/incidents/{ids[-1]}" in first and f"/incidents/{ids[1]}" not in first
    assert f"/incidents/{ids[0]}" in second and f"/incidents/{ids[1]}" in second
    assert 'rel="next"' in first and 'rel="next"' not in second
    assert 'rel="prev"' in second


async def test_labels_and_annotations_cannot_inject_html_or_script_links(
    client: Client, auth: dict[str, str], api_auth: dict[str, str]
) -> None:
    evil = "<script>alert(1)</script>"
    payload = alert(labels={"team_hint": evil}, annotations={"summary": f"**x** {evil}"})
    payload["generatorURL"] = "javascript:alert(1)"
    resp = await client.post(HOOK, data=body(notification(payload)), headers=auth)
    incident_id = (await resp.json())["changed"][0]["id"]
    await client.post(
        f"/api/v1/incidents/{incident_id}/updates",
        json={"message": f"<img src=x onerror=alert(1)> {evil}"},
        headers=api_auth,
    )
    page = await (await client.get(f"/incidents/{incident_id}")).text()
    assert "<script>" not in page and "<img" not in page
    assert html.escape(evil) in page  # shown, as text
    # Never a link (the review's Markdown may mention it, as text).
    assert not re.search(r"href=[\"']?\s*javascript", page, re.I)
    listed = await (await client.get("/incidents")).text()
    assert "<script>" not in listed


async def test_the_review_downloads_as_markdown(client: Client, auth: dict[str, str]) -> None:
    incident_id = await fire(client, auth)
    resp = await client.get(f"/incidents/{incident_id}/review.md")
    assert resp.status == 200
    assert resp.content_type == "text/markdown"
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="incident-{incident_id}-review.md"'
    )
    assert f"/incidents/{incident_id}" in await resp.text()


async def test_forms_act_as_the_signed_in_user_with_their_csrf_token(
    client: Client, auth: dict[str, str], clock: FakeClock
) -> None:
    incident_id = await fire(client, auth)
    page = await (await client.get(f"/incidents/{incident_id}")).text()
    token = csrf_of(page)
    url = f"/incidents/{incident_id}"
    # No token, a wrong token, another identity's token: refused, nothing changes.
    for form, headers in (
        ({}, None),
        ({"csrf": "0" * 64}, None),
        ({"csrf": token}, {"Authorization": f"Bearer {API_TOKEN}"}),
    ):
        resp = await client.post(f"{url}/acknowledge", data=form, headers=headers)
        assert resp.status == 403, await resp.text()
    resp = await client.post(f"{url}/acknowledge", json={"csrf": token})
    assert resp.status == 400  # a form, or nothing
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["state"] == "triggered"
    clock.advance(30)
    resp = await client.post(f"{url}/acknowledge", data={"csrf": token}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == url
    resp = await client.post(f"{url}/update", data={"csrf": token, "message": "  "})
    assert resp.status == 409
    # The plan's statuses are offered; one outside them is refused and changes nothing.
    assert re.search(
        r'<select id="status" name="status".*?<option value="">status unchanged '
        r'\(Investigating\)</option>\s*<option value="Investigating">',
        page,
        re.S,
    )
    assert '<option value="Monitoring">Monitoring</option>' in page
    bad = {"csrf": token, "message": "x", "status": "Fixed"}
    resp = await client.post(f"{url}/update", data=bad)
    assert resp.status == 400
    assert "Investigating, Identified, Monitoring, Resolved" in (await resp.json())["error"]
    resp = await client.post(
        f"{url}/update", data={"csrf": token, "message": "DB failing over", "status": "Identified"}
    )
    assert resp.status == 200  # followed to the page
    assert 'status <strong class="status">Identified</strong>' in await resp.text()
    resp = await client.post(
        f"{url}/update", data={"csrf": token, "message": "still", "status": ""}
    )
    assert resp.status == 200  # "unchanged": the status stays
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert (view["state"], view["acknowledged_by"], view["acknowledge_source"]) == (
        "acknowledged",
        "reader",
        "web",
    )
    assert view["status"] == "Identified"
    update = [e for e in view["timeline"] if e["kind"] == "status_update"]
    assert [(e["actor"], e["source"], e["message"]) for e in update] == [
        ("reader", "web", "[Identified] DB failing over"),
        ("reader", "web", "still"),
    ]
    resp = await client.post(f"{url}/resolve", data={"csrf": token}, allow_redirects=False)
    assert resp.status == 303
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert (view["state"], view["resolved_by"]) == ("resolved", "reader")
    page = await (await client.get(url)).text()
    assert 'name="csrf"' not in page  # nothing left to do


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/incidents", NOBODY, 401),
        ("/api/v1/incidents", NOBODY, 401),
        ("/api/v1/incidents", {"Authorization": basic_auth_header("reader", "wrong")}, 401),
        ("/api/v1/incidents", {"Authorization": basic_auth_header("ghost", "x")}, 401),
        # bcrypt refuses passwords over 72 bytes: a refusal, not an error.
        ("/api/v1/incidents", {"Authorization": basic_auth_header("reader", "p" * 100)}, 401),
        ("/api/v1/incidents", {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, 401),
        ("/api/v1/incidents", {"Authorization": "Basic !!!"}, 401),
        ("/api/v1/incidents", {"Authorization": f"Bearer {API_TOKEN}"}, 200),
        ("/api/v1/incidents", {"Authorization": READ_AUTH}, 200),
        ("/incidents", {"Authorization": READ_AUTH}, 200),
        ("/incidents", {**NOBODY, "X-Forwarded-User": "mallory"}, 401),  # trusted only if set
        ("/metrics", NOBODY, 200),
        ("/healthz", NOBODY, 200),
        ("/readyz", NOBODY, 200),
        ("/static/style.css", NOBODY, 200),
        ("/openapi.yaml", NOBODY, 200),
        ("/runbooks/", NOBODY, 200),
    ],
)
async def test_reads_need_credentials_except_the_operational_endpoints(
    client: Client, path: str, headers: dict[str, str], status: int
) -> None:
    resp = await client.get(path, headers=headers)
    assert resp.status == status, await resp.text()
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="incident-sla-sidecar"')


async def test_behind_an_authenticating_proxy_its_user_header_is_trusted(
    aiohttp_client: Any, tmp_path: Path, clock: FakeClock
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.web import create_app

    config = load_config(
        write_config(tmp_path, {"server": {"trusted_user_header": "X-Forwarded-User"}})
    )
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components), headers=NOBODY)
    incident_id = await fire(client, {"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert (await client.get("/incidents")).status == 401
    who = {"X-Forwarded-User": "alice@example.com"}
    page = await (await client.get(f"/incidents/{incident_id}", headers=who)).text()
    assert "signed in as <strong>alice@example.com</strong>" in page
    resp = await client.post(
        f"/incidents/{incident_id}/acknowledge",
        data={"csrf": csrf_of(page)},
        headers=who,
        allow_redirects=False,
    )
    assert resp.status == 303
    view = await (await client.get(f"/api/v1/incidents/{incident_id}", headers=who)).json()
    assert view["acknowledged_by"] == "alice@example.com"


async def test_bcrypt_checks_are_remembered_only_for_the_right_password(
    client: Client, components: Components
) -> None:
    from sidecar.web.signin import READERS

    readers = client.app[READERS]
    assert (await client.get("/api/v1/incidents")).status == 200
    assert len(readers._good) == 1
    wrong = {"Authorization": basic_auth_header("reader", "reader-passwordX")}
    assert (await client.get("/api/v1/incidents", headers=wrong)).status == 401
    assert len(readers._good) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users: {}\n", "no users"),
        ("tls_server_config:\n  cert_file: x\n", "set server.tls_cert_file"),
        ("basic_auth: {}\n", "unknown key"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_a_bad_users_file_refuses_to_start_naming_the_line(
    tmp_path: Path, text: str, reason: str
) -> None:
    users = tmp_path / "web-config.yml"
    config = write_config(tmp_path, {"server": {"web_config_file": str(users)}})
    users.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert reason in str(caught.value)
    assert str(users) in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_users_file_from_htpasswd_with_2y_hashes_is_read(tmp_path: Path) -> None:
    users = write_users_file(tmp_path / "web.yml", {"bob": "pw"})
    users.write_text(users.read_text().replace("$2b$", "$2y$"))
    config = load_config(write_config(tmp_path, {"server": {"web_config_file": str(users)}}))
    assert set(config.secrets.users) == {"bob"}


async def test_pagerduty_events_link_to_the_page_at_the_external_url(
    aiohttp_client: Any, tmp_path: Path, clock: FakeClock
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.web import create_app

    overrides = {
        "server": {"external_url": "https://incidents.example.com/"},
        # Nothing listens there: the event stays queued, which is all this test reads.
        "pagerduty": {"routing_key": "r" * 32, "events_url": "http://127.0.0.1:9/v2/enqueue"},
    }
    config = load_config(write_config(tmp_path, overrides))
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    incident_id = await fire(client, {"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    [event] = await components.store.outbox_for_incident(incident_id)
    sent = json.loads(event.body)
    page = f"https://incidents.example.com/incidents/{incident_id}"
    assert sent["client_url"] == page
    assert page in [link["href"] for link in sent["links"]]
    shown = await (await client.get(f"/incidents/{incident_id}")).text()
    row = 'data-label="Integration">pagerduty</td><td data-label="Action">trigger'
    assert row in shown
    review = await (await client.get(f"/incidents/{incident_id}/review.md")).text()
    assert page in review


async def test_password_checks_wait_on_their_own_thread_and_a_flood_is_refused_at_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from sidecar.web import signin

    # bcrypt, held: every check waits until the test lets it go.
    release = threading.Event()
    started = threading.Semaphore(0)

    def held_checkpw(password: bytes, hashed: bytes) -> bool:
        started.release()
        release.wait()
        return False

    monkeypatch.setattr(signin, "_checkpw", held_checkpw)
    bad = {"Authorization": basic_auth_header("mallory", "guess")}
    waiting = [
        asyncio.ensure_future(client.get("/api/v1/incidents", headers=bad))
        for _ in range(signin._MAX_CHECKS_WAITING)
    ]
    await asyncio.to_thread(started.acquire)  # the one bcrypt thread is busy
    readers = client.app[signin.READERS]
    while readers._waiting < signin._MAX_CHECKS_WAITING:
        await asyncio.sleep(0.01)
    # The next one is refused without waiting, and the loop's default executor
    # (where aiohttp resolves PagerDuty's and Slack's names) stays free.
    assert (await client.get("/api/v1/incidents", headers=bad)).status == 401
    assert await asyncio.get_running_loop().run_in_executor(None, lambda: 42) == 42
    release.set()
    assert {(await w).status for w in waiting} == {401}
