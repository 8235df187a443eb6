"""The command line: ``celery -A proj redis <command>`` and ``celeryredis --app proj <command>``.

Both run the same click commands; ``celery -A proj redis`` is registered through
Celery's ``celery.commands`` entry point, ``celeryredis`` is a console script.
Every command takes ``--json``; secrets are redacted in every output.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

import click
from celery import Celery

from celeryredis.app import explain, format_explain
from celeryredis.connection import get_redis
from celeryredis.deadletter import DeadLetter, DeadLetterError, DeadLetterQueue
from celeryredis.exceptions import CeleryRedisError
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
    """celeryredis: configuration and dead letters of a Celery app on Redis."""


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
@click.option("-A", "--app", "app_name", required=True, help="module[:attribute] of the app.")
@click.pass_context
def main(ctx: click.Context, app_name: str) -> None:
    """celeryredis: configuration and dead letters of a Celery app on Redis."""
    from celery.app.utils import find_app  # noqa: PLC0415

    sys.path.insert(0, "")
    try:
        ctx.obj = _Context(find_app(app_name))
    except (ImportError, AttributeError) as exc:
        raise click.UsageError(f"cannot load app {app_name!r}: {exc}") from exc
    except CeleryRedisError as exc:
        raise click.ClickException(redact_text(str(exc))) from exc


if __name__ == "__main__":  # python -m celeryredis.cli
    main()
