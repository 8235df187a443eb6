"""Token locks that never get stuck: owner-only release and extend, a mandatory TTL.

A lock's value is its owner's token (for task locks, the task id). Acquiring is
re-entrant for the same token; releasing and extending check the token in one Lua
script, so a lock is never released or extended by anyone but its owner — unlike a
plain ``DEL`` (celery-once, celery-singleton). Every lock has a TTL: if its owner
dies, it expires. A :class:`LockRenewer` thread extends the locks a process holds
while it works, so a long task never loses its lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import redis
from redis.crc import key_slot

from celeryredis._scripts import source
from celeryredis.connection import REDIS_ERRORS, Client, is_cluster
from celeryredis.exceptions import LockError

__all__ = ["DeferredRelease", "LockError", "LockRenewer", "LockState", "TokenLock", "acquire_many"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockState:
    """The outcome of an acquire.

    Attributes:
        acquired: The caller holds the lock now.
        holder: The token of whoever holds it (the caller's when acquired).
        ttl: Seconds left on the holder's lock (None when acquired).
    """

    acquired: bool
    holder: str
    ttl: float | None = None


_SCRIPT_NAMES = ("lock_acquire", "lock_release", "lock_extend", "lock_acquire_many")
_SCRIPTS: weakref.WeakKeyDictionary[Client, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _scripts(client: Client) -> tuple[Any, ...]:
    """The lock scripts registered on ``client`` (once per client), in ``_SCRIPT_NAMES`` order."""
    scripts = _SCRIPTS.get(client)
    if scripts is None:
        scripts = tuple(client.register_script(source(name)) for name in _SCRIPT_NAMES)
        _SCRIPTS[client] = scripts
    return scripts


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def acquire_many(
    client: Client,
    owners: dict[str, str],
    ttl: float,
    *,
    all_or_nothing: bool = False,
) -> dict[str, LockState | None]:
    """Take many token locks in one round trip (``{key: owner token}``, distinct keys).

    Each key gets a :class:`LockState` as :meth:`TokenLock.acquire` would give it. With
    ``all_or_nothing``, no lock is taken if any key is held by another owner, and the
    free keys map to None (free, not taken).

    On a Redis Cluster the keys are grouped by hash slot and the script runs once per
    slot (each call atomic on its slot). With ``all_or_nothing``, the slots run in turn
    until one finds a key held by another owner; the locks the earlier slots took are
    then released again (owner-only), the keys of the slots not run yet are read, and
    the answer is the same as on one node: no lock stays taken, held keys say who
    holds them, free keys map to None.

    Raises:
        LockError: Redis refused the call.
    """
    keys = list(owners)
    if not keys:
        return {}
    if not is_cluster(client):
        return _acquire_slot(client, owners, keys, ttl, all_or_nothing)
    by_slot: dict[int, list[str]] = {}
    for key in keys:
        by_slot.setdefault(key_slot(key.encode()), []).append(key)
    states: dict[str, LockState | None] = {}
    groups = list(by_slot.values())
    for done, group in enumerate(groups):
        replies = _acquire_slot(client, owners, group, ttl, all_or_nothing)
        states.update(replies)
        if all_or_nothing and any(s is not None and not s.acquired for s in replies.values()):
            _give_back(client, owners, [k for g in groups[:done] for k in g], states)
            for later in groups[done + 1 :]:
                states.update(_peek(client, owners, later))
            break
    return {key: states[key] for key in keys}


def _acquire_slot(
    client: Client, owners: dict[str, str], keys: list[str], ttl: float, strict: bool
) -> dict[str, LockState | None]:
    """One call of the acquire-many script on ``keys`` (all in one slot on a cluster)."""
    script = _scripts(client)[3]
    try:
        replies = script(
            keys=keys, args=[_ms(ttl), "1" if strict else "0", *(owners[k] for k in keys)]
        )
    except REDIS_ERRORS as exc:
        raise LockError(f"could not acquire {len(keys)} locks: {exc}", lock_name=keys[0]) from exc
    states: dict[str, LockState | None] = {}
    for key, reply in zip(keys, replies, strict=True):
        state = int(reply[0])
        holder = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if state == 1:
            states[key] = LockState(True, holder)
        elif state == 0:
            pttl = int(reply[2])
            states[key] = LockState(False, holder, pttl / 1000 if pttl >= 0 else None)
        else:
            states[key] = None
    return states


def _give_back(
    client: Client, owners: dict[str, str], keys: list[str], states: dict[str, LockState | None]
) -> None:
    """Release the locks of ``keys`` this call took (all-or-nothing refused on another slot)."""
    release = _scripts(client)[1]
    for key in keys:
        state = states.get(key)
        if state is not None and state.acquired:
            try:
                release(keys=[key], args=[owners[key]])
            except REDIS_ERRORS as exc:
                raise LockError(
                    f"could not give back lock {key!r} after a refusal on another slot: {exc}",
                    lock_name=key,
                ) from exc
        states[key] = None


def _peek(client: Client, owners: dict[str, str], keys: list[str]) -> dict[str, LockState | None]:
    """Who holds ``keys`` (not taken): a held key's state, None for a free one."""
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute()
    except REDIS_ERRORS as exc:
        raise LockError(f"could not read {len(keys)} locks: {exc}", lock_name=keys[0]) from exc
    states: dict[str, LockState | None] = {}
    for index, key in enumerate(keys):
        raw, pttl = replies[2 * index], int(replies[2 * index + 1])
        holder = raw.decode() if isinstance(raw, bytes) else raw
        if holder is None or holder == owners[key]:
            states[key] = None
        else:
            states[key] = LockState(False, holder, pttl / 1000 if pttl >= 0 else None)
    return states


#: Seconds after :meth:`LockRenewer.add` with ``take=True`` before the lock is taken again
#: (sooner if a third of its TTL is shorter).
TAKE_DELAY: Final = 1.0
#: Seconds :meth:`LockRenewer.discard` waits at most for a renewal in flight.
_DISCARD_WAIT: Final = 10.0


class TokenLock:
    """A lock on ``key`` owned by ``token``, with a mandatory TTL.

    Args:
        client: The redis-py client.
        key: The lock key.
        token: The owner's token.
        ttl: Seconds the lock lives unless extended (> 0).
    """

    def __init__(
        self,
        client: Client,
        key: str,
        token: str,
        ttl: float,
    ) -> None:
        if not ttl or ttl <= 0:
            raise LockError(f"lock {key!r} needs a TTL > 0 s, not {ttl!r}", lock_name=key)
        self.client = client
        self.key = key
        self.token = token
        self.ttl = float(ttl)
        self._acquire, self._release, self._extend, _ = _scripts(client)

    def acquire(self, ttl: float | None = None) -> LockState:
        """Take the lock (or renew it, if this token holds it); one round trip."""
        try:
            reply = self._acquire(keys=[self.key], args=[self.token, _ms(ttl or self.ttl)])
        except REDIS_ERRORS as exc:
            raise LockError(
                f"could not acquire lock {self.key!r}: {exc}", lock_name=self.key
            ) from exc
        holder = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if int(reply[0]) == 1:
            return LockState(True, holder)
        pttl = int(reply[2]) if len(reply) > 2 else -1
        return LockState(False, holder, pttl / 1000 if pttl >= 0 else None)

    def release(self) -> bool:
        """Release the lock if this token holds it; True if it did."""
        try:
            return bool(self._release(keys=[self.key], args=[self.token]))
        except REDIS_ERRORS as exc:
            raise LockError(
                f"could not release lock {self.key!r}: {exc}", lock_name=self.key
            ) from exc

    def extend(self, ttl: float | None = None) -> bool:
        """Make the lock live at least ``ttl`` more seconds (default: the lock's TTL).

        Only by its owner; it never shortens the lock. Returns False if this token
        does not hold the lock.
        """
        try:
            return bool(self._extend(keys=[self.key], args=[self.token, _ms(ttl or self.ttl)]))
        except REDIS_ERRORS as exc:
            raise LockError(
                f"could not extend lock {self.key!r}: {exc}", lock_name=self.key
            ) from exc

    def holder(self) -> str | None:
        """The token that holds the lock now, or None."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def __repr__(self) -> str:
        return f"<TokenLock {self.key!r} ttl={self.ttl:g}s>"


class LockRenewer:
    """A daemon thread that extends held locks every ``ttl / 3`` seconds.

    It runs beside any pool (it does not need the worker's event loop). When the
    process dies the renewals stop and each lock expires within its TTL.

    A lock added with ``take=True`` is first taken again (re-entrant
    :meth:`TokenLock.acquire`, which sets its TTL to the lock's own, shortening it too)
    after ``TAKE_DELAY`` (1) seconds or a third of its TTL, whichever is sooner, and
    extended from then on: a task that ends sooner never pays that round trip.
    :meth:`discard` waits for a renewal of the lock that is in flight, so a release that
    follows it is never overtaken by a take that would lock the key again.

    Args:
        clock: The monotonic clock that schedules renewals (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # (key, token) -> (lock, when it is due, whether to take it instead of extending)
        self._locks: dict[tuple[str, str], tuple[TokenLock, float, bool]] = {}
        self._busy: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._wake_at = 0.0

    def add(self, lock: TokenLock, *, take: bool = False) -> None:
        """Keep extending ``lock`` until :meth:`discard`; with ``take``, take it first."""
        due = self.clock() + (min(TAKE_DELAY, lock.ttl / 3) if take else lock.ttl / 3)
        with self._cond:
            self._locks[(lock.key, lock.token)] = (lock, due, take)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._busy.clear()
                self._wake_at = due
                self._thread = threading.Thread(
                    target=self._run, name="celeryredis-lock-renewer", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:  # wake the thread only if it would sleep past this lock
                self._cond.notify_all()

    def discard(self, lock: TokenLock | Any) -> None:
        """Stop extending ``lock``; return once no renewal of it is in flight."""
        key = (lock.key, lock.token)
        with self._cond:
            self._locks.pop(key, None)
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                self._cond.wait_for(lambda: key not in self._busy, timeout=_DISCARD_WAIT)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = self.clock()
                due = [(k, lock, take) for k, (lock, at, take) in self._locks.items() if at <= now]
                if not due:
                    waits = [at - now for _, at, _ in self._locks.values()]
                    timeout = min(waits) if waits else 5.0
                    self._wake_at = now + timeout
                    self._cond.wait(timeout=timeout)
                    continue
                for key, lock, _ in due:
                    self._locks[key] = (lock, now + lock.ttl / 3, False)
                    self._busy.add(key)
            for key, lock, take in due:
                try:
                    held = lock.acquire().acquired if take else lock.extend()
                    if not held:
                        with self._cond:
                            if key in self._locks:  # not discarded meanwhile
                                logger.warning("lost lock %s while renewing it", lock.key)
                            self._locks.pop(key, None)
                except LockError:
                    logger.warning("could not renew lock %s; retrying", lock.key, exc_info=True)
                    if take:
                        with self._cond:
                            if key in self._locks:  # take it at the next renewal, not extend
                                self._locks[key] = (lock, self._locks[key][1], True)
                finally:
                    with self._cond:
                        self._busy.discard(key)
                        self._cond.notify_all()


class _Sender:
    """One thread's releasing connection and the release whose reply it has not read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Any = None
        self.conn: Any = None
        self.pending: TokenLock | None = None

    def collect(self) -> None:
        """Read the pending reply (redo the release if its connection failed); under ``lock``."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            self.conn.read_response()
        except redis.ResponseError as exc:  # Redis refused it (OOM, ACL): a redo would too
            logger.warning(
                "could not release lock %s: %s; it expires within its TTL (%g s)",
                pending.key,
                exc,
                pending.ttl,
            )
        except REDIS_ERRORS:
            self.drop()
            try:
                pending.release()
            except LockError:
                logger.warning(
                    "could not release lock %s; it expires within its TTL (%g s)",
                    pending.key,
                    pending.ttl,
                    exc_info=True,
                )

    def drop(self) -> None:
        conn, self.conn, self.client, self.pending = self.conn, None, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()


class DeferredRelease:
    """Owner-only releases sent without waiting for their reply.

    :meth:`release` writes the release script (``EVAL``, so a Redis that restarted and
    lost its script cache runs it too) on a connection of the calling thread's own and
    returns at once; the reply is read at the thread's next :meth:`release`, or by
    :meth:`collect_all` (at a worker's or pool process's shutdown, and at exit). A task
    that releases its lock as its body returns thus does not wait a round trip for it,
    and the release still reaches Redis before anything the task sends after it on other
    connections (its result, its ack).

    Nothing is lost on a failure:

    - a send that fails falls back to :meth:`TokenLock.release` (which raises
      :class:`LockError` as it always did);
    - a reply that says the connection failed redoes the release with
      :meth:`TokenLock.release` (owner-only, so a release that did happen is not undone
      and another owner's lock is never touched); if that fails too, a warning says the
      lock expires within its TTL;
    - a connection stays open while its reply is unread, even after its thread ended:
      Redis drops the commands of a client that disconnects while writes are paused
      (``CLIENT PAUSE``, a failover), so closing it early could lose the release.

    A Redis Cluster client releases at once, waiting for the reply (its connections are
    per node), and so does a process whose threads are greenlets (gevent or eventlet
    patched ``threading``: their pools run each task in a new greenlet, which would open a
    connection per task). One connection per thread and process; a forked child opens
    its own and never touches its parent's.
    """

    def __init__(self) -> None:
        self._senders: dict[int, _Sender] = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()

    def release(self, lock: TokenLock) -> None:
        """Send ``lock``'s owner-only release; read the reply of the previous one first."""
        client = lock.client
        if is_cluster(client) or _green_threads():  # no connection (nor sender) of its own
            lock.release()
            return
        sender = self._sender()
        with sender.lock:
            sender.collect()
            try:
                if sender.client is not client:
                    sender.drop()
                    pool = client.connection_pool  # type: ignore[union-attr]  # not a cluster
                    sender.client, sender.conn = client, pool.make_connection()
                sender.conn.send_command(
                    "EVAL", _RELEASE_SOURCE, 1, lock.key, lock.token, check_health=False
                )
            except REDIS_ERRORS:
                sender.drop()
                lock.release()
                return
            sender.pending = lock

    def collect_all(self, **_: Any) -> None:
        """Read every thread's release in flight; for shutdown, when they release no more.

        Accepts and ignores keyword arguments, so that it can receive Celery's signals.
        """
        if os.getpid() != self._pid:
            return
        with self._guard:
            senders = list(self._senders.values())
        for sender in senders:
            with sender.lock:
                sender.collect()

    def _sender(self) -> _Sender:
        ident = threading.get_ident()
        if os.getpid() != self._pid:
            with self._guard:  # a forked child: forget the parent's connections
                if os.getpid() != self._pid:
                    self._senders, self._pid = {}, os.getpid()
        sender = self._senders.get(ident)
        if sender is None:
            with self._guard:
                alive = {thread.ident for thread in threading.enumerate()}
                ended = [self._senders.pop(i) for i in list(self._senders) if i not in alive]
                sender = self._senders[ident] = _Sender()
            for gone in ended:  # threads that ended: read their last reply, then close
                with gone.lock:
                    gone.collect()
                    gone.drop()
        return sender


_RELEASE_SOURCE: Final = source("lock_release")


def _green_threads() -> bool:
    """Whether this process's threads are greenlets (gevent or eventlet patched them)."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("threading"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return bool(eventlet is not None and eventlet.is_monkey_patched("thread"))
