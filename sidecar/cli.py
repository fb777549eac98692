"""Command line: ``serve``, ``check-config``, ``test-rules``, ``render-template``, ``test-plan``
and ``backtest``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from sidecar import __version__
from sidecar.backtest.args import add_arguments as add_backtest_arguments
from sidecar.config import Config, load_config, rules_file_of, split_listen
from sidecar.config.integrations import TEMPLATE_PRESETS
from sidecar.durations import format_duration
from sidecar.errors import ConfigError
from sidecar.logs import setup_logging
from sidecar.notify.wiring import integration_problems, templates_of
from sidecar.routing import routing_problems, routing_warnings
from sidecar.rules import DROP, FLOOR_LABEL, Classification, RuleSet, load_rules
from sidecar.rules.intervals import describe
from sidecar.sla import SLA_KINDS
from sidecar.tls import ReloadingContext, build_context

log = logging.getLogger("sidecar")


def _load(
    path: Path, *, read_secrets: bool = True, check_routing: bool = True
) -> tuple[Config, RuleSet]:
    """Load the configuration and its rules, reporting the problems of both files at once.

    ``check_routing`` also checks what the two say together: that no page or
    escalation would reach nobody (:func:`sidecar.routing.routing_problems`).
    """
    try:
        config = load_config(path, read_secrets=read_secrets)
    except ConfigError as exc:
        rules_file = rules_file_of(path)
        if rules_file is not None:
            try:
                load_rules(rules_file)
            except ConfigError as rules_exc:
                raise ConfigError(exc.problems + rules_exc.problems) from exc
        raise
    rules = load_rules(config.rules_file)
    if check_routing:
        severities = [sev.name for sev in rules.severities]
        problems = routing_problems(config, rules)
        problems += integration_problems(config, rules.name, severities, rules.teams)
        if problems:
            raise ConfigError(problems)
    if read_secrets and (files := config.tls_files) is not None:
        build_context(files)  # a missing file or a key that does not match: refuse now
    return config, rules


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def check_config(path: Path) -> int:
    """Validate a configuration and its rules; print every problem."""
    try:
        config, rules = _load(path)
    except ConfigError as exc:
        _print_problems(exc)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    s = config.settings
    print(f"{path}: OK")
    tls = config.tls_files
    scheme = "http" if tls is None else ("https, mTLS" if tls.client_ca else "https")
    print(
        f"  listen {s.server.listen} ({scheme}), store {s.store.url.split('://')[0]}, "
        f"incidents by {s.incidents.key}"
    )
    print(
        f"  rules {config.rules_file}: preset {rules.name!r}, "
        f"severities {', '.join(p.name for p in rules.severities)}, teams {', '.join(rules.teams)}"
    )
    readers = ["the API token"]
    if config.secrets.users:
        readers.append(f"{len(config.secrets.users)} user(s) of {s.server.web_config_file}")
    if s.server.trusted_user_header:
        readers.append(f"the proxy's {s.server.trusted_user_header} header (trusted)")
    print(f"  reads: {', '.join(readers)}")
    if s.server.insecure_disable_auth:
        print(
            "  WARNING: server.insecure_disable_auth is true: anyone can post webhooks "
            "and read every incident"
        )
    for warning in routing_warnings(config, rules):
        print(f"  WARNING: {warning}")
    return 0


def _parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"invalid {what} {pair!r}: expected NAME=VALUE")
        out[name] = value.strip('"')
    return out


def _floor_line(result: Classification, labels: dict[str, str]) -> str:
    """What the severity floor did, for ``test-rules``."""
    value = labels.get(FLOOR_LABEL)
    if value is None:
        return f"none  (no {FLOOR_LABEL} label)"
    if result.floor is None:
        return f'none  ({FLOOR_LABEL}="{value}" sets none)'
    head = f'{result.floor}  ({FLOOR_LABEL}="{value}")'
    rule = result.severity_rule
    if result.raised_from == DROP:
        return f"{head}: kept; rule {rule} drops alerts but does not say below_floor"
    if result.raised_from is not None:
        return f"{head}: raised from {result.raised_from} (rule {rule})"
    if result.below_floor:
        what = "dropped" if result.dropped else f"lowered to {result.severity}"
        return f"{head}: {what} by rule {rule} (below_floor: true)"
    return head


def explain_rules(path: Path, labels: Sequence[str], annotations: Sequence[str]) -> int:
    """Print the severity, team and matching rules for a label set, and the floor's part."""
    try:
        # Which rule matches needs neither secrets nor complete routing.
        _, rules = _load(path, read_secrets=False, check_routing=False)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    label_set = _parse_pairs(labels, "label")
    annotation_set = _parse_pairs(annotations, "annotation")
    result = rules.classify(label_set, annotation_set)
    severity = "dropped" if result.dropped else result.severity
    print(f"severity: {severity}  (rule: {result.severity_rule})")
    if rules.severity_floor:
        print(f"floor:    {_floor_line(result, label_set)}")
    print(f"team:     {result.team}  (rule: {result.team_rule})")
    if result.dropped:
        print("paging:   none: dropped, no incident is opened")
    else:
        print(f"paging:   {rules.policy(result.severity).paging}")
        for line in _sla_lines(rules, result.severity):
            print(line)
        if rules.statuses:
            # The plan's statuses: what the incident opens in and what updates may say.
            print(f"status:   {rules.statuses[0]} (updates: {', '.join(rules.statuses)})")
        policy = rules.policy(result.severity)
        if policy.escalation:
            steps = ", ".join(
                f"{format_duration(e.after)} {e.tier} (while {e.while_})" for e in policy.escalation
            )
            print(f"ladder:   {steps}")
        watch = policy.recovery_watch
        if watch is not None:
            print(f"watch:    {format_duration(watch)} after resolution (a re-fire reopens)")
    if rules.spec.escalation_rules and not result.dropped:
        hits = rules.escalations(label_set, annotation_set)
        for hit in hits:
            only = ", record_only: nobody paged" if hit.record_only else ""
            print(f"escalate: {hit.tier}  (rule: {hit.rule}{only})")
        if not hits:
            print("escalate: none  (no escalation rule matches)")
    return 0


def _sla_lines(rules: RuleSet, severity: str) -> list[str]:
    """The calendars the severity's targets run on, what runs on each, and their intervals."""
    policy = rules.policy(severity)
    uses: dict[str, list[str]] = {}
    for name in SLA_KINDS:
        value = getattr(policy.sla, name)
        calendar = policy.sla.calendar(name)
        if value is not None and calendar:
            uses.setdefault(calendar, []).append(f"{name} {format_duration(value)}")
    for step in policy.escalation:
        if step.calendar:
            what = f"escalation to {step.tier} after {format_duration(step.after)}"
            uses.setdefault(step.calendar, []).append(what)
    intervals = {i.name: i for i in rules.spec.time_intervals}
    lines = []
    for name, targets in uses.items():
        spec = rules.spec.calendar_spec(name)
        if spec is None:
            continue
        head, *rest = describe(spec, intervals)
        lines.append(f"calendar: {head}; business time for {', '.join(targets)}")
        lines += [f"          {line}" for line in rest]
    return lines


async def _serve(config: Config, rules: RuleSet, tls: ReloadingContext | None) -> None:
    # Imported here so check-config and test-rules stay light.
    from sidecar.runtime import build_components
    from sidecar.web import create_app

    components = build_components(config, rules=rules)
    app = create_app(components)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    # The restored incidents live as long as they are open: keep the cyclic
    # collector from walking them again and again, while they load (restart
    # time) and afterwards (full collections of a large book took tens of
    # milliseconds each, the tail of the latency). Loading makes no cycles.
    gc.disable()
    try:
        await runner.setup()
    finally:
        gc.freeze()
        # Young collections every 5,000 survivors rather than 700: fewer walks
        # over the incidents opened since. Not 50,000: each such collection
        # walked some 40,000 young objects in 20-30 ms, a stall every few
        # seconds that put the p99 at half the peak rate near 70 ms. At 5,000
        # the same load kept its throughput and a p99 of 4-6 ms.
        gc.set_threshold(5_000, 10, 10)
        gc.enable()
    host, port = split_listen(config.settings.server.listen)
    ssl_context = None if tls is None else tls.server_context
    site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context)
    await site.start()
    log.info(
        "serving",
        extra={
            "listen": config.settings.server.listen,
            "tls": tls is not None,
            "rules_file": str(config.rules_file),
            "preset": rules.name,
            "store": config.settings.store.url.split("://")[0],
            "version": __version__,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, components.reload_rules)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def serve(path: Path) -> int:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the rules."""
    try:
        config, rules = _load(path)
        files = config.tls_files
        tls = None if files is None else ReloadingContext(files)
    except ConfigError as exc:
        _print_problems(exc)
        print("refusing to start: fix the problems above", file=sys.stderr)
        return 1
    setup_logging(config.settings.logging.level, config.settings.logging.format)
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # an optional extra: a faster event loop when installed

        runner = uvloop.run
    runner(_serve(config, rules, tls))
    return 0


def render_template(
    name: str | None, config_path: Path | None, preset: str | None, *, resolved: bool
) -> int:
    """Print a message template rendered against a sample incident (or list the templates)."""
    # Here, not at the top: Jinja2 is no part of what serve imports (restart time).
    from sidecar.notify.templates import (
        SAMPLE_EVENT,
        SLACK_REPLIES,
        TEMPLATE_NAMES,
        MessageTemplates,
        sample_context,
    )

    if config_path is not None:
        try:
            config, rules = _load(config_path, check_routing=False)
        except ConfigError as exc:
            _print_problems(exc)
            return 1
        templates = templates_of(config, preset or rules.name)
    else:
        templates = MessageTemplates(preset or "generic")
    if name is None:
        for known in TEMPLATE_NAMES:
            print(f"{known}\t{templates.source(known)}")
        return 0
    if name not in TEMPLATE_NAMES:
        print(f"unknown template {name!r}; one of: {', '.join(TEMPLATE_NAMES)}", file=sys.stderr)
        return 1
    event = None
    if name in SLACK_REPLIES.values():
        kind = next(k for k, v in SLACK_REPLIES.items() if v == name)
        event = {**SAMPLE_EVENT, "kind": kind}
    try:
        print(templates.render(name, sample_context(event, resolved=resolved)))
    except Exception as exc:
        print(f"{templates.source(name)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="incident-sla-sidecar",
        description="Alertmanager webhooks in; SLA-measured incidents, pages and metrics out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the service")
    p.add_argument("--config", type=Path, required=True, help="configuration file (YAML)")
    p = sub.add_parser("check-config", help="validate a configuration and its rules")
    p.add_argument("--config", type=Path, required=True)
    p = sub.add_parser("test-rules", help="show which rules match a label set")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("labels", nargs="*", metavar="LABEL=VALUE")
    p.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an annotation for numeric conditions (repeatable)",
    )
    p = sub.add_parser(
        "render-template", help="preview a message template against a sample incident"
    )
    p.add_argument("template", nargs="?", help="e.g. slack/incident.txt.j2 (none: list them)")
    p.add_argument("--config", type=Path, help="use its preset and template overrides")
    p.add_argument("--preset", choices=TEMPLATE_PRESETS, help="the package set to start from")
    p.add_argument("--resolved", action="store_true", help="the sample incident, resolved")
    p = sub.add_parser("test-plan", help="run plan test files (promtool-style scenarios)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p = sub.add_parser("backtest", help="replay Prometheus' alert history through the plan")
    add_backtest_arguments(p)
    return parser


def test_plan(paths: Sequence[Path]) -> int:
    """Run plan test files; 0 when every test passed, else 1 with a diff of each failure."""
    from sidecar.plantest import run_paths  # light commands stay light

    return run_paths(list(paths), print, lambda line: print(line, file=sys.stderr))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``incident-sla-sidecar`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args.config)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "render-template":
        return render_template(args.template, args.config, args.preset, resolved=args.resolved)
    if args.command == "test-plan":
        return test_plan(args.files)
    if args.command == "backtest":
        from sidecar.backtest.command import main as backtest

        return backtest(args)
    return explain_rules(args.config, args.labels, args.annotation)
