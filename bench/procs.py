"""Processes of the benchmark: started pinned to a core, waited for, measured, always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SERVER_CPU = "0"
LOAD_CPU = "1"


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c cpu`` when taskset exists and the CPU does."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > int(cpu):
        return ["taskset", "-c", cpu, *argv]
    return list(argv)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(cpu: str = SERVER_CPU) -> float:
    """CPU time the core ``cpu`` has spent busy, by anyone."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal
            return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def others_on_core(pid: int) -> Callable[[], float]:
    """Start counting; the returned function gives the CPU seconds others took on the server core.

    The server is pinned to that core, so what others used there is what a
    neighbour (another user's tests) took from the measurement.
    """
    core0, own0 = core_busy_seconds(), cpu_seconds(pid)

    def stop() -> float:
        return max(0.0, (core_busy_seconds() - core0) - (cpu_seconds(pid) - own0))

    return stop


@contextlib.contextmanager
def paused(pids: Iterable[int]) -> Iterator[None]:
    """Stop these processes (SIGSTOP) for the duration, then let them go on.

    The servers of a step share the server core; one measured while another
    catches up on what its own run left (Alertmanager flushes its aggregation
    groups ``group_wait`` after they appear, the sidecar checkpoints its WAL)
    would be measured against that neighbour, not alone.
    """
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)


def settle(pid: int, *, quiet: float = 0.02, every: float = 0.2, limit: float = 5.0) -> float:
    """Wait until ``pid`` uses under ``quiet`` of the core over ``every`` seconds (at most
    ``limit``); the seconds waited.

    What a run leaves behind (the commits of requests wrk gave up on, a WAL
    checkpoint) is the server's own work: it finishes before the server is
    stopped for another's run, rather than at the start of its own next one.
    """
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < limit:
        time.sleep(every)
        now = cpu_seconds(pid)
        if now - last < quiet * every:
            break
        last = now
    return time.monotonic() - start


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET ``url``; (status, body), status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def http_post(url: str, body: bytes, token: str | None = None, timeout: float = 30.0) -> int:
    """POST a JSON body; the status code."""
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Proc:
    """A started process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float

    @property
    def pid(self) -> int:
        """The process id (of taskset's exec'd child, which is the same process)."""
        return self.popen.pid

    def wait_ready(self, url: str, timeout: float) -> float:
        """Poll ``url`` until 200; seconds since start. Raises if the process dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}: {self.tail()}"
                )
            status, _ = http_get(url, timeout=2.0)
            if status == 200:
                return time.monotonic() - self.started
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} not ready at {url} within {timeout}s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        """The end of the process's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; the whole process group."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
                # A process stopped by ``paused`` acts on SIGTERM once continued.
                os.killpg(self.popen.pid, signal.SIGCONT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    cpu: str = SERVER_CPU,
) -> Proc:
    """Start ``argv`` pinned to ``cpu`` in its own process group, output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.monotonic()
        popen = subprocess.Popen(
            pinned(cpu, argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    return Proc(name, popen, log_path, started)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    ready_url: str,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Iterator[tuple[Proc, float]]:
    """Start a server, wait until ``ready_url`` answers 200, yield (process, seconds to ready)."""
    proc = start(name, argv, log_path, cwd=cwd)
    try:
        ready = proc.wait_ready(ready_url, timeout)
        yield proc, ready
    finally:
        proc.stop()


def wrk(
    url: str,
    *,
    script: Path,
    body_file: Path,
    duration: float,
    connections: int,
    token: str | None = None,
    mode: str = "repeat",
    groups: int = 1000,
    prefix: str = "g",
    rate: float = 0.0,
) -> dict[str, float]:
    """Run wrk (one thread, pinned to the load core) and return its ``done()`` summary."""
    env = dict(os.environ)
    env.update(
        BENCH_BODY_FILE=str(body_file),
        BENCH_TOKEN=token or "",
        BENCH_MODE=mode,
        BENCH_GROUPS=str(groups),
        BENCH_PREFIX=prefix,
        BENCH_RATE=str(rate),
        BENCH_SALT=str(time.time_ns()),
    )
    argv = pinned(
        LOAD_CPU,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
    )
    out = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, float] = json.loads(line.removeprefix("BENCH_RESULT "))
            seconds = result["duration_us"] / 1e6
            result["rps"] = result["requests"] / seconds if seconds else 0.0
            errors = sum(v for k, v in result.items() if k.startswith("errors_"))
            result["errors"] = errors
            return result
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stdout}{out.stderr}")
