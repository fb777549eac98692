"""Locate the real binaries the end-to-end tests drive, and skip or fail when one is missing.

Binaries come from Debian packages. PostgreSQL's server tools are not on PATH there, so
``/usr/lib/postgresql/<version>/bin`` is searched too, newest version first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

#: The Debian package that ships each binary, named in skip and failure messages.
DEBIAN_PACKAGES: dict[str, str] = {
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "initdb": "postgresql-15",
    "pg_ctl": "postgresql-15",
    "postgres": "postgresql-15",
    "psql": "postgresql-client-15",
    "pg_isready": "postgresql-client-15",
    "createdb": "postgresql-client-15",
    "setpriv": "util-linux",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}

_POSTGRES_LIB = Path("/usr/lib/postgresql")


def postgres_bin_dirs() -> list[Path]:
    """Return the Debian PostgreSQL ``bin`` directories, newest major version first."""
    if not _POSTGRES_LIB.is_dir():
        return []
    versions: list[tuple[int, Path]] = []
    for child in _POSTGRES_LIB.iterdir():
        bin_dir = child / "bin"
        if child.name.isdigit() and bin_dir.is_dir():
            versions.append((int(child.name), bin_dir))
    return [path for _, path in sorted(versions, reverse=True)]


def find_binary(name: str) -> Path | None:
    """Return the path of ``name`` from PATH or a known Debian location, or None."""
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    for bin_dir in postgres_bin_dirs():
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def in_ci() -> bool:
    """Tell whether the tests run in CI (``CI=true``), where a missing binary is a failure."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_binary_message(name: str) -> str:
    """Explain which binary is missing and which Debian package provides it."""
    package = DEBIAN_PACKAGES.get(name, name)
    return (
        f"{name} not found on PATH or in /usr/lib/postgresql/*/bin; "
        f"install the Debian package {package} (apt-get install {package})"
    )


def skip_or_fail(message: str) -> NoReturn:
    """Fail the current test when ``CI=true`` (nothing may silently skip there), else skip it."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binary(name: str) -> Path:
    """Return the path of ``name``; fail the test when it is missing in CI, else skip it."""
    path = find_binary(name)
    if path is not None:
        return path
    skip_or_fail(missing_binary_message(name))
