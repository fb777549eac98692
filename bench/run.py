"""The benchmark: the sidecar against the targets of DESIGN.md section 6 and against baselines.

``python bench/run.py [--quick] [--no-profile] [--self-test]`` runs every step,
each of which starts its own processes and stops them, and writes
``bench/results/latest.md`` (tables and charts) and ``latest.json``. The server
under test runs on CPU 0, wrk on CPU 1.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import procs, report  # noqa: E402
from bench.payloads import api_alerts, notification, render  # noqa: E402
from bench.seed import DUE_ACK_SECONDS  # noqa: E402

RULES = REPO / "rules" / "llm-marketplace.yaml"
LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
RESULTS = Path(__file__).resolve().parent / "results"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@dataclass(frozen=True)
class Plan:
    """How long and how often each step runs."""

    name: str
    duration: float  # seconds of each measured wrk run
    warmup: float
    repeats: int  # measured runs per throughput cell
    latency_duration: float
    levels: tuple[int, ...]  # open incidents for /metrics, memory
    restart_repeats: int
    scrapes: int
    due_spread: int  # deadlines spread over the window
    due_burst: int  # deadlines at one instant
    profile_seconds: float
    connections: int = 64
    groups: int = 1000  # open groups that "changed" and "repeats" resend


QUICK = Plan("quick", 4, 1, 1, 6, (1_000, 10_000), 2, 5, 40, 40, 0)
FULL = Plan("full", 10, 2, 3, 15, (1_000, 10_000, 100_000), 3, 9, 200, 200, 12)
SELF_TEST = Plan("self-test", 1, 0, 1, 1, (20,), 1, 2, 3, 2, 0)


@dataclass
class Run:
    """Results as they accumulate, and where the step files go."""

    plan: Plan
    work: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def log(self, msg: str) -> None:
        """Progress on stderr, with the load average (other users of the machine show there)."""
        load = os.getloadavg()[0]
        print(f"[{time.strftime('%H:%M:%S')} load {load:4.2f}] {msg}", file=sys.stderr, flush=True)


# -- servers ---------------------------------------------------------------


def sidecar_config(
    run: Run, data: Path, port: int, *, log_level: str = "warning", store_url: str | None = None
) -> Path:
    """A config for the real sidecar: auth on, SQLite synchronous=FULL in ``data`` (or
    ``store_url``)."""
    data.mkdir(parents=True, exist_ok=True)
    config = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "webhook_token": run.token,
            "api_token": secrets.token_hex(16),
            "insecure_disable_auth": False,
        },
        "store": {"url": store_url or f"sqlite:///{data / 'sidecar.db'}", "synchronous": "full"},
        "rules": {"file": str(RULES)},
        "logging": {"level": log_level, "format": "json"},
    }
    path = data / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def sidecar(
    run: Run,
    data: Path,
    *,
    log_level: str = "warning",
    name: str = "sidecar",
    store_url: str | None = None,
) -> Iterator[tuple[procs.Proc, float, str]]:
    """The real sidecar (``python -m sidecar serve``) pinned to the server core."""
    port = procs.free_port()
    config = sidecar_config(run, data, port, log_level=log_level, store_url=store_url)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "sidecar", "serve", "--config", str(config)]
    with procs.running(
        name, argv, data / f"{name}.log", ready_url=f"{url}/readyz", cwd=REPO, timeout=300
    ) as (proc, ready):
        yield proc, ready, url


@contextlib.contextmanager
def bare(run: Run) -> Iterator[tuple[str, int]]:
    """The bare aiohttp app that only parses the body."""
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(REPO / "bench" / "bare_app.py"), str(port)]
    with procs.running("bare", argv, run.work / "bare.log", ready_url=f"{url}/readyz") as (p, _):
        yield url, p.pid


@contextlib.contextmanager
def alertmanager(run: Run) -> Iterator[tuple[str, int] | None]:
    """Alertmanager 0.25 with a null receiver (only its ingest is measured); None if missing."""
    if not Path(ALERTMANAGER).exists():
        run.notes.append(f"{ALERTMANAGER} not found: the Alertmanager baseline is missing")
        yield None
        return
    port = procs.free_port()
    d = run.work / "alertmanager"
    d.mkdir(parents=True, exist_ok=True)
    (d / "am.yml").write_text(
        "route:\n  receiver: 'null'\n  group_by: [bench_group]\nreceivers:\n  - name: 'null'\n"
    )
    argv = [
        ALERTMANAGER,
        f"--config.file={d / 'am.yml'}",
        f"--storage.path={d}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with procs.running("alertmanager", argv, d / "am.log", ready_url=f"{url}/-/ready") as (p, _):
        yield url, p.pid


# -- steps -----------------------------------------------------------------


def body_files(run: Run) -> dict[str, dict[str, Path]]:
    """Templates: per body size, the webhook (sidecar, bare) and API v2 (Alertmanager) bodies."""
    out: dict[str, dict[str, Path]] = {}
    for size in (1, 50):
        name = f"{size}-alert"
        files = {}
        for kind, template in (("webhook", notification(size)), ("api", api_alerts(size))):
            path = run.work / f"{name}.{kind}.json"
            path.write_bytes(orjson.dumps(template))
            files[kind] = path
        out[name] = files
        run.results.setdefault("bodies", {})[name] = {
            "alerts": size,
            "webhook_bytes": len(render(notification(size), "g-0")),
            "api_bytes": len(render(api_alerts(size), "g-0")),
        }
    return out


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def load(run: Run, url: str, body_file: Path, token: str | None, **kw: Any) -> dict[str, float]:
    """One wrk run with the plan's connections and groups (keyword arguments override)."""
    p = run.plan
    args: dict[str, Any] = {
        "duration": p.duration,
        "connections": p.connections,
        "groups": p.groups,
        "mode": "changed",
    }
    args.update(kw)
    return procs.wrk(url, script=LUA, body_file=body_file, token=token, **args)


def open_groups(run: Run, url: str, file: Path, token: str | None, prefix: str) -> None:
    """Send each of the plan's groups once, so that every one is open before measuring.

    A timed warm-up reaches only as many groups as it has time for; a group it
    missed would be opened by the first measured request to it, and the changed
    mix would measure new incidents.
    """
    template = file.read_bytes()

    def send(i: int) -> None:
        body = template.replace(b"@@KEY@@", f"{prefix}-{i}".encode()).replace(b"@@VAL@@", b"0")
        status = procs.http_post(url, body, token)
        if status != 200:
            raise RuntimeError(f"opening group {prefix}-{i} at {url}: HTTP {status}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(run.plan.groups)))


def step_ingest(run: Run) -> None:
    """Peak throughput of each server with each body, and the sidecar's latency at half of it.

    Baselines run for the whole step; the sidecar starts on an empty store for
    each body size, so both sizes meet the same store.
    """
    bodies = body_files(run)
    ingest: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        bare_srv = stack.enter_context(bare(run))
        am_srv = stack.enter_context(alertmanager(run))
        for body, files in bodies.items():
            with sidecar(run, run.work / f"ingest-{body}") as (sc_proc, _, sc_url):
                ingest[body] = ingest_body(run, body, files, bare_srv, am_srv, sc_proc, sc_url)
    run.results["ingest"] = ingest


# The three mixes, side by side (name, wrk mode). "changed" is the headline: what
# Alertmanager mostly sends is a resend of an open group with something changed in
# it (refreshed annotations, an alert joining or resolving), which takes the full
# path. "new group" runs last: every request leaves an open incident behind.
MIXES: tuple[tuple[str, str], ...] = (
    ("changed", "changed"),
    ("repeats", "repeat"),
    ("new group", "unique"),
)
HEADLINE = "changed"


def ingest_body(
    run: Run,
    body: str,
    files: dict[str, Path],
    bare_srv: tuple[str, int],
    am_srv: tuple[str, int] | None,
    sc_proc: procs.Proc,
    sc_url: str,
) -> dict[str, Any]:
    """The measurements of one body size: every mix on every server, then latency."""
    p = run.plan
    hook = f"{sc_url}/webhook/alertmanager"
    targets: list[tuple[str, str, Path, str | None, int]] = [
        (
            "bare aiohttp",
            f"{bare_srv[0]}/webhook/alertmanager",
            files["webhook"],
            None,
            bare_srv[1],
        ),
        ("sidecar", hook, files["webhook"], run.token, sc_proc.pid),
    ]
    if am_srv is not None:
        am = ("alertmanager", f"{am_srv[0]}/api/v2/alerts", files["api"], None, am_srv[1])
        targets.insert(1, am)
    for target, url, file, token, _ in targets:
        open_groups(run, url, file, token, target[:2])
        if p.warmup:
            load(run, url, file, token, duration=p.warmup, mode="repeat", prefix=target[:2])
    cell: dict[str, Any] = {}
    for mix, mode in MIXES:
        cell[mix] = {target: {"runs": []} for target, *_ in targets}
        for rep in range(p.repeats):
            # Interleaved, so a neighbour's burst of load hits every target alike;
            # each alone on the core while measured (the others stopped).
            for target, url, file, token, pid in targets:
                with procs.paused(other for *_, other in targets if other != pid):
                    others = procs.others_on_core(pid)
                    r = load(run, url, file, token, prefix=target[:2], mode=mode)
                    r["others_on_server_cpu_s"] = others()
                    r["settled_s"] = procs.settle(pid)
                r["load_after"] = os.getloadavg()[0]
                cell[mix][target]["runs"].append(r)
                run.log(
                    f"ingest {body} {mix} {target} rep {rep + 1}: {r['rps']:.0f} req/s, "
                    f"p99 {r['p99_us'] / 1000:.1f} ms, errors {r['errors']:.0f}, "
                    f"others on its CPU {r['others_on_server_cpu_s']:.2f} s"
                )
        for target, *_ in targets:
            runs = cell[mix][target]["runs"]
            cell[mix][target]["rps"] = spread([r["rps"] for r in runs])
            cell[mix][target]["errors"] = sum(r["errors"] for r in runs)
        if mix == HEADLINE:
            peak = cell[mix]["sidecar"]["rps"]["median"]
            with procs.paused(pid for *_, pid in targets if pid != sc_proc.pid):
                cell["latency"] = latency(run, body, hook, files["webhook"], sc_proc, peak)
                if p.profile_seconds:
                    cell["profile"] = profile(run, sc_proc.pid, sc_url, files["webhook"], body)
    return cell


def latency(
    run: Run,
    body: str,
    hook: str,
    file: Path,
    sc_proc: procs.Proc,
    peak: float,
    *,
    prefix: str = "si",
) -> dict[str, Any]:
    """The sidecar's latency to 200 at half the peak it reached on the headline mix.

    Measured once it runs steadily at that rate: the peak runs just before leave a
    backlog (their last commits, a WAL checkpoint) that is not the rate's latency.
    ``prefix`` names the groups the peak ran on, already open: on groups never sent,
    the warm-up would open a thousand incidents (the new-group mix) and leave a
    backlog of them to the measured run.
    """
    p = run.plan
    rate = peak / 2
    if p.warmup:
        load(run, hook, file, run.token, duration=p.warmup, prefix=prefix, rate=rate)
    others = procs.others_on_core(sc_proc.pid)
    lat = load(run, hook, file, run.token, duration=p.latency_duration, prefix=prefix, rate=rate)
    lat["others_on_server_cpu_s"] = others()
    lat["target_rps"] = rate
    run.log(
        f"latency {body} at {rate:.0f}/s (got {lat['rps']:.0f}/s): "
        f"p50 {lat['p50_us'] / 1000:.1f} ms p99 {lat['p99_us'] / 1000:.1f} ms "
        f"p99.9 {lat['p999_us'] / 1000:.1f} ms, "
        f"others on its CPU {lat['others_on_server_cpu_s']:.2f} s"
    )
    return lat


def profile(run: Run, pid: int, url: str, body_file: Path, body: str) -> dict[str, Any]:
    """py-spy (if installed) on the sidecar under the headline mix; top functions by own time.

    On the groups the sidecar's measured runs opened ("si"): groups it never saw
    would make the first thousand requests of the profile new incidents.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        run.notes.append("py-spy not installed: no profile (pip install py-spy to get one)")
        return {}
    out = RESULTS / f"profile-{body}.txt"
    secs = run.plan.profile_seconds
    spy_proc = subprocess.Popen(
        procs.pinned(
            procs.LOAD_CPU,
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--duration",
                str(int(secs)),
                "--nonblocking",
                "--output",
                str(out),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        load(run, f"{url}/webhook/alertmanager", body_file, run.token, duration=secs, prefix="si")
        spy_proc.wait(timeout=secs + 60)
    finally:
        if spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
    if not out.exists():
        run.notes.append(f"py-spy produced no profile for {body} (ptrace not permitted?)")
        return {}
    top = report.collapse(out.read_text())
    run.log(f"profile {body}: {out.name}")
    return {"file": str(out.relative_to(REPO)), **top}


def scrape(url: str, n: int) -> tuple[list[float], int, int]:
    """``GET /metrics`` ``n`` times: seconds of each, sample lines and bytes of the last."""
    times: list[float] = []
    body = b""
    for _ in range(n):
        t = time.perf_counter()
        status, body = procs.http_get(f"{url}/metrics", timeout=30)
        times.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
    lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
    return times, len(lines), len(body)


def seed_db(
    run: Run, data: Path, n: int, due_at: list[float] | None = None, *, dsn: str | None = None
) -> dict[str, float]:
    """Seed ``data``/sidecar.db (or the PostgreSQL ``dsn``) in a separate process (its
    memory is freed when it exits)."""
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(REPO / "bench" / "seed.py"),
        *(["--dsn", dsn] if dsn else ["--db", str(data / "sidecar.db")]),
        "--rules",
        str(RULES),
        "--open",
        str(n),
    ]
    if due_at:
        argv += ["--due-at", *[repr(t) for t in due_at], "--prefix", "due"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"seeding failed: {out.stderr[-2000:]}")
    deadlines: dict[str, float] = json.loads(out.stdout)["deadlines"]
    return deadlines


def step_scale(run: Run) -> Path:
    """/metrics time and series, memory and restart-to-ready at each level of open incidents."""
    p = run.plan
    levels: dict[str, Any] = {}
    empty = run.work / "scale-0"
    with sidecar(run, empty) as (proc, ready, url):
        scrape(url, 2)
        base_rss = procs.rss_kib(proc.pid)
    run.results["rss_empty_kib"] = base_rss
    data = empty
    for n in p.levels:
        data = run.work / f"scale-{n}"
        t = time.monotonic()
        seed_db(run, data, n)
        seconds_seed = time.monotonic() - t
        readies: list[float] = []
        rss_ready: list[int] = []
        rss_after: list[int] = []
        times: list[float] = []
        series = size = 0
        for rep in range(p.restart_repeats if n == p.levels[-1] else 1):
            with sidecar(run, data, name=f"sidecar-{rep}") as (proc, ready, url):
                readies.append(ready)
                rss_ready.append(procs.rss_kib(proc.pid))
                t_s, series, size = scrape(url, p.scrapes)
                times += t_s[1:]  # the first scrape of a process warms it
                rss_after.append(procs.rss_kib(proc.pid))
        level = {
            "open_incidents": n,
            "seed_seconds": seconds_seed,
            "ready_seconds": spread(readies),
            "metrics_seconds": spread(times),
            "series": series,
            "metrics_bytes": size,
            "rss_kib": spread([float(r) for r in rss_after]),
            "rss_ready_kib": spread([float(r) for r in rss_ready]),
            "bytes_per_incident": (statistics.median(rss_after) - base_rss) * 1024 / n,
        }
        levels[str(n)] = level
        run.log(
            f"scale {n}: ready {statistics.median(readies):.2f} s, /metrics "
            f"{statistics.median(times) * 1000:.1f} ms, {series} series, RSS "
            f"{statistics.median(rss_after) / 1024:.0f} MiB "
            f"({level['bytes_per_incident']:.0f} B/incident)"
        )
    lo, hi = p.levels[0], p.levels[-1]
    slope = (
        (levels[str(hi)]["rss_kib"]["median"] - levels[str(lo)]["rss_kib"]["median"])
        * 1024
        / (hi - lo)
        if hi > lo
        else levels[str(hi)]["bytes_per_incident"]
    )
    run.results["scale"] = {"levels": levels, "bytes_per_incident_slope": slope}
    return data


def step_breach(run: Run, base: Path) -> None:
    """Deadlines passing at known instants among the largest level's open incidents."""
    data = run.work / "breach"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        src = base / f"sidecar.db{suffix}"
        if src.exists():
            shutil.copy2(src, data / src.name)
    n = run.plan.levels[-1]
    ready_guess = run.results["scale"]["levels"][str(n)]["ready_seconds"]["max"]
    run.results["breach"] = measure_breach(run, data, n, ready_guess)


def measure_breach(
    run: Run, data: Path, n: int, ready_guess: float, *, dsn: str | None = None
) -> dict[str, Any]:
    """Seed P1 incidents whose deadlines pass at known instants into the store of ``n``
    open incidents (``data``'s SQLite file, or ``dsn``), start the sidecar on it and
    time each breach from its log line."""
    p = run.plan
    lead = 2.0 + 2 * ready_guess + 3.0  # seeding, then start, then margin
    t0 = time.time() + lead
    window = 8.0
    due = [t0 + window * i / max(1, p.due_spread - 1) for i in range(p.due_spread)]
    due += [t0 + window + 1.0] * p.due_burst
    deadlines = seed_db(run, data, 0, due, dsn=dsn)
    with sidecar(run, data, log_level="info", name="sidecar-breach", store_url=dsn) as (
        proc,
        ready,
        url,
    ):
        ready_at = time.time()
        while time.time() < max(due) + 3.0:
            time.sleep(0.2)
        _, body = procs.http_get(f"{url}/metrics", timeout=30)
        log_path = proc.log_path
    counted = 0.0
    for line in body.decode().splitlines():
        if line.startswith("incident_sla_breaches_total{") and 'sla="acknowledge"' in line:
            counted += float(line.rsplit(" ", 1)[1])
    delays: list[float] = []
    early = 0
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("event") != "incident_breach" or rec.get("detail") != "acknowledge":
                continue
            deadline = deadlines.get(rec.get("incident_id", ""))
            if deadline is None:
                continue
            at = dt.datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
            if deadline < ready_at:
                early += 1  # passed while starting: counted at start, not on time
                continue
            delays.append(at - deadline)
    delays.sort()
    res = {
        "open_incidents": n + len(deadlines),
        "deadlines": len(deadlines),
        "spread": p.due_spread,
        "burst": p.due_burst,
        "counted_in_metrics": counted,
        "logged_on_time": len(delays),
        "passed_before_ready": early,
        "ready_seconds": ready,
        "ack_sla_seconds": DUE_ACK_SECONDS,
    }
    if delays:
        res.update(
            p50=delays[len(delays) // 2],
            p99=delays[min(len(delays) - 1, int(len(delays) * 0.99))],
            max=delays[-1],
            min=delays[0],
        )
    run.log(
        f"breach at {res['open_incidents']} open: {len(delays)}/{len(deadlines)} on time, "
        f"max {res.get('max', float('nan')):.3f} s, counted {counted:.0f}"
    )
    return res


# -- PostgreSQL --------------------------------------------------------------


@contextlib.contextmanager
def postgres(run: Run) -> Iterator[Any]:
    """A throwaway PostgreSQL cluster, as the tests start one, pinned to the server core.

    Its processes share the sidecar's core (a backend forked later inherits the
    postmaster's affinity), so that "the server on one core" holds here too.
    """
    from tests.support.postgres import PostgresCluster, server_bin_dir

    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        pid = cluster.process.pid
        children = [
            int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) == pid
        ]
        for each in [pid, *children]:
            subprocess.run(
                ["taskset", "-p", "-c", procs.SERVER_CPU, str(each)],
                capture_output=True,
                check=False,
            )
        yield cluster
    finally:
        cluster.destroy()


def _parent(proc_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in (proc_dir / "status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return None


def load_together(run: Run, urls: list[str], file: Path, **kw: Any) -> dict[str, float]:
    """One wrk per URL at once, the connections shared out; their rates and errors summed."""
    share = max(1, run.plan.connections // len(urls))
    with ThreadPoolExecutor(len(urls)) as pool:
        results = list(
            pool.map(lambda u: load(run, u, file, run.token, connections=share, **kw), urls)
        )
    return {
        "rps": sum(r["rps"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "p99_us": max(r["p99_us"] for r in results),
    }


def step_postgres(run: Run) -> None:
    """On PostgreSQL: the changed mix with 1 and 3 replicas, latency, restart, breaches.

    One replica and three run side by side on two databases of one cluster, measured
    in turn run by run; the three share the open groups (the harder case: their
    changes lock the same keys) and wrk's connections.
    """
    p = run.plan
    bodies = body_files(run)
    out: dict[str, Any] = {}
    with postgres(run) as cluster:
        for body, files in bodies.items():
            single = cluster.create_database(f"single_{body.replace('-', '_')}")
            shared = cluster.create_database(f"shared_{body.replace('-', '_')}")
            with contextlib.ExitStack() as stack:
                one = stack.enter_context(
                    sidecar(run, run.work / f"pg-{body}-1", store_url=single, name="pg-one")
                )
                three = [
                    stack.enter_context(
                        sidecar(run, run.work / f"pg-{body}-3-{i}", store_url=shared, name=f"r{i}")
                    )
                    for i in range(3)
                ]
                hooks = [f"{url}/webhook/alertmanager" for _, _, url in three]
                hook = f"{one[2]}/webhook/alertmanager"
                open_groups(run, hook, files["webhook"], run.token, "g")
                open_groups(run, hooks[0], files["webhook"], run.token, "g")
                if p.warmup:
                    load(run, hook, files["webhook"], run.token, duration=p.warmup, mode="repeat")
                    load_together(run, hooks, files["webhook"], duration=p.warmup, mode="repeat")
                cell: dict[str, Any] = {"1 replica": {"runs": []}, "3 replicas": {"runs": []}}
                for rep in range(p.repeats):
                    r1 = load(run, hook, files["webhook"], run.token)
                    r3 = load_together(run, hooks, files["webhook"])
                    cell["1 replica"]["runs"].append(r1)
                    cell["3 replicas"]["runs"].append(r3)
                    run.log(
                        f"postgres {body} changed rep {rep + 1}: 1 replica {r1['rps']:.0f} "
                        f"req/s, 3 replicas {r3['rps']:.0f} req/s"
                    )
                for name in ("1 replica", "3 replicas"):
                    runs = cell[name]["runs"]
                    cell[name]["rps"] = spread([r["rps"] for r in runs])
                    cell[name]["errors"] = sum(r["errors"] for r in runs)
                peak = cell["1 replica"]["rps"]["median"]
                cell["latency"] = latency(
                    run, f"{body} postgres", hook, files["webhook"], one[0], peak, prefix="g"
                )
            out[body] = cell
        n = p.levels[-1]
        data = run.work / "pg-scale"
        dsn = cluster.create_database("scale")
        seed_db(run, data, n, dsn=dsn)
        readies = []
        for rep in range(p.restart_repeats):
            with sidecar(run, data, name=f"pg-restart-{rep}", store_url=dsn) as (_, ready, _):
                readies.append(ready)
        out["restart"] = {"open_incidents": n, "ready_seconds": spread(readies)}
        run.log(f"postgres restart at {n}: ready {statistics.median(readies):.2f} s")
        out["breach"] = measure_breach(run, data, n, max(readies), dsn=dsn)
    run.results["postgres"] = out


def compile_package() -> None:
    """Compile the package's bytecode once, as installing it does (the image's ``pip install``).

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine, the image), a server run
    from the source tree would otherwise compile every module at each start: a
    cost in restart time that no installed sidecar pays. The files go to the
    package's ``__pycache__`` (ignored by git), where a plain ``python`` writes them.
    """
    compileall.compile_dir(REPO / "sidecar", quiet=1)


def machine(argv: list[str]) -> dict[str, Any]:
    """Where and how the numbers were taken."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    wrk_v = subprocess.run(
        [shutil.which("wrk") or "true", "-v"], capture_output=True, text=True, check=False
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": (wrk_v.stdout + wrk_v.stderr).splitlines()[0] if wrk_v.stdout + wrk_v.stderr else "",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "loadavg_start": os.getloadavg(),
        "server_cpu": procs.SERVER_CPU,
        "load_cpu": procs.LOAD_CPU,
    }


def self_test(out: Path) -> dict[str, Any]:
    """No wrk, tiny N, seconds: seed, start the real sidecar, scrape, write the report."""
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        run = Run(SELF_TEST, Path(tmp))
        run.results["machine"] = machine(["--self-test"])
        step_scale(run)
        report.write(run.results, out)
    return run.results


def main(argv: list[str] | None = None) -> int:
    """Run every step and write the results."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs, up to 10,000 incidents")
    ap.add_argument("--no-profile", action="store_true", help="skip py-spy")
    ap.add_argument("--self-test", action="store_true", help="seconds, no wrk: harness check")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results)")
    ap.add_argument(
        "--only", choices=["ingest", "scale", "postgres"], help="run one group of steps"
    )
    args = ap.parse_args(args_list)
    # Killed politely, unwind: servers stopped for another's run are continued and
    # every server started is stopped (the context managers' finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.self_test:
        if args.out is None:
            print("--self-test needs --out (it must not replace bench/results)", file=sys.stderr)
            return 2
        self_test(args.out)
        return 0
    args.out = args.out or RESULTS
    if shutil.which("wrk") is None:
        print("wrk not found (Debian package wrk)", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    if args.no_profile:
        plan = Plan(**{**plan.__dict__, "profile_seconds": 0})
    args.out.mkdir(parents=True, exist_ok=True)
    compile_package()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        run = Run(plan, Path(tmp))
        run.results["machine"] = machine(args_list)
        run.results["plan"] = plan.__dict__
        started = time.monotonic()
        steps: list[tuple[str, Callable[[], Any]]] = []
        if args.only in (None, "ingest"):
            steps.append(("ingest", lambda: step_ingest(run)))
        if args.only in (None, "scale"):
            holder: dict[str, Path] = {}
            steps.append(("scale", lambda: holder.__setitem__("db", step_scale(run))))
            steps.append(("breach", lambda: step_breach(run, holder["db"])))
        if args.only in (None, "postgres"):
            steps.append(("postgres", lambda: step_postgres(run)))
        for name, fn in steps:
            run.log(f"step {name}")
            try:
                fn()
            except Exception as exc:  # one broken step must not lose the others' numbers
                run.notes.append(f"step {name} failed: {type(exc).__name__}: {exc}")
                run.log(f"step {name} FAILED: {exc}")
        run.results["machine"]["loadavg_end"] = os.getloadavg()
        run.results["machine"]["seconds"] = time.monotonic() - started
        run.results["notes"] = run.notes
        report.write(run.results, args.out, name=plan.name)
    run.log(f"wrote {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
