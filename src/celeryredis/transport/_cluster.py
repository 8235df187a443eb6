r"""A kombu transport for a Redis Cluster broker: ``Transport``, ``Channel``, ``QoS``.

A kombu *virtual* transport (``kombu.transport.virtual``), not a subclass of kombu's
Redis transport: that one waits on every queue with one ``BRPOP`` and keeps unacked
messages in global keys, and neither works across hash slots. Selected by the URL
schemes ``celeryrediscluster://`` and ``celeryredisclusters://`` (TLS), which
``make_app()`` writes for a ``rediscluster://`` broker URL.

Key layout: every key of one queue shares one hash tag, ``{<queue>}``, so each script
and transaction stays in one slot (with ``global_keyprefix`` ``p:``, ``p:{celery}``):

- ``{q}`` and ``{q}\x06\x16<step>``: the queue's lists, one per priority step, as
  kombu names them;
- ``{q}:unacked`` / ``{q}:unacked_index``: the queue's unacked hash and lease index;
- ``{q}:poison``: items that are not kombu messages (capped at 1000);
- ``_kombu.binding.<exchange>``: the binding sets, as kombu writes them (one key each).

The Lua scripts are the reliable transport's (``transport_fetch``, ``transport_renew``,
``transport_claim``, ``transport_restore``), called with one queue's keys at a time. This
module copies the reliable transport's lease logic in a per-queue form; it does not
import or change :mod:`celeryredis.transport._reliable`.

A queue may be split into partitions (``broker_transport_options={"partitions":
{"q": 3}}``, set from ``celeryredis_cluster_partitions``): partition 0 is the layout
above, partition ``i`` uses the hash tag ``{q#i}``, each with its own lists, unacked hash,
index and poison list. A producer sends each message to the next partition (round
robin from a random start); a consumer fetches from every partition, starting at the
next one each round. ``{q}:partitions`` records the highest count any process used, and
consumers drain that many, so lowering the count strands nothing.

Consuming: each round runs the fetch script on the partitions that may hold messages
(it applies that partition's queued acks in the same call). A partition found empty is
not fetched again until a push rings its wake-up shard channel ``{q#i}:wake`` (the push
script publishes when a list goes from empty to one message; a restore and a requeue
publish too), or ``idle_fetch_interval`` passes. Meanwhile the connection blocks in one
``select()`` on one ``SSUBSCRIBE`` connection per master that owns consumed partitions
(plus the fanout subscription), for at most the time to the next restore sweep. With
``wake_up=False`` it is the old poll loop (sleep ``polling_interval`` when every queue
was empty). Broadcast (remote control) and fanout use classic ``PUBLISH``/``SUBSCRIBE``,
which reaches a subscriber on any node; the subscription lives on one node and moves to
another one when it is lost.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import select
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from queue import Empty
from typing import Any, Final

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.cluster import ClusterNode, RedisCluster

from celeryredis._kombu_compat import (
    BINDING_KEY_HEAD,
    DEFAULT_PRIORITY_STEPS,
    DEFAULT_SEP,
    PUBLISH_BATCH_KWARG,
)
from celeryredis._scripts import source
from celeryredis.cluster import CLUSTER_ERRORS
from celeryredis.registry import default
from celeryredis.transport import (
    PARTITION_SEP,
    parse_partitions,
    partition_names,
    recorded_partitions,
)
from celeryredis.transport._lease import LeaseRenewer

virtual: Any = importlib.import_module("kombu.transport.virtual")

__all__ = ["Channel", "QoS", "Transport", "queue_keys"]

logger = logging.getLogger(__name__)

_SCRIPTS: Final = (
    "transport_fetch",
    "transport_renew",
    "transport_claim",
    "transport_restore",
    "cluster_push",
    "cluster_partitions",
)
_CHUNK: Final = 1000
_CLAIM_SECONDS: Final = 10.0
_BINDING_SEP: Final = DEFAULT_SEP
#: Seconds between reads of the queues' recorded partition counts by a consumer.
_RECORD_REFRESH: Final = 10.0
#: The longest one wait blocks (the loop re-checks its channels at least this often).
_WAIT_CAP: Final = 1.0
#: Seconds between two tries to take a lost broadcast subscription again.
_RESUBSCRIBE_EVERY: Final = 0.5
#: Errors after which the consumer refreshes the slot map and fetches again.
_RETRY_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError, *CLUSTER_ERRORS)


@contextlib.contextmanager
def _topology_errors() -> Iterator[None]:
    """Turn redis-py's ``AttributeError`` on a slot map in flux into a ``ConnectionError``.

    While a replica takes over, ``RedisCluster`` can look a slot up and find no node
    (``'NoneType' object has no attribute 'redis_connection'``, seen in 1 of 5 failover
    runs here; redis-py issues #2432, #3835). As a connection error it is retried by
    kombu (publish) or by the next poll round (fetch), like the failover it is.
    """
    try:
        yield
    except AttributeError as exc:
        tb, last = exc.__traceback__, None
        while tb is not None:
            last, tb = tb, tb.tb_next
        if last is None or not last.tb_frame.f_code.co_filename.endswith("cluster.py"):
            raise
        raise redis.ConnectionError(
            f"the cluster's slot map changed under the client ({exc}); retried"
        ) from exc


def _tag(queue: str) -> str:
    if "{" in queue or "}" in queue:
        raise ValueError(
            f"queue name {queue!r} contains '{{' or '}}': on a Redis Cluster broker "
            "celeryredis wraps each queue name in a hash tag itself; rename the queue"
        )
    return "{" + queue + "}"


def queue_keys(
    prefix: str, queue: str, steps: Sequence[int] = DEFAULT_PRIORITY_STEPS, partitions: int = 1
) -> dict[str, Any]:
    r"""The keys of ``queue`` on a cluster broker: partition 0's, and every partition's.

    Each partition's keys share one hash slot. ``partitions`` lists one such dict per
    partition (the first is partition 0, the top-level keys); ``record`` is the key of
    the queue's recorded partition count, ``wake`` the partition's wake-up shard channel.

    Example:
        >>> queue_keys("", "celery")["lists"][:2]
        ['{celery}', '{celery}3']
        >>> queue_keys("p:", "celery")["unacked"]
        'p:{celery}:unacked'
        >>> [p["lists"][0] for p in queue_keys("", "celery", partitions=3)["partitions"]]
        ['{celery}', '{celery#1}', '{celery#2}']
    """
    parts = []
    for name in partition_names(queue, partitions):
        head = prefix + _tag(name)
        parts.append(
            {
                "lists": [f"{head}{DEFAULT_SEP}{step}" if step else head for step in steps],
                "unacked": f"{head}:unacked",
                "index": f"{head}:unacked_index",
                "poison": f"{head}:poison",
                "wake": f"{head}:wake",
            }
        )
    return {**parts[0], "record": f"{prefix}{_tag(queue)}:partitions", "partitions": parts}


class _SlotFreed:
    """A self-pipe: an ack or a reject, in any thread, ends a wait on a full window.

    With a prefork pool, acks arrive from the pool's result thread while the consumer
    waits; without this the wait lasted ``polling_interval`` whatever happened, and a
    worker took at most one prefetch window per interval.
    """

    def __init__(self) -> None:
        self._pipe_out, self._pipe_in = os.pipe()
        os.set_blocking(self._pipe_out, False)
        os.set_blocking(self._pipe_in, False)
        self._lock = threading.Lock()
        self._shut = False

    def fileno(self) -> int:
        """The read end, for ``select()``."""
        return self._pipe_out

    def set(self) -> None:
        """Wake a waiter (a full pipe already does: the error is ignored)."""
        with self._lock:
            if not self._shut:
                with contextlib.suppress(OSError):
                    os.write(self._pipe_in, b"\0")

    def clear(self) -> None:
        """Forget earlier wake-ups."""
        with self._lock:
            if self._shut:
                return
            with contextlib.suppress(OSError):
                while os.read(self._pipe_out, 4096):
                    pass

    def close(self) -> None:
        """Close both ends (a later :meth:`set` does nothing)."""
        with self._lock:
            if not self._shut:
                self._shut = True
                os.close(self._pipe_out)
                os.close(self._pipe_in)


class QoS(virtual.QoS):  # type: ignore[misc]
    """Ack emulation with leases kept in each queue's own unacked hash and index."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        """Hold a delivered message; its lease is renewed until it is acked."""
        super().append(message, delivery_tag)
        self.channel.hold(delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """Queue the ack: it rides on the queue's next fetch or the lease thread's call."""
        self.channel.queue_ack(delivery_tag)
        super().ack(delivery_tag)
        self.channel.slot_freed.set()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Reject at once: requeue (first in line) or drop, and remove the unacked entry."""
        message = self.get(delivery_tag)
        self.channel.settle(delivery_tag, message if requeue else None)
        super().ack(delivery_tag)
        self.channel.slot_freed.set()

    def restore_unacked(self) -> list[Any]:
        """At close: flush acks, then requeue what this consumer still holds."""
        channel = self.channel
        self._flush()  # drop what was acked
        channel.flush_acks()
        for tag in list(self._delivered):
            try:
                channel.settle(tag, self._delivered[tag])
            except Exception:
                logger.warning(
                    "celeryredis: could not requeue %s at close; it is requeued when its "
                    "lease expires",
                    tag,
                    exc_info=True,
                )
        self._delivered.clear()
        return []


class Channel(virtual.Channel):  # type: ignore[misc]
    """A channel on a Redis Cluster: per-queue fetch script, leases, PUBLISH fanout."""

    QoS = QoS
    supports_fanout = True
    do_restore = True

    #: Seconds a held message's lease lasts; renewed every third of it.
    lease_seconds: float = default("celeryredis_lease_seconds")
    #: The most messages one fetch pops (the prefetch window bounds it too).
    fetch_batch_max: int = default("celeryredis_fetch_batch_max")
    #: Seconds between restore sweeps of expired leases.
    lease_sweep_interval: float = default("celeryredis_lease_sweep_interval")
    #: kombu's visibility timeout: a lease score is ``TIME + lease - visibility_timeout``.
    visibility_timeout: float = 3600.0
    global_keyprefix: str = ""
    socket_timeout: float | None = 5.0
    socket_connect_timeout: float | None = 5.0
    priority_steps: Sequence[int] = DEFAULT_PRIORITY_STEPS
    #: ``{queue: N}``: queues split into N partitions (``celeryredis_cluster_partitions``).
    partitions: Mapping[str, int] = {}
    #: Block on the partitions' wake-up channels when idle (False: the old poll loop).
    wake_up: bool = True
    #: Seconds after which an idle partition is fetched even without a wake-up (a push
    #: that bypassed this transport's push script is found within this time).
    idle_fetch_interval: float = 5.0

    from_transport_options = (
        *virtual.Channel.from_transport_options,
        "lease_seconds",
        "fetch_batch_max",
        "lease_sweep_interval",
        "visibility_timeout",
        "global_keyprefix",
        "socket_timeout",
        "socket_connect_timeout",
        "priority_steps",
        "partitions",
        "wake_up",
        "idle_fetch_interval",
    )

    #: ``time.monotonic()`` when this channel last began a fetch round or a wait on its
    #: queues (None before the first): the worker heartbeat's poll age reads it.
    last_poll_at: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        #: Set by every ack and reject: ends the wait of a consumer whose window was full.
        self.slot_freed = _SlotFreed()
        self._pending: dict[str, set[str]] = {}  # queue -> acks to send
        self._held: dict[str, str] = {}  # tag -> queue, renewed until acked
        self._origin: dict[str, str] = {}  # tag -> queue of a fetched, unacked message
        self._buffers: dict[str, deque[Any]] = {}
        self._fanout: dict[str, str] = {}  # fanout queue -> exchange
        self._fanout_buffers: dict[str, deque[Any]] = {}
        self._no_ack_queues: set[str] = set()
        self._single = False  # basic_get: fetch one message, buffer none
        self._pubsub: Any = None
        self._resubscribe_at = float("-inf")  # a lost subscription is taken again from then
        self._client: RedisCluster | None = None
        self._scripts: dict[str, Any] = {}
        self._leases = LeaseRenewer(self, "celeryredis-cluster-lease")
        self._last_sweep = float("-inf")
        self._last_error = float("-inf")
        self._recorded: dict[str, int] = {}  # queue -> partition count recorded in Redis
        self._announced: set[str] = set()  # queues whose count this channel recorded
        self._records_read = float("-inf")
        self._next_part: dict[str, int] = {}  # queue -> the partition the next push goes to
        self._key_cache: dict[str, dict[str, Any]] = {}  # partition -> its keys
        self._first_part: dict[str, int] = {}  # queue -> the partition a fetch starts at
        self._wake_pubsubs: dict[str, Any] = {}  # node name -> its SSUBSCRIBE connection
        self._wake_node: dict[str, str] = {}  # partition -> node its channel is sent to
        self._wake_part: dict[str, str] = {}  # wake-up channel -> partition
        self._live: set[str] = set()  # partitions whose wake-up subscription is confirmed
        self._idle: dict[str, float] = {}  # live partition found empty -> since when
        self._fetch_failed = False  # a fetch was refused this round: wait before retrying
        super().__init__(*args, **kwargs)
        self.partitions = parse_partitions(
            self.partitions, "broker_transport_options['partitions']"
        )
        if "{" in str(self.global_keyprefix) or "}" in str(self.global_keyprefix):
            raise ValueError(
                f"broker_transport_options global_keyprefix {self.global_keyprefix!r} "
                "contains '{' or '}': on a Redis Cluster broker that would put every queue "
                "into one hash slot; drop the braces"
            )
        self.client  # connect now: a wrong address fails when the connection opens  # noqa: B018

    # --- the cluster client -----------------------------------------------------------

    @property
    def client(self) -> Any:
        """The channel's ``RedisCluster`` (one per channel, thread-safe)."""
        if self._client is None:
            conninfo = self.connection.client
            nodes = [ClusterNode(host, port) for host, port in _hosts(conninfo)]  # type: ignore[no-untyped-call]
            params: dict[str, Any] = {
                "socket_timeout": self.socket_timeout,
                "socket_connect_timeout": self.socket_connect_timeout,
            }
            if conninfo.userid:
                params["username"] = conninfo.userid
            if conninfo.password:
                params["password"] = conninfo.password
            if conninfo.ssl or str(conninfo.transport_cls).endswith("clusters"):
                params["ssl"] = True
                if isinstance(conninfo.ssl, dict):
                    params.update(conninfo.ssl)
            self._client = RedisCluster(startup_nodes=nodes, **params)
            for name in _SCRIPTS:
                self._scripts[name] = self._client.register_script(source(name))
        return self._client

    def _keys(self, part: str) -> dict[str, Any]:
        """The keys of one partition (a queue's name or ``q#i``), worked out once each.

        Every push and fetch names them; the prefix and the priority steps are fixed when
        the channel opens, so they are kept.
        """
        keys = self._key_cache.get(part)
        if keys is None:
            keys = queue_keys(str(self.global_keyprefix), part, self.priority_steps)
            self._key_cache[part] = keys
        return keys

    def _count(self, queue: str) -> int:
        return max(self.partitions.get(queue, 1), self._recorded.get(queue, 1))

    def _parts(self, queue: str) -> list[str]:
        """The partitions of ``queue`` a consumer fetches from (as many as ever used)."""
        return partition_names(queue, self._count(queue))

    def _read_record(self, queue: str) -> list[str]:
        """Read ``queue``'s recorded partition count now; return its partitions."""
        with _topology_errors():
            value = self.client.get(self._keys(queue)["record"])
        self._recorded[queue] = recorded_partitions(value)
        return self._parts(queue)

    def _announce(self, queue: str) -> None:
        """Record ``queue``'s configured partition count in Redis (raise it, never lower)."""
        count = self.partitions.get(queue, 1)
        if count > 1 and queue not in self._announced:
            with _topology_errors():
                recorded = self._scripts["cluster_partitions"](
                    keys=[self._keys(queue)["record"]], args=[count], client=self.client
                )
            self._recorded[queue] = int(recorded)
            self._announced.add(queue)

    def _refresh(self, exc: BaseException) -> None:
        """A node went away or moved: log (at most every 5 s) and reload the slot map."""
        now = time.monotonic()
        if now - self._last_error > 5.0:
            self._last_error = now
            logger.warning("celeryredis cluster broker: %r; refreshing the slot map", exc)
        try:
            self.client.nodes_manager.initialize()
        except Exception:
            logger.debug("celeryredis cluster broker: slot map refresh failed", exc_info=True)

    # --- producing --------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        """Push the message to the list for its priority step of the queue's next partition.

        One script call: ``LPUSH``, and a wake-up ``SPUBLISH`` when the list was empty.
        """
        count = self.partitions.get(queue, 1)
        part = queue
        if count > 1:
            self._announce(queue)
            index = self._next_part.get(queue)
            if index is None:
                index = random.randrange(count)  # noqa: S311 - spread, not secrecy
            self._next_part[queue] = (index + 1) % count
            part = partition_names(queue, count)[index]
        step = self._step(self._get_message_priority(message, reverse=False))
        keys = self._keys(part)
        key = keys["lists"][self._steps().index(step)]
        batch = kwargs.get(PUBLISH_BATCH_KWARG)
        if batch is not None:
            # enqueue_many runs the commands itself, one transaction per slot; it keeps
            # one wake-up SPUBLISH per channel and slot (same hash tag as the list).
            batch.add("lpush", key, dumps(message))
            batch.add("spublish", keys["wake"], "1")
            return
        with _topology_errors():
            self._scripts["cluster_push"](
                keys=[key],
                args=[dumps(message), keys["wake"]],
                client=self.client,
            )

    def _steps(self) -> list[int]:
        return list(self.priority_steps)

    def _step(self, priority: int) -> int:
        steps = self._steps()
        return max((s for s in steps if s <= priority), default=steps[0])

    def _fanout_channel(self, exchange: str) -> str:
        return f"{self.global_keyprefix}/0.{exchange}"

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kw: Any
    ) -> None:
        """PUBLISH: classic pub/sub reaches subscribers on every node of the cluster."""
        batch = kw.get(PUBLISH_BATCH_KWARG)
        if batch is not None:  # enqueue_many: no PUBLISH in a cluster transaction; it refuses
            batch.add("publish", self._fanout_channel(exchange), dumps(message))
            return
        with _topology_errors():
            self.client.publish(self._fanout_channel(exchange), dumps(message))

    # --- bindings (kombu's key layout: one set per exchange) --------------------------

    def _binding_key(self, exchange: str) -> str:
        return f"{self.global_keyprefix}{BINDING_KEY_HEAD}{exchange}"

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        if self.typeof(exchange).type == "fanout":
            self._fanout[queue] = exchange
        self.client.sadd(
            self._binding_key(exchange),
            _BINDING_SEP.join([routing_key or "", pattern or "", queue or ""]),
        )

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        """The bindings of ``exchange`` as stored in Redis (``SMEMBERS``)."""
        members = self.client.smembers(self._binding_key(exchange))
        table = []
        for member in members:
            routing_key, pattern, queue = bytes_to_str(member).split(_BINDING_SEP, 2)
            table.append((routing_key, pattern, queue))
        return table

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any
    ) -> None:
        self.client.srem(
            self._binding_key(exchange),
            _BINDING_SEP.join([routing_key or "", pattern or "", queue or ""]),
        )
        for part in self._read_record(queue):
            self.client.delete(*self._keys(part)["lists"])
        self.client.delete(self._keys(queue)["record"])
        self._recorded.pop(queue, None)
        self._announced.discard(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return any(
            self.client.exists(*self._keys(part)["lists"]) for part in self._read_record(queue)
        )

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        _tag(queue)  # refuse a name with braces at declaration
        head, sep, number = queue.rpartition(PARTITION_SEP)
        if sep and number.isdigit() and self.partitions.get(head, 1) > 1:
            raise ValueError(
                f"queue name {queue!r} is the name of partition {number} of the partitioned "
                f"queue {head!r} (broker_transport_options['partitions']); rename the queue"
            )

    def _size(self, queue: str) -> int:
        """The messages waiting in every partition (one atomic count per partition)."""
        total = 0
        for part in self._read_record(queue):
            pipe = self.client.pipeline(transaction=True)  # one slot: atomic
            for key in self._keys(part)["lists"]:
                pipe.llen(key)
            total += sum(int(n) for n in pipe.execute())
        return total

    def _purge(self, queue: str) -> int:
        """Empty every partition's lists (one transaction per partition)."""
        total = 0
        for part in self._read_record(queue):
            keys = self._keys(part)["lists"]
            pipe = self.client.pipeline(transaction=True)
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            total += sum(int(n) for n in pipe.execute()[: len(keys)])
        return total

    # --- consuming --------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """Consume ``queue``: a fanout queue through a subscription, others by fetching."""
        if queue in self._fanout:
            self._subscribe(self._fanout[queue])
        else:
            if no_ack:
                self._no_ack_queues.add(queue)
            else:
                self._no_ack_queues.discard(queue)
                self._leases.start()
            try:
                with _topology_errors():
                    self._announce(queue)
                    self._read_record(queue)
            except _RETRY_ERRORS as exc:
                self._refresh(exc)  # the counts are read again at the next sweep
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        """Stop consuming; a fanout queue's subscription ends with its last consumer."""
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        exchange = self._fanout.get(queue) if queue is not None else None
        if exchange is not None and self._pubsub is not None:
            still = {self._fanout[q] for q in self._active_queues if q in self._fanout}
            if exchange not in still:
                try:
                    self._pubsub.unsubscribe(self._fanout_channel(exchange))
                except Exception:
                    logger.debug("celeryredis: unsubscribe failed", exc_info=True)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Get one message; with ``no_ack`` it is not recorded as unacked."""
        if queue in self._fanout:
            return super().basic_get(queue, no_ack, **kwargs)
        consumed_without_ack = queue in self._no_ack_queues
        self._single = True
        if no_ack:
            self._no_ack_queues.add(queue)
        try:
            return super().basic_get(queue, no_ack, **kwargs)
        finally:
            self._single = False
            if no_ack and not consumed_without_ack:
                self._no_ack_queues.discard(queue)

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> Any:
        """One round: the restore sweep when it is due, the wake-ups read, one delivery.

        Reading the wake-up connections here (without blocking, no command sent) keeps a
        busy consumer from starving an idle partition that was rung meanwhile.
        """
        if self._consumers and self._active_queues:
            self.last_poll_at = time.monotonic()  # a fetch round begins
            try:
                with _topology_errors():
                    self.sweep()
            except _RETRY_ERRORS as exc:
                self._refresh(exc)
            if self._idle:
                self.after_wait()
        return super().drain_events(timeout=timeout, callback=callback)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """The next message of ``queue``: buffered, or fetched from one of its partitions.

        The partitions are tried from the next one each call (rotating), and the first
        that yields messages fills the buffer. An idle partition (found empty, its
        wake-up subscription live, no wake-up since) is skipped until
        ``idle_fetch_interval`` passes.
        """
        if queue in self._fanout:
            return self._get_fanout(queue)
        buffer = self._buffers.get(queue)
        if buffer:
            return buffer.popleft()
        parts = self._parts(queue)
        first = self._first_part.get(queue, 0) % len(parts)
        self._first_part[queue] = first + 1
        now = time.monotonic()
        for offset in range(len(parts)):
            part = parts[(first + offset) % len(parts)]
            since = self._idle.get(part)
            if since is not None and now - since < float(self.idle_fetch_interval):
                continue
            got = self._fetch(part, queue)
            if got:
                self._idle.pop(part, None)
                buffer = self._buffers[queue] = deque(got)
                return buffer.popleft()
            if got is not None and part in self._live and self.wake_up:
                self._idle[part] = now  # empty: wait for its wake-up
            else:
                self._idle.pop(part, None)
                self._fetch_failed = self._fetch_failed or got is None
        raise Empty()

    def _batch_size(self) -> int:
        if self._single:
            return 1
        estimate = self.qos.can_consume_max_estimate()
        limit = int(self.fetch_batch_max)
        return limit if estimate is None else max(1, min(int(estimate), limit))

    def _fetch(self, part: str, queue: str) -> list[Any] | None:
        """Run the fetch script on one partition's slot: apply its acks, pop and record.

        Returns the messages, or None when the cluster refused the call (the slot map is
        reloaded and the acks are queued again).
        """
        no_ack = self._no_ack(queue)
        keys = self._keys(part)
        with self._lock:
            acks = list(self._pending.pop(part, ()))
        argv: list[Any] = [
            self._batch_size(),
            repr(self._lease_offset()),
            1,
            len(keys["lists"]),
            "1" if no_ack else "0",
            len(acks),
            *acks,
        ]
        try:
            with _topology_errors():
                reply = self._scripts["transport_fetch"](
                    keys=[keys["unacked"], keys["index"], keys["poison"], *keys["lists"]],
                    args=argv,
                    client=self.client,
                )
        except _RETRY_ERRORS as exc:
            self._requeue_acks(part, acks)
            self._refresh(exc)
            return None
        except BaseException:
            self._requeue_acks(part, acks)
            raise
        out = []
        for i in range(1, len(reply), 2):
            raw = reply[i]
            try:
                payload = loads(bytes_to_str(raw))
                tag = str(payload["properties"]["delivery_tag"])
            except (ValueError, TypeError, KeyError):
                logger.exception("celeryredis: undecodable message from %r kept as poison", queue)
                self.client.lpush(keys["poison"], raw)
                continue
            if not no_ack:
                with self._lock:
                    self._origin[tag] = part
                    self._held[tag] = part  # renewed while buffered, too
            out.append(payload)
        return out

    def _no_ack(self, queue: str) -> bool:
        return queue in self._no_ack_queues

    def _lease_offset(self) -> float:
        return float(self.lease_seconds) - float(self.visibility_timeout)

    # --- fanout (PUBLISH/SUBSCRIBE on one node) ----------------------------------------

    def _subscribe(self, exchange: str) -> None:
        channels = {self._fanout_channel(exchange)}
        if self._pubsub is None:  # the first subscription, or one lost: all channels
            channels.update(self._fanout_channels())
            self._pubsub = self._new_pubsub()
        self._pubsub.subscribe(*channels)

    def _fanout_channels(self) -> list[str]:
        """The channels of the fanout queues this channel consumes."""
        return [
            self._fanout_channel(e) for q, e in self._fanout.items() if q in self._active_queues
        ]

    def _new_pubsub(self) -> Any:
        nodes = self.client.get_primaries() or self.client.get_nodes()
        node = nodes[int(time.monotonic() * 1000) % len(nodes)]
        return node.redis_connection.pubsub(ignore_subscribe_messages=True)

    def _get_fanout(self, queue: str) -> Any:
        buffer = self._fanout_buffers.setdefault(queue, deque())
        if not buffer:
            self._read_pubsub()
        if not buffer:
            raise Empty()
        return buffer.popleft()

    def _read_pubsub(self) -> None:
        """Buffer the broadcasts received; take a lost subscription again (see below)."""
        pubsub = self._pubsub
        if pubsub is None:
            self._resubscribe()
            return
        try:
            while True:
                message = pubsub.get_message(timeout=0)
                if message is None:
                    return
                if message.get("type") != "message":
                    continue
                channel = bytes_to_str(message["channel"])
                payload = loads(bytes_to_str(message["data"]))
                for queue, exchange in self._fanout.items():
                    if self._fanout_channel(exchange) == channel and queue in self._active_queues:
                        self._fanout_buffers.setdefault(queue, deque()).append(payload)
        except _RETRY_ERRORS as exc:
            # The node went away: subscribe again on a node that answers (messages
            # published meanwhile are lost, as with kombu's Redis fanout).
            self._refresh(exc)
            self._pubsub = None
            _close_quietly(pubsub, "a lost subscription")
            self._resubscribe_at = float("-inf")  # at once
            self._resubscribe()

    def _resubscribe(self) -> None:
        """Subscribe the consumed fanout queues' channels again, on a node that answers.

        The node picked may refuse (a dead master stays in the slot map until its
        replica takes over): then no subscription is left, and the next read tries
        again, at most every :data:`_RESUBSCRIBE_EVERY` seconds.
        """
        channels = self._fanout_channels()
        now = time.monotonic()
        if not channels or now < self._resubscribe_at:
            return
        self._resubscribe_at = now + _RESUBSCRIBE_EVERY
        pubsub = None
        try:
            pubsub = self._new_pubsub()
            pubsub.subscribe(*channels)
        except _RETRY_ERRORS as exc:
            self._refresh(exc)
            if pubsub is not None:
                _close_quietly(pubsub, "a refused subscription")
            return
        self._pubsub = pubsub

    # --- held messages and acks -------------------------------------------------------

    def hold(self, tag: str) -> None:
        """``tag`` is held by this consumer (recorded when it was fetched)."""
        with self._lock:
            queue = self._origin.get(tag)
            if queue is not None:
                self._held[tag] = queue

    def queue_ack(self, tag: str) -> None:
        """Queue an ack for the queue's next fetch or the lease thread."""
        with self._lock:
            self._held.pop(tag, None)
            queue = self._origin.pop(tag, None)
            if queue is not None:
                self._pending.setdefault(queue, set()).add(tag)

    def _requeue_acks(self, queue: str, acks: Iterable[str]) -> None:
        acks = list(acks)
        if acks:
            with self._lock:
                self._pending.setdefault(queue, set()).update(acks)

    def settle(self, tag: str, message: Any) -> None:
        """Remove ``tag``'s unacked entry now; requeue ``message`` first in line if given."""
        with self._lock:
            self._held.pop(tag, None)
            queue = self._origin.pop(tag, None)
        if queue is None:
            return
        keys = self._keys(queue)
        pipe = self.client.pipeline(transaction=True)  # one slot
        if message is not None:
            payload = message.serializable() if hasattr(message, "serializable") else message
            payload["redelivered"] = True
            step = self._step(self._get_message_priority(payload, reverse=False))
            pipe.rpush(keys["lists"][self._steps().index(step)], dumps(payload))
        pipe.zrem(keys["index"], tag)
        pipe.hdel(keys["unacked"], tag)
        pipe.execute()
        if message is not None:
            self._ring(keys["wake"])

    def renew(self) -> int:
        """Send queued acks and renew every held lease, per queue; return leases renewed."""
        with self._lock:
            pending, self._pending = self._pending, {}
            held: dict[str, list[str]] = {}
            for tag, queue in self._held.items():
                held.setdefault(queue, []).append(tag)
        renewed = 0
        for queue in set(pending) | set(held):
            keys = self._keys(queue)
            pair = [keys["unacked"], keys["index"]]
            acks = list(pending.get(queue, ()))
            try:
                for start in range(0, len(acks), _CHUNK):
                    chunk = acks[start : start + _CHUNK]
                    self._scripts["transport_renew"](
                        keys=pair, args=[0, len(chunk), *chunk], client=self.client
                    )
            except BaseException:
                self._requeue_acks(queue, acks)
                raise
            tags = held.get(queue, [])
            for start in range(0, len(tags), _CHUNK):
                chunk = tags[start : start + _CHUNK]
                renewed += int(
                    self._scripts["transport_renew"](
                        keys=pair, args=[repr(self._lease_offset()), 0, *chunk], client=self.client
                    )
                )
        return renewed

    def flush_acks(self) -> None:
        """Send queued acks now (at close); on failure the leases expire instead."""
        try:
            self.renew()
        except Exception:
            logger.warning(
                "celeryredis: could not flush acks at close; the messages are redelivered "
                "when their lease expires",
                exc_info=True,
            )

    # --- restore sweep (per queue) ----------------------------------------------------

    def sweep(self, limit: int = 1000) -> int:
        """Requeue expired leases of the consumed queues; at most once per sweep interval."""
        now = time.monotonic()
        if now - self._last_sweep < float(self.lease_sweep_interval) * 0.9:
            return 0
        self._last_sweep = now
        restored = 0
        queues = [q for q in dict.fromkeys(self._active_queues) if q not in self._fanout]
        if now - self._records_read >= _RECORD_REFRESH:
            self._records_read = now
            for queue in queues:
                self._read_record(queue)
        for queue in queues:
            for part in self._parts(queue):
                restored += self._sweep_queue(part, limit)
        if restored:
            logger.info("celeryredis: requeued %d message(s) whose lease expired", restored)
        return restored

    def _sweep_queue(self, queue: str, limit: int) -> int:
        keys = self._keys(queue)
        index, hashkey = keys["index"], keys["unacked"]
        reply = self._scripts["transport_claim"](
            keys=[index, hashkey],
            args=[repr(float(self.visibility_timeout)), repr(_CLAIM_SECONDS), limit],
            client=self.client,
        )
        restored = 0
        for i in range(0, len(reply), 3):
            tag, score, value = bytes_to_str(reply[i]), reply[i + 1], reply[i + 2]
            targets: list[str] = []
            body: Any = value
            try:
                message = loads(bytes_to_str(value))[0]
                message["headers"]["redelivered"] = True
                message["properties"]["delivery_info"]["redelivered"] = True
                step = self._step(self._get_message_priority(message, reverse=False))
                targets = [keys["lists"][self._steps().index(step)]]
                body = dumps(message)
            except Exception:
                if value:
                    logger.exception("celeryredis: unacked entry %s is unreadable; poisoned", tag)
            if not value and not targets:
                self.client.zrem(index, tag)
                continue
            result = self._scripts["transport_restore"](
                keys=[index, hashkey, keys["poison"], *targets],
                args=[tag, score, body],
                client=self.client,
            )
            restored += int(result == 1)
        if restored:
            self._ring(keys["wake"])
        return restored

    # --- wake-ups: one SSUBSCRIBE connection per master, one select() for all ----------

    def _ring(self, channel: str) -> None:
        """Wake consumers blocked on a partition (after a restore or a requeue)."""
        try:
            with _topology_errors():
                self.client.spublish(channel, "1")
        except redis.RedisError:
            logger.debug("celeryredis: wake-up publish failed", exc_info=True)

    def _consumed(self) -> list[str]:
        if not self._consumers:
            return []
        return [q for q in dict.fromkeys(self._active_queues) if q not in self._fanout]

    def wait_sources(self, polling_interval: float) -> tuple[list[Any], float | None]:
        """What the transport waits on when a round found no message, and for how long.

        Returns the sockets to ``select()`` on (the fanout subscription's, and one
        ``SSUBSCRIBE`` connection per master owning a consumed partition) and the most
        seconds to block (None: no limit from this channel). A full prefetch window
        means waiting for an ack (:attr:`slot_freed`, at most ``polling_interval``); a
        partition without a confirmed wake-up subscription means polling again after
        ``polling_interval``; a wake-up already read means at once.
        """
        sockets: list[Any] = []
        if self._pubsub is not None or self._fanout:
            self._read_pubsub()  # may lose the subscription, or take it again
            if any(self._fanout_buffers.get(q) for q in self._active_queues if q in self._fanout):
                return sockets, 0.0
            sock = None if self._pubsub is None else _socket_of(self._pubsub)
            if sock is not None:
                sockets.append(sock)
        queues = self._consumed()
        if not queues:
            return sockets, None
        self.last_poll_at = time.monotonic()  # a wait on the consumed queues begins
        failed, self._fetch_failed = self._fetch_failed, False
        self.slot_freed.clear()  # an ack from here on ends the wait below
        full = not self.qos.can_consume()
        if full:
            sockets.append(self.slot_freed)  # the window is full: wait for an ack
        if full or failed or not self.wake_up:
            return sockets, polling_interval
        parts = [part for queue in queues for part in self._parts(queue)]
        try:
            with _topology_errors():
                self._subscribe_wake(parts)
                self._read_wake()
        except redis.RedisError as exc:
            self._drop_wake(exc)
            return sockets, polling_interval
        if any(p not in self._idle for p in parts):
            woken = any(p in self._live for p in parts if p not in self._idle)
            return sockets, 0.0 if woken else polling_interval
        sockets.extend(s for s in map(_socket_of, self._wake_pubsubs.values()) if s is not None)
        now = time.monotonic()
        due = [self._last_sweep + float(self.lease_sweep_interval) - now]
        due.append(min(self._idle[p] for p in parts) + float(self.idle_fetch_interval) - now)
        return sockets, max(0.0, min(due))

    def after_wait(self) -> None:
        """Read the wake-ups that arrived while the transport waited."""
        if self._consumed():
            self.last_poll_at = time.monotonic()  # the wait ended
        if not self._wake_pubsubs:
            return
        try:
            with _topology_errors():
                self._read_wake()
        except redis.RedisError as exc:
            self._drop_wake(exc)

    def _subscribe_wake(self, parts: Iterable[str]) -> None:
        """SSUBSCRIBE each partition's wake-up channel on the master owning its slot."""
        for part in parts:
            if part in self._wake_node:
                continue
            channel = self._keys(part)["wake"]
            node = self.client.get_node_from_key(channel)
            pubsub = self._wake_pubsubs.get(node.name)
            if pubsub is None:
                pubsub = node.redis_connection.pubsub()
                self._wake_pubsubs[node.name] = pubsub
            self._wake_part[channel] = part
            self._wake_node[part] = node.name
            pubsub.ssubscribe(channel)

    def _read_wake(self) -> None:
        """Read every wake-up connection without blocking; mark the partitions rung."""
        for pubsub in list(self._wake_pubsubs.values()):
            while True:
                message = pubsub.get_message(timeout=0)
                if message is None:
                    break
                part = self._wake_part.get(bytes_to_str(message["channel"]))
                if part is None:
                    continue
                kind = message.get("type")
                if kind == "ssubscribe":
                    self._live.add(part)  # not idle yet: the next round fetches it
                elif kind == "smessage":
                    self._idle.pop(part, None)
                elif kind == "sunsubscribe":
                    # The server dropped it (its slot moved): subscribe again, fetch.
                    self._live.discard(part)
                    self._idle.pop(part, None)
                    self._wake_node.pop(part, None)
                    self._refresh(redis.ConnectionError(f"the slot of {part!r} moved"))

    def _drop_wake(self, exc: BaseException | None) -> None:
        """Close the wake-up connections; every partition is fetched until resubscribed."""
        if exc is not None:
            self._refresh(exc)
        for pubsub in self._wake_pubsubs.values():
            _close_quietly(pubsub, "a wake-up connection")
        self._wake_pubsubs.clear()
        self._wake_node.clear()
        self._wake_part.clear()
        self._live.clear()
        self._idle.clear()

    # --- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the lease thread; requeue buffered and held messages; close the client."""
        if self.closed:
            return
        self._leases.stop()
        self._restore_buffered()
        if self._client is not None:
            self.flush_acks()
        super().close()  # the QoS requeues what this consumer still holds
        self._leases.join()
        self.slot_freed.close()
        self._drop_wake(None)
        if self._pubsub is not None:
            _close_quietly(self._pubsub, "the subscription")
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                logger.debug("celeryredis: closing the cluster client failed", exc_info=True)

    def _restore_buffered(self) -> None:
        for buffer in self._buffers.values():
            while buffer:
                payload = buffer.popleft()
                tag = str(payload["properties"]["delivery_tag"])
                try:
                    self.settle(tag, payload)
                except Exception:
                    logger.warning("celeryredis: could not requeue %s at close", tag, exc_info=True)


def _close_quietly(pubsub: Any, what: str) -> None:
    """Close a subscription's connection; a failure is only logged (at DEBUG)."""
    try:
        pubsub.close()
    except Exception:
        logger.debug("celeryredis: closing %s failed", what, exc_info=True)


def _socket_of(pubsub: Any) -> Any:
    """The socket of a subscription's connection (None before it connects)."""
    connection = pubsub.connection
    return None if connection is None else connection._sock


def _hosts(conninfo: Any) -> list[tuple[str, int]]:
    """The startup nodes: kombu's host, then its failover alternates (``a;b;c``)."""
    hosts = [(str(conninfo.hostname or "127.0.0.1"), int(conninfo.port or 6379))]
    for alt in getattr(conninfo, "alt", None) or []:
        rest = str(alt).split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and (host, int(port)) not in hosts:
            hosts.append((host.strip("[]"), int(port)))
    return hosts


class Transport(virtual.Transport):  # type: ignore[misc]
    """kombu virtual transport on a Redis Cluster; ``driver_type`` is ``redis``."""

    Channel = Channel
    driver_type = "redis"
    driver_name = "rediscluster"
    default_port = 6379
    polling_interval = 0.1

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    connection_errors = (
        *virtual.Transport.connection_errors,
        redis.ConnectionError,
        redis.TimeoutError,
        *CLUSTER_ERRORS,
    )
    channel_errors = (*virtual.Transport.channel_errors, redis.ResponseError)
    # Declared, so kombu's Connection.ensure keeps retrying a publish after a reconnect
    # while a replica takes over (without them it gives up at the second error).
    recoverable_connection_errors = connection_errors
    recoverable_channel_errors: tuple[type[BaseException], ...] = ()

    def driver_version(self) -> str:
        """redis-py's version."""
        return str(redis.__version__)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one message; between empty rounds, block on the channels' wake-ups.

        kombu's loop sleeps ``polling_interval`` after an empty round; this one waits in
        one ``select()`` on what the channels name (:meth:`Channel.wait_sources`) for as
        long as they allow, capped by ``timeout`` and one second.
        """
        start = time.monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                pass
            else:
                return
            elapsed = time.monotonic() - start
            if timeout is not None and elapsed >= timeout:
                raise TimeoutError()
            self._wait(None if timeout is None else timeout - elapsed)

    def _wait(self, remaining: float | None) -> None:
        interval = float(self.polling_interval or 0.0)
        sockets: list[Any] = []
        limits = [_WAIT_CAP if remaining is None else min(_WAIT_CAP, remaining)]
        channels = [c for c in self.channels if isinstance(c, Channel) and not c.closed]
        for channel in channels:
            found, limit = channel.wait_sources(interval)
            sockets.extend(found)
            if limit is not None:
                limits.append(limit)
        seconds = max(0.0, min(limits))
        if seconds > 0:
            if sockets:
                try:
                    select.select(sockets, [], [], seconds)
                except (OSError, ValueError):  # a socket closed under us: poll instead
                    time.sleep(min(seconds, interval or seconds))
            else:
                time.sleep(seconds)
        for channel in channels:
            channel.after_wait()
