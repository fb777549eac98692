"""JSON answers, encoded once with orjson: every answer of the API is JSON.

aiohttp's ``json_response`` goes through the standard library's encoder and
then encodes the text again; on the webhook path, answered thousands of times
a second, that showed in the profiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def json_answer(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``data`` as an ``application/json`` answer."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def encoded_answer(body: bytes) -> web.Response:
    """A 200 with a JSON body encoded in advance (answers that never change)."""
    return web.Response(body=body, content_type="application/json")
