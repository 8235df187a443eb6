"""``celeryredis.UniqueTask``: don't queue or run the same work twice."""

from __future__ import annotations

import atexit
import functools
import hashlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from celery import signals
from celery.exceptions import Ignore

from celeryredis.connection import get_redis
from celeryredis.exceptions import ConfigurationError, DuplicateTaskError, LockError
from celeryredis.keys import lock_key
from celeryredis.locks import DeferredRelease, LockRenewer, LockState, TokenLock, acquire_many
from celeryredis.redaction import redact_text
from celeryredis.stats import count
from celeryredis.tasks._options import OptionCheck, as_names, as_seconds
from celeryredis.tasks.base import Task, publish_error

__all__ = ["UNIQUE_HEADER", "UniqueTask"]

logger = logging.getLogger(__name__)

#: The message header that carries the lock key computed at publish.
UNIQUE_HEADER = "celeryredis_unique_key"
_MODES = ("until_executing", "until_executed", "while_executing")
_ON_DUPLICATE = ("return", "raise", "ignore")
_WHILE_EXECUTING = ("drop", "defer")
_RENEWER = LockRenewer()
# Releases at the end of a run: sent without waiting for their reply.
_RELEASES = DeferredRelease()


@functools.cache
def _read_releases_at_shutdown() -> None:
    """Read the last replies before a worker, a pool process or the interpreter ends."""
    signals.worker_process_shutdown.connect(
        _RELEASES.collect_all, weak=False, dispatch_uid="celeryredis.unique.releases.process"
    )
    signals.worker_shutdown.connect(
        _RELEASES.collect_all, weak=False, dispatch_uid="celeryredis.unique.releases.worker"
    )
    atexit.register(_RELEASES.collect_all)


def _deferred_release(lock: TokenLock) -> None:
    """Send ``lock``'s release without waiting for it (see :class:`DeferredRelease`).

    The first call in a process sets up the reads at shutdown (never at import).
    """
    _read_releases_at_shutdown()
    _RELEASES.release(lock)


def _one_of(choices: Sequence[str]) -> OptionCheck:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise ConfigurationError(
                f"task option {name}={value!r} is not valid: expected one of "
                f"{', '.join(map(repr, choices))}",
                setting=name,
            )

    return check


def _optional_names(name: str, value: Any) -> None:
    if value is not None:
        as_names(name, value)


def _optional_seconds(name: str, value: Any) -> None:
    if value is not None:
        as_seconds(name, value)


class UniqueTask(Task):
    """A task that is not queued (or run) twice for the same arguments.

    The lock key is the task name plus a digest of the canonical JSON (sorted keys) of
    the arguments bound to their parameter names — all of them, the ``unique_on``
    subset, or whatever :meth:`unique_key` returns. It is computed once at publish and
    carried in the ``celeryredis_unique_key`` header. The lock's value is the task id
    that holds it: a publish under the same id (a retry, a replay) is re-entrant.

    Modes (``unique_mode``):

    ``until_executing``
        locked at publish, released when a worker starts the task;
    ``until_executed`` (default)
        locked at publish, released when the task finishes — success or final
        failure — and held across its retries (and on revoke, released);
    ``while_executing``
        no publish lock; a copy that starts while another runs is dropped or
        deferred (``unique_while_executing``).

    On a duplicate publish (``on_duplicate``): ``"return"`` gives the existing task's
    ``AsyncResult``; ``"raise"`` raises :class:`~celeryredis.DuplicateTaskError` with
    the existing id and the time left; ``"ignore"`` returns None.

    In eager mode (``task_always_eager``, ``apply()``) there is no lock, unless the
    app sets ``celeryredis_eager_redis=True``: every call runs (the key is still
    computed, so a bad ``unique_on`` is still an error).

    Attributes:
        unique_mode: See above.
        unique_on: Parameter names the key is built from (None: all).
        on_duplicate: ``"return"``, ``"raise"`` or ``"ignore"``.
        unique_ttl: Lock TTL while the message waits, in seconds (None: the app's
            visibility timeout, which already covers ETAs and prefetch).
        unique_running_ttl: Lock TTL while the task runs; the lock is renewed every
            third of it, so after a crash it is free within this time.
        unique_while_executing: ``"drop"`` or ``"defer"`` (while_executing mode).
        unique_defer_delay: Seconds to defer a copy by in ``"defer"`` policy.
    """

    unique_mode: ClassVar[str] = "until_executed"
    unique_on: ClassVar[Sequence[str] | None] = None
    on_duplicate: ClassVar[str] = "return"
    unique_ttl: ClassVar[float | None] = None
    unique_running_ttl: ClassVar[float] = 60.0
    unique_while_executing: ClassVar[str] = "drop"
    unique_defer_delay: ClassVar[float] = 1.0

    celeryredis_options: ClassVar[Mapping[str, OptionCheck]] = {
        "unique_mode": _one_of(_MODES),
        "unique_on": _optional_names,
        "on_duplicate": _one_of(_ON_DUPLICATE),
        "unique_ttl": _optional_seconds,
        "unique_running_ttl": as_seconds,
        "unique_while_executing": _one_of(_WHILE_EXECUTING),
        "unique_defer_delay": as_seconds,
    }

    # -- the key ---------------------------------------------------------------------------

    def unique_key(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """The data the lock is about (override for a custom key; must be JSON-able)."""
        try:
            bound = inspect.signature(self.run).bind(*args, **kwargs)
            bound.apply_defaults()
            data = dict(bound.arguments)
        except (TypeError, ValueError):
            data = {"args": list(args), "kwargs": dict(kwargs)}
        if self.unique_on is not None:
            missing = [name for name in self.unique_on if name not in data]
            if missing:
                raise ConfigurationError(
                    f"task {self.name!r}: unique_on names {missing} that are not parameters",
                    setting="unique_on",
                )
            data = {name: data[name] for name in self.unique_on}
        return data

    def unique_lock_key(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> str:
        """The lock key for a call: task name + SHA-256 of canonical JSON."""
        material = self.unique_key(tuple(args or ()), dict(kwargs or {}))
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=repr)
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
        return lock_key(self.app.conf, self.name, digest)

    def _queue_ttl(self) -> float:
        if self.unique_ttl is not None:
            return float(self.unique_ttl)
        options = self.app.conf.get("broker_transport_options") or {}
        return float(options.get("visibility_timeout") or 3600)

    def _lock(self, key: str, token: str, ttl: float) -> TokenLock:
        return TokenLock(get_redis(self.app), key, token, ttl)

    def _running_lock(self, key: str, token: str) -> TokenLock:
        """The lock of a received task, with the running TTL (client cached per worker)."""
        return TokenLock(self._redis(), key, token, float(self.unique_running_ttl))

    # -- the uniqueness claim (apply_async and enqueue_many) --------------------------------

    def unique_headers(
        self,
        headers: Mapping[str, Any] | None,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
    ) -> tuple[dict[str, Any], str]:
        """The message headers with this call's lock key (kept if already set), and the key."""
        out = dict(headers or {})
        key = str(out.get(UNIQUE_HEADER) or self.unique_lock_key(args, kwargs))
        out[UNIQUE_HEADER] = key
        return out, key

    def unique_claim(
        self, owners: Mapping[str, str], *, all_or_nothing: bool = False
    ) -> dict[str, LockState | None]:
        """Take the queue-time locks ``{lock key: task id}`` in one round trip.

        The one claim path of :meth:`apply_async` and :func:`celeryredis.enqueue_many`:
        a key held by another task is logged and counted (``duplicate_refusals``). With
        ``all_or_nothing``, no lock is taken if any key is held, and the free keys map to
        None.

        Raises:
            LockError: Redis refused the claim.
        """
        states = acquire_many(
            get_redis(self.app), dict(owners), self._queue_ttl(), all_or_nothing=all_or_nothing
        )
        for key, state in states.items():
            if state is not None and not state.acquired:
                logger.info("task %s: duplicate of %s refused (%s)", self.name, state.holder, key)
                count(self.app, "duplicate_refusals", self.name)
        return states

    # -- publishing ------------------------------------------------------------------------

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        """Publish unless an equal task is already queued or running (see ``on_duplicate``)."""
        self.check_arguments(args, kwargs)  # a wrong call is a TypeError, before the key
        options["headers"], key = self.unique_headers(options.get("headers"), args, kwargs)
        if self.unique_mode == "while_executing" or not self._redis_allowed(publishing=True):
            return super().apply_async(args, kwargs, *rest, **options)
        task_id = options.get("task_id") or str(uuid.uuid4())
        options["task_id"] = task_id
        if task_id == self.request.id:
            # The running attempt republishes itself (a retry): stop renewing its lock
            # first, so that a switch to the running TTL in flight cannot shorten the
            # queue TTL this claim sets (discard waits for it).
            _RENEWER.discard(self._running_lock(key, task_id))
        started = time.monotonic()
        try:
            state = self.unique_claim({key: task_id})[key]
        except LockError as exc:
            # Redis failed: the same error as any task's publish (cause, fix, or the wait).
            raise publish_error(self.app, self.name, exc, time.monotonic() - started) from exc
        if state is not None and not state.acquired:
            if self.on_duplicate == "raise":
                raise DuplicateTaskError(
                    f"task {self.name} is already queued or running as {state.holder} "
                    f"(lock {key}, {state.ttl or 0:.1f} s left)",
                    task_id=state.holder,
                    ttl=state.ttl,
                    key=key,
                )
            if self.on_duplicate == "ignore":
                return None
            return self.AsyncResult(state.holder)
        lock = self._lock(key, task_id, self._queue_ttl())
        try:
            return super().apply_async(args, kwargs, *rest, **options)
        except BaseException:
            lock.release()
            raise

    # -- running ---------------------------------------------------------------------------

    def _request_key(self, request: Any = None) -> str | None:
        request = request if request is not None else self.request
        key = getattr(request, UNIQUE_HEADER, None)
        if key is None:
            key = (getattr(request, "headers", None) or {}).get(UNIQUE_HEADER)
        return key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Take or release the lock as the mode says, then run the body."""
        request = self.request
        task_id = request.id
        if task_id is None:
            return super().__call__(*args, **kwargs)
        key = self._request_key(request) or self.unique_lock_key(args, kwargs)
        if not self._redis_allowed():  # eager: no lock (the key is still checked above)
            return super().__call__(*args, **kwargs)
        lock = self._running_lock(key, task_id)
        if self.unique_mode == "until_executing":
            _deferred_release(lock)
        elif self.unique_mode == "until_executed":
            # Re-entrant: the renewer switches the lock to the running TTL, a second in
            # (locks.TAKE_DELAY); a task that ends sooner only pays the release.
            _RENEWER.add(lock, take=True)
            retval = super().__call__(*args, **kwargs)
            # The body returned: the task has executed. The release goes out now, before
            # Celery stores the result or acks, so a caller who sees the result and calls
            # again is not refused; its reply is read at this thread's next release.
            _RENEWER.discard(lock)
            try:
                _deferred_release(lock)
            except LockError:  # the task ran: not a failure; on_success tries once more
                return retval
            request.celeryredis_unique_released = True  # type: ignore[attr-defined]
            return retval
        else:
            state = lock.acquire()
            if not state.acquired:
                # With task_always_eager a deferred copy would run at once, here, and
                # be deferred again while this one runs: it is dropped instead.
                defer = not self.app.conf.task_always_eager
                if self.unique_while_executing == "defer" and defer:
                    logger.info("task %s[%s] deferred: %s runs", self.name, task_id, state.holder)
                    # Under its own id, as Celery's retry does: its caller's AsyncResult
                    # follows the copy that runs.
                    self.apply_async(
                        args, kwargs, task_id=task_id, countdown=self.unique_defer_delay
                    )
                else:
                    logger.info("task %s[%s] dropped: %s runs", self.name, task_id, state.holder)
                    self._count("duplicate_refusals")
                    self._store_dropped(request, state.holder)
                raise Ignore
            _RENEWER.add(lock)
        return super().__call__(*args, **kwargs)

    def _store_dropped(self, request: Any, holder: Any) -> None:
        """Store the dropped copy as ``REVOKED``, a final state, for its caller.

        Celery stores nothing for a task that raises ``Ignore``; its result would stay
        ``STARTED`` (``task_track_started``) or ``PENDING``, and ``.get()`` would wait
        until its timeout. Not when results are ignored, or eager (no result stored).
        """
        if getattr(request, "is_eager", False) or self.ignore_result:
            return
        if getattr(request, "ignore_result", False):
            return
        try:
            self.backend.mark_as_revoked(
                request.id,
                f"dropped: {holder} runs (unique_mode='while_executing')",
                request=request,
            )
        except Exception as exc:  # the copy is dropped all the same
            logger.warning(
                "task %s[%s] dropped, and its REVOKED state could not be stored: %s",
                self.name,
                request.id,
                redact_text(str(exc)),
            )

    def unique_release(self, task_id: str, key: str | None) -> None:
        """Release this task's lock (finished, failed for good, or revoked)."""
        if key is None or self.unique_mode == "until_executing" or not self._redis_allowed():
            return
        lock = self._running_lock(key, task_id)
        _RENEWER.discard(lock)
        lock.release()

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Release the lock (unless the run already did), then the other bases' hooks.

        A release Redis fails is a warning, not the task's failure: the task ran, and its
        lock expires with its TTL.
        """
        if not getattr(self.request, "celeryredis_unique_released", False):
            try:
                self.unique_release(task_id, self._request_key())
            except LockError as exc:
                logger.warning(
                    "task %s[%s] succeeded but its lock was not released (%s); "
                    "it expires with its TTL",
                    self.name,
                    task_id,
                    exc,
                )
        super().on_success(retval, task_id, args, kwargs)

    def on_retry(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Keep the lock across the retry (the republish renewed it), stop renewing it."""
        key = self._request_key()
        if key is not None and self._redis_allowed():
            _RENEWER.discard(self._running_lock(key, task_id))
        super().on_retry(exc, task_id, args, kwargs, einfo)

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Release the lock after a final failure, then the other bases' hooks."""
        key = self._request_key()
        if key is None:  # a hard time limit: on_failure runs in the main process
            key = self.lifecycle_fields(task_id).get("unique_key")
        self.unique_release(task_id, key)
        super().on_failure(exc, task_id, args, kwargs, einfo)
