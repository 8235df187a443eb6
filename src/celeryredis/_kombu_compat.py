"""Every private kombu attribute celeryredis touches, listed, checked and wrapped.

Outside this module only two private modules use private kombu API, both because
they subclass kombu classes: :mod:`celeryredis.transport._reliable` (kombu's Redis
transport) and :mod:`celeryredis._kombu_batch` (``Producer._publish`` and the
publish-batch hook). Each private name any of them uses is an entry of
:data:`PRIVATE_API`; ``tests/unit/test_compat.py`` fails when a module uses one that
is not listed, or when the installed kombu lacks one (:func:`check`).

Supported: kombu 5.7 (``pyproject.toml`` pins ``kombu[redis]>=5.7,<5.8``; kombu 5.7
needs redis-py >= 6.4). Older kombu has none of the hooks marked "5.7" below; kombu
reworked the Redis poller in 5.7, so a new minor is admitted only after ``make
compat`` passes on it. Importing this module runs :func:`require_supported`.
"""

from __future__ import annotations

import heapq
import importlib
import inspect
import re
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, Final

__all__ = [
    "BINDING_KEY_HEAD",
    "DEFAULT_PRIORITY_STEPS",
    "DEFAULT_SEP",
    "KOMBU_VERSION",
    "PRIVATE_API",
    "PUBLISH_BATCH_KWARG",
    "check",
    "client_key_prefix",
    "compact_timer",
    "deliver",
    "missing",
    "poll_sent_at",
    "queue_key",
    "quiet_close",
    "raw_payload",
    "replace_poll_start",
    "replace_restore_timer",
    "require_supported",
]

_KOMBU: Final = version("kombu")
#: The installed kombu's version as a tuple of ints, e.g. ``(5, 7, 0)``.
KOMBU_VERSION: Final = tuple(int(part) for part in re.findall(r"\d+", _KOMBU)[:3])

_REDIS: Final = "kombu.transport.redis"
_VIRTUAL: Final = "kombu.transport.virtual"

#: The oldest kombu supported, the first one not tested, and the requirement.
FLOOR: Final = (5, 7)
CEILING: Final = (5, 8)
REQUIREMENT: Final = "kombu[redis]>=5.7,<5.8"
#: kombu 5.7's own floor for redis-py.
REDIS_PY_FLOOR: Final = (6, 4)
REDIS_PY_VERSION: Final = tuple(int(part) for part in re.findall(r"\d+", version("redis"))[:3])

#: The keyword kombu 5.7's ``basic_publish`` hands a publish batch with (see
#: ``_kombu_batch``); the cluster transport's ``_put`` reads it to collect, not send.
PUBLISH_BATCH_KWARG: Final = "_publish_batch"

#: (module, class, name, how it is looked up, who uses it and why). ``class`` lookups
#: find a method or class attribute; ``instance`` ones an attribute the class's own
#: code assigns (``self.name =``), read from its source.
PRIVATE_API: Final[tuple[tuple[str, str, str, str, str], ...]] = (
    # enqueue_many (_kombu_batch.py): build messages as kombu does, but collect commands.
    ("kombu.messaging", "Producer", "_publish", "class", "_kombu_batch: overridden"),
    (
        "kombu.asynchronous.timer",
        "Timer",
        "_queue",
        "instance",
        "_prefork: cancelled time-limit entries are dropped from the heap (compact_timer)",
    ),
    (_REDIS, "PublishBatch", "add", "class", "_kombu_batch: the collector's interface (5.7)"),
    (_REDIS, "Channel", "create_publish_batch", "class", "_kombu_batch: the hook exists (5.7)"),
    # Heartbeat (worker.py) and enqueue_many (bulk.py).
    (_REDIS, "Channel", "_brpop_sent_at", "class", "worker heartbeat: poll age (5.7)"),
    (_REDIS, "PrefixedStrictRedis", "global_keyprefix", "instance", "enqueue_many marker key"),
    # The reliable transport (transport/_reliable.py): overridden hooks ...
    (_REDIS, "Channel", "_brpop_start", "class", "reliable transport: overridden"),
    (_REDIS, "Channel", "_brpop_read", "class", "reliable transport: overridden"),
    (_REDIS, "Channel", "_on_connection_disconnect", "class", "reliable transport: overridden"),
    (_REDIS, "Channel", "_put", "class", "reliable transport: overridden (durable publish)"),
    (
        _REDIS,
        "SentinelChannel",
        "_sentinel_managed_pool",
        "class",
        "reliable Sentinel transport: overridden (reads our scheme's sentinel URLs)",
    ),
    # ... and what it reads or calls on its kombu bases and kombu objects.
    (_REDIS, "Channel", "_expires", "instance", "durable publish: queue expiry (x-expires)"),
    (_REDIS, "Channel", "_connparams", "class", "reliable Sentinel transport: pool params"),
    (
        _REDIS,
        "Channel",
        "_sentinel_manager",
        "instance",
        "reliable Sentinel transport: kept for kombu's _disconnect_pools",
    ),
    (
        _REDIS,
        "Channel",
        "_async_sentinel_manager",
        "instance",
        "reliable Sentinel transport: kept for kombu's _disconnect_pools",
    ),
    (_REDIS, "Channel", "_in_poll", "class", "reliable transport: the poll in flight"),
    (_REDIS, "Channel", "_queue_cycle", "instance", "reliable transport: round-robin queues"),
    (_REDIS, "Channel", "_q_for_pri", "class", "reliable transport: priority sub-queue keys"),
    (_REDIS, "Channel", "_flush_brpop_reauth", "class", "reliable transport: after a poll (5.7)"),
    (_REDIS, "QoS", "_vrestore_count", "instance", "reliable transport: sweep throttle"),
    (_VIRTUAL, "Channel", "_lookup", "class", "reliable transport: routing on restore"),
    (_VIRTUAL, "Channel", "_get_message_priority", "class", "reliable transport: restore"),
    (_VIRTUAL, "Transport", "_deliver", "class", "reliable transport: hand over a message"),
    (_VIRTUAL, "Message", "_raw", "instance", "reliable transport: the unacked record"),
    (
        _REDIS,
        "Transport",
        "_restore_messages_tref",
        "instance",
        "reliable transport: its own sweep timer (5.7)",
    ),
    # The Redis Cluster transport (transport/_cluster.py), a virtual transport: the
    # storage hooks every virtual channel implements ...
    (_VIRTUAL, "Channel", "_get", "class", "cluster transport: overridden (fetch script)"),
    (_VIRTUAL, "Channel", "_put", "class", "cluster transport: overridden (LPUSH)"),
    (_VIRTUAL, "Channel", "_size", "class", "cluster transport: overridden"),
    (_VIRTUAL, "Channel", "_purge", "class", "cluster transport: overridden"),
    (_VIRTUAL, "Channel", "_delete", "class", "cluster transport: overridden"),
    (_VIRTUAL, "Channel", "_has_queue", "class", "cluster transport: overridden"),
    (_VIRTUAL, "Channel", "_new_queue", "class", "cluster transport: overridden"),
    # ... the fanout hooks kombu's virtual exchange calls (defined by its Redis channel) ...
    (_REDIS, "Channel", "_put_fanout", "class", "cluster transport: overridden (PUBLISH)"),
    (_REDIS, "Channel", "_queue_bind", "class", "cluster transport: overridden (SADD)"),
    # ... and the virtual channel's and QoS's state it reads.
    (_VIRTUAL, "Channel", "_active_queues", "instance", "cluster transport: consumed queues"),
    (_VIRTUAL, "Channel", "_consumers", "instance", "cluster transport: sweep only if consuming"),
    (_VIRTUAL, "Channel", "_tag_to_queue", "instance", "cluster transport: a cancelled queue"),
    (_VIRTUAL, "QoS", "_delivered", "instance", "cluster transport: held at close"),
    (_VIRTUAL, "QoS", "_flush", "class", "cluster transport: drop acked before restoring"),
    # redis-py: the cluster transport select()s on its wake-up subscriptions' sockets.
    (
        "redis.connection",
        "AbstractConnection",
        "_sock",
        "instance",
        "cluster transport: select() on the wake-up sockets; reliable transport: "
        "fetch ahead only on a connected poll connection",
    ),
)


# kombu's Redis key layout, as literals so that importing celeryredis does not import
# kombu's Redis transport; tests/unit/test_compat.py compares them with kombu's.
#: kombu's key of an exchange's bindings, less the exchange (``Channel.keyprefix_queue``).
BINDING_KEY_HEAD: Final = "_kombu.binding."
#: kombu's separator between a queue name and its priority step (``Channel.sep``).
DEFAULT_SEP: Final = "\x06\x16"
#: kombu's default priority steps (``PRIORITY_STEPS``); 0 is the queue's own key.
DEFAULT_PRIORITY_STEPS: Final = (0, 3, 6, 9)


def queue_key(prefix: str, queue: str, step: int, sep: str = DEFAULT_SEP) -> str:
    """The Redis list of a queue's priority step, named as kombu's ``Channel._q_for_pri`` does."""
    return f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}"


def poll_sent_at(channel: Any) -> float | None:
    """When kombu's channel sent its current poll (``time.monotonic()``), if known."""
    sent = getattr(channel, "_brpop_sent_at", None)
    return sent if isinstance(sent, float) else None


def client_key_prefix(client: Any) -> str:
    """The ``global_keyprefix`` a kombu channel's Redis client adds to every key itself."""
    return str(getattr(client, "global_keyprefix", "") or "")


def raw_payload(message: Any) -> Any:
    """The payload a virtual-transport message was built from (``Message._raw``)."""
    return message._raw


def deliver(connection: Any, payload: Any, queue: str) -> None:
    """Hand a fetched message to the channel's consumers (``Transport._deliver``)."""
    connection._deliver(payload, queue)


def replace_restore_timer(cycle: Any, loop: Any, interval: float) -> None:
    """Run the poller's restore sweep every ``interval`` seconds instead of kombu's period.

    kombu 5.7 keeps the sweep's timer entry in ``MultiChannelPoller._restore_messages_tref``.
    """
    old = getattr(cycle, "_restore_messages_tref", None)
    if old is not None:
        old.cancel()
    cycle._restore_messages_tref = loop.call_repeatedly(interval, cycle.maybe_restore_messages)


def replace_poll_start(cycle: Any, loop: Any, on_readable: Any, added: set[Any]) -> bool:
    """Poll the transport's sockets without re-adding them to the event loop on every pass.

    kombu 5.7's ``Transport.register_with_event_loop`` adds one callback to
    ``loop.on_tick`` (``added``: what that call added) that, on every loop pass, starts
    the polls and then calls ``loop.add_reader`` for each of the poller's sockets, even
    the ones the loop already polls: two failing ``epoll_ctl`` calls each time (register,
    ``EEXIST``, modify). This swaps it for one that adds a socket only when the loop does
    not already read it with ``on_readable``; kombu's paths that take a socket out of the
    loop (a disconnect, a paused poll) do so with ``loop.remove``/``remove_reader``,
    which drop it from ``loop.readers``, so it is added again on the next pass.

    Returns False, leaving kombu's callback in place, when ``added`` is not one callback.
    """
    if len(added) != 1:
        return False
    loop.on_tick.difference_update(added)
    poll_start = cycle.on_poll_start
    readers = loop.readers
    add_reader = loop.add_reader

    def on_poll_start() -> None:
        poll_start()
        for fd in cycle.fds:
            entry = readers.get(fd)
            if entry is None or entry[0] != on_readable:
                add_reader(fd, on_readable, fd)

    loop.on_tick.add(on_poll_start)
    return True


def compact_timer(timer: Any) -> int:
    """Drop the cancelled entries of a kombu event-loop timer; return how many went.

    ``Timer.cancel`` only flags an entry, which stays in the timer's heap
    (``Timer._queue``, a list of ``scheduled(eta, priority, entry)``) until its time
    comes. The list is rebuilt in place (the timer's iterator holds it) and heapified.
    Call it from the event loop's thread.
    """
    queue: list[Any] = timer._queue
    keep = [item for item in queue if not item.entry.cancelled]
    dropped = len(queue) - len(keep)
    if dropped:
        heapq.heapify(keep)
        queue[:] = keep
    return dropped


def quiet_close(connection: Any, on_error: Callable[[AttributeError], None]) -> None:
    """Make ``connection.close()`` report an ``AttributeError`` instead of raising it.

    Wraps the bound method on this one connection object (``kombu.Connection.close``
    is public; replacing it on an instance is what this shim owns).
    """
    close = connection.close

    def close_quietly() -> None:
        try:
            close()
        except AttributeError as error:
            on_error(error)

    connection.close = close_quietly


def _has(module: str, owner: str, name: str, how: str) -> bool:
    try:
        cls = getattr(importlib.import_module(module), owner)
    except (ImportError, AttributeError):
        return False
    if how == "class":
        return hasattr(cls, name)
    try:
        text = inspect.getsource(cls)
    except (OSError, TypeError):  # no source installed: nothing to read it from
        return True
    return re.search(rf"\b(?:self|cycle)\.{re.escape(name)}\s*(?::[^=\n]*)?=[^=]", text) is not None


def missing() -> list[str]:
    """The entries of :data:`PRIVATE_API` the installed kombu lacks, as readable lines."""
    return [
        f"{module}.{owner}.{name} ({why})"
        for module, owner, name, how, why in PRIVATE_API
        if not _has(module, owner, name, how)
    ]


def check() -> None:
    """Verify every private kombu name in :data:`PRIVATE_API` exists in the installed kombu.

    Raises:
        ImportError: One is missing; the message names each, the installed kombu
            version, and what to do.
    """
    lacking = missing()
    if lacking:
        raise ImportError(
            f"celeryredis does not support the installed kombu {_KOMBU}: it lacks "
            + "; ".join(lacking)
            + f". Install {REQUIREMENT!r} (the range celeryredis is tested with)."
        )


def require_supported(
    installed: tuple[int, ...] = KOMBU_VERSION, redis_py: tuple[int, ...] = REDIS_PY_VERSION
) -> None:
    """Refuse a kombu or redis-py older than the floor; check the private API of a newer kombu.

    Runs when celeryredis is imported. Inside the tested range the private names are
    known to exist (``tests/unit/test_compat.py``, ``make compat``); above it they are
    looked up, so a kombu that dropped one fails here, by name.

    Raises:
        ImportError: kombu is older than 5.7 or redis-py older than 6.4, or kombu lacks
            a private name.
    """
    if installed < FLOOR:
        found = ".".join(map(str, installed))
        raise ImportError(
            f"celeryredis needs kombu >= 5.7, found {found}: enqueue_many publishes through "
            "kombu 5.7's publish-batch hook, the worker heartbeat reads its poll time and the "
            "reliable transport extends its 5.7 poller and restore sweep. Install "
            f"{REQUIREMENT!r} (pip install -U 'kombu[redis]>=5.7,<5.8')."
        )
    if redis_py < REDIS_PY_FLOOR:
        found = ".".join(map(str, redis_py))
        raise ImportError(
            f"celeryredis needs redis-py >= 6.4, found {found} (kombu 5.7 requires it). "
            "Install 'redis>=6.4,<9' (pip install -U 'redis>=6.4,<9')."
        )
    if installed >= CEILING:
        check()


require_supported()
