"""The hashed lock files in requirements/ agree with pyproject.toml's ranges.

pyproject.toml keeps ranges for people who install the package; scripts/run, scripts/test, CI
and the Dockerfile install requirements/*.txt with ``--require-hashes``. A dependency added,
removed or narrowed in pyproject.toml without running ``scripts/lock`` fails here, before an
install elsewhere would quietly miss it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "requirements"
PROJECT_VIA = "incident-sla-sidecar (pyproject.toml)"

# Each lock file and the pyproject.toml requirements it must cover: (extras, build-system?).
LOCK_SOURCES = {
    "run.txt": ("fast",),
    "dev.txt": ("dev", "fast"),
}


@dataclass
class Pin:
    """One locked package: its version, hashes and what requires it."""

    version: Version
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, Pin]:
    """The pins of a ``uv pip compile --generate-hashes`` file, by canonical name."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line):
            current = Pin(Version(match.group(2)))
            pins[canonicalize_name(match.group(1))] = current
        elif current is not None and (found := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            current.hashes.append(found.group(1))
        elif current is not None and (found := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)):
            current.via.append(found.group(1).strip())
    return pins


def required(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[Requirement]:
    """The project's dependencies plus those of ``extras``."""
    project = pyproject["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def lock_problems(requirements: list[Requirement], pins: dict[str, Pin], direct: bool) -> list[str]:
    """What keeps ``pins`` from being the lock of ``requirements``.

    Each requirement is pinned at a version inside its range; every pin has hashes; with
    ``direct``, a pin the lock says pyproject.toml requires must still be required there.
    """
    problems = []
    names = {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement}: the lock pins {pin.version}, outside the range")
    for name, pin in pins.items():
        if not pin.hashes:
            problems.append(f"{name}: no hash")
        if direct and PROJECT_VIA in pin.via and name not in names:
            problems.append(f"{name}: locked for pyproject.toml, which no longer requires it")
    return problems


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("lock", "extras"), LOCK_SOURCES.items())
def test_lock_matches_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    """Every dependency (with the lock's extras) is pinned inside its range, with hashes."""
    pins = parse_lock((LOCKS / lock).read_text(encoding="utf-8"))
    problems = lock_problems(required(PYPROJECT, extras), pins, direct=True)
    assert problems == [], f"run scripts/lock: {problems}"


def test_build_lock_matches_build_system() -> None:
    """The build backend the installs use (``--no-build-isolation``) is the one pyproject names."""
    pins = parse_lock((LOCKS / "build.txt").read_text(encoding="utf-8"))
    requirements = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    assert lock_problems(requirements, pins, direct=False) == [], "run scripts/lock"


def test_a_dependency_added_without_relocking_is_caught() -> None:
    """The check fails for a new dependency, a narrowed range and a removed dependency."""
    pins = parse_lock((LOCKS / "run.txt").read_text(encoding="utf-8"))
    requirements = required(PYPROJECT, LOCK_SOURCES["run.txt"])
    added = [*requirements, Requirement("no-such-package-for-the-test>=1")]
    assert lock_problems(added, pins, direct=True) == [
        "no-such-package-for-the-test>=1: not in the lock"
    ]
    aiohttp = pins["aiohttp"].version
    narrowed = [
        Requirement(f"aiohttp>{aiohttp}") if r.name == "aiohttp" else r for r in requirements
    ]
    assert lock_problems(narrowed, pins, direct=True) == [
        f"aiohttp>{aiohttp}: the lock pins {aiohttp}, outside the range"
    ]
    removed = [r for r in requirements if r.name != "xxhash"]
    assert lock_problems(removed, pins, direct=True) == [
        "xxhash: locked for pyproject.toml, which no longer requires it"
    ]


def test_every_install_uses_the_lock() -> None:
    """scripts/run, scripts/test (through setup_venv) and the Dockerfile install with hashes."""
    lib = (REPO / "scripts/lib.sh").read_text(encoding="utf-8")
    assert "--require-hashes" in lib and "--no-deps --no-build-isolation" in lib
    assert re.search(r"^setup_venv run$", (REPO / "scripts/run").read_text(), re.M)
    assert re.search(r"^setup_venv dev$", (REPO / "scripts/test").read_text(), re.M)
    assert "exec scripts/test" in (REPO / ".ci/run").read_text(encoding="utf-8")
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements/build.txt -r requirements/run.txt" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile
