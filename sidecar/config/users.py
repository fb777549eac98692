"""The people who may sign in: a users file in Prometheus' ``web.config.file`` format.

Only ``basic_auth_users`` (user name to bcrypt hash, as ``htpasswd -nBC 10`` or
``promtool`` make them) is read, so that a team can reuse the file its
exporters already take. TLS settings are refused rather than ignored: a user
who sets them expects TLS, which the sidecar takes from ``server.tls_*``.
"""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.errors import ConfigError, ConfigProblem
from sidecar.yamlfile import load_yaml, problem_at

# bcrypt's modular crypt format: $2a$, $2b$ or $2y$, a two-digit cost, 53 characters.
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_KNOWN = {"basic_auth_users", "tls_server_config", "http_server_config"}


def read_users(path: Path) -> dict[str, bytes]:
    """User name -> bcrypt hash from ``path``; raise ConfigError naming ``file:line: reason``."""
    doc = load_yaml(path)
    file = str(path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, "", "the users file must be a mapping")])
    problems: list[ConfigProblem] = []
    for key in data:
        if key not in _KNOWN:
            problems.append(problem_at(file, (key,), "unknown key", doc.position))
        elif key != "basic_auth_users" and data[key]:
            reason = "not supported: set server.tls_cert_file and server.tls_key_file"
            problems.append(problem_at(file, (key,), reason, doc.position))
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        problems.append(
            problem_at(
                file, ("basic_auth_users",), "must map user names to bcrypt hashes", doc.position
            )
        )
        users = {}
    found: dict[str, bytes] = {}
    for name, hashed in users.items():
        loc = ("basic_auth_users", str(name))
        if not isinstance(name, str) or not name or ":" in name:
            problems.append(problem_at(file, loc, "a user name is text without ':'", doc.position))
        elif not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            # Never echo the value: it may be a password pasted by mistake.
            problems.append(problem_at(file, loc, "not a bcrypt hash", doc.position))
        else:
            found[name] = hashed.encode()
    if problems:
        raise ConfigError(problems)
    if not found:
        raise ConfigError([ConfigProblem(file, "basic_auth_users", "no users")])
    return found
