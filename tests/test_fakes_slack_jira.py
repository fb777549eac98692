"""The Slack and Jira fakes behave as their vendors document (what the sidecar's tests rely on).

Slack's fake is exercised through ``slack_sdk`` itself, as the sidecar calls it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.jira import API_TOKEN, EMAIL, FakeJira
from tests.fakes.slack import FakeSlack


@pytest.fixture
async def slack() -> AsyncIterator[tuple[FakeSlack, AsyncWebClient]]:
    async with FakeSlack(channels={"incidents": "C0INCIDENTS"}) as fake:
        client = AsyncWebClient(token=fake.token, base_url=fake.api_url, retry_handlers=[])
        yield fake, client


async def test_post_reply_and_update_keep_one_thread(
    slack: tuple[FakeSlack, AsyncWebClient],
) -> None:
    fake, client = slack
    assert (await client.auth_test())["ok"] is True
    head = await client.chat_postMessage(channel="#incidents", text="head")
    assert head["channel"] == "C0INCIDENTS"  # a name in, the ID out
    reply = await client.chat_postMessage(channel=head["channel"], thread_ts=head["ts"], text="r")
    assert reply["message"]["thread_ts"] == head["ts"]
    await client.chat_update(channel=head["channel"], ts=head["ts"], text="head v2")
    [message] = fake.channel_messages("C0INCIDENTS")
    assert (message.text, message.edits) == ("head v2", ["head"])
    assert [r.text for r in fake.replies("C0INCIDENTS", head["ts"])] == ["r"]


@pytest.mark.parametrize(
    ("arrange", "call", "error"),
    [
        (None, "post-unknown", "channel_not_found"),
        (None, "update-by-name", "channel_not_found"),
        (None, "update-missing", "message_not_found"),
        ("revoke", "post", "token_revoked"),
        ("bad-token", "post", "invalid_auth"),
        ("inject", "post", "is_archived"),
    ],
)
async def test_errors_are_ok_false_with_slacks_code(
    slack: tuple[FakeSlack, AsyncWebClient], arrange: str | None, call: str, error: str
) -> None:
    fake, client = slack
    if arrange == "revoke":
        fake.revoke(fake.token)
    elif arrange == "bad-token":
        client = AsyncWebClient(token="xoxb-wrong", base_url=fake.api_url, retry_handlers=[])
    elif arrange == "inject":
        fake.fail_next("is_archived")
    with pytest.raises(SlackApiError) as caught:
        if call == "post-unknown":
            await client.chat_postMessage(channel="#nope", text="x")
        elif call == "update-by-name":
            await client.chat_update(channel="#incidents", ts="1.0", text="x")
        elif call == "update-missing":
            await client.chat_update(channel="C0INCIDENTS", ts="1.0", text="x")
        else:
            await client.chat_postMessage(channel="#incidents", text="x")
    assert caught.value.response.status_code == 200
    assert caught.value.response["error"] == error


async def test_rate_limits_answer_429_with_retry_after(
    slack: tuple[FakeSlack, AsyncWebClient],
) -> None:
    fake, client = slack
    fake.rate_limit_next(retry_after=7)
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="#incidents", text="x")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "7"
    fake.per_channel_per_second = 1
    await client.chat_postMessage(channel="#incidents", text="one")
    with pytest.raises(SlackApiError) as second:
        await client.chat_postMessage(channel="#incidents", text="two")
    assert second.value.response["error"] == "ratelimited"


def _auth(email: str = EMAIL, token: str = API_TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()}


ADF = {"type": "doc", "version": 1, "content": []}


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"project": {"key": "NOPE"}, "issuetype": {"name": "Task"}, "summary": "s"},
         {"project": "valid project is required"}),
        ({"project": {"key": "OPS"}, "issuetype": {"name": "Epic"}, "summary": "s"},
         {"issuetype": "Specify a valid issue type"}),
        ({"project": {"key": "OPS"}, "issuetype": {"name": "Task"}, "summary": ""},
         {"summary": "You must specify a summary of the issue."}),
        ({"project": {"key": "OPS"}, "issuetype": {"name": "Task"}, "summary": "s",
          "description": "plain text is v2's"},
         {"description": "Operation value must be an Atlassian Document (see the Atlassian "
                         "Document Format)"}),
    ],
)  # fmt: skip
async def test_jira_refuses_invalid_fields_with_its_error_collection(
    fields: dict[str, object], errors: dict[str, str]
) -> None:
    async with FakeJira(projects={"OPS": ["Task"]}) as jira, aiohttp.ClientSession() as http:
        url = f"{jira.base_url}/rest/api/3/issue"
        async with http.post(url, json={"fields": fields}, headers=_auth()) as resp:
            assert resp.status == 400
            assert await resp.json() == {"errorMessages": [], "errors": errors}
        assert jira.issues == []


async def test_jira_creates_with_basic_auth_only() -> None:
    fields = {
        "project": {"key": "OPS"},
        "issuetype": {"name": "Task"},
        "summary": "s",
        "description": ADF,
    }
    async with FakeJira(projects={"OPS": ["Task"]}) as jira, aiohttp.ClientSession() as http:
        url = f"{jira.base_url}/rest/api/3/issue"
        async with http.post(url, json={"fields": fields}, headers=_auth(token="x")) as resp:
            assert resp.status == 401
        async with http.post(url, json={"fields": fields}, headers=_auth()) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["key"] == "OPS-1"
        assert created["self"] == f"{jira.base_url}/rest/api/3/issue/{created['id']}"
        jira.rate_limit_next(retry_after=3)
        async with http.post(url, json={"fields": fields}, headers=_auth()) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
