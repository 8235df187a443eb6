"""The reliable transport's classes: ``Transport``, ``Channel``, ``QoS``.

Subclasses of kombu 5.7's Redis transport (``kombu.transport.redis``). The hooks, all
private kombu API, are named in ``docs/transport.md``; every private kombu name this
module uses is an entry of :data:`celeryredis._kombu_compat.PRIVATE_API`
(``tests/unit/test_compat.py`` fails on one that is not):

- ``Channel._brpop_start`` / ``Channel._brpop_read``: the poll connection's command and
  its reply. Instead of ``BRPOP`` the channel sends either the fetch script (pops up to
  the prefetch window and records it as unacked in the same call, applying pending acks)
  or, when the queues were empty, a wake-up ``BLMOVE k k RIGHT RIGHT timeout`` that
  leaves the list unchanged; after any wake-up reply the next command is a fetch.
- ``QoS.append`` / ``ack`` / ``restore_visible``: bookkeeping moves into the scripts;
  acks are queued and flushed by the next fetch or the lease thread; the restore sweep
  claims expired leases and requeues them with two small scripts, without kombu's
  300 s mutex.
- ``Transport.register_with_event_loop``: the restore sweep runs every
  ``lease_sweep_interval`` seconds, and the poll's sockets join the event loop once
  instead of on every loop pass.

A lease is an ``unacked_index`` score of server ``TIME + lease - visibility_timeout``:
stock kombu restores an entry whose score is older than ``now - visibility_timeout``,
that is, exactly when its lease has expired, so a mixed fleet agrees on it.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from queue import Empty
from typing import Any, Final
from urllib.parse import urlsplit

import redis
import redis.sentinel
from celery.signals import task_postrun
from celery.worker import state as worker_state
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from celeryredis._kombu_compat import (
    deliver,
    raw_payload,
    replace_poll_start,
    replace_restore_timer,
)
from celeryredis._prefork import in_prefork_main
from celeryredis._scripts import source
from celeryredis.exceptions import NotDurableError
from celeryredis.keys import POISON_NAME
from celeryredis.registry import default
from celeryredis.transport._lease import LeaseRenewer

# kombu's stubs (celery-types) cover little of the Redis transport's private API, which
# this module extends on purpose: treat the modules as untyped.
kombu_redis: Any = importlib.import_module("kombu.transport.redis")
virtual: Any = importlib.import_module("kombu.transport.virtual")

__all__ = ["Channel", "QoS", "SentinelChannel", "SentinelTransport", "Transport"]

logger = logging.getLogger(__name__)

#: Where items that are not kombu messages go (under the global key prefix), capped at 1000.
POISON_KEY: Final = POISON_NAME  # the prefix is added by the channel (self._key)
_MIN_REDIS: Final = (6, 2)
_SENTINEL_URL_SCHEMES: Final = ("sentinel", "celeryredissentinel")
#: Seconds a new Sentinel channel keeps asking the sentinels for a reachable master.
MASTER_WAIT: Final = 10.0
_SCRIPTS: Final = (
    "transport_fetch",
    "transport_renew",
    "transport_claim",
    "transport_restore",
    "transport_unfetch",
)
_CHUNK: Final = 1000
_CLAIM_SECONDS: Final = 10.0

# Acks a closing channel could not send (Redis down, a reconnect under way), by the
# Redis database and unacked keys they belong to: the next channel of this process that
# fetches from there sends them, before the messages' leases run out.
_ORPHANED_ACKS: dict[tuple[Any, ...], set[str]] = {}
_ORPHANED_LOCK = threading.Lock()
#: ``now``: (channel, payload, pid) while a channel delivers the last message of a fetch.
_DELIVERING = threading.local()


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """Ack emulation with leases: bookkeeping happens in the channel's scripts."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        """Hold a delivered message (the fetch script already recorded it as unacked).

        A message that did not come through the fetch script (``basic_get``, a message
        kombu rejects for want of a consumer) is recorded here, with a lease.
        """
        channel = self.channel
        if not channel.reliable:
            super().append(message, delivery_tag)
            return
        if not channel.take_recorded(delivery_tag):
            delivery = message.delivery_info
            score = time.time() + channel.lease_offset
            with self.pipe_or_acquire() as pipe:
                pipe.zadd(self.unacked_index_key, {delivery_tag: score}).hset(
                    self.unacked_key,
                    delivery_tag,
                    dumps([raw_payload(message), delivery["exchange"], delivery["routing_key"]]),
                ).execute()
        virtual.QoS.append(self, message, delivery_tag)
        channel.hold(delivery_tag)

    def can_consume(self) -> bool:
        """Whether the window has room; with a reserve, also while one is due or pending.

        In a prefork worker's main process it is also True while the reserve is to be
        filled or a fetch's reply is pending. kombu starts a fetch, and reads a fetch's
        reply, only while this is True; with a full window it would leave a reply unread
        in the socket, where the messages it popped have a lease nobody renews. The
        reliable channel reads it into the reserve instead (renewed, put back after
        ``reserve_seconds``), and fetches the reserve while every slot is busy.
        """
        if super().can_consume():
            return True
        channel = self.channel
        return bool(
            channel.reliable
            and channel._reserving
            and (channel._in_poll or channel._reserve_wanted())
        )

    def ack(self, delivery_tag: str) -> None:
        """Queue the ack; it rides on the next fetch or the lease thread's next call.

        On a closed channel (a reconnect under way: the task outlived its connection) the
        ack goes to the next channel of this process on the same Redis, which sends it.
        """
        channel = self.channel
        if not channel.reliable:
            super().ack(delivery_tag)
            return
        channel.free_slot(delivery_tag)
        if not channel.acked_ahead(delivery_tag):
            channel.queue_ack(delivery_tag)
        if channel.closed:
            channel.orphan_pending_acks()
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Reject at once, as stock kombu does (requeued messages go first in line)."""
        self.channel.free_slot(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> None:
        """At close: flush queued acks, then requeue what this consumer still holds."""
        if self.channel.reliable:
            self.channel.flush_acks()
        super().restore_unacked(client)

    def restore_visible(self, start: int = 0, num: int | None = 10, interval: int = 10) -> None:
        """Requeue messages whose lease expired (any worker's), at most once a sweep interval."""
        channel = self.channel
        if channel.reliable:
            try:
                channel.sweep(num)
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError):
                # A failover or a restart: the poll connection reconnects; sweep next time.
                logger.warning("celeryredis: lease sweep failed; retrying", exc_info=True)
        elif not channel.scripts_refused:
            super().restore_visible(start=start, num=num, interval=interval)
        else:
            # kombu's sweep mutex is a redis-py lock, released by a Lua script: without
            # scripting it raises. Sweep like kombu, without the mutex (each restore is
            # a WATCH/MULTI transaction, safe when two workers sweep at once).
            self._vrestore_count += 1
            if (self._vrestore_count - 1) % (interval or 1):
                return
            with channel.conn_or_acquire() as client:
                ceil = time.time() - self.visibility_timeout
                visible = client.zrange(
                    self.unacked_index_key,
                    ceil,
                    0,
                    desc=True,
                    byscore=True,
                    offset=num and start,
                    num=num,
                    withscores=True,
                )
                for tag, _score in visible or []:
                    self.restore_by_tag(tag, client)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A Redis channel with atomic batched fetch, leases and piggybacked acks."""

    QoS = QoS

    #: Seconds a held message's lease lasts; renewed every third of it.
    lease_seconds: float = default("celeryredis_lease_seconds")
    #: The most messages one fetch pops (the prefetch window bounds it too).
    fetch_batch_max: int = default("celeryredis_fetch_batch_max")
    #: Seconds between restore sweeps of expired leases.
    lease_sweep_interval: float = default("celeryredis_lease_sweep_interval")
    #: Seconds a message fetched one ahead of the prefetch window waits for a free slot
    #: before it goes back to the head of its queue; 0: no message is fetched ahead.
    reserve_seconds: float = default("celeryredis_reserve_seconds")

    #: Replicas each publish waits for (``WAIT``); 0: no wait (asynchronous replication).
    durable_publish: int = default("celeryredis_durable_publish")
    #: Seconds the ``WAIT`` of a durable publish lasts at most.
    durable_publish_timeout: float = default("celeryredis_durable_publish_timeout")

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "lease_seconds",
        "fetch_batch_max",
        "lease_sweep_interval",
        "reserve_seconds",
        "durable_publish",
        "durable_publish_timeout",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.reliable = True
        self.scripts_refused = False
        self._lock = threading.Lock()
        self._pending_acks: set[str] = set()
        self._held: set[str] = set()
        self._recorded: set[str] = set()
        self._no_ack_queues: set[str] = set()
        self._wait_next = False
        self._in_flight: tuple[str, list[str], list[str], int] | None = None
        self._acked_ahead: set[str] = set()  # acks fetch_ahead sent before Celery's ack
        # Fetched one ahead of the prefetch window, not yet handed to kombu: (queue, raw
        # payload, decoded payload), and when the first of them was fetched.
        self._reserve: list[tuple[str, Any, dict[str, Any]]] = []
        self._reserve_since = 0.0
        self._reserve_paused = False  # one went back unused: none until a slot frees
        self._use_eval = False
        self._shas: dict[str, str] = {}
        # (queues, no-ack flags, lease offset, script SHA) -> the fetch command's fixed
        # parts, packed: (how many arguments they hold with the count, head, rest)
        self._fetch_heads: dict[tuple[Any, ...], tuple[int, bytes, bytes]] = {}
        self._leases = LeaseRenewer(self, "celeryredis-lease")
        self._last_sweep = float("-inf")
        super().__init__(*args, **kwargs)
        self._probe()

    # --- set-up and fallback -----------------------------------------------------------

    @property
    def lease_offset(self) -> float:
        """Seconds added to the current time to make an ``unacked_index`` score."""
        return float(self.lease_seconds) - float(self.visibility_timeout)

    def _key(self, name: str) -> str:
        return f"{self.global_keyprefix}{name}"

    @property
    def _scripts_client(self) -> redis.Redis:
        client = self.__dict__.get("_scripts_client_cache")
        if client is None:
            client = redis.Redis(connection_pool=self.pool)
            self.__dict__["_scripts_client_cache"] = client
        return client

    def _probe(self) -> None:
        """Fall back to stock behaviour on Redis < 6.2 or where scripts are refused."""
        client = self._scripts_client
        try:
            # HELLO (Redis >= 6, in @connection) rather than INFO (@dangerous, refused by
            # ACLs like the one `celeryredis acl` writes) to read the server's version.
            reply: Any = client.execute_command("HELLO")  # type: ignore[no-untyped-call]
            if not isinstance(reply, dict):  # a flat RESP2 list of names and values
                reply = dict(zip(reply[::2], reply[1::2], strict=False))
            text = bytes_to_str(reply.get(b"version", reply.get("version", b"6.0")))
            version = tuple(int(x) for x in str(text).split(".")[:2])
        except redis.ResponseError:
            version = (5, 0)  # no HELLO: older than Redis 6
        if version < _MIN_REDIS:
            self._fall_back(f"Redis {'.'.join(map(str, version))} is older than 6.2 (no BLMOVE)")
            return
        try:
            for name in _SCRIPTS:
                self._shas[name] = str(client.script_load(source(name)))
        except redis.ResponseError as exc:
            self.scripts_refused = True
            self._fall_back(f"Redis refused SCRIPT LOAD ({exc})")

    def _fall_back(self, why: str) -> None:
        self.reliable = False
        logger.warning(
            "celeryredis reliable transport: %s; this connection uses stock kombu behaviour "
            "(BRPOP, visibility timeout) instead",
            why,
        )

    # --- publishing ------------------------------------------------------------------

    def _put(self, queue: str, message: Any, _publish_batch: Any = None, **kwargs: Any) -> None:
        """Publish as kombu does; with ``durable_publish`` > 0, ``WAIT`` for the replicas.

        The ``LPUSH`` and the ``WAIT`` go down one connection in one pipeline: ``WAIT``
        counts the replicas that acknowledged this connection's writes.

        Raises:
            NotDurableError: Fewer replicas than ``durable_publish`` acknowledged the
                write within ``durable_publish_timeout``.
        """
        replicas = int(self.durable_publish)
        if replicas <= 0 or _publish_batch is not None:
            # A publish batch (kombu 5.7's, or enqueue_many's collector) runs its commands
            # elsewhere: not waited for.
            super()._put(queue, message, _publish_batch=_publish_batch, **kwargs)
            return
        pri = self._get_message_priority(message, reverse=False)
        key = self._q_for_pri(queue, pri)
        expires = self._expires.get(queue) if self._expires else None
        timeout = float(self.durable_publish_timeout)
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, dumps(message))
            if expires:
                for step in self.priority_steps:
                    pipe.pexpire(self._q_for_pri(queue, step), expires)
            pipe.execute_command("WAIT", replicas, max(1, round(timeout * 1000)))
            acked = int(pipe.execute()[-1])
        if acked < replicas:
            raise NotDurableError(
                f"celeryredis durable publish: the message for queue {queue!r} is on the "
                f"master, but only {acked} of the {replicas} replica(s) "
                f"celeryredis_durable_publish asks for acknowledged it within "
                f"{timeout:g} s (celeryredis_durable_publish_timeout); if the master fails "
                "now it can be lost. Attach a replica (or fix replication), raise "
                "celeryredis_durable_publish_timeout, or lower celeryredis_durable_publish. "
                "Publishing again may run the task twice: it may still run from the master.",
                acked=acked,
                needed=replicas,
                timeout=timeout,
            )

    # --- consuming ---------------------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """Consume ``queue``; remember queues consumed without acks (never recorded)."""
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
            if self.reliable:
                self._leases.start()
        return super().basic_consume(queue, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        """Stop consuming; a reserved message goes back to its queue first."""
        if self._reserve:
            self.return_reserve()
        return super().basic_cancel(consumer_tag)

    def _batch_size(self) -> int:
        qos = self.qos
        if "can_consume" in qos.__dict__:
            # worker_disable_prefetch patches can_consume with the pool's free slots.
            return 1 if qos.can_consume() else 0
        estimate = qos.can_consume_max_estimate()
        limit = int(self.fetch_batch_max)
        return limit if estimate is None else max(0, min(int(estimate), limit))

    def _fetch_parts(self, queues: Sequence[str]) -> tuple[list[Any], list[Any]]:
        """The fetch command around its count: script and keys; lease, queues, flags.

        The acks follow the second part (their number, then the tags).
        """
        keys = [
            self._key(self.unacked_key),
            self._key(self.unacked_index_key),
            self._key(POISON_KEY),
        ] + [self._key(self._q_for_pri(q, pri)) for pri in self.priority_steps for q in queues]
        if self._use_eval:
            script: list[Any] = ["EVAL", source("transport_fetch")]
        else:
            script = ["EVALSHA", self._shas["transport_fetch"]]
        flags = ["1" if q in self._no_ack_queues else "0" for q in queues]
        rest = [repr(self.lease_offset), len(queues), len(self.priority_steps), *flags]
        return [*script, len(keys), *keys], rest

    def _fetch_command(self, queues: Sequence[str], count: int, acks: Sequence[str]) -> list[Any]:
        head, rest = self._fetch_parts(queues)
        return [*head, count, *rest, len(acks), *acks]

    def _packed_fetch(self, queues: Sequence[str], count: int, acks: Sequence[str]) -> bytes:
        """:meth:`_fetch_command` (``EVALSHA``) in the Redis protocol, as redis-py packs it.

        A fetch is sent per task or batch and names the same keys each time: the parts that
        only depend on the queues are packed once, so a fetch encodes its count and acks only.
        """
        flags = tuple(q in self._no_ack_queues for q in queues)
        cache_key = (tuple(queues), flags, self.lease_offset, self._shas["transport_fetch"])
        packed = self._fetch_heads.get(cache_key)
        if packed is None:
            head, rest = self._fetch_parts(queues)
            packed = (len(head) + 1 + len(rest), _resp(head), _resp(rest))
            self._fetch_heads[cache_key] = packed
        fixed, head_bytes, rest_bytes = packed
        total = fixed + 1 + len(acks)
        return b"".join(
            (b"*%d\r\n" % total, head_bytes, _resp((count,)), rest_bytes, _resp((len(acks), *acks)))
        )

    def _brpop_start(self, timeout: float | None = None, *, count: int | None = None) -> None:
        if not self.reliable:
            super()._brpop_start(timeout)
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._abandon_in_flight()
        self._adopt_orphaned_acks()
        free = self._batch_size() if count is None else count
        due = self._reserve[:free]  # held one ahead: handed over below, no round trip
        if due:
            del self._reserve[: len(due)]
            free -= len(due)
        connection = self.client.connection
        acks: list[str] = []
        with self._lock:
            waiting = self._wait_next and not self._pending_acks
            if not waiting:
                acks = list(self._pending_acks)
                self._pending_acks.clear()
        if waiting:
            key = self._key(self._q_for_pri(queues[0], self.priority_steps[0]))
            wait = self.brpop_timeout if timeout is None else timeout
            command: list[Any] = ["BLMOVE", key, key, "RIGHT", "RIGHT", wait or 0]
            self._in_flight = ("wait", list(queues), [], 0)
        else:
            count = free + self._reserve_wanted()
            if self._use_eval:
                command = self._fetch_command(queues, count, acks)
            else:
                packed = self._packed_fetch(queues, count, acks)
            self._in_flight = ("fetch", list(queues), acks, count)
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        try:
            if waiting or self._use_eval:
                connection.send_command(*command)
            else:
                connection.send_packed_command([packed])
        except BaseException:
            # redis-py's pre-send health check can raise here: keep the acks.
            self._requeue_acks(acks)
            self._in_flight = None
            self._in_poll = None
            self._reserve[:0] = due
            raise
        if due:
            self._hand_over(due)

    def fetch_ahead(self, tag: str) -> bool:
        """Ack ``tag``, whose task just succeeded, and send the next fetch now.

        Called at ``task_postrun`` when the task ran inside this channel's delivery (the
        solo pool runs it there): Celery would ack it a moment later, and the fetch would
        go out on the event loop's next pass; sent now, its round trip overlaps the rest
        of Celery's work for the task. The fetch asks for the slots the ack frees, so
        the prefetch window is kept. Returns whether the fetch was sent.
        """
        if self._in_flight is not None or self._in_poll or self.closed or self._reserve:
            return False  # a reserve is handed over on the event loop's next pass
        if not self.active_queues or "can_consume" in self.qos.__dict__:
            return False  # worker_disable_prefetch: the pool decides, not the window
        estimate = self.qos.can_consume_max_estimate()
        if estimate is None or self.client.connection._sock is None:
            return False  # no window to keep; or a poll connection kombu must register
        with self._lock:
            held = tag in self._held  # not with early acks: Celery acked it at receipt
            if held:
                self._held.discard(tag)
                self._acked_ahead.add(tag)
                self._pending_acks.add(tag)
        count = min(int(estimate) + int(held), int(self.fetch_batch_max))
        try:
            if count <= 0:
                return False
            self._brpop_start(count=count)
        except BaseException:
            with self._lock:
                self._acked_ahead.discard(tag)
            raise
        return True

    def acked_ahead(self, tag: str) -> bool:
        """True (once) when :meth:`fetch_ahead` already sent ``tag``'s ack."""
        with self._lock:
            if tag in self._acked_ahead:
                self._acked_ahead.discard(tag)
                return True
            return False

    def _abandon_in_flight(self) -> None:
        """The last command's reply will never be read: send its acks again later."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._requeue_acks(in_flight[2])

    def _on_connection_disconnect(self, connection: Any) -> None:
        # kombu's health check (or redis-py) dropped the poll connection with a command
        # outstanding: its reply is gone, so are its acks unless they are queued again.
        if self.reliable and self._in_poll is connection:
            self._abandon_in_flight()
        super()._on_connection_disconnect(connection)

    def _brpop_read(self, **options: Any) -> bool:
        if not self.reliable:
            return bool(super()._brpop_read(**options))
        in_flight, self._in_flight = self._in_flight, None
        try:
            if in_flight is None:
                # A reply nobody waits for (a reconnect dropped our state): read it away.
                self.client.parse_response(self.client.connection, "EVALSHA", **options)
                raise Empty()
            mode, queues, acks, count = in_flight
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.connection_errors:
                self._requeue_acks(acks)
                self.client.connection.disconnect()
                raise
            except redis.ResponseError as exc:
                self._requeue_acks(acks)
                if isinstance(exc, redis.exceptions.NoScriptError) or "NOSCRIPT" in str(exc):
                    # SCRIPT FLUSH, a restarted Redis or a promoted replica (scripts are not
                    # replicated): nothing ran, send the source next.
                    self._use_eval = True
                    raise Empty() from None
                if _read_only(exc):
                    # A demoted master (failover): nothing ran; reconnect (a Sentinel pool
                    # asks the sentinels for the new master) and fetch again.
                    self.client.connection.disconnect()
                    raise redis.ConnectionError(
                        "celeryredis reliable transport: the broker's Redis is now a replica "
                        "(READONLY); reconnecting to the new master"
                    ) from exc
                raise
            if mode == "wait":
                self._wait_next = False  # something arrived, or the wait timed out
                raise Empty()
            self._use_eval = False
            if not reply:
                self._wait_next = True
                raise Empty()
            self._wait_next = len(reply) // 2 < count
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        # Delivered after the poll is marked idle: a task run inside the delivery (solo
        # pool) may send the next fetch itself (fetch_ahead), which must stay in flight.
        self._deliver_batch(queues, reply)
        return True

    @property
    def _reserving(self) -> bool:
        """Whether fetches take one message ahead of the prefetch window (see the setting).

        Only on an event loop that can put a reserve back on time: the transport registers
        one in a prefork pool's main process only (:meth:`Transport.register_with_event_loop`).
        """
        return (
            self.reserve_seconds > 0
            and self.connection.__dict__.get("_celeryredis_loop") is not None
            and not self._no_ack_queues
            and bool(self.qos.prefetch_count)
            and "can_consume" not in self.qos.__dict__
        )

    def _reserve_wanted(self) -> int:
        """1 when the next fetch should take one message ahead of the window, else 0."""
        return 0 if self._reserve or self._reserve_paused or not self._reserving else 1

    def expire_reserve(self, now: float | None = None) -> int:
        """Put the reserve back if it waited ``reserve_seconds`` for a slot; how many went."""
        if not self._reserve:
            return 0
        now = time.monotonic() if now is None else now
        if now - self._reserve_since < float(self.reserve_seconds):
            return 0
        self._reserve_paused = True
        return self.return_reserve()

    def return_reserve(self, *, closing: bool = False) -> int:
        """Put every reserved message back at the head of its queue; how many went back.

        One that cannot be put back now (Redis unreachable) stays leased and is tried
        again at the next check; when ``closing``, it is left to its lease, which runs
        out (nobody renews it) so that the sweep requeues it.
        """
        entries, self._reserve = self._reserve, []
        returned = 0
        keys = (self._key(self.unacked_key), self._key(self.unacked_index_key))
        for position, (queue, raw, payload) in enumerate(entries):
            tag = str(payload["properties"]["delivery_tag"])
            pri = self._get_message_priority(payload, reverse=False)
            target = self._key(self._q_for_pri(queue, pri))
            try:
                returned += int(self._run_script("transport_unfetch", (*keys, target), [tag, raw]))
            except Exception:
                if closing:
                    logger.warning(
                        "celeryredis: could not put back a reserved message; it is requeued "
                        "when its lease expires",
                        exc_info=True,
                    )
                    self.release(tag)
                    continue
                self._reserve[:0] = entries[position:]  # try again at the next check
                logger.debug("celeryredis: reserve not put back yet", exc_info=True)
                break
            with self._lock:
                self._recorded.discard(tag)
                self._held.discard(tag)
        return returned

    def _deliver_batch(self, queues: Sequence[str], reply: Sequence[Any]) -> None:
        batch: list[tuple[str, Any, dict[str, Any]]] = []
        for i in range(0, len(reply), 2):
            queue = queues[int(reply[i])]
            raw = reply[i + 1]
            try:
                payload = loads(bytes_to_str(raw))
                tag = str(payload["properties"]["delivery_tag"])
            except (ValueError, TypeError, KeyError):
                logger.exception("celeryredis: undecodable message from %r kept as poison", queue)
                self._poison_unacked(raw)
                continue
            batch.append((queue, raw, payload))
            if queue not in self._no_ack_queues:
                with self._lock:
                    self._recorded.add(tag)
        if self._reserve:  # held from an earlier fetch: it goes first
            batch[:0] = self._reserve
            self._reserve = []
        if self._reserving:
            estimate = self.qos.can_consume_max_estimate()
            if estimate is not None and len(batch) > estimate:
                keep, batch = batch[int(estimate) :], batch[: int(estimate)]
                self._keep_in_reserve(keep)
        self._hand_over(batch)

    def _keep_in_reserve(self, entries: list[tuple[str, Any, dict[str, Any]]]) -> None:
        for _queue, _raw, payload in entries:
            self.hold(str(payload["properties"]["delivery_tag"]))
        self._reserve = entries
        self._reserve_since = time.monotonic()

    def _hand_over(self, batch: Sequence[tuple[str, Any, dict[str, Any]]]) -> None:
        """Deliver fetched messages to kombu's consumers, in order."""
        last = len(batch) - 1
        for position, (queue, _raw, payload) in enumerate(batch):
            self._queue_cycle.rotate(queue)
            if position == last and queue not in self._no_ack_queues:
                _DELIVERING.now = (self, payload, os.getpid())
            try:
                deliver(self.connection, payload, queue)
            except BaseException:
                self._restore_rest(batch[position + 1 :])
                raise
            finally:
                _DELIVERING.now = None

    def _poison_unacked(self, raw: Any) -> None:
        client = self._scripts_client
        client.lpush(self._key(POISON_KEY), raw)

    def _restore_rest(self, rest: Sequence[tuple[str, Any, dict[str, Any]]]) -> None:
        """Delivery failed mid-batch: requeue the undelivered rest now, not at lease expiry."""
        for queue, _raw, payload in rest:
            tag = str(payload["properties"]["delivery_tag"])
            if self.take_recorded(tag):
                try:
                    self.qos.restore_by_tag(tag, leftmost=True)
                except Exception:
                    logger.warning("celeryredis: could not requeue %s at once", tag, exc_info=True)
            elif queue in self._no_ack_queues:
                logger.warning("celeryredis: dropped a no-ack message from %r", queue)

    # --- held messages and acks (shared with the lease thread) ------------------------

    def take_recorded(self, tag: str) -> bool:
        """True (once) when the fetch script recorded ``tag`` as unacked."""
        with self._lock:
            if tag in self._recorded:
                self._recorded.discard(tag)
                return True
            return False

    def hold(self, tag: str) -> None:
        """``tag`` is held by this consumer: its lease is renewed until acked."""
        with self._lock:
            self._held.add(tag)

    def release(self, tag: str) -> None:
        """``tag`` is no longer held: its lease is not renewed any more."""
        with self._lock:
            self._held.discard(tag)

    def free_slot(self, tag: str) -> None:
        """``tag`` was acked or rejected: released, and its slot free for a reserve again."""
        self.release(tag)
        self._reserve_paused = False

    def queue_ack(self, tag: str) -> None:
        """Queue an ack for the next fetch or lease renewal."""
        with self._lock:
            self._pending_acks.add(tag)

    @property
    def _ack_home(self) -> tuple[Any, ...]:
        home: tuple[Any, ...] | None = self.__dict__.get("_ack_home_cache")
        if home is None:
            home = self.__dict__["_ack_home_cache"] = self._find_ack_home()
        return home

    def _find_ack_home(self) -> tuple[Any, ...]:
        pool = self.pool
        kwargs = pool.connection_kwargs
        return (
            getattr(pool, "service_name", None),  # a Sentinel pool: the master's name
            kwargs.get("host"),
            kwargs.get("port"),
            kwargs.get("path"),
            kwargs.get("db"),
            self.global_keyprefix,
            self.unacked_key,
            self.unacked_index_key,
        )

    def _adopt_orphaned_acks(self) -> None:
        if not _ORPHANED_ACKS:
            return
        with _ORPHANED_LOCK:
            acks = _ORPHANED_ACKS.pop(self._ack_home, None)
        if acks:
            self._requeue_acks(list(acks))

    def orphan_pending_acks(self) -> None:
        """Hand the queued acks to the next channel of this process on the same Redis."""
        with self._lock:
            acks = set(self._pending_acks)
            self._pending_acks.clear()
        if acks:
            with _ORPHANED_LOCK:
                _ORPHANED_ACKS.setdefault(self._ack_home, set()).update(acks)

    def _requeue_acks(self, acks: Sequence[str]) -> None:
        if acks:
            with self._lock:
                self._pending_acks.update(acks)

    def _run_script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._scripts_client
        try:
            return client.evalsha(self._shas[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._shas[name] = str(client.script_load(source(name)))
            return client.evalsha(self._shas[name], len(keys), *keys, *args)

    def renew(self) -> int:
        """Flush queued acks and renew every held lease; return the leases renewed.

        Acks that could not be sent stay queued and are sent again (acks are idempotent).
        """
        self._adopt_orphaned_acks()
        with self._lock:
            acks = list(self._pending_acks)
            self._pending_acks.clear()
            held = list(self._held)
        if not acks and not held:
            return 0
        keys = (self._key(self.unacked_key), self._key(self.unacked_index_key))
        renewed = 0
        try:
            for start in range(0, len(acks), _CHUNK):
                chunk = acks[start : start + _CHUNK]
                self._run_script("transport_renew", keys, [0, len(chunk), *chunk])
            for start in range(0, len(held), _CHUNK):
                chunk = held[start : start + _CHUNK]
                renewed += int(
                    self._run_script("transport_renew", keys, [repr(self.lease_offset), 0, *chunk])
                )
        except BaseException:
            self._requeue_acks(acks)
            raise
        return renewed

    def flush_acks(self) -> None:
        """Send queued acks now (at close).

        On failure they are handed to the next channel of this process on the same
        Redis (after a reconnect), and logged; they are redelivered only if no such
        channel sends them before their lease expires.
        """
        try:
            self.renew()
        except Exception:
            self.orphan_pending_acks()
            logger.warning(
                "celeryredis: could not flush acks at close; they are sent after the "
                "reconnect, or the messages are redelivered when their lease expires",
                exc_info=True,
            )

    # --- restore sweep ----------------------------------------------------------------

    def sweep(self, limit: int | None = None) -> int:
        """Requeue expired leases (any consumer's); at most once per sweep interval.

        Returns the number of messages requeued.
        """
        now = time.monotonic()
        if now - self._last_sweep < float(self.lease_sweep_interval) * 0.9:
            return 0
        self._last_sweep = now
        # Acks first (queued here, or left by a channel closed in a reconnect): a message
        # that ran must not be requeued because its ack had not reached Redis yet.
        self._adopt_orphaned_acks()
        if self._pending_acks:
            self.renew()
        index, hashkey = self._key(self.unacked_index_key), self._key(self.unacked_key)
        reply = self._run_script(
            "transport_claim",
            (index, hashkey),
            [repr(float(self.visibility_timeout)), repr(_CLAIM_SECONDS), limit or 1000],
        )
        restored = 0
        for i in range(0, len(reply), 3):
            tag, score, value = bytes_to_str(reply[i]), reply[i + 1], reply[i + 2]
            targets: list[str] = []
            body: Any = value
            try:
                message, exchange, routing_key = loads(bytes_to_str(value))
                try:
                    message["headers"]["redelivered"] = True
                    message["properties"]["delivery_info"]["redelivered"] = True
                except (KeyError, TypeError):
                    pass
                pri = self._get_message_priority(message, reverse=False)
                targets = [
                    self._key(self._q_for_pri(queue, pri))
                    for queue in self._lookup(exchange, routing_key)
                ]
                body = dumps(message)
            except Exception:
                if value:
                    logger.exception("celeryredis: unacked entry %s is unreadable; poisoned", tag)
            if not value and not targets:
                # The hash entry is gone (acked by a stock consumer mid-way): drop the index.
                self._scripts_client.zrem(index, tag)
                continue
            keys = [index, hashkey, self._key(POISON_KEY), *targets]
            restored += int(self._run_script("transport_restore", keys, [tag, score, body]) == 1)
        if restored:
            logger.info("celeryredis: requeued %d message(s) whose lease expired", restored)
        return restored

    # --- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the lease thread, read any outstanding reply, flush acks, close."""
        if self.reliable:
            self._leases.stop()
            if self._in_poll:
                try:
                    self._brpop_read()
                except Empty:
                    pass
                except Exception:
                    logger.debug("celeryredis: reply lost at close", exc_info=True)
            if self._reserve:
                self.return_reserve(closing=True)
            if not self.closed:
                self.flush_acks()
        super().close()
        self._leases.join()


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with :class:`Channel`; ``driver_type`` stays ``redis``."""

    Channel = Channel
    driver_type = "redis"
    driver_name = "redis"

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Stock registration, with the restore sweep every ``lease_sweep_interval`` s.

        The poll's sockets are added to the loop once, not again on every loop pass
        (:func:`~celeryredis._kombu_compat.replace_poll_start`). In a prefork worker's
        main process the channels may hold a reserve: a timer puts back, every half
        ``reserve_seconds``, one that waited that long.
        """
        before = set(loop.on_tick)
        super().register_with_event_loop(connection, loop)
        replace_poll_start(self.cycle, loop, self.on_readable, set(loop.on_tick) - before)
        options = connection.client.transport_options
        interval = float(options.get("lease_sweep_interval", Channel.lease_sweep_interval))
        replace_restore_timer(self.cycle, loop, max(interval, 0.1))
        reserve = float(options.get("reserve_seconds", Channel.reserve_seconds))
        if reserve > 0 and in_prefork_main():
            self.__dict__["_celeryredis_loop"] = loop
            self.__dict__["_celeryredis_reserve_timer"] = loop.call_repeatedly(
                max(reserve / 2, 0.01), self._expire_reserves
            )

    def close_connection(self, connection: Any) -> None:
        """Close as kombu does (each channel puts its reserve back), and stop the timer."""
        timer = self.__dict__.pop("_celeryredis_reserve_timer", None)
        if timer is not None:
            timer.cancel()
        super().close_connection(connection)

    def _expire_reserves(self) -> None:
        now = time.monotonic()
        for channel in list(self.channels):
            if isinstance(channel, Channel) and channel.reliable and not channel.closed:
                try:
                    channel.expire_reserve(now)
                except Exception:
                    logger.warning("celeryredis: reserve check failed", exc_info=True)


def _resp(args: Sequence[Any]) -> bytes:
    """``args`` as Redis protocol bulk strings (str as UTF-8, numbers as their text)."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_only(exc: BaseException) -> bool:
    """True for Redis's ``READONLY`` reply (a replica, such as a master demoted by failover)."""
    return isinstance(exc, redis.ReadOnlyError) or "READONLY" in str(exc)[:200]


def _sentinel_hosts(client: Any, default_port: int) -> list[tuple[str, int]]:
    """The sentinels named by a kombu connection's ``;``-separated URLs."""
    hosts: list[tuple[str, int]] = []
    for url in client.alt or [client.hostname or ""]:
        scheme, _, tail = str(url).partition("://")
        if scheme in _SENTINEL_URL_SCHEMES:
            parsed = urlsplit(f"redis://{tail}")
            hosts.append((parsed.hostname or "127.0.0.1", parsed.port or default_port))
    if not hosts and client.hostname and "://" not in str(client.hostname):
        hosts.append((client.hostname, client.port or default_port))  # one sentinel
    return hosts


def _await_master(transport: Any) -> None:
    """During a failover, wait until the sentinels name a master that accepts connections.

    While the sentinels still name the dead master (``down-after-milliseconds`` plus the
    election) every connection is refused, and Celery's reconnect loop sleeps 2 s, 4 s,
    6 s ... between rounds. Asking them again every 0.2 s, for up to :data:`MASTER_WAIT`
    seconds, lets a new channel connect as soon as a replica is promoted. Returns at once
    when the master answers; after the wait, the channel connects (and fails) as usual.
    """
    client = transport.client
    options = client.transport_options or {}
    name = options.get("master_name")
    hosts = _sentinel_hosts(client, transport.default_port)
    if not name or not hosts:
        return
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs=options.get("sentinel_kwargs") or {"socket_timeout": 1.0}
    )
    deadline = time.monotonic() + MASTER_WAIT
    try:
        while True:
            try:
                host, port = manager.discover_master(name)  # type: ignore[no-untyped-call]
                socket.create_connection((host, port), timeout=1.0).close()
            except (redis.RedisError, OSError):
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.2)
            else:
                return
    finally:
        for sentinel in manager.sentinels:
            sentinel.close()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The reliable channel on a Sentinel-managed Redis (``celeryredissentinel://``).

    kombu's ``SentinelChannel`` supplies the connection pool: redis-py's
    ``Sentinel.master_for`` pool, whose connections ask the sentinels for the master
    when they connect and turn a ``READONLY`` reply (a demoted master) into a
    connection error. Everything else is the reliable channel.
    """

    from_transport_options = tuple(
        dict.fromkeys(
            (*Channel.from_transport_options, *kombu_redis.SentinelChannel.from_transport_options)
        )
    )

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        _await_master(connection)
        super().__init__(connection, *args, **kwargs)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        """The Sentinel pool (as kombu builds it), reading sentinels from our URLs too.

        kombu lists the sentinels from the connection's ``;``-separated URLs whose scheme
        is ``sentinel``; ours are ``celeryredissentinel``.
        """
        params = self._connparams(asynchronous)
        rest = {k: v for k, v in params.items() if k not in ("host", "port")}
        sentinels = _sentinel_hosts(self.connection.client, self.connection.default_port)
        if not sentinels:
            sentinels.append((params["host"], params["port"]))
        master_name = getattr(self, "master_name", None)
        if master_name is None:
            raise ValueError(
                "the 'master_name' transport option must be set for a Sentinel broker: "
                "broker_transport_options={'master_name': '<the name sentinels monitor>'}"
            )
        manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            sentinels,
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **rest,
        )
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        auth = {k: rest[k] for k in ("username", "password") if k in rest}
        client = manager.master_for(master_name, redis.Redis, **auth)  # type: ignore[no-untyped-call]
        return client.connection_pool


class SentinelTransport(Transport):
    """The reliable transport over Sentinel: kombu's Sentinel port and :class:`SentinelChannel`."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port


def _fetch_ahead(
    sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
) -> None:
    """At ``task_postrun``, send the next fetch when the solo pool's task succeeded.

    The task ran inside the delivery of its own message (the solo pool runs it there),
    so :meth:`Channel.fetch_ahead` acks it and fetches at once. Anything else passes:
    another thread or process than the delivery's (thread and prefork pools), an eager
    call inside the task (another id), a task that did not succeed (Celery decides
    between ack, reject and requeue), a worker stopping.
    """
    now = getattr(_DELIVERING, "now", None)
    if now is None or state != "SUCCESS":
        return
    channel, payload, pid = now
    headers = payload.get("headers") or {}
    if pid != os.getpid() or task_id is None or headers.get("id") != task_id:
        return
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    stopping = (getattr(worker_state, name, None) for name in ("should_stop", "should_terminate"))
    if any(flag is not None for flag in stopping):
        return
    _DELIVERING.now = None  # once per delivery
    channel.fetch_ahead(str(payload["properties"]["delivery_tag"]))


task_postrun.connect(_fetch_ahead, weak=False, dispatch_uid="celeryredis.transport.fetch_ahead")
