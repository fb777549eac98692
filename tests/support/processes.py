"""Run a real process for a test: start it with its output in a log file, wait until it is ready,
stop it gracefully or kill it with SIGKILL.

Used for Alertmanager, Prometheus, PostgreSQL and the sidecar itself, so nothing here knows
about any of them: a command, an environment, a working directory and a readiness probe (an
HTTP URL answering 2xx, or any callable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

# Never route readiness probes of loopback services through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessError(RuntimeError):
    """A managed process exited early or did not become ready in time."""


def http_ready(url: str, timeout: float = 1.0) -> bool:
    """Tell whether ``url`` answers a GET with a 2xx status."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except (OSError, ValueError):
        return False


def http_get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and return its decoded JSON body, or None when it does not answer 2xx JSON."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        exc.close()
        return None
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One external process owned by a test, started in its own session with a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path | None = None,
        ready_url: str | None = None,
        ready_check: Callable[[], bool] | None = None,
        ready_timeout: float = 30.0,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.command = [os.fspath(part) for part in command]
        self.log_path = log_path
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.ready_url = ready_url
        self.ready_check = ready_check
        self.ready_timeout = ready_timeout
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, running={self.running})"

    @property
    def pid(self) -> int | None:
        """The process id while started, else None."""
        return None if self._popen is None else self._popen.pid

    @property
    def running(self) -> bool:
        """Tell whether the process has been started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the process log, for error messages."""
        return tail(self.log_path, lines)

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {self.name}: {' '.join(self.command)}\n".encode())
        self._log.flush()
        try:
            self._popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                # Own session: Ctrl-C in the terminal does not reach it, and kill() can signal
                # the whole group, wrappers and children included.
                start_new_session=True,
            )
        except OSError:
            self._close_log()
            raise

    def _is_ready(self) -> bool:
        if self.ready_url is not None and not http_ready(self.ready_url):
            return False
        return self.ready_check is None or self.ready_check()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the readiness probe succeeds; on timeout or early exit, stop and raise."""
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            if not self.running:
                code = self.returncode
                self.stop()
                raise ProcessError(
                    f"{self.name} exited with status {code} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._is_ready():
                return
            if time.monotonic() >= deadline:
                self.stop()
                probe = self.ready_url or "its readiness check"
                raise ProcessError(
                    f"{self.name} was not ready at {probe} within {limit:g}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def start(self) -> Self:
        """Start the process and wait until it is ready."""
        self.launch()
        self.wait_ready()
        return self

    def stop(self) -> int | None:
        """Send ``stop_signal``, SIGKILL after ``stop_timeout``; return the exit status."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(self.stop_signal)
            try:
                popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(popen)
        self._reap_group(popen)
        self._close_log()
        return popen.returncode

    def kill(self) -> int | None:
        """Kill the process and everything in its session with SIGKILL, like a crash."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._kill_group(popen)
        self._reap_group(popen)
        self._close_log()
        return popen.returncode

    def restart(self) -> Self:
        """Stop the process if it runs, then start it again with the same command."""
        self.stop()
        return self.start()

    async def astart(self) -> Self:
        """Like start(), without blocking the event loop (in-process fakes keep answering)."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> int | None:
        """Like stop(), without blocking the event loop."""
        return await asyncio.to_thread(self.stop)

    async def akill(self) -> int | None:
        """Like kill(), without blocking the event loop."""
        return await asyncio.to_thread(self.kill)

    def _kill_group(self, popen: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
        popen.wait()

    def _reap_group(self, popen: subprocess.Popen[bytes]) -> None:
        # Children left behind by a killed leader (e.g. PostgreSQL backends) must not outlive
        # the test; the group id is the leader's pid because of start_new_session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
