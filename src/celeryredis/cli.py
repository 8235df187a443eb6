"""The command line: ``celery -A proj redis <command>`` and ``celeryredis --app proj <command>``.

Both run the same click commands; ``celery -A proj redis`` is registered through
Celery's ``celery.commands`` entry point, ``celeryredis`` is a console script.
Every command takes ``--json``; secrets are redacted in every output.

Errors are one ``Error: ...`` line on stderr (the redacted traceback before it only
with ``--debug``), and the exit code says what kind of failure it was: see
:data:`EXIT_CODES` (the table in docs/operations.md, which a test keeps equal to it).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import IO, TYPE_CHECKING, Any, Final, TextIO

import click
import kombu.exceptions
import redis
from celery import Celery

from celeryredis._errors import classify, describe, is_redis_failure
from celeryredis.app import explain, format_explain
from celeryredis.bulk import BulkPublishError, enqueue_many
from celeryredis.connection import get_redis, new_redis
from celeryredis.deadletter import (
    DeadLetter,
    DeadLetterNotFound,
    DeadLetterQueue,
    iso_utc,
)
from celeryredis.exceptions import CeleryRedisError, ConfigurationError
from celeryredis.health import HealthPart, check_health, check_worker
from celeryredis.keys import lock_pattern, lock_task_name
from celeryredis.log import redact_exc_info
from celeryredis.queues import QueueDepth, inspect_queues
from celeryredis.redaction import redact_text
from celeryredis.urls import redis_url_of_broker

__all__ = ["EXIT_CODES", "CliError", "main", "redis_command"]

EXIT_OK: Final = 0
EXIT_WARN: Final = 1
EXIT_FAIL: Final = 2
EXIT_USAGE: Final = 64
EXIT_DATA: Final = 65
EXIT_NOT_FOUND: Final = 66
EXIT_UNAVAILABLE: Final = 69
EXIT_ERROR: Final = 70
EXIT_CONFIG: Final = 78

#: Every exit code of the CLI and what it means (docs/operations.md shows this table).
EXIT_CODES: Final = {
    EXIT_OK: "ok",
    EXIT_WARN: "check: a warning; dlq purge / locks clear: the confirmation was declined",
    EXIT_FAIL: "check: a part failed (check --worker: the worker is not consuming)",
    EXIT_USAGE: "usage: unknown command or option, bad value, no --app or one that cannot "
    "be loaded",
    EXIT_DATA: "bad input data (a line of enqueue's input)",
    EXIT_NOT_FOUND: "not found: a dead-letter entry id or a task name",
    EXIT_UNAVAILABLE: "Redis could not be reached",
    EXIT_ERROR: "any other error",
    EXIT_CONFIG: "the app's configuration was refused, or Redis refused it for good (a wrong "
    "password or user, a database out of range)",
}

_DEBUG_KEY = "celeryredis.debug"


class CliError(click.ClickException):
    """An error the CLI reports as one ``Error: ...`` line, with its exit code.

    Args:
        message: What went wrong and what to do (redacted before it is shown).
        exit_code: One of :data:`EXIT_CODES`.
    """

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(" ".join(redact_text(message).split()))
        self.exit_code = exit_code  # type: ignore[misc] # a ClassVar in click's stubs

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one line on stderr."""
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says Redis could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            redis.ConnectionError | redis.TimeoutError | kombu.exceptions.OperationalError,
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _broker(ctx: click.Context) -> str:
    app = getattr(ctx.find_root().obj, "app", None)
    url = getattr(getattr(app, "conf", None), "broker_url", None) if app is not None else None
    return f" at {redact_text(redis_url_of_broker(str(url)))}" if url else ""


def _translate(  # noqa: PLR0911 - one return per kind of failure, in the table's order
    ctx: click.Context, exc: Exception
) -> click.ClickException:
    """The one-line error for any exception a command raised."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
        text = exc.format_message().rstrip(". ")
        return CliError(f"{text} (see '{where} --help')", EXIT_USAGE)
    if isinstance(exc, click.ClickException):
        return CliError(exc.format_message(), EXIT_ERROR)
    if isinstance(exc, DeadLetterNotFound):
        return CliError(_suggesting(ctx, str(exc)), EXIT_NOT_FOUND)
    if is_redis_failure(exc) and (diagnosis := classify(exc)).permanent:
        # Retrying cannot help (a wrong password, NOPERM, a DB index, TLS): say why.
        return CliError(
            f"Redis{_broker(ctx)} refused the app: {describe(diagnosis, 'broker_url')}",
            EXIT_CONFIG,
        )
    if _is_unavailable(exc):
        root = _root_cause(exc)
        text = str(root).rstrip(". ")
        return CliError(
            f"Redis{_broker(ctx)} could not be reached: {type(root).__name__}: {text}. "
            f"Check that it runs and that the URL is right ({_command_prefix(ctx)} config "
            "shows it)",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, ConfigurationError):
        return CliError(str(exc), EXIT_CONFIG)
    if isinstance(exc, CeleryRedisError):
        return CliError(str(exc), EXIT_ERROR)
    if isinstance(exc, redis.RedisError):
        return CliError(f"Redis{_broker(ctx)} refused: {type(exc).__name__}: {exc}", EXIT_ERROR)
    hint = "" if ctx.meta.get(_DEBUG_KEY) else " (--debug shows the traceback)"
    return CliError(f"{type(exc).__name__}: {exc}{hint}", EXIT_ERROR)


class _Group(click.Group):
    """A click group whose errors are one line and a documented exit code."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """Parse the group's own options; a usage error exits 64 with one line."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _translate(exc.ctx or click.Context(self, info_name=info_name), exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; translate whatever it raised into a :class:`CliError`."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, CliError):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            if ctx.meta.get(_DEBUG_KEY) and not isinstance(exc, click.UsageError):
                click.echo(redact_exc_info(exc), err=True)
            raise _translate(ctx, exc) from exc


_Group.group_class = type  # subgroups (dlq, locks) are _Group too


def _version_text() -> str:
    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    python = ".".join(str(n) for n in sys.version_info[:3])
    return (
        f"celeryredis {of('celeryredis')} (celery {of('celery')}, kombu {of('kombu')}, "
        f"redis-py {of('redis')}, Python {python})"
    )


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit(0)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_KEY] = True


_version_option = click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the versions of celeryredis, Celery, kombu, redis-py and Python.",
)
_debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Print the (redacted) traceback of an error before its one-line message.",
)


class _Context:
    def __init__(self, app: Celery, spec: str) -> None:
        self.app = app
        self.spec = spec


def _app(ctx: click.Context) -> Celery:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        raise click.UsageError(
            "no app: pass --app module[:attribute] (celery -A module[:attribute] redis ...)"
        )
    return app  # type: ignore[no-any-return]


def _command_prefix(ctx: click.Context) -> str:
    """How the user invoked us, for commands we suggest: celery -A x redis, or celeryredis."""
    root = ctx.find_root()
    obj = root.obj
    if root.command is main:
        spec = getattr(obj, "spec", None)
        return f"celeryredis --app {spec}" if spec else "celeryredis"
    spec = root.params.get("app")
    if not isinstance(spec, str):
        app = getattr(obj, "app", None)
        spec = getattr(app, "main", None) or "proj"
    return f"celery -A {spec} redis"


def _suggesting(ctx: click.Context, text: str) -> str:
    """``text`` with suggested ``celeryredis ...`` commands in the form the user invoked."""
    return text.replace("`celeryredis ", f"`{_command_prefix(ctx)} ")


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (end of input, Ctrl-C) is a no."""
    try:
        return click.confirm(question, err=True)
    except click.Abort:
        click.echo("", err=True)
        return False


def _echo_json(value: Any) -> None:
    click.echo(redact_text(json.dumps(value, indent=2, default=str, sort_keys=True)))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@click.group(name="redis", cls=_Group)
@_version_option
@_debug_option
@click.pass_context
def redis_command(ctx: click.Context) -> None:
    """celeryredis: settings, health, queues, dead letters and locks of a Celery app on Redis."""


@redis_command.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def config_command(ctx: click.Context, as_json: bool) -> None:
    """Every setting celeryredis or you set, its value and where it came from."""
    rows = explain(_app(ctx))
    if as_json:
        _echo_json([row.__dict__ for row in rows])
    else:
        click.echo(redact_text(format_explain(rows)))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _part_row(part: HealthPart) -> tuple[str, ...]:
    latency = "-" if part.latency_s is None else f"{part.latency_s * 1000:.1f}"
    return (part.status.upper(), part.name, latency, part.reason)


def _queue_row(queue: QueueDepth) -> tuple[str, ...]:
    by_priority = " ".join(f"{step}:{n}" for step, n in sorted(queue.by_priority.items()))
    return (
        queue.name,
        str(queue.depth),
        by_priority,
        str(queue.unacked),
        _age(queue.oldest_age_s),
        str(queue.unknown_age),
        ",".join(queue.consumers) or "-",
    )


def _partition_rows(queue: QueueDepth) -> list[tuple[str, ...]]:
    """One line per partition of a partitioned cluster queue, under the queue's line."""
    return [
        (f"  partition {p.index}", str(p.depth), "-", str(p.unacked), "-", "-", "-")
        for p in queue.partitions
    ]


_QUEUE_HEADER = ("queue", "waiting", "by priority", "unacked", "oldest", "unknown age", "consumers")


@redis_command.command("check")
@click.option(
    "--worker",
    "worker",
    default=None,
    metavar="NAME",
    help="Only this worker's heartbeat (name@host, or name): a liveness probe. Exit 0 or 2.",
)
@click.option(
    "--timeout", default=5.0, show_default=True, type=float, help="Seconds per Redis call."
)
@click.option("--queue", "queues", multiple=True, help="Queues to report (default: all known).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def check_command(
    ctx: click.Context, worker: str | None, timeout: float, queues: tuple[str, ...], as_json: bool
) -> None:
    """Health of broker, backend, Redis, workers, queues and dead letters; exit 0/1/2.

    Exit code 0 means ok, 1 warn, 2 fail. With --worker NAME, only that worker's
    heartbeat is checked: 0 while it consumes (or is busy), 2 when it is dead,
    frozen, not consuming or Redis is unreachable.
    """
    app = _app(ctx)
    if worker:
        part = check_worker(app, worker, timeout=timeout)
        if as_json:
            _echo_json(part.to_dict())
        else:
            click.echo(redact_text(f"{part.status.upper()}  {part.name}  {part.reason}"))
        ctx.exit(EXIT_OK if part.status == "ok" else EXIT_FAIL)
    report = check_health(app, timeout=timeout, queues=queues or None)
    if as_json:
        data = report.to_dict()
        for row in data.get("parts", ()):
            if isinstance(row, dict) and isinstance(row.get("reason"), str):
                row["reason"] = _suggesting(ctx, row["reason"])
        _echo_json(data)
        ctx.exit(report.exit_code)
    header = ("status", "part", "ms", "reason")
    table = _table([header, *(_part_row(p) for p in report.parts)])
    click.echo(redact_text(_suggesting(ctx, table)))
    if report.workers:
        click.echo("")
        rows: list[tuple[str, ...]] = [
            ("worker", "state", "last beat", "last poll", "done", "active", "queues")
        ]
        rows += [
            (
                w.hostname,
                w.state,
                _age(w.beat_age_s),
                _age(w.poll_age_s),
                str(w.tasks_done),
                str(w.active),
                ",".join(w.queues),
            )
            for w in report.workers
        ]
        click.echo(_table(rows))
    click.echo(f"\n{report.status.upper()} (exit {report.exit_code})")
    ctx.exit(report.exit_code)


@redis_command.command("queues")
@click.option("--queue", "queues", multiple=True, help="Queues to show (default: all known).")
@click.option(
    "--sample",
    default=1000,
    show_default=True,
    help="Oldest messages read per priority sub-queue for their age.",
)
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds per call.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queues_command(
    ctx: click.Context, queues: tuple[str, ...], sample: int, timeout: float, as_json: bool
) -> None:
    """Waiting messages per queue and priority, unacked messages, oldest message's age."""
    app = _app(ctx)
    client = new_redis(app, timeout=timeout)
    try:
        rows = inspect_queues(app, queues or None, client=client, sample=sample)
    finally:
        client.close()
    if as_json:
        _echo_json([q.to_dict() for q in rows])
        return
    lines: list[tuple[str, ...]] = [_QUEUE_HEADER]
    for queue in rows:
        lines += [_queue_row(queue), *_partition_rows(queue)]
    click.echo(_table(lines))


@redis_command.command("exporter")
@click.option("--port", default=9808, show_default=True, help="Port to serve /metrics on.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds per call.")
@click.option("--json", "as_json", is_flag=True, help="Print where it listens as JSON.")
@click.pass_context
def exporter_command(
    ctx: click.Context, port: int, address: str, timeout: float, as_json: bool
) -> None:
    """Serve Prometheus metrics read from Redis (needs celeryredis[prometheus])."""
    try:
        from celeryredis.metrics import serve  # noqa: PLC0415 - an optional extra
    except ImportError as exc:
        raise click.ClickException(
            "the exporter needs prometheus-client: pip install 'celeryredis[prometheus]'"
        ) from exc
    app = _app(ctx)
    server = serve(app, port=port, address=address, timeout=timeout)
    where = {"url": f"http://{address}:{server.server_port}/metrics"}
    if as_json:
        _echo_json(where)
    else:
        click.echo(f"serving metrics on {where['url']}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C is how an exporter in a terminal stops
        pass
    finally:
        server.shutdown()


@redis_command.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (tour on stderr).")
@click.option(
    "--cluster", is_flag=True, help="Run the tour on a Redis Cluster (a throwaway 3-master one)."
)
def demo_command(as_json: bool, cluster: bool) -> None:
    """The end-to-end tour (starts a throwaway redis-server unless a URL is configured)."""
    from celeryredis.demo import main as demo_main  # noqa: PLC0415

    sys.exit(demo_main(as_json=as_json, cluster=cluster))


@redis_command.group("dlq")
def dlq_command() -> None:
    """Look at, replay and purge the dead-letter queue."""


_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)([smhd]))")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


if TYPE_CHECKING:
    _ParamType = click.ParamType[timedelta, Any]
else:  # click < 8.2 has no generic ParamType at run time
    _ParamType = click.ParamType


class Duration(_ParamType):
    """A duration such as ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m`` (a bare number: seconds)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``value`` into a :class:`datetime.timedelta`."""
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        try:
            return timedelta(seconds=float(text))
        except ValueError:
            pass
        if text and _DURATION_RE.sub("", text) == "":
            seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_RE.findall(text))
            return timedelta(seconds=seconds)
        return self.fail(
            f"{value!r} is not a duration such as 30s, 10m, 2h, 1d or 1h30m", param, ctx
        )


def _summary(entry: DeadLetter) -> tuple[str, ...]:
    message = f"{entry.exception_type}: {entry.exception_message}".replace("\n", " ")
    return (
        entry.id,
        iso_utc(entry.failed_at)[:-5] + "Z",
        entry.task_name or "?",
        entry.reason,
        str(entry.attempts),
        message[:60] + ("..." if len(message) > 60 else ""),
    )


@dlq_command.command("list")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most entries to show (1 or more).",
)
@click.option("--task", default=None, help="Only this task name.")
@click.option(
    "--since",
    type=Duration(),
    default=None,
    help="Only entries of the last DURATION: 30s, 10m, 2h, 1d, 1h30m.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_list(
    ctx: click.Context, limit: int, task: str | None, since: timedelta | None, as_json: bool
) -> None:
    """Entries, newest first (arguments redacted; times in UTC, ISO-8601)."""
    dlq = DeadLetterQueue(_app(ctx))
    entries = dlq.list(limit, task=task, since=since)
    if as_json:
        _echo_json({"total": len(dlq), "entries": [e.to_dict() for e in entries]})
        return
    header = ("id", "failed at (UTC)", "task", "reason", "attempts", "exception")
    click.echo(redact_text(_table([header, *(_summary(e) for e in entries)])))
    click.echo(f"{len(entries)} shown, {len(dlq)} in the dead-letter queue")


@dlq_command.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_show(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """One entry with its arguments (redacted) and traceback."""
    entry = DeadLetterQueue(_app(ctx)).get(entry_id)
    if entry is None:
        raise DeadLetterNotFound([entry_id])
    data = entry.to_dict()
    if as_json:
        _echo_json(data)
        return
    lines = []
    for key, value in data.items():
        if key in {"traceback", "failed_at_epoch"}:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"{key:18} {shown}")
    lines.append("traceback:\n" + entry.traceback)
    click.echo(redact_text("\n".join(lines)))


@dlq_command.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry.")
@click.option("--queue", default=None, help="Publish to this queue instead.")
@click.option("--new-id", is_flag=True, help="Publish under new task ids.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_replay(
    ctx: click.Context,
    entry_ids: tuple[str, ...],
    replay_all: bool,
    queue: str | None,
    new_id: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Publish entries again (original arguments, retries reset) and remove them."""
    if not entry_ids and not replay_all:
        raise click.UsageError("name entry ids, or pass --all")
    dlq = DeadLetterQueue(_app(ctx))
    results = dlq.replay(
        "all" if replay_all else entry_ids,
        queue=queue,
        new_id=new_id,
        dry_run=dry_run,
        missing_ok=False,
    )
    ids = [r.id for r in results]
    if as_json:
        _echo_json({"dry_run": dry_run, "task_ids": ids})
        return
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {len(ids)} task(s)")
    for task_id in ids:
        click.echo(f"  {task_id}")


@dlq_command.command("purge")
@click.option("--task", default=None, help="Only entries of this task name.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_purge(ctx: click.Context, task: str | None, yes: bool, as_json: bool) -> None:
    """Delete entries for good."""
    dlq = DeadLetterQueue(_app(ctx))
    what = f"every entry of task {task}" if task else f"all {len(dlq)} entries"
    if not yes and not _confirm(f"Delete {what} from the dead-letter queue?"):
        raise CliError("nothing was deleted (not confirmed; --yes skips the question)", EXIT_WARN)
    removed = dlq.purge(task)
    if as_json:
        _echo_json({"removed": removed})
    else:
        click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")


@redis_command.group("locks")
def locks_command() -> None:
    """List and clear unique-task locks."""


def _locks(app: Celery, task: str | None) -> list[dict[str, Any]]:
    client = get_redis(app)
    rows = []
    for key in client.scan_iter(match=lock_pattern(app.conf, task), count=500):
        pipe = client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        holder, pttl = pipe.execute()
        if holder is None:
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        rows.append(
            {
                "key": name,
                "task": lock_task_name(app.conf, name),
                "held_by": holder.decode() if isinstance(holder, bytes) else holder,
                "ttl_s": None if pttl < 0 else pttl / 1000,
            }
        )
    return sorted(rows, key=lambda row: row["key"])


@locks_command.command("list")
@click.option("--task", default=None, help="Only locks of this task name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def locks_list(ctx: click.Context, task: str | None, as_json: bool) -> None:
    """Locks held now: key, task, holder (a task id) and time left."""
    rows = _locks(_app(ctx), task)
    if as_json:
        _echo_json(rows)
        return
    header = ("task", "held by", "ttl (s)", "key")
    body = [
        (r["task"], r["held_by"], "-" if r["ttl_s"] is None else f"{r['ttl_s']:.1f}", r["key"])
        for r in rows
    ]
    click.echo(_table([header, *body]))
    click.echo(f"{len(rows)} lock(s)")


@locks_command.command("clear")
@click.option("--task", default=None, help="Only locks of this task name.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def locks_clear(ctx: click.Context, task: str | None, yes: bool, as_json: bool) -> None:
    """Delete locks regardless of their owner (an operator's override)."""
    app = _app(ctx)
    rows = _locks(app, task)
    what = f"{len(rows)} lock(s)" + (f" of task {task}" if task else "")
    if rows and not yes and not _confirm(f"Delete {what}? Their tasks may then run twice."):
        raise CliError("nothing was deleted (not confirmed; --yes skips the question)", EXIT_WARN)
    removed = int(get_redis(app).delete(*[r["key"] for r in rows])) if rows else 0
    if as_json:
        _echo_json({"removed": removed})
    else:
        click.echo(f"removed {removed} lock(s)")


def _json_calls(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, call)`` from JSON lines.

    Each line is ``[args...]`` or ``{"args": [...], "kwargs": {...}}``. Line numbers
    are 1-based and count blank lines, as an editor does.
    """
    shape = 'expected [args...] or {"args": [...], "kwargs": {...}}'
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}, column {exc.colno}: not JSON ({exc.msg})") from None
        if isinstance(value, list):
            yield number, tuple(value)
        elif (
            isinstance(value, dict)
            and set(value) <= {"args", "kwargs"}
            and isinstance(value.get("args") or [], list)
            and isinstance(value.get("kwargs") or {}, dict)
        ):
            yield number, (tuple(value.get("args") or ()), dict(value.get("kwargs") or {}))
        else:
            raise ValueError(f"line {number}: {shape}, not a {type(value).__name__}")


def _read_calls(source: TextIO) -> tuple[list[Any], list[int]]:
    """Every call of the input and its line number, checked before anything is published."""
    calls: list[Any] = []
    lines: list[int] = []
    try:
        for number, call in _json_calls(source):
            lines.append(number)
            calls.append(call)
    except ValueError as exc:
        raise CliError(f"{exc}; nothing was published", EXIT_DATA) from exc
    return calls, lines


def _stopped_at(task_name: str, exc: BulkPublishError, lines: list[int]) -> CliError:
    """The one line for a bulk publish that stopped part-way, in input line numbers."""
    root = _root_cause(exc)
    cause = (f"{type(root).__name__}: {root}" if root is not exc else str(exc)).rstrip(". ")
    published = sum(1 for i in exc.published_ids if i is not None)
    if exc.next_index >= len(lines):
        where = "after the last line"
        resume = "nothing is left to publish"
    else:
        line = lines[exc.next_index]
        where = f"at line {line}"
        resume = f"resume with the input from line {line}"
    doubt = (
        f"; whether the {len(exc.in_doubt_ids)} call(s) from there were published is in "
        "doubt (Redis did not answer their transaction)"
        if exc.in_doubt_ids
        else ""
    )
    return CliError(
        f"enqueue {task_name} stopped {where} of the input: {cause}; {published} call(s) "
        f"before it were published{doubt}; {resume}",
        EXIT_UNAVAILABLE if _is_unavailable(exc) else EXIT_ERROR,
    )


@redis_command.command("enqueue")
@click.argument("task_name")
@click.option(
    "--file",
    "source",
    type=click.File("r"),
    default="-",
    show_default=True,
    help='JSON lines, one call each: [args...] or {"args": [...], "kwargs": {...}}.',
)
@click.option("--queue", default=None, help="Queue (default: the app's routing).")
@click.option("--priority", type=click.IntRange(0, 255), default=None, help="Message priority.")
@click.option("--countdown", type=float, default=None, help="Seconds before the tasks may run.")
@click.option("--chunk-size", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def enqueue_command(
    ctx: click.Context,
    task_name: str,
    source: TextIO,
    queue: str | None,
    priority: int | None,
    countdown: float | None,
    chunk_size: int,
    as_json: bool,
) -> None:
    """Publish many calls of TASK_NAME at pipeline speed (a progress bar on stderr).

    The whole input is read and checked first: a bad line publishes nothing.
    """
    app = _app(ctx)
    app.loader.import_default_modules()
    task = app.tasks.get(task_name)
    if task is None:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise CliError(
            f"no task named {task_name!r} in app {app.main!r} (known: "
            f"{', '.join(known[:10]) or 'none'}{', ...' if len(known) > 10 else ''})",
            EXIT_NOT_FOUND,
        )
    options = {
        k: v
        for k, v in {"queue": queue, "priority": priority, "countdown": countdown}.items()
        if v is not None
    }
    calls, lines = _read_calls(source)
    total = len(calls)
    started = time.monotonic()
    # A bar on a terminal; on a pipe or a log file, one line per chunk.
    interactive = sys.stderr.isatty()
    with click.progressbar(
        length=total,
        label=f"enqueue {task_name}",
        file=sys.stderr,
        show_pos=True,
        hidden=not interactive,
    ) as bar:
        done = 0

        def progress(published: int, _total: int | None) -> None:
            nonlocal done
            if interactive:
                bar.update(published - done)
            else:
                click.echo(f"enqueue {task_name}: {published}/{total}", err=True)
            done = published

        try:
            results = enqueue_many(task, calls, chunk_size=chunk_size, progress=progress, **options)
        except BulkPublishError as exc:
            raise _stopped_at(task_name, exc, lines) from exc
    seconds = time.monotonic() - started
    ids = [r.id for r in results if r is not None]
    if as_json:
        _echo_json({"task": task_name, "published": len(results), "seconds": seconds, "ids": ids})
    else:
        rate = len(results) / seconds if seconds > 0 else 0.0
        click.echo(
            f"published {len(results)} {task_name} task(s) in {seconds:.2f} s ({rate:.0f}/s)"
        )


@redis_command.command("acl")
@click.option("--user", default=None, help="Redis user name (default: the broker URL's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def acl_command(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """The ACL SETUSER rule that limits a Redis user to this app's keys and channels."""
    from celeryredis.acl import acl_rule  # noqa: PLC0415 - another engineer owns the imports

    rule = acl_rule(_app(ctx).conf, user)
    if as_json:
        _echo_json({"user": rule.user, "rules": list(rule.rules), "command": rule.command()})
        return
    click.echo(rule.command())
    for token, why in rule.explanations:
        click.echo(f"#  {token:40} {why}")


def _load_app(spec: str) -> Celery:
    """The Celery app named by ``--app module[:attribute]``, or a one-line error."""
    from celery.app.utils import find_app  # noqa: PLC0415

    module_name, _, attribute = spec.partition(":")
    if not module_name or (":" in spec and not attribute):
        raise CliError(f"--app {spec!r} is not module[:attribute] (e.g. proj.celery:app)", 64)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise CliError(
                f"cannot load app {spec!r}: there is no module {missing!r} (run from the "
                "project's directory, or add it to PYTHONPATH)",
                EXIT_USAGE,
            ) from exc
        raise CliError(
            f"cannot load app {spec!r}: importing module {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}",
            EXIT_USAGE,
        ) from exc
    except ConfigurationError:
        raise
    except Exception as exc:
        if isinstance(exc, CeleryRedisError):
            raise
        raise CliError(
            f"cannot load app {spec!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}",
            EXIT_USAGE,
        ) from exc
    if attribute and not hasattr(module, attribute.split(".")[0]):
        apps = sorted(name for name, value in vars(module).items() if isinstance(value, Celery))
        hint = f" (its Celery apps: {', '.join(apps)})" if apps else ""
        raise CliError(
            f"cannot load app {spec!r}: module {module_name!r} has no attribute "
            f"{attribute!r}{hint}",
            EXIT_USAGE,
        )
    try:
        app = find_app(spec)
    except (ImportError, AttributeError) as exc:
        raise CliError(
            f"cannot load app {spec!r}: no Celery app found in module {module_name!r}; "
            f"name it as {module_name}:attribute",
            EXIT_USAGE,
        ) from exc
    if not isinstance(app, Celery):
        raise CliError(
            f"cannot load app {spec!r}: it is a {type(app).__name__}, not a Celery app",
            EXIT_USAGE,
        )
    return app


@click.group(name="celeryredis", commands=redis_command.commands, cls=_Group)
@_version_option
@_debug_option
@click.option("-A", "--app", "app_name", default=None, help="module[:attribute] of the app.")
@click.pass_context
def main(ctx: click.Context, app_name: str | None) -> None:
    """celeryredis: settings, health, queues, dead letters and locks of a Celery app on Redis.

    Exit codes: 0 ok; 1 check warned (or a confirmation was declined); 2 check failed;
    64 usage; 65 bad input; 66 not found; 69 Redis unreachable; 70 other error; 78
    configuration refused. Errors are one line on stderr (--debug adds the traceback).
    """
    if app_name is None:  # `celeryredis demo` needs none; the other commands say so
        return
    sys.path.insert(0, "")
    ctx.obj = _Context(_load_app(app_name), app_name)


if __name__ == "__main__":  # python -m celeryredis.cli
    main()
