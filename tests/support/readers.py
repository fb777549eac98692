"""A reader for the tests: one user in a Prometheus ``web.config.file``, and their header.

Reads need credentials, so the shared clients sign in as this user by default.
The hash uses bcrypt's lowest cost, so that a check costs about a millisecond.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import bcrypt
import yaml

READER = "reader"
READER_PASSWORD = "reader-password"


def reader_credentials() -> tuple[str, str]:
    """The test reader's user name and password."""
    return READER, READER_PASSWORD


@functools.cache
def hashed(password: str) -> str:
    """A bcrypt hash of ``password`` at the lowest cost (fast tests, not for production)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def write_users_file(path: Path, users: dict[str, str] | None = None) -> Path:
    """A ``web.config.file`` at ``path`` with ``users`` (name -> password), else the reader."""
    chosen = users if users is not None else {READER: READER_PASSWORD}
    data = {"basic_auth_users": {name: hashed(pw) for name, pw in chosen.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


READ_HEADERS = {"Authorization": basic_auth_header(READER, READER_PASSWORD)}
"""Headers that sign a read in as the reader, for clients of a sidecar process."""
