"""The command line: ``celery -A proj redis <command>`` and ``celeryredis --app proj <command>``.

Both run the same click commands; ``celery -A proj redis`` is registered through
Celery's ``celery.commands`` entry point, ``celeryredis`` is a console script.
Every command takes ``--json``; secrets are redacted in every output.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

import click
import redis
from celery import Celery

from celeryredis._errors import classify, describe
from celeryredis.app import explain, format_explain
from celeryredis.bulk import BulkPublishError, enqueue_many
from celeryredis.connection import get_redis, new_redis
from celeryredis.deadletter import DeadLetter, DeadLetterError, DeadLetterQueue
from celeryredis.exceptions import CeleryRedisError
from celeryredis.health import HealthPart, QueueDepth, check_health, check_worker, inspect_queues
from celeryredis.keys import lock_pattern
from celeryredis.urls import redact_text

__all__ = ["main", "redis_command"]


class _Context:
    def __init__(self, app: Celery) -> None:
        self.app = app


def _app(ctx: click.Context) -> Celery:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        raise click.UsageError("no app: pass -A/--app module[:attribute]")
    return app  # type: ignore[no-any-return]


def _echo_json(value: Any) -> None:
    click.echo(redact_text(json.dumps(value, indent=2, default=str, sort_keys=True)))


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@click.group(name="redis")
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
        ctx.exit(0 if part.status == "ok" else 2)
    report = check_health(app, timeout=timeout, queues=queues or None)
    if as_json:
        _echo_json(report.to_dict())
        ctx.exit(report.exit_code)
    header = ("status", "part", "ms", "reason")
    click.echo(redact_text(_table([header, *(_part_row(p) for p in report.parts)])))
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
    try:
        client = new_redis(app, timeout=timeout)
        try:
            rows = inspect_queues(app, queues or None, client=client, sample=sample)
        finally:
            client.close()
    except redis.RedisError as exc:
        diagnosis = classify(exc)
        verb = "refused the app" if diagnosis.permanent else "unreachable"
        raise click.ClickException(
            f"broker Redis {verb}: {describe(diagnosis, 'broker_url')}"
        ) from exc
    if as_json:
        _echo_json([q.to_dict() for q in rows])
        return
    click.echo(_table([_QUEUE_HEADER, *(_queue_row(q) for q in rows)]))


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
    finally:
        server.shutdown()


@redis_command.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (tour on stderr).")
def demo_command(as_json: bool) -> None:
    """The end-to-end tour (starts a throwaway redis-server unless a URL is configured)."""
    from celeryredis.demo import main as demo_main  # noqa: PLC0415

    sys.exit(demo_main(as_json=as_json))


@redis_command.group("dlq")
def dlq_command() -> None:
    """Look at, replay and purge the dead-letter queue."""


def _summary(entry: DeadLetter) -> tuple[str, ...]:
    message = f"{entry.exception_type}: {entry.exception_message}".replace("\n", " ")
    return (
        entry.id,
        _when(entry.failed_at),
        entry.task_name or "?",
        entry.reason,
        str(entry.attempts),
        message[:60] + ("..." if len(message) > 60 else ""),
    )


@dlq_command.command("list")
@click.option("--limit", default=50, show_default=True, help="Most entries to show.")
@click.option("--task", default=None, help="Only this task name.")
@click.option("--since", type=float, default=None, help="Only the last SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_list(
    ctx: click.Context, limit: int, task: str | None, since: float | None, as_json: bool
) -> None:
    """Entries, newest first (arguments redacted)."""
    dlq = DeadLetterQueue(_app(ctx))
    entries = dlq.list(limit, task=task, since=None if since is None else time.time() - since)
    if as_json:
        _echo_json({"total": len(dlq), "entries": [e.to_dict() for e in entries]})
        return
    header = ("id", "failed at (UTC)", "task", "reason", "attempts", "exception")
    click.echo(_table([header, *(_summary(e) for e in entries)]))
    click.echo(f"{len(entries)} shown, {len(dlq)} in the dead-letter queue")


@dlq_command.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_show(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """One entry with its arguments (redacted) and traceback."""
    entry = DeadLetterQueue(_app(ctx)).get(entry_id)
    if entry is None:
        raise click.ClickException(f"no dead-letter entry {entry_id}")
    data = entry.to_dict()
    if as_json:
        _echo_json(data)
        return
    for key, value in data.items():
        if key != "traceback":
            click.echo(f"{key:18} {value!r}")
    click.echo("traceback:\n" + entry.traceback)


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
    try:
        results = dlq.replay(
            "all" if replay_all else entry_ids, queue=queue, new_id=new_id, dry_run=dry_run
        )
    except DeadLetterError as exc:
        raise click.ClickException(str(exc)) from exc
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
    if not yes and not click.confirm(f"Delete {what} from the dead-letter queue?"):
        raise click.Abort
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
                "task": name[len(lock_pattern(app.conf)) - 1 :].rsplit(":", 1)[0],
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
    if rows and not yes and not click.confirm(f"Delete {what}? Their tasks may then run twice."):
        raise click.Abort
    removed = int(get_redis(app).delete(*[r["key"] for r in rows])) if rows else 0
    if as_json:
        _echo_json({"removed": removed})
    else:
        click.echo(f"removed {removed} lock(s)")


def _json_calls(lines: Iterable[str]) -> Iterator[Any]:
    """Calls from JSON lines: ``[args...]`` or ``{"args": [...], "kwargs": {...}}``."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number} is not JSON: {exc}") from None
        if isinstance(value, list):
            yield tuple(value)
        elif isinstance(value, dict) and set(value) <= {"args", "kwargs"}:
            yield (tuple(value.get("args") or ()), dict(value.get("kwargs") or {}))
        else:
            raise ValueError(
                f'line {number}: expected [args...] or {{"args": [...], "kwargs": {{...}}}}'
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
    """Publish many calls of TASK_NAME at pipeline speed (a progress bar on stderr)."""
    app = _app(ctx)
    app.loader.import_default_modules()
    task = app.tasks.get(task_name)
    if task is None:
        raise click.UsageError(f"no task named {task_name!r} in app {app.main!r}")
    options = {
        k: v
        for k, v in {"queue": queue, "priority": priority, "countdown": countdown}.items()
        if v is not None
    }
    total: int | None = None
    if source.seekable():
        total = sum(1 for line in source if line.strip())
        source.seek(0)
    started = time.monotonic()
    # A bar on a terminal; on a pipe or a log file, one line per chunk.
    with click.progressbar(
        length=total or 0, label=f"enqueue {task_name}", file=sys.stderr, show_pos=True
    ) as bar:
        done = 0
        interactive = sys.stderr.isatty()

        def progress(published: int, _total: int | None) -> None:
            nonlocal done
            if interactive:
                bar.update(published - done)
            else:
                click.echo(f"enqueue {task_name}: {published}/{total or '?'}", err=True)
            done = published

        try:
            results = enqueue_many(
                task, _json_calls(source), chunk_size=chunk_size, progress=progress, **options
            )
        except BulkPublishError as exc:
            raise click.ClickException(
                redact_text(f"{exc} (resume from call {exc.next_index + 1} of the input)")
            ) from exc
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

    try:
        rule = acl_rule(_app(ctx).conf, user)
    except CeleryRedisError as exc:
        raise click.ClickException(redact_text(str(exc))) from exc
    if as_json:
        _echo_json({"user": rule.user, "rules": list(rule.rules), "command": rule.command()})
        return
    click.echo(rule.command())
    for token, why in rule.explanations:
        click.echo(f"#  {token:40} {why}")


@click.group(name="celeryredis", commands=redis_command.commands)
@click.option("-A", "--app", "app_name", default=None, help="module[:attribute] of the app.")
@click.pass_context
def main(ctx: click.Context, app_name: str | None) -> None:
    """celeryredis: settings, health, queues, dead letters and locks of a Celery app on Redis."""
    from celery.app.utils import find_app  # noqa: PLC0415

    if app_name is None:  # `celeryredis demo` needs none; the other commands say so
        return
    sys.path.insert(0, "")
    try:
        ctx.obj = _Context(find_app(app_name))
    except (ImportError, AttributeError) as exc:
        raise click.UsageError(f"cannot load app {app_name!r}: {exc}") from exc
    except CeleryRedisError as exc:
        raise click.ClickException(redact_text(str(exc))) from exc


if __name__ == "__main__":  # python -m celeryredis.cli
    main()
