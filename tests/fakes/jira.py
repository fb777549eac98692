"""A fake Jira Cloud for tests: REST API v3 "Create issue" (``POST /rest/api/3/issue``).

A real aiohttp server on 127.0.0.1 (port 0), written from Atlassian's
documentation:

- Basic auth for REST APIs: ``Authorization: Basic base64(email:api_token)``;
  without valid credentials, 401:
  https://developer.atlassian.com/cloud/jira/platform/basic-auth-for-rest-apis/
- Create issue, ``POST /rest/api/3/issue`` with ``{"fields": {"project": {"key"},
  "issuetype": {"name"}, "summary", "description", "labels"}}``; answers 201
  ``{"id", "key", "self"}``; 400 with the error collection ``{"errorMessages":
  [...], "errors": {field: message}}`` when a field is missing or invalid; 401;
  403 without permission:
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-post
- In v3, ``description`` is an Atlassian Document Format document
  (``{"type": "doc", "version": 1, "content": [...]}``):
  https://developer.atlassian.com/cloud/jira/platform/apis/document/structure/
- Rate limiting: 429 with ``Retry-After`` (seconds):
  https://developer.atlassian.com/cloud/jira/platform/rate-limiting/

Usage::

    async with FakeJira(projects={"OPS": ["Task", "Bug"]}) as jira:
        jira.fail_next(500)                 # then 201
        jira.rate_limit_next(retry_after=1)
        ...
        [issue] = jira.issues               # what was created

Not documented word for word, so chosen here: the wording of each field error,
the text of the 401 body, keys numbered from 1 per project and ids from 10000.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer

JSON = dict[str, Any]
EMAIL = "sidecar@example.com"
API_TOKEN = "ATATT-fake-jira-token"
MAX_SUMMARY_CHARS = 255


@dataclass
class Issue:
    """A created issue."""

    id: str
    key: str
    fields: JSON


@dataclass
class Request:
    """A request to the fake and what it answered."""

    path: str
    body: bytes
    status: int


class FakeJira(LoopbackServer):
    """A Jira Cloud site's issue creation on loopback, with failure injection."""

    def __init__(
        self,
        *,
        projects: dict[str, list[str]] | None = None,
        email: str = EMAIL,
        api_token: str = API_TOKEN,
    ) -> None:
        super().__init__()
        self.projects = projects or {"OPS": ["Task", "Bug", "Incident"]}
        self.credentials = f"{email}:{api_token}"
        self.issues: list[Issue] = []
        self.requests: list[Request] = []
        self._faults: deque[tuple[int, dict[str, str]]] = deque()
        self._next_id = 10000
        self.app.router.add_post("/rest/api/3/issue", self._create)

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests answer ``status``."""
        self._faults.extend((status, {}) for _ in range(times))

    def rate_limit_next(self, retry_after: int = 1) -> None:
        """The next request answers 429 with ``Retry-After``."""
        self._faults.append((429, {"Retry-After": str(retry_after)}))

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.read()
        response = self._answer(request, body)
        self.requests.append(Request(request.path, body, response.status))
        return response

    def _answer(self, request: web.Request, body: bytes) -> web.Response:
        if self._faults:
            status, headers = self._faults.popleft()
            return web.json_response(
                {"errorMessages": [f"injected {status}"], "errors": {}},
                status=status,
                headers=headers,
            )
        if not self._authorized(request.headers.get("Authorization", "")):
            return web.Response(
                status=401, text="Client must be authenticated to access this resource."
            )
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            return _errors(["Unexpected character in the request body."], {})
        fields = doc.get("fields") if isinstance(doc, dict) else None
        if not isinstance(fields, dict):
            return _errors(["Fields are required."], {})
        errors = self._field_errors(fields)
        if errors:
            return _errors([], errors)
        project = fields["project"]["key"]
        number = 1 + sum(1 for i in self.issues if i.key.startswith(f"{project}-"))
        self._next_id += 1
        issue = Issue(str(self._next_id), f"{project}-{number}", fields)
        self.issues.append(issue)
        url = f"{self.base_url}/rest/api/3/issue/{issue.id}"
        return web.json_response({"id": issue.id, "key": issue.key, "self": url}, status=201)

    def _authorized(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        return decoded == self.credentials

    def _field_errors(self, fields: JSON) -> dict[str, str]:
        errors: dict[str, str] = {}
        project = (fields.get("project") or {}).get("key")
        if project not in self.projects:
            errors["project"] = "valid project is required"
        issuetype = (fields.get("issuetype") or {}).get("name")
        if project in self.projects and issuetype not in self.projects[project]:
            errors["issuetype"] = "Specify a valid issue type"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > MAX_SUMMARY_CHARS:
            errors["summary"] = "Summary must be less than 255 characters."
        description = fields.get("description")
        if description is not None and not _is_adf(description):
            errors["description"] = (
                "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
            )
        return errors


def _is_adf(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("type") == "doc"
        and doc.get("version") == 1
        and isinstance(doc.get("content"), list)
    )


def _errors(messages: list[str], errors: dict[str, str]) -> web.Response:
    return web.json_response({"errorMessages": messages, "errors": errors}, status=400)


def adf_text(doc: JSON) -> str:
    """The text of an ADF document, a line per paragraph (what a test reads)."""
    lines = []
    for block in doc.get("content", []):
        lines.append("".join(n.get("text", "") for n in block.get("content", [])))
    return "\n".join(lines)
