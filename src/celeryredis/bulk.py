"""Bulk enqueue: many calls of one task, one Redis transaction per chunk.

A ``.delay()`` loop costs about a millisecond of client time per task: Celery's
``send_task`` wrapper, kombu's per-publish routing and declare checks, a round trip
for the ``LPUSH`` and another for the result backend's ``SUBSCRIBE``.
:func:`enqueue_many` builds each message with Celery's own message API
(:meth:`app.amqp.create_task_message <celery.app.amqp.AMQP.create_task_message>` and
:meth:`~celery.app.amqp.AMQP.send_task_message`, so routing, signals and headers are
Celery's), lets kombu's Redis channel route and envelope it, and sends each chunk in
one ``MULTI``/``EXEC``. Workers cannot tell the messages from ``apply_async``'s.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery, Signature
from celery.app.routes import MapRoute
from celery.app.task import Task as CeleryTask
from celery.result import AsyncResult
from celery.utils.functional import maybe_list
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ExecAbortError, RedisClusterException
from redis.retry import Retry

from celeryredis import _celery_compat, _kombu_compat
from celeryredis._errors import classify, describe, fails_fast
from celeryredis._kombu_batch import BatchProducer, Command
from celeryredis.connection import REDIS_ERRORS, get_redis, is_cluster
from celeryredis.exceptions import CeleryRedisError, DuplicateTaskError
from celeryredis.keys import bulk_marker_key
from celeryredis.locks import LockError, TokenLock
from celeryredis.redaction import redact_text
from celeryredis.tasks.unique import UniqueTask

__all__ = ["BulkDuplicateError", "BulkPublishError", "Progress", "SlotReport", "enqueue_many"]

logger = logging.getLogger(__name__)

#: ``progress(published, total)``: called after each chunk; ``total`` is None when
#: ``calls`` has no length (a generator).
Progress = Callable[[int, "int | None"], None]

_MARKER_TTL = 86_400  # seconds a chunk's marker is kept


@dataclass(frozen=True)
class SlotReport:
    """One hash slot's part of a chunk on a Redis Cluster broker (see :class:`BulkPublishError`).

    Attributes:
        slot: The hash slot (0-16383).
        keys: The queue keys its messages went to.
        task_ids: Ids of the calls with a message in this slot.
        messages: How many messages the slot's transaction held.
        state: ``published`` (its transaction was applied), ``refused`` (Redis answered
            and applied none of it), ``in_doubt`` (sent, reply lost: its marker says),
            or ``not_sent`` (a slot before it failed).
        marker_key: The key that exists if and only if this slot's part was applied.
        error: What went wrong (``refused`` and ``in_doubt`` only).
    """

    slot: int
    keys: tuple[str, ...]
    task_ids: tuple[str, ...]
    messages: int
    state: str
    marker_key: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        data = asdict(self)
        data["keys"] = list(self.keys)
        data["task_ids"] = list(self.task_ids)
        return data


class BulkPublishError(CeleryRedisError):
    """A bulk enqueue stopped part-way; what was published is known exactly.

    Chunks are published in order, each in one transaction. Calls before
    :attr:`next_index` in the input are published (ids in :attr:`published_ids`); to
    resume without duplicates, enqueue ``itertools.islice(calls, next_index, None)``
    again. If the failure hit a chunk's transaction after it was sent, that chunk's
    ids are :attr:`in_doubt_ids` and :attr:`next_index` points at its first call:
    :meth:`resolve` asks Redis (once it is reachable) whether it was applied.

    Attributes:
        published_ids: Ids of the tasks known to be published, in input order
            (None entries are duplicates a unique task refused).
        unpublished_ids: Ids given to calls of the failing chunk that were not
            published (empty when the chunk is in doubt).
        in_doubt_ids: Ids of the chunk whose transaction's reply was lost.
        next_index: Index in ``calls`` of the first call not known to be published.
        marker_key: The key that exists if and only if the in-doubt chunk was applied.
        slots: On a Redis Cluster broker, where each chunk is one transaction per hash
            slot: what happened to each slot's part of the failing chunk
            (:class:`~celeryredis.bulk.SlotReport`, in the order they were sent; empty
            on one node). The chunk can then be published in part: ``published_ids``
            holds its landed calls too, and ``next_index`` is its first call that did
            not land.
    """

    def __init__(
        self,
        message: str,
        *,
        published_ids: Sequence[str | None] = (),
        unpublished_ids: Sequence[str] = (),
        in_doubt_ids: Sequence[str] = (),
        next_index: int = 0,
        marker_key: str | None = None,
        slots: Sequence[SlotReport] = (),
    ) -> None:
        # Not super(): BulkDuplicateError also derives from DuplicateTaskError.
        CeleryRedisError.__init__(self, message)
        self.slots = list(slots)
        self.published_ids = list(published_ids)
        self.unpublished_ids = list(unpublished_ids)
        self.in_doubt_ids = list(in_doubt_ids)
        self.next_index = next_index
        self.marker_key = marker_key

    @property
    def published(self) -> int:
        """How many calls are known to be published (refused duplicates included)."""
        return len(self.published_ids)

    def resolve(self, app: Celery) -> bool | None:
        """Settle the in-doubt chunk: True if it was published, False if not.

        On True its ids move to :attr:`published_ids` and :attr:`next_index` past it;
        on False to :attr:`unpublished_ids`. None: nothing was in doubt, or Redis is
        still unreachable (call again later; the marker lives a day). On a Redis
        Cluster broker the in-doubt part is one slot's: its :attr:`slots` entry becomes
        ``published`` or ``refused``, and :attr:`next_index` stays (the chunk's calls
        after it may not have landed; resume by :attr:`unpublished_ids`).
        """
        if not self.in_doubt_ids or self.marker_key is None:
            return None
        try:
            applied = bool(get_redis(app).exists(self.marker_key))
        except (*REDIS_ERRORS, OSError):
            return None
        if applied:
            self.published_ids.extend(self.in_doubt_ids)
            if not self.slots:
                self.next_index += len(self.in_doubt_ids)
        else:
            self.unpublished_ids = self.in_doubt_ids + self.unpublished_ids
        self.slots = [
            replace(slot, state="published" if applied else "refused")
            if slot.state == "in_doubt"
            else slot
            for slot in self.slots
        ]
        self.in_doubt_ids = []
        return applied


class BulkDuplicateError(BulkPublishError, DuplicateTaskError):
    """A unique task's batch holds a duplicate and ``on_duplicate="raise"``.

    Nothing of the chunk that holds it was published (its locks are taken all or
    nothing); earlier chunks were, as ``published_ids`` says.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str,
        ttl: float | None,
        key: str,
        published_ids: Sequence[str | None],
        unpublished_ids: Sequence[str],
        next_index: int,
    ) -> None:
        BulkPublishError.__init__(
            self,
            message,
            published_ids=published_ids,
            unpublished_ids=unpublished_ids,
            next_index=next_index,
        )
        self.task_id = task_id
        self.ttl = ttl
        self.key = key


@dataclass
class _Call:
    index: int
    task_id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    lock_key: str | None = None
    shared: bool = False  # no options of its own: the batch's options as they are
    result: str | None = None  # the id the caller gets back (a holder's, for a duplicate)
    publish: bool = True


@dataclass
class _Batch:
    app: Celery
    task: Any
    options: dict[str, Any]
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    published: list[str | None] = field(default_factory=list)
    next_index: int = 0


def enqueue_many(
    task: Any,
    calls: Iterable[Any],
    *,
    chunk_size: int = 1000,
    progress: Progress | None = None,
    **options: Any,
) -> list[AsyncResult[Any] | None]:
    """Publish many calls of ``task``, one Redis transaction per chunk.

    Each message is what ``task.apply_async(args, kwargs, **options)`` would publish
    (protocol 2 headers, the app's ``task_routes``, priorities, ``global_keyprefix``,
    ``before_task_publish`` / ``after_task_publish`` signals). What differs:
    ``apply_async`` overrides of the task class are not called (except that
    :class:`~celeryredis.UniqueTask` locks are taken, for a chunk at a time, in one
    script call); the result backend is not subscribed to at publish (``get()`` reads
    the result when called); publishing is not retried — a failure raises
    :class:`BulkPublishError`, which says exactly what was published.

    Args:
        task: A task of a Celery app (``@app.task``).
        calls: Each item is a tuple of positional arguments, an ``(args, kwargs)`` pair
            (a 2-tuple of a tuple/list and a dict), or a signature of ``task`` (its
            own options win over ``**options``). Any iterable: only one chunk is held
            in memory at a time.
        chunk_size: Messages per transaction.
        progress: Called as ``progress(published, total)`` after each chunk.
        **options: As for ``apply_async``: ``queue``, ``priority``, ``countdown``,
            ``eta``, ``expires``, ``headers``, ``ignore_result``, ``routing_key``,
            ``exchange``, ``time_limit``, ``soft_time_limit``, ``link`` ...

    Returns:
        One :class:`~celery.result.AsyncResult` per call, in order (for a
        :class:`~celeryredis.UniqueTask` duplicate: the holder's result, or None
        with ``on_duplicate="ignore"``).

    Raises:
        BulkPublishError: A call is malformed, or Redis failed mid-batch; its
            attributes say which ids were published and where to resume.
        BulkDuplicateError: A :class:`~celeryredis.UniqueTask` with
            ``on_duplicate="raise"`` met a duplicate.
        ValueError: ``chunk_size`` is not a positive integer.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    app: Celery = task.app
    if app.conf.task_always_eager:
        return [_eager(task, call, options) for call in calls]
    total = len(calls) if isinstance(calls, Sized) else None
    batch = _Batch(app, task, options)
    results: list[AsyncResult[Any] | None] = []
    with app.connection_for_write() as connection:
        broker_errors: tuple[type[BaseException], ...] = (
            OperationalError,
            *connection.connection_errors,
        )
        try:
            # One attempt first: an error retrying cannot fix fails at once.
            connection.ensure_connection(max_retries=0)
        except broker_errors as exc:
            if classify(exc).permanent and fails_fast(app.conf.broker_url):
                raise BulkPublishError(
                    f"enqueue_many({task.name}): the broker's Redis refused the app: "
                    f"{describe(classify(exc), 'broker_url')}; nothing was published",
                ) from exc
        try:
            channel = connection.default_channel
        except broker_errors as exc:
            raise BulkPublishError(
                f"enqueue_many({task.name}): cannot reach the broker: "
                f"{describe(classify(exc), 'broker_url')}; nothing was published",
            ) from exc
        producer = BatchProducer(channel)
        sender = _Sender(app, task, producer)
        iterator = iter(enumerate(calls))
        chunk_no = 0
        while True:
            try:
                items = list(itertools.islice(iterator, chunk_size))
            except Exception as exc:  # the caller's iterable failed
                raise _stopped(
                    batch, f"enqueue_many({task.name}): reading the calls failed: {exc!r}", []
                ) from exc
            if not items:
                break
            chunk = _prepare(batch, items)
            _publish_chunk(
                batch, sender, producer, chunk, chunk_no, channel=channel, connection=connection
            )
            chunk_no += 1
            results.extend(
                None if call.result is None else task.AsyncResult(call.result) for call in chunk
            )
            if progress is not None:
                progress(len(batch.published), total)
    return results


def _eager(task: Any, call: Any, options: Mapping[str, Any]) -> AsyncResult[Any] | None:
    args, kwargs, opts = _split(task, call, 0)
    return task.apply_async(args, kwargs, **{**options, **opts})  # type: ignore[no-any-return]


def _split(
    task: Any, call: Any, index: int
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """``(args, kwargs, options)`` of one call, or a clear error."""
    if isinstance(call, Signature):
        if call.task != task.name:
            raise TypeError(f"call #{index} is a signature of {call.task!r}, not of {task.name!r}")
        return tuple(call.args or ()), dict(call.kwargs or {}), dict(call.options or {})
    if (
        isinstance(call, tuple)
        and len(call) == 2
        and isinstance(call[0], (tuple, list))
        and isinstance(call[1], dict)
    ):
        return tuple(call[0]), dict(call[1]), {}
    if isinstance(call, (tuple, list)):
        return tuple(call), {}, {}
    raise TypeError(
        f"call #{index} is a {type(call).__name__}: give a tuple of arguments, an "
        "(args, kwargs) pair or a signature of the task (a single argument is (x,))"
    )


def _prepare(batch: _Batch, items: list[tuple[int, Any]]) -> list[_Call]:
    """Turn a chunk of the input into calls with ids (and unique locks' keys)."""
    task = batch.task
    chunk: list[_Call] = []
    ids = _new_ids(len(items))
    for (index, call), new_id in zip(items, ids, strict=True):
        try:
            args, kwargs, opts = _split(task, call, index)
        except TypeError as exc:
            raise _stopped(batch, f"enqueue_many({task.name}): {exc}", chunk) from exc
        options = {**batch.options, **opts}
        task_id = options.pop("task_id", None) or new_id
        chunk.append(_Call(index, task_id, args, kwargs, options, shared=not opts, result=task_id))
    if isinstance(task, UniqueTask) and task.unique_mode != "while_executing":
        _lock_chunk(batch, chunk)
    elif isinstance(task, UniqueTask):
        for call in chunk:
            _set_unique_header(task, call)
    return chunk


def _new_ids(count: int) -> list[str]:
    """``count`` random task ids, each what ``str(uuid.uuid4())`` gives.

    Version-4 UUIDs from one ``os.urandom`` read: the version and variant bits set as
    RFC 4122 says, the rest random, written in the 8-4-4-4-12 form.
    """
    raw = bytearray(os.urandom(16 * count))
    ids = []
    for start in range(0, 16 * count, 16):
        raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
        raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[start : start + 16].hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def _set_unique_header(task: UniqueTask, call: _Call) -> str:
    call.options["headers"], key = task.unique_headers(
        call.options.get("headers"), call.args, call.kwargs
    )
    call.lock_key = key
    call.shared = False  # its own headers
    return key


def _lock_chunk(batch: _Batch, chunk: list[_Call]) -> None:
    """Take the unique locks of a chunk in one script call (all or nothing for "raise")."""
    task: UniqueTask = batch.task
    strict = task.on_duplicate == "raise"
    first: dict[str, _Call] = {}
    repeats: list[_Call] = []  # the same work again later in the chunk
    for call in chunk:
        key = _set_unique_header(task, call)
        if key not in first:
            first[key] = call
        elif strict:
            raise _duplicate(batch, chunk, key, first[key].task_id, None)
        else:
            call.publish = False
            repeats.append(call)
    owners = {key: call.task_id for key, call in first.items()}
    try:
        states = task.unique_claim(owners, all_or_nothing=strict)  # logs and counts refusals
    except (LockError, OSError) as exc:
        raise _stopped(
            batch, f"enqueue_many({task.name}): taking the unique locks failed: {exc!r}", chunk
        ) from exc
    ignore = task.on_duplicate == "ignore"
    for key, state in states.items():
        if state is None or state.acquired:
            continue
        if strict:
            raise _duplicate(batch, chunk, key, state.holder, state.ttl)
        first[key].publish = False
        first[key].result = None if ignore else state.holder
    for call in repeats:  # they follow the first call of their key
        call.result = None if ignore else first[str(call.lock_key)].result


def _duplicate(
    batch: _Batch, chunk: list[_Call], key: str, holder: str, ttl: float | None
) -> BulkDuplicateError:
    return BulkDuplicateError(
        f"enqueue_many({batch.task.name}): {key} is already queued or running as {holder}"
        f"{f' ({ttl:.1f} s left)' if ttl else ''}; on_duplicate='raise', so chunk "
        f"starting at call #{chunk[0].index} was not published ({len(batch.published)} "
        "calls before it were)",
        task_id=holder,
        ttl=ttl,
        key=key,
        published_ids=batch.published,
        unpublished_ids=[call.task_id for call in chunk],
        next_index=batch.next_index,
    )


def _stopped(batch: _Batch, message: str, chunk: list[_Call]) -> BulkPublishError:
    return BulkPublishError(
        f"{message}; {len(batch.published)} calls before call #{batch.next_index} were "
        "published, none after",
        published_ids=batch.published,
        unpublished_ids=[call.task_id for call in chunk],
        next_index=batch.next_index,
    )


def _build_chunk(
    batch: _Batch,
    sender: _Sender,
    producer: BatchProducer,
    chunk: list[_Call],
    each: Callable[[_Call], None] | None = None,
) -> None:
    """Build the message of every call of ``chunk`` that publishes.

    The producer collects their commands; ``each`` runs after each call's message,
    inside the same guard.

    Raises:
        BulkPublishError: A call could not be built (or ``each`` refused it); the chunk's
            locks are given back and nothing of it was sent.
    """
    call = chunk[0]
    try:
        for call in chunk:
            if call.publish:
                sender.send(call)
                if each is not None:
                    each(call)
    except Exception as exc:
        producer.take_commands()
        _release_locks(batch, chunk)
        raise _stopped(
            batch,
            f"enqueue_many({batch.task.name}): building call #{call.index} failed: {_why(exc)}",
            chunk,
        ) from exc


def _publish_chunk(
    batch: _Batch,
    sender: _Sender,
    producer: BatchProducer,
    chunk: list[_Call],
    chunk_no: int,
    *,
    channel: Any,
    connection: Any,
) -> None:
    app, task = batch.app, batch.task
    if is_cluster(channel.client):
        _publish_chunk_by_slot(
            batch, sender, producer, chunk, chunk_no, client=channel.client, connection=connection
        )
        return
    _build_chunk(batch, sender, producer, chunk)
    commands = producer.take_commands()
    marker = bulk_marker_key(app.conf, batch.batch_id, chunk_no)
    sent = False
    try:
        client = channel.client
        pipe = client.pipeline(transaction=True)
        _queue_commands(pipe, commands)
        # The channel's client adds the broker's global_keyprefix itself.
        prefix = _kombu_compat.client_key_prefix(client)
        pipe.set(marker[len(prefix) :] if prefix else marker, 1, ex=_MARKER_TTL)
        sent = True
        pipe.execute()
    except (redis.RedisError, OSError, *connection.connection_errors) as exc:
        ids = [call.task_id for call in chunk if call.publish]
        if sent and _maybe_sent(exc):
            raise BulkPublishError(
                f"enqueue_many({task.name}): Redis failed during the transaction of the chunk "
                f"starting at call #{chunk[0].index}: {exc!r}; {len(batch.published)} calls "
                f"before it are published; whether its {len(ids)} were is in doubt: call "
                ".resolve(app) once Redis is back",
                published_ids=batch.published,
                in_doubt_ids=ids,
                next_index=batch.next_index,
                marker_key=marker,
            ) from exc
        _release_locks(batch, chunk)
        raise _stopped(
            batch, f"enqueue_many({task.name}): Redis refused the chunk: {_why(exc)}", chunk
        ) from exc
    batch.published.extend(call.result for call in chunk)
    batch.next_index = chunk[-1].index + 1


# -- a Redis Cluster broker: one transaction per hash slot ------------------------------------


def _publish_chunk_by_slot(
    batch: _Batch,
    sender: _Sender,
    producer: BatchProducer,
    chunk: list[_Call],
    chunk_no: int,
    *,
    client: Any,
    connection: Any,
) -> None:
    """Publish a chunk on a cluster broker: one ``MULTI``/``EXEC`` per hash slot, in turn.

    Each slot's transaction holds its messages and its own marker
    (:func:`celeryredis.keys.bulk_marker_key` with the slot's hash tag). The first slot
    that fails stops the chunk: the slots before it are published, the ones after it
    are not sent, and :class:`BulkPublishError` reports each slot.
    """
    groups: dict[int, list[Command]] = {}
    calls_of: dict[int, list[_Call]] = {}
    slots_of: dict[str, set[int]] = {}
    rung: set[tuple[int, Any]] = set()

    def group(call: _Call) -> None:
        for name, args in producer.take_commands():
            slot = _slot_of(name, args, call)
            if name == "spublish":  # the transport's wake-up: once per channel and slot
                if (slot, args[0]) in rung:
                    continue
                rung.add((slot, args[0]))
            groups.setdefault(slot, []).append((name, args))
            if slot not in slots_of.setdefault(call.task_id, set()):
                calls_of.setdefault(slot, []).append(call)
            slots_of[call.task_id].add(slot)

    _build_chunk(batch, sender, producer, chunk, each=group)
    reports: list[SlotReport] = []
    failed: SlotReport | None = None
    cause: BaseException | None = None
    for slot, commands in groups.items():
        pushes = [args for name, args in commands if name != "spublish"]
        keys = tuple(dict.fromkeys(str(args[0]) for args in pushes))
        ids = tuple(call.task_id for call in calls_of[slot])
        marker = bulk_marker_key(batch.app.conf, batch.batch_id, chunk_no, slot_key=keys[0])
        if failed is not None:
            reports.append(SlotReport(slot, keys, ids, len(pushes), "not_sent", marker))
            continue
        state, cause = _run_slot(client, commands, marker, connection)
        error = None if cause is None else redact_text(f"{type(cause).__name__}: {cause}")
        reports.append(SlotReport(slot, keys, ids, len(pushes), state, marker, error))
        if state != "published":
            failed = reports[-1]
    if failed is None:
        batch.published.extend(call.result for call in chunk)
        batch.next_index = chunk[-1].index + 1
        return
    raise _slot_failure(batch, chunk, reports, slots_of, failed) from cause


def _slot_of(name: str, args: tuple[Any, ...], call: _Call) -> int:
    """The hash slot of one command of ``call`` (a fanout's ``PUBLISH`` has none: refused)."""
    if name == "publish":
        raise ValueError(
            f"call #{call.index} goes to a fanout exchange: on a Redis Cluster broker its "
            "PUBLISH cannot join a transaction; publish it with apply_async"
        )
    return key_slot(str(args[0]).encode())


def _run_slot(
    client: Any, commands: list[Command], marker: str, connection: Any
) -> tuple[str, BaseException | None]:
    """Run one slot's transaction: its :class:`SlotReport` state, and the failure."""
    sent = False
    try:
        # redis-py's cluster pipeline retries a transaction after a timeout or a lost
        # connection, which could apply it twice: this one is sent once (the channel,
        # and its client, belong to this enqueue_many call).
        retry = client.retry
        client.set_retry(Retry(NoBackoff(), 0))
        try:
            pipe = client.pipeline(transaction=True)
        finally:
            client.set_retry(retry)
        _queue_commands(pipe, commands)
        pipe.set(marker, 1, ex=_MARKER_TTL)
        sent = True
        pipe.execute()
    except (redis.RedisError, RedisClusterException, OSError, *connection.connection_errors) as exc:
        if _aborted(exc):
            return "refused", exc
        return ("in_doubt" if sent and _maybe_sent(exc) else "refused"), exc
    return "published", None


def _aborted(exc: BaseException) -> bool:
    """Whether Redis discarded the transaction (``EXECABORT``): none of it was applied.

    A command refused while queued (out of memory, ``NOPERM``...) aborts the ``EXEC``;
    redis-py's cluster pipeline then raises that command's error with the
    ``ExecAbortError`` as its context.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ExecAbortError):
            return True
        seen = seen.__context__
    return False


def _slot_failure(
    batch: _Batch,
    chunk: list[_Call],
    reports: list[SlotReport],
    slots_of: dict[str, set[int]],
    failed: SlotReport,
) -> BulkPublishError:
    """The error of a chunk whose slot ``failed``; each call is placed by its slots' fate."""
    task = batch.task
    state = {report.slot: report.state for report in reports}
    landed: list[_Call] = []
    doubt: list[str] = []
    rest: list[_Call] = []
    for call in chunk:
        fates = {state[slot] for slot in slots_of.get(call.task_id, ())}
        if not call.publish or fates == {"published"}:
            landed.append(call)
        elif fates <= {"published", "in_doubt"}:
            doubt.append(call.task_id)
        else:
            rest.append(call)
    landed_ids = {id(call) for call in landed}
    first_open = next((c.index for c in chunk if id(c) not in landed_ids), chunk[-1].index + 1)
    published = [*batch.published, *(call.result for call in landed)]
    lines = "; ".join(
        f"slot {r.slot} ({', '.join(r.keys)}): {r.messages} message(s) {r.state}" for r in reports
    )
    message = (
        f"enqueue_many({task.name}): on the Redis Cluster broker the chunk starting at call "
        f"#{chunk[0].index} is one transaction per hash slot, and slot {failed.slot} "
        f"{'may have failed after it was sent' if failed.state == 'in_doubt' else 'was refused'}"
        f": {failed.error}; per slot: {lines}; {len(published)} call(s) are published"
        + (f", {len(doubt)} in doubt (call .resolve(app) once Redis is back)" if doubt else "")
        + f", {len(rest)} not"
    )
    _release_locks(batch, rest)  # not published: give their unique locks back
    return BulkPublishError(
        message,
        published_ids=published,
        unpublished_ids=[call.task_id for call in rest],
        in_doubt_ids=doubt,
        next_index=first_open,
        marker_key=failed.marker_key if doubt else None,
        slots=reports,
    )


def _why(exc: BaseException) -> str:
    """``repr(exc)``, plus the cause and fix when retrying cannot help (see ``_errors``)."""
    diagnosis = classify(exc)
    if diagnosis.permanent:
        return describe(diagnosis, "broker_url")
    return redact_text(repr(exc))


def _maybe_sent(exc: BaseException) -> bool:
    """Whether the failure may have come after Redis received the transaction.

    Only a failure to connect (redis-py: "Error N connecting to ...") or a refusal
    retrying cannot fix (see ``_errors``) proves that nothing was sent; a broken or
    timed-out connection may have lost just the reply.
    (kombu's clients do not retry a command: a transaction is never sent twice.)
    """
    if isinstance(exc, redis.ConnectionError) and " connecting to " in str(exc):
        return False
    # A refusal (NOPERM aborts the whole MULTI/EXEC with EXECABORT; a wrong password or
    # database fails at connect): Redis answered, and ran nothing of the transaction.
    return not classify(exc).permanent


def _queue_commands(pipe: Any, commands: list[Command]) -> None:
    for name, args in commands:
        getattr(pipe, name)(*args)


def _release_locks(batch: _Batch, chunk: list[_Call]) -> None:
    """Give back the unique locks a chunk took when it was not published."""
    task = batch.task
    if not isinstance(task, UniqueTask) or task.unique_mode == "while_executing":
        return
    client = get_redis(batch.app)
    for call in chunk:
        if call.publish and call.lock_key is not None:
            try:
                TokenLock(client, call.lock_key, call.task_id, 1.0).release()
            except LockError as exc:
                # Redis is failing: the remaining locks expire on their own (their TTL).
                logger.warning(
                    "enqueue_many(%s): the locks of unpublished tasks were not released (%s); "
                    "they expire on their own",
                    task.name,
                    redact_text(str(exc)),
                )
                return


class _Sender:
    """Builds each message as ``Task.apply_async`` + ``Celery.send_task`` do, and publishes it.

    The option handling follows Celery 5.7's ``send_task``; the test that compares a
    message from each path field by field keeps it honest. What cannot change within
    one call of :func:`enqueue_many` (the task's own options, the app's settings, the
    parent task) is read once, and so is what only depends on a call's options (see
    :class:`_Plan`): calls that bring no options of their own share one plan.
    """

    def __init__(self, app: Celery, task: Any, producer: BatchProducer) -> None:
        self.app = app
        self.task = task
        self.producer = producer
        self.exec_options = _exec_options(task)
        self.ignore_result = task.ignore_result
        self.check = getattr(task, "__header__", None) if task.typing else None
        self.sent_event = app.conf.task_send_sent_event
        self.thread_oid = _celery_compat.reply_to(app)
        router: Any = app.amqp.router
        self.route = router.route
        # Routes from task_routes mappings (or none) depend on the task's name and the
        # options only, so one routing serves every call with the same options; a
        # router function may look at the arguments and is asked for every call.
        self.routes_static = all(isinstance(r, MapRoute) for r in router.routes)
        # Task.shadow_name not overridden: it returns None whatever the call.
        self.shadow_static = getattr(task.shadow_name, "__func__", None) is CeleryTask.shadow_name
        self.create_message = app.amqp.create_task_message
        self.send_message = app.amqp.send_task_message
        self.reprs = _Reprs(app)
        self.origin = anon_nodename()
        self.root_id: str | None = None
        self.parent_id: str | None = None
        self.parent_priority: Any = None
        self.inherit_priority = False
        parent = app.current_worker_task
        if parent:
            self.root_id = parent.request.root_id or parent.request.id
            self.parent_id = parent.request.id
            if app.conf.task_inherit_parent_priority:
                self.inherit_priority = True
                self.parent_priority = (parent.request.delivery_info or {}).get("priority")
        self.shared: _Plan | None = None  # the plan of calls without options of their own

    def send(self, call: _Call) -> None:
        task = self.task
        args, kwargs = call.args, call.kwargs
        if self.check is not None:
            self.check(*args, **kwargs)
        if call.shared:
            plan = self.shared
            if plan is None:
                plan = self.shared = self.plan(call.options)
        else:
            plan = self.plan(call.options)
        shadow = plan.shadow
        if shadow is None and not self.shadow_static:
            shadow = task.shadow_name(args, kwargs, dict(call.options))
        if plan.options is not None:
            options, send_options = plan.options, plan.send_options
        else:
            if plan.routed is not None:
                options = dict(plan.routed)
            else:
                options = self.route(dict(plan.unrouted), task.name, args, kwargs, task)
            options, send_options = self.finish(options, plan.expires, plan.inherit)
        reprs = {} if plan.own_reprs else self.reprs(args, kwargs)
        message = self.create_message(
            call.task_id, task.name, args, kwargs, *plan.fields, shadow, plan.chain,
            **plan.keywords, **reprs, **options,
        )  # fmt: skip
        self.send_message(self.producer, task.name, message, **send_options)

    def plan(self, call_options: Mapping[str, Any]) -> _Plan:
        """What the message of a call with these options gets, apart from id and arguments."""
        task = self.task
        options = dict(call_options)
        shadow = options.pop("shadow", None)
        options = {**self.exec_options, **options}
        options.setdefault("ignore_result", self.ignore_result)
        link = options.pop("link", None)
        link_error = options.pop("link_error", None)
        countdown = options.pop("countdown", None)
        eta = options.pop("eta", None)
        expires = options.pop("expires", None)
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        ignore_result = options.pop("ignore_result", None)
        group_id = options.pop("group_id", None)
        group_index = options.pop("group_index", None)
        retries = options.pop("retries", 0)
        chord = options.pop("chord", None)
        reply_to = options.pop("reply_to", None)
        root_id = options.pop("root_id", None)
        parent_id = options.pop("parent_id", None)
        inherit = self.inherit_priority and not (root_id and parent_id)
        root_id = root_id or self.root_id
        parent_id = parent_id or self.parent_id
        chain = options.pop("chain", None)
        replaced_task_nesting = options.pop("replaced_task_nesting", 0)
        for unused in _NOT_MESSAGE_OPTIONS:
            options.pop(unused, None)
        plan = _Plan(
            fields=(
                countdown,
                eta,
                group_id,
                group_index,
                expires,
                retries,
                chord,
                maybe_list(link),
                maybe_list(link_error),
                reply_to or self.thread_oid,
                time_limit,
                soft_time_limit,
                self.sent_event,
                root_id,
                parent_id,
            ),
            shadow=shadow,
            chain=chain,
            keywords={
                "ignore_result": ignore_result,
                "replaced_task_nesting": replaced_task_nesting,
                # Celery's anon_nodename() per message: the same text for a whole batch.
                **({} if "origin" in options else {"origin": self.origin}),
            },
            own_reprs="argsrepr" in options or "kwargsrepr" in options,
            expires=expires,
            inherit=inherit,
            unrouted=options,
        )
        if self.routes_static:
            plan.routed = self.route(dict(options), task.name, (), {}, task)
            if expires is None:  # nothing depends on the time of the call either
                plan.options, plan.send_options = self.finish(dict(plan.routed), expires, inherit)
        return plan

    def finish(
        self, options: dict[str, Any], expires: Any, inherit: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The routed options as ``create_task_message`` and ``send_task_message`` take them."""
        if expires is not None:
            options["expiration"] = _expiration_seconds(self.app, expires)
        if inherit:
            options.setdefault("priority", self.parent_priority)
        send_options = dict(options)
        for stamp in send_options.pop("stamped_headers", None) or ():
            send_options.pop(stamp, None)
        send_options["retry"] = False  # a chunk either commits or is reported, never half-retried
        return options, send_options


@dataclass
class _Plan:
    """The parts of a message that only depend on a call's options (see ``_Sender.plan``).

    ``fields`` are ``create_task_message``'s positional arguments from ``countdown`` to
    ``parent_id``; ``options`` / ``send_options`` are the final keyword options of
    ``create_task_message`` / ``send_task_message`` when neither routing nor the time
    of the call changes them (otherwise None, and each call finishes ``routed`` or
    routes ``unrouted``).
    """

    fields: tuple[Any, ...]
    shadow: str | None
    chain: Any
    keywords: dict[str, Any]
    own_reprs: bool
    expires: Any
    inherit: bool
    unrouted: dict[str, Any]
    routed: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    send_options: dict[str, Any] = field(default_factory=dict)


class _Reprs:
    """``argsrepr`` / ``kwargsrepr`` exactly as Celery's ``create_task_message`` makes them.

    Celery's ``saferepr`` walks a token stream and costs more than the rest of a
    message's headers. For arguments that are flat tuples, lists or dicts of ``int``,
    ``float``, ``bool``, ``None`` and ``str`` whose representation fits well within the
    length limit, its output is simple enough to produce directly: numbers as ``str()``
    gives them, strings in single quotes with only ``'`` escaped, no truncation (the
    unit test compares the two on many values). Anything else goes to ``saferepr``.
    """

    def __init__(self, app: Celery) -> None:
        self.args_max = app.amqp.argsrepr_maxsize
        self.kwargs_max = app.amqp.kwargsrepr_maxsize
        self.maxlevels = app.conf.task_repr_maxlevels

    def __call__(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
        argsrepr = _flat_repr(args, self.args_max)
        if argsrepr is None:
            argsrepr = saferepr(args, self.args_max, maxlevels=self.maxlevels)
        kwargsrepr = _flat_repr(kwargs, self.kwargs_max)
        if kwargsrepr is None:
            kwargsrepr = saferepr(kwargs, self.kwargs_max, maxlevels=self.maxlevels)
        return {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}


_NUMBERS = frozenset((int, float, bool))


def _scalar_repr(value: Any) -> str | None:
    kind = type(value)
    if kind in _NUMBERS:
        return str(value)
    if kind is str:
        text: str = value
        return "'" + text.replace("'", "\\'") + "'"
    if value is None:
        return "None"
    return None


def _flat_repr(value: Any, maxlen: int | None) -> str | None:
    """``saferepr(value, maxlen)`` for a flat container of scalars, else None."""
    kind = type(value)
    parts: list[str] = []
    if kind is dict:
        for key, item in value.items():
            key_repr, item_repr = _scalar_repr(key), _scalar_repr(item)
            if key_repr is None or item_repr is None:
                return None
            parts.append(f"{key_repr}: {item_repr}")
        text = "{" + ", ".join(parts) + "}"
    elif kind is tuple or kind is list:
        for item in value:
            item_repr = _scalar_repr(item)
            if item_repr is None:
                return None
            parts.append(item_repr)
        if kind is list:
            text = "[" + ", ".join(parts) + "]"
        elif len(parts) == 1:
            text = "(" + parts[0] + ",)"
        else:
            text = "(" + ", ".join(parts) + ")"
    else:
        return None
    # Shorter than the limit: saferepr truncates nothing (a part as long as what is
    # left of the limit would already be cut).
    if maxlen is not None and len(text) >= maxlen:
        return None
    return text


#: ``apply_async`` arguments that are about the call, not the message.
_NOT_MESSAGE_OPTIONS = ("producer", "connection", "router", "result_cls", "add_to_parent")


def _exec_options(task: Any) -> dict[str, Any]:
    """The task's own publish options (queue, priority, serializer ...), not None ones."""
    return _celery_compat.exec_options(task)


def _expiration_seconds(app: Celery, expires: Any) -> float:
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    if isinstance(expires, datetime):
        seconds = (_utc(expires) - _utc(app.now())).total_seconds()
    else:
        seconds = float(expires)
    return max(0.0, seconds)


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are UTC, as Celery reads them."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
