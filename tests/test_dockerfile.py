"""The Dockerfile, checked without a Docker engine.

The image cannot be built here, so the test reads the Dockerfile and performs its steps itself:
the COPY instructions into a build directory, the ``pip install`` RUN step in a clean virtual
environment (the stand-in for the image's Python), then the ENTRYPOINT with ``--help``,
``check-config`` on a configuration laid out like the Helm chart's, and ``serve`` with the
HEALTHCHECK command run against it. The static checks cover what the image promises: slim base,
numeric non-root user, the volume, the port, the entrypoint.

The install step takes about 15 s (a clean virtual environment); those tests are marked e2e.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import LOOPBACK, free_port

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DATA_DIR = "/var/lib/incident-sla-sidecar"
RULES_DIR = "/etc/incident-sla-sidecar/rules/"
DEFAULT_PORT = 9095


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of the arguments."""
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse(path: Path) -> list[Instruction]:
    """Parse a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


INSTRUCTIONS = parse(DOCKERFILE)


def only(keyword: str) -> Instruction:
    """The one instruction with this keyword."""
    found = [i for i in INSTRUCTIONS if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV instructions as a mapping (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for inst in instructions:
        if inst.keyword == "ENV":
            for pair in shlex.split(inst.args):
                name, sep, value = pair.partition("=")
                assert sep, f"use ENV NAME=value: {inst}"
                env[name] = value
    return env


def test_static_promises() -> None:
    """Slim base, numeric non-root user, data volume, port, entrypoint, command, healthcheck."""
    base = only("FROM").args
    assert base.startswith("python:3.11") and "slim" in base, base
    user = only("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, user
    assert gid == "" or (gid.isdigit() and int(gid) > 0), user
    assert DATA_DIR in only("VOLUME").exec_form()
    assert only("EXPOSE").args == str(DEFAULT_PORT)
    assert only("ENTRYPOINT").exec_form() == ["incident-sla-sidecar"]
    assert only("CMD").exec_form() == [
        "serve",
        "--config",
        "/etc/incident-sla-sidecar/config.yaml",
    ]
    healthcheck = only("HEALTHCHECK").args
    assert "CMD" in healthcheck and "/healthz" in healthcheck and "urllib" in healthcheck
    # The USER comes after every step that needs root, and the data directory belongs to it.
    keywords = [i.keyword for i in INSTRUCTIONS]
    assert all(k != "RUN" for k in keywords[keywords.index("USER") :])
    chown = [i.args for i in INSTRUCTIONS if i.keyword == "RUN" and "chown" in i.args]
    assert any(f"{uid}:{gid or uid} {DATA_DIR}" in args for args in chown), chown
    assert env_of(INSTRUCTIONS).get("PYTHONDONTWRITEBYTECODE") == "1"
    copies = [i.args.split() for i in INSTRUCTIONS if i.keyword == "COPY"]
    assert ["rules/", RULES_DIR] in copies


def dockerignore_excludes(relative: str) -> bool:
    """Tell whether .dockerignore keeps ``relative`` out of the build context (last match wins)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/"))
            for p in prefixes
        ):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    """Every COPY source exists and survives .dockerignore; the chart's links stay out."""
    for inst in INSTRUCTIONS:
        if inst.keyword != "COPY":
            continue
        *sources, _ = inst.args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing from the repository"
            assert not dockerignore_excludes(source.rstrip("/")), f"COPY {source}: excluded"
    assert dockerignore_excludes("rules/prometheus/incident-sla-alerts.yaml")
    assert dockerignore_excludes(".venv")
    assert not dockerignore_excludes("rules/llm-marketplace.yaml")
    assert not dockerignore_excludes("sidecar/cli.py")


def test_every_data_file_of_the_package_is_installed() -> None:
    """``pip install .`` carries each file of sidecar/ that is not Python (templates, OpenAPI).

    setuptools installs only the data files that package-data names; a template
    it misses would fail only when a review is rendered from the image.
    """
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["sidecar"]
    package = REPO / "sidecar"
    declared = {path for pattern in patterns for path in package.glob(pattern)}
    data = {
        path
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    assert {p.name for p in data} >= {"py.typed", "openapi.yaml", "llm-marketplace.md.j2"}
    assert sorted(map(str, data - declared)) == []
    for path in data:
        assert not dockerignore_excludes(str(path.relative_to(REPO))), path


@dataclass
class Image:
    """The image's filesystem, approximated: a root directory and a virtual environment."""

    root: Path
    venv: Path

    def path(self, absolute: str) -> Path:
        """Where an absolute path of the image lives here."""
        return self.root / absolute.lstrip("/")

    @property
    def entrypoint(self) -> list[str]:
        """The ENTRYPOINT, resolved to the virtual environment's console script."""
        command = only("ENTRYPOINT").exec_form()
        return [str(self.venv / "bin" / command[0]), *command[1:]]


def copy_into(source: Path, target: Path) -> None:
    """COPY semantics for a file or a directory's contents, without __pycache__."""
    if source.is_dir():
        shutil.copytree(
            source,
            target,
            dirs_exist_ok=True,
            symlinks=True,
            ignore=lambda directory, names: [
                n
                for n in names
                if n == "__pycache__"
                or dockerignore_excludes(str((Path(directory) / n).relative_to(REPO)))
            ],
        )
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """Perform the Dockerfile's COPY, WORKDIR, ENV and RUN steps up to the pip install."""
    base = tmp_path_factory.mktemp("image")
    image = Image(root=base / "root", venv=base / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(image.venv)], check=True, timeout=120)
    workdir = "/"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR__", "VIRTUAL_ENV"))},
        **env_of(INSTRUCTIONS),
    }
    env["PATH"] = f"{image.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    for inst in INSTRUCTIONS:
        if inst.keyword == "WORKDIR":
            workdir = inst.args if inst.args.startswith("/") else f"{workdir}/{inst.args}"
            image.path(workdir).mkdir(parents=True, exist_ok=True)
        elif inst.keyword == "COPY":
            *sources, dest = inst.args.split()
            dest_abs = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: missing from the repository"
                target = image.path(dest_abs)
                if dest.endswith("/") and not (REPO / source).is_dir():
                    target = target / Path(source).name
                copy_into(REPO / source, target)
        elif inst.keyword == "RUN" and "pip install" in inst.args:
            # The image's only Python is its own; here the clean venv's pip plays that part.
            result = subprocess.run(
                ["/bin/sh", "-c", inst.args],
                cwd=image.path(workdir),
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (image.venv / "bin" / "incident-sla-sidecar").exists(), (
        "pip step did not install the console script"
    )
    yield image


def write_config(image: Image, port: int) -> Path:
    """A chart-like configuration: token files, a preset from the image, SQLite on the volume."""
    secrets = image.path("/etc/incident-sla-sidecar/secrets")
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "webhook-token").write_text("placeholder-webhook-token\n", encoding="utf-8")
    (secrets / "api-token").write_text("placeholder-api-token\n", encoding="utf-8")
    data = image.path(DATA_DIR)
    data.mkdir(parents=True, exist_ok=True)
    config = image.path("/etc/incident-sla-sidecar/config.yaml")
    config.write_text(
        "server:\n"
        f"  listen: {LOOPBACK}:{port}\n"
        f"  webhook_token_file: {secrets / 'webhook-token'}\n"
        f"  api_token_file: {secrets / 'api-token'}\n"
        "store:\n"
        f"  url: sqlite:///{data / 'sidecar.db'}\n"
        "rules:\n"
        f"  file: {image.path(RULES_DIR) / 'llm-marketplace.yaml'}\n"
        "logging:\n"
        "  level: info\n"
        "  format: json\n",
        encoding="utf-8",
    )
    return config


def run(image: Image, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint with ``args`` in a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR__")}
    return subprocess.run(
        [*image.entrypoint, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **env_of(INSTRUCTIONS)},
        cwd=image.path(DATA_DIR) if image.path(DATA_DIR).exists() else image.root,
        check=False,
    )


@pytest.mark.e2e
def test_installed_package_comes_from_the_copy_not_the_repository(image: Image) -> None:
    """The venv imports the installed package, so the COPY steps carried everything it needs."""
    result = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", "import sidecar; print(sidecar.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=image.root,
        check=True,
    )
    assert str(image.venv) in result.stdout, result.stdout


@pytest.mark.e2e
def test_entrypoint_help(image: Image) -> None:
    """``incident-sla-sidecar --help`` lists the commands."""
    result = run(image, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "check-config", "test-rules"):
        assert command in result.stdout


@pytest.mark.e2e
def test_entrypoint_check_config(image: Image) -> None:
    """``check-config`` accepts a chart-like configuration using a preset the image ships."""
    config = write_config(image, DEFAULT_PORT)
    result = run(image, "check-config", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "llm-marketplace" in result.stdout


@pytest.mark.e2e
def test_entrypoint_check_config_refuses_a_missing_preset(image: Image, tmp_path: Path) -> None:
    """A rules file the image does not ship is reported, so the test above can fail."""
    config = write_config(image, DEFAULT_PORT)
    broken = tmp_path / "config.yaml"
    broken.write_text(
        config.read_text(encoding="utf-8").replace("llm-marketplace.yaml", "no-such-preset.yaml"),
        encoding="utf-8",
    )
    result = run(image, "check-config", "--config", str(broken))
    assert result.returncode == 1
    assert "no-such-preset" in result.stdout + result.stderr


@pytest.mark.e2e
def test_serve_and_healthcheck(image: Image) -> None:
    """The default CMD serves; the HEALTHCHECK command (aimed at the test port) passes."""
    port = free_port()
    config = write_config(image, port)
    command = only("CMD").exec_form()
    command[command.index("--config") + 1] = str(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR__")}
    log = image.root / "serve.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*image.entrypoint, *command],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**env, **env_of(INSTRUCTIONS)},
            cwd=image.path(DATA_DIR),
        )
    try:
        health = only("HEALTHCHECK").args
        exec_form = json.loads(health[health.index("CMD") + len("CMD") :].strip())
        exec_form = [
            arg.replace(f"127.0.0.1:{DEFAULT_PORT}", f"{LOOPBACK}:{port}") for arg in exec_form
        ]
        assert exec_form[0] == "python"
        exec_form[0] = str(image.venv / "bin" / "python")
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text(encoding="utf-8")
            check = subprocess.run(exec_form, capture_output=True, timeout=10, check=False)
            if check.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"HEALTHCHECK never passed:\n{log.read_text(encoding='utf-8')}")
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0, log.read_text(encoding="utf-8")
    # The database went to the volume, nowhere else.
    assert (image.path(DATA_DIR) / "sidecar.db").exists()
