"""The dead-letter queue: nothing that fails for good is lost, and it can be replayed.

Entries live in one Redis stream per app (:func:`celeryredis.keys.dead_letter_key`),
bounded by ``celeryredis_dead_letter_max_len`` entries and
``celeryredis_dead_letter_max_age`` seconds, so it cannot fill Redis.

What goes in (``reason``):

==================== ===========================================================
``retries_exhausted`` a :class:`~celeryredis.RetryTask` failed its last allowed attempt
``failed``            a task raised a non-retryable exception
``time_limit``        a task was killed by its hard time limit, for the last time
``rejected``          a task raised ``Reject(requeue=False)``
``worker_lost``       the pool process died and the task is not retried again
``bad_arguments``     the arguments do not match the task's signature
``unknown_task``      a worker received a task name it does not know
``content_rejected``  a worker refused the message's content type (or its format)
``decode_error``      a worker could not decode the message body
==================== ===========================================================
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal

import redis
from celery import Celery

from celeryredis._celery_compat import discard_buffered_result
from celeryredis.connection import REDIS_ERRORS, Client, get_redis
from celeryredis.exceptions import DeadLetterError, DeadLetterNotFound
from celeryredis.keys import dead_letter_key
from celeryredis.redaction import (
    REDACTED,
    redact_call,
    redact_text,
    redact_value,
    sensitive_words,
)
from celeryredis.registry import setting

__all__ = [
    "REASONS",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterQueue",
    "dead_letter_message",
    "iso_utc",
]

logger = logging.getLogger(__name__)

#: Every ``reason`` an entry can have.
REASONS: Final = (
    "retries_exhausted",
    "failed",
    "time_limit",
    "rejected",
    "worker_lost",
    "bad_arguments",
    "unknown_task",
    "content_rejected",
    "decode_error",
)
TRACEBACK_MAX: Final = 8000
MESSAGE_MAX: Final = 2000
# Celery's own protocol-2 headers: not replayed as custom headers.
_PROTOCOL_HEADERS: Final = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
        "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
        "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps",
    }
)  # fmt: skip


def iso_utc(epoch: float) -> str:
    """``epoch`` as ISO-8601 UTC with milliseconds, e.g. ``2026-12-01T19:19:16.123Z``."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ENTRY_ID_RE = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered task, as stored. ``args``/``kwargs``/``headers`` are redacted views.

    Which arguments are sensitive was decided when the entry was written, by the
    worker that knew the task's signature and sensitive words; the views show that
    decision in any process, whether or not it imported the task's module. The real
    arguments (for :meth:`celeryredis.DeadLetterQueue.replay`) are in ``original_args`` and
    ``original_kwargs``, which no repr, ``to_dict`` or CLI view shows.

    Attributes:
        id: The stream entry id.
        task_name: The task's name.
        task_id: The task's id.
        args: Positional arguments, sensitive values shown as ``***``.
        kwargs: Keyword arguments, sensitive values shown as ``***``.
        queue: The queue (routing key) it came from.
        priority: Its priority, if any.
        headers: Its custom message headers (sensitive keys shown as ``***``).
        exception_type: The exception's class name.
        exception_message: The exception's message (size-capped; URL passwords and
            the values of sensitive arguments shown as ``***``).
        traceback: The traceback (size-capped, redacted like the message).
        attempts: How many times it ran.
        worker: The worker's host name.
        failed_at: When it was dead-lettered (epoch seconds).
        reason: Which path put it there (see :data:`celeryredis.deadletter.REASONS`).
    """

    id: str
    task_name: str | None
    task_id: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str | None
    priority: int | None
    headers: dict[str, Any]
    exception_type: str
    exception_message: str
    traceback: str
    attempts: int
    worker: str | None
    failed_at: float
    reason: str
    original_args: tuple[Any, ...] = field(repr=False, default=())
    original_kwargs: dict[str, Any] = field(repr=False, default_factory=dict)
    raw_body: bytes | None = field(repr=False, default=None)
    content_type: str | None = None
    content_encoding: str | None = None
    original_headers: dict[str, Any] | None = field(repr=False, default=None)
    secrets: tuple[str, ...] = field(repr=False, default=())

    @property
    def failed_at_utc(self) -> datetime:
        """``failed_at`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.failed_at, tz=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly, redacted view (no original arguments, no raw body).

        ``failed_at`` is ISO-8601 UTC text; ``failed_at_epoch`` the epoch seconds.
        """
        return {
            "id": self.id,
            "task_name": self.task_name,
            "task_id": self.task_id,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "queue": self.queue,
            "priority": self.priority,
            "headers": self.headers,
            "exception_type": self.exception_type,
            "exception_message": self.exception_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "worker": self.worker,
            "failed_at": iso_utc(self.failed_at),
            "failed_at_epoch": self.failed_at,
            "reason": self.reason,
            "raw": self.raw_body is not None,
        }


def _cap(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    text = redact_text(text, secrets)
    return text if len(text) <= limit else text[: limit - 20] + f"... [{len(text)} chars]"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, sort_keys=True)


def _epoch(since: datetime | timedelta | float | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, timedelta):
        return time.time() - since.total_seconds()
    if isinstance(since, datetime):
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError(
                f"since={since!r} is a naive datetime; pass an aware one, e.g. "
                "datetime.now(timezone.utc) - timedelta(hours=1), or a timedelta"
            )
        return since.timestamp()
    if isinstance(since, int | float) and not isinstance(since, bool):
        return float(since)
    raise TypeError(
        f"since must be an aware datetime, a timedelta or epoch seconds, not {type(since).__name__}"
    )


class DeadLetterQueue:
    """The dead-letter queue of ``app``.

    Args:
        app: A Celery app whose broker is Redis.
        client: A redis-py client to use instead of :func:`celeryredis.connection.get_redis`.

    Example:
        >>> dlq = DeadLetterQueue(app)  # doctest: +SKIP
        >>> for entry in dlq.list(limit=20):  # doctest: +SKIP
        ...     print(entry.task_name, entry.reason, entry.exception_message)
        >>> dlq.replay([entry.id])  # doctest: +SKIP
    """

    def __init__(self, app: Celery, *, client: Client | None = None) -> None:
        self.app = app
        self.key = dead_letter_key(app.conf)
        self._client = client
        conf = app.conf
        self.max_len = int(setting(conf, "celeryredis_dead_letter_max_len"))
        self.max_age = float(setting(conf, "celeryredis_dead_letter_max_age"))

    @property
    def client(self) -> Client:
        """The redis-py client."""
        if self._client is None:
            self._client = get_redis(self.app)
        return self._client

    def _words(self, extra: Iterable[str] = ()) -> tuple[str, ...]:
        return sensitive_words(self.app.conf, extra)

    # -- writing ---------------------------------------------------------------------------

    def add(
        self,
        *,
        reason: str,
        task_name: str | None,
        task_id: str | None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        exception: BaseException | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
        traceback: str = "",
        attempts: int = 1,
        worker: str | None = None,
        raw_body: bytes | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        func: Callable[..., Any] | None = None,
        sensitive_names: Iterable[str] = (),
        sensitive_positions: Iterable[int] = (),
    ) -> str:
        """Store one entry and trim the stream to its bounds; return the entry id.

        What is sensitive is decided here, once, and stored with the entry: the
        arguments are stored as their redacted view (positional ones matched to
        ``func``'s signature, every name matched against the app's sensitive words and
        ``sensitive_names``, ``sensitive_positions`` always hidden), the real arguments
        in a separate payload that only :meth:`replay` reads. URL passwords and the
        values of sensitive arguments are removed from the exception message and
        traceback before they are stored.

        Args:
            reason: One of :data:`celeryredis.deadletter.REASONS`.
            task_name: The task's name.
            task_id: The task's id.
            args: The real positional arguments.
            kwargs: The real keyword arguments.
            queue: The queue (routing key) it came from.
            priority: Its priority.
            headers: Its custom message headers.
            exception: The exception (its type and text, unless given below).
            exception_type: The exception's class name.
            exception_message: The exception's text.
            traceback: The formatted traceback.
            attempts: How many times it ran.
            worker: The worker's host name.
            raw_body: The message body, for messages that could not be decoded.
            content_type: The raw body's content type.
            content_encoding: The raw body's content encoding.
            func: The task's function (``task.run``), to name positional arguments.
            sensitive_names: Extra sensitive words (a task's ``sensitive_names``).
            sensitive_positions: Positional arguments to hide whatever their name.

        Raises:
            DeadLetterError: Redis refused the write (the cause is chained).
        """
        if reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; one of {REASONS}")
        words = self._words(sensitive_names)
        real_args = list(args or ())
        real_kwargs = dict(kwargs or {})
        real_headers = dict(headers or {})
        call = redact_call(
            real_args, real_kwargs, words=words, func=func, positions=sensitive_positions
        )
        shown_headers = redact_value(real_headers, words)
        fields: dict[str, str] = {
            "reason": reason,
            "task_name": task_name or "",
            "task_id": task_id or "",
            "args": _json(list(call.args)),
            "kwargs": _json(call.kwargs),
            "queue": queue or "",
            "priority": "" if priority is None else str(priority),
            "headers": _json(shown_headers),
            "exception_type": exception_type
            or (type(exception).__name__ if exception is not None else ""),
            "exception_message": _cap(
                exception_message if exception_message is not None else str(exception or ""),
                MESSAGE_MAX,
                call.secrets,
            ),
            "traceback": _cap(traceback, TRACEBACK_MAX, call.secrets),
            "attempts": str(attempts),
            "worker": worker or "",
            "failed_at": repr(time.time()),
            "redacted": "1",
        }
        if call.changed or shown_headers != real_headers:
            fields["payload"] = _json(
                {"args": real_args, "kwargs": real_kwargs, "headers": real_headers}
            )
        if raw_body is not None:
            fields["raw_body"] = base64.b64encode(raw_body).decode("ascii")
            fields["content_type"] = content_type or ""
            fields["content_encoding"] = content_encoding or ""
        return self._write(fields, f"task {task_name}[{task_id}] ({reason})")

    def _write(self, fields: Mapping[Any, Any], what: str) -> str:
        min_id = int((time.time() - self.max_age) * 1000)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.key, dict(fields), maxlen=self.max_len, approximate=False)
            pipe.xtrim(self.key, minid=f"{min_id}-0", approximate=False)
            entry_id, _ = pipe.execute()
        except REDIS_ERRORS as exc:
            raise DeadLetterError(
                f"could not store dead letter for {what}: {redact_text(str(exc))}"
            ) from exc
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    # -- reading ---------------------------------------------------------------------------

    def _entry(self, entry_id: Any, raw: Any) -> DeadLetter:
        get = {_text(k): _text(v) for k, v in raw.items()}
        stored_args = tuple(json.loads(get.get("args") or "[]"))
        stored_kwargs = dict(json.loads(get.get("kwargs") or "{}"))
        stored_headers = dict(json.loads(get.get("headers") or "{}"))
        if get.get("redacted") == "1":
            # Redacted when written, where the task's signature was known.
            payload = json.loads(get["payload"]) if get.get("payload") else None
            shown_args, shown_kwargs, shown_headers = stored_args, stored_kwargs, stored_headers
            if payload is None:
                original_args, original_kwargs = stored_args, stored_kwargs
                original_headers = stored_headers
            else:
                original_args = tuple(payload.get("args") or ())
                original_kwargs = dict(payload.get("kwargs") or {})
                original_headers = dict(payload.get("headers") or {})
            secrets: tuple[str, ...] = ()
        else:
            # An entry written before decisions were stored: redact as well as this
            # process can (by the task's signature if its module is imported here).
            original_args, original_kwargs = stored_args, stored_kwargs
            original_headers = stored_headers
            task = self.app.tasks.get(get.get("task_name", "")) if get.get("task_name") else None
            call = redact_call(
                original_args,
                original_kwargs,
                words=self._words(),
                func=task.run if task is not None else None,
            )
            shown_args, shown_kwargs = call.args, call.kwargs
            shown_headers = redact_value(stored_headers, self._words())
            secrets = call.secrets
        raw_body = get.get("raw_body")
        return DeadLetter(
            id=_text(entry_id),
            task_name=get.get("task_name") or None,
            task_id=get.get("task_id") or None,
            args=shown_args,
            kwargs=shown_kwargs,
            queue=get.get("queue") or None,
            priority=int(get["priority"]) if get.get("priority") else None,
            headers=shown_headers,
            exception_type=get.get("exception_type", ""),
            exception_message=redact_text(get.get("exception_message", ""), secrets),
            traceback=redact_text(get.get("traceback", ""), secrets),
            attempts=int(get.get("attempts") or 1),
            worker=get.get("worker") or None,
            failed_at=float(get.get("failed_at") or 0.0),
            reason=get.get("reason", ""),
            original_args=original_args,
            original_kwargs=original_kwargs,
            raw_body=base64.b64decode(raw_body) if raw_body else None,
            content_type=get.get("content_type") or None,
            content_encoding=get.get("content_encoding") or None,
            original_headers=original_headers,
        )

    def __len__(self) -> int:
        return int(self.client.xlen(self.key))

    def _iter(self, since: float | None = None, batch: int = 200) -> Iterator[DeadLetter]:
        end = "-" if since is None else f"{int(since * 1000)}-0"
        start = "+"
        while True:
            rows = self.client.xrevrange(self.key, max=start, min=end, count=batch)
            if not rows:
                return
            for entry_id, raw in rows:
                yield self._entry(entry_id, raw)
            last = _text(rows[-1][0])
            ms, seq = (int(part) for part in last.split("-"))
            if seq > 0:
                start = f"{ms}-{seq - 1}"
            elif ms > 0:
                start = f"{ms - 1}-18446744073709551615"
            else:
                return

    def list(
        self,
        limit: int = 100,
        *,
        task: str | None = None,
        since: datetime | timedelta | float | None = None,
    ) -> builtins.list[DeadLetter]:
        """Entries, newest first.

        Args:
            limit: At most this many.
            task: Only entries of this task name.
            since: Only entries dead-lettered at or after this moment: an aware
                ``datetime``, a ``timedelta`` (that long ago), or epoch seconds.

        Raises:
            ValueError: ``since`` is a naive ``datetime`` (its time zone is unknown).
        """
        out: builtins.list[DeadLetter] = []
        for entry in self._iter(_epoch(since)):
            if task is None or entry.task_name == task:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def get(self, entry_id: str) -> DeadLetter | None:
        """The entry with this id, or None (also for a string that is not an entry id)."""
        if not isinstance(entry_id, str) or not _ENTRY_ID_RE.fullmatch(entry_id):
            return None
        try:
            rows = self.client.xrange(self.key, min=entry_id, max=entry_id, count=1)
        except redis.ResponseError:  # e.g. an id beyond 64 bits
            return None
        return self._entry(*rows[0]) if rows else None

    def delete(self, entry_id: str) -> bool:
        """Remove one entry; True if it existed."""
        if self.get(entry_id) is None:
            return False
        return bool(self.client.xdel(self.key, entry_id))

    def purge(self, task: str | None = None) -> int:
        """Remove every entry (or every entry of ``task``); return how many were removed."""
        if task is None:
            pipe = self.client.pipeline(transaction=True)
            pipe.xlen(self.key)
            pipe.delete(self.key)
            count, _ = pipe.execute()
            return int(count)
        ids = [e.id for e in self._iter() if e.task_name == task]
        return int(self.client.xdel(self.key, *ids)) if ids else 0

    # -- replay ----------------------------------------------------------------------------

    def replay(
        self,
        entries: Iterable[str] | Literal["all"],
        *,
        queue: str | None = None,
        new_id: bool = False,
        dry_run: bool = False,
        missing_ok: bool = True,
    ) -> builtins.list[Any]:
        """Publish entries again and remove them from the queue.

        The original arguments are published (not the redacted views), with the
        retry count reset, under the original task id unless ``new_id`` — so a caller
        still holding the old ``AsyncResult`` sees the replay's result. Each entry is
        claimed first (only one ``XDEL`` of it can succeed), so of two concurrent
        replays of an entry exactly one publishes it; if publishing fails the entry
        is put back.

        Args:
            entries: Entry ids, or ``"all"``.
            queue: Publish to this queue instead of the original one.
            new_id: Publish under a new task id.
            dry_run: Publish nothing and remove nothing; return what would be published.
            missing_ok: Skip ids that are not in the queue. With False, a named id
                that is not there raises
                :class:`~celeryredis.deadletter.DeadLetterNotFound` before anything
                is published.

        Returns:
            The ``AsyncResult`` of every published task (for ``dry_run``, of every
            task that would be published).

        Raises:
            celeryredis.deadletter.DeadLetterNotFound: ``missing_ok`` is False and an
                id is not in the queue.
            DeadLetterError: A publish failed; ``published`` and ``not_published`` say
                which entries were replayed and which were put back.
        """
        ids = [e.id for e in self._iter()] if entries == "all" else list(entries)
        if not missing_ok and entries != "all":
            missing = [entry_id for entry_id in ids if self.get(entry_id) is None]
            if missing:
                raise DeadLetterNotFound(missing)
        results: builtins.list[Any] = []
        published: builtins.list[str] = []
        for position, entry_id in enumerate(ids):
            entry = self.get(entry_id)
            if entry is None:
                continue
            task_id = str(uuid.uuid4()) if new_id or not entry.task_id else entry.task_id
            if dry_run:
                results.append(self.app.AsyncResult(task_id))
                continue
            if not self.client.xdel(self.key, entry_id):
                continue  # another replay claimed it first
            try:
                results.append(self._publish(entry, task_id, queue))
            except Exception as exc:
                self._put_back(entry)
                raise DeadLetterError(
                    f"replay of entry {entry_id} ({entry.task_name}) failed: "
                    f"{redact_text(str(exc))}; it was put back. {len(published)} entries "
                    "were replayed before it.",
                    published=published,
                    not_published=ids[position:],
                ) from exc
            published.append(entry_id)
        return results

    def _publish(self, entry: DeadLetter, task_id: str, queue: str | None) -> Any:
        target = queue or entry.queue
        # The real headers are published; the view stored with the entry is what Celery
        # shows of the replay (argsrepr/kwargsrepr).
        headers = entry.original_headers if entry.original_headers is not None else entry.headers
        if entry.raw_body is not None and entry.reason in {"content_rejected", "decode_error"}:
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    entry.raw_body,
                    routing_key=target or self.app.conf.task_default_queue,
                    content_type=entry.content_type or "application/json",
                    content_encoding=entry.content_encoding or "utf-8",
                    headers=headers,
                    retry=True,
                )
            return self.app.AsyncResult(task_id)
        if task_id == entry.task_id:
            # The old FAILURE result would answer a caller's get() before the replay
            # runs; forget it so the caller waits for the replay's own result.
            with contextlib.suppress(NotImplementedError):  # no result backend
                self.app.AsyncResult(task_id).forget()
            discard_buffered_result(self.app.backend, task_id)
        options: dict[str, Any] = {
            "task_id": task_id,
            "argsrepr": repr(tuple(entry.args)),
            "kwargsrepr": repr(dict(entry.kwargs)),
            "headers": {k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS},
        }
        if target:
            options["queue"] = target
        if entry.priority is not None:
            options["priority"] = entry.priority
        if not entry.task_name:
            raise DeadLetterError(f"entry {entry.id} has no task name to publish")
        return self.app.send_task(
            entry.task_name, args=entry.original_args, kwargs=entry.original_kwargs, **options
        )

    def _put_back(self, entry: DeadLetter) -> None:
        # Written back with the decision it was stored with, not one taken again here
        # (this process may not know the task's signature).
        fields: dict[str, str] = {
            "reason": entry.reason,
            "task_name": entry.task_name or "",
            "task_id": entry.task_id or "",
            "args": _json(list(entry.args)),
            "kwargs": _json(entry.kwargs),
            "queue": entry.queue or "",
            "priority": "" if entry.priority is None else str(entry.priority),
            "headers": _json(entry.headers),
            "exception_type": entry.exception_type,
            "exception_message": entry.exception_message,
            "traceback": entry.traceback,
            "attempts": str(entry.attempts),
            "worker": entry.worker or "",
            "failed_at": repr(entry.failed_at),
            "redacted": "1",
            "payload": _json(
                {
                    "args": list(entry.original_args),
                    "kwargs": entry.original_kwargs,
                    "headers": entry.original_headers or {},
                }
            ),
        }
        if entry.raw_body is not None:
            fields["raw_body"] = base64.b64encode(entry.raw_body).decode("ascii")
            fields["content_type"] = entry.content_type or ""
            fields["content_encoding"] = entry.content_encoding or ""
        try:
            self._write(fields, f"task {entry.task_name}[{entry.task_id}] ({entry.reason})")
        except DeadLetterError:
            logger.critical(
                "dead-letter entry %s (%s[%s]) could not be put back after a failed replay",
                entry.id,
                entry.task_name,
                entry.task_id,
            )


def _publisher_hidden(
    headers: Mapping[str, Any], args: Any, kwargs: Any
) -> tuple[builtins.list[int], builtins.list[str]]:
    """Positions and keyword names the publisher showed as ``***`` in argsrepr/kwargsrepr."""
    positions: builtins.list[int] = []
    names: builtins.list[str] = []
    with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        shown = ast.literal_eval(str(headers.get("argsrepr") or "()"))
        if isinstance(shown, list | tuple) and len(shown) == len(args):
            positions = [
                i for i, (v, a) in enumerate(zip(shown, args, strict=True)) if v == REDACTED != a
            ]
    with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        shown = ast.literal_eval(str(headers.get("kwargsrepr") or "{}"))
        if isinstance(shown, dict):
            names = [k for k, v in shown.items() if v == REDACTED != kwargs.get(k)]
    return positions, names


def dead_letter_message(app: Celery, message: Any, reason: str, exc: BaseException | None) -> None:
    """Keep a poison message a worker could not run (unknown task, refused, undecodable).

    Never raises: a worker must go on consuming whatever happens here.
    """
    if not setting(app.conf, "celeryredis_dead_letter"):
        return
    try:
        headers = dict(getattr(message, "headers", None) or {})
        delivery = getattr(message, "delivery_info", None) or {}
        properties = getattr(message, "properties", None) or {}
        body = getattr(message, "body", b"")
        raw = body if isinstance(body, bytes) else str(body).encode()
        args: Any = ()
        kwargs: Any = {}
        keep_raw = True
        if reason == "unknown_task":
            try:
                decoded = message.decode()
                args, kwargs = decoded[0], decoded[1]
                keep_raw = False
            except Exception:
                keep_raw = True
        args = args if isinstance(args, list | tuple) else ()
        kwargs = kwargs if isinstance(kwargs, dict) else {}
        # This worker does not know the task's signature; the publisher's redacted
        # argsrepr/kwargsrepr (set by celeryredis.Task.apply_async) say what it hid.
        positions, names = _publisher_hidden(headers, args, kwargs)
        DeadLetterQueue(app).add(
            reason=reason,
            task_name=str(headers.get("task") or "") or None,
            task_id=str(headers.get("id") or properties.get("correlation_id") or "") or None,
            args=args,
            kwargs=kwargs,
            sensitive_positions=positions,
            sensitive_names=names,
            queue=delivery.get("routing_key"),
            priority=properties.get("priority"),
            headers={k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS},
            exception=exc,
            exception_type=type(exc).__name__ if exc is not None else "UnknownMessage",
            raw_body=raw if keep_raw else None,
            content_type=getattr(message, "content_type", None),
            content_encoding=getattr(message, "content_encoding", None),
        )
    except Exception:  # a poison message must never crash the worker
        logger.exception("could not dead-letter a %s message", reason)
