"""celeryredis's reliable kombu transport for Redis: atomic batched fetch and leases.

A subclass of kombu 5.7's Redis transport that keeps stock kombu's wire format (queue
lists, priority sub-queues, ``global_keyprefix``, message JSON, ``unacked`` and
``unacked_index`` entries), so stock and reliable producers and consumers share queues.
What changes is how a consumer takes messages: one Lua script pops a batch and records
it as unacked in the same call, a thread renews each held message's lease, acks ride on
the next fetch, and any worker requeues expired leases every second. See
``docs/transport.md``.

:func:`register_aliases` registers two kombu URL schemes, ``celeryredis://`` and
``celeryrediss://`` (TLS), and ``celeryredis+socket://`` for Unix sockets, plus
``celeryredissentinel://`` for a Sentinel-managed Redis (kombu's ``sentinel://``
pooling, one ``;``-separated URL per sentinel); the settings
layer of :func:`celeryredis.make_app` / :func:`celeryredis.configure` calls it when the
app's configuration loads (importing the package changes nothing in kombu). The classes
live in :mod:`celeryredis.transport._reliable` and are
imported only when kombu opens such a connection. The Redis Cluster broker transport
(:mod:`celeryredis.transport._cluster`) is registered the same way, as
``celeryrediscluster://`` and ``celeryredisclusters://`` (TLS), and under the plain
``rediscluster://`` / ``redisclusters://`` schemes (kombu reads one host per URL, so
those work with one node named; ``make_app`` writes the ``celeryrediscluster://`` form).
A scheme alias, unlike Celery's ``broker_transport``, survives
``kombu.Connection.switch()`` on failover.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "CLUSTER_SCHEMES",
    "MAX_PARTITIONS",
    "PARTITION_SEP",
    "RELIABLE_SCHEMES",
    "SENTINEL_SCHEMES",
    "TRANSPORTS",
    "cluster_broker_url",
    "cluster_queue_keys",
    "configured_partitions",
    "is_cluster_broker",
    "parse_partitions",
    "partition_names",
    "recorded_partitions",
    "register_aliases",
    "reliable_url",
]

#: The values of the ``celeryredis_transport`` setting.
TRANSPORTS: Final = ("reliable", "stock")

_TARGET: Final = "celeryredis.transport._reliable:Transport"
_CLUSTER_TARGET: Final = "celeryredis.transport._cluster:Transport"
_SENTINEL_TARGET: Final = "celeryredis.transport._reliable:SentinelTransport"

#: Cluster URL scheme -> the cluster transport's kombu scheme.
CLUSTER_SCHEMES: Final = {
    "rediscluster": "celeryrediscluster",
    "redisclusters": "celeryredisclusters",
}

#: Stock scheme -> the reliable transport's scheme.
RELIABLE_SCHEMES: Final = {
    "redis": "celeryredis",
    "rediss": "celeryrediss",
}

#: Sentinel scheme -> the reliable Sentinel transport's scheme (kombu's ``sentinel://``
#: pooling through ``master_for``, with the reliable channel's fetch and leases).
SENTINEL_SCHEMES: Final = {"sentinel": "celeryredissentinel"}


#: Between a queue's name and its partition number in the partition's hash tag.
PARTITION_SEP: Final = "#"
#: The most partitions one queue may have.
MAX_PARTITIONS: Final = 64


def partition_names(queue: str, count: int) -> list[str]:
    """The names whose hash tags hold ``queue``'s partitions: ``q``, ``q#1``, ``q#2``, ...

    Example:
        >>> partition_names("celery", 3)
        ['celery', 'celery#1', 'celery#2']
    """
    return [queue] + [f"{queue}{PARTITION_SEP}{i}" for i in range(1, count)]


def parse_partitions(value: Any, where: str) -> dict[str, int]:
    """Check a ``{queue name: number of partitions}`` mapping; ``where`` names its source.

    Example:
        >>> parse_partitions({"celery": 3}, "celeryredis_cluster_partitions")
        {'celery': 3}

    Raises:
        TypeError: It is not a mapping of names to whole numbers; the message says where.
        ValueError: A name or a count is out of bounds; the message says which and where.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where}={value!r} must be a dict of {{queue name: number of partitions}}, "
            "for example {'celery': 3}"
        )
    out: dict[str, int] = {}
    for queue, count in value.items():
        if not isinstance(queue, str) or not queue:
            raise TypeError(f"{where} has the key {queue!r}; the keys are queue names")
        if "{" in queue or "}" in queue:
            raise ValueError(
                f"{where} names the queue {queue!r}, which contains '{{' or '}}': on a Redis "
                "Cluster broker celeryredis wraps each queue name in a hash tag itself"
            )
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(
                f"{where}[{queue!r}]={count!r} must be a whole number of partitions from 1 "
                f"to {MAX_PARTITIONS}"
            )
        if not 1 <= count <= MAX_PARTITIONS:
            raise ValueError(
                f"{where}[{queue!r}]={count} must be from 1 (one slot, no partitions) to "
                f"{MAX_PARTITIONS}"
            )
        out[queue] = count
    return out


def register_aliases() -> None:
    """Register the reliable transport's URL schemes with kombu (idempotent)."""
    from kombu.transport import TRANSPORT_ALIASES  # noqa: PLC0415 - a dict, cheap

    for scheme in RELIABLE_SCHEMES.values():
        TRANSPORT_ALIASES.setdefault(scheme, _TARGET)
    for scheme in SENTINEL_SCHEMES.values():
        TRANSPORT_ALIASES.setdefault(scheme, _SENTINEL_TARGET)
    for scheme in (*CLUSTER_SCHEMES, *CLUSTER_SCHEMES.values()):
        # rediscluster:// too: a host's own broker_url (or $CELERY_BROKER_URL), which
        # Celery hands to kombu unchanged, works when it names one node.
        TRANSPORT_ALIASES.setdefault(scheme, _CLUSTER_TARGET)


def cluster_queue_keys(
    prefix: str, queue: str, steps: Sequence[int] | None = None, partitions: int = 1
) -> dict[str, Any]:
    """The keys of ``queue`` on a cluster broker, as the cluster transport names them.

    ``lists`` (one per priority step), ``unacked``, ``index`` and ``poison``, all with the
    queue's hash tag; ``record`` (the key holding the highest partition count any process
    used) and ``partitions`` (one such dict per partition, the first being the top-level
    keys). This is ``queue_keys`` of the cluster transport, imported on first use so that
    reading a single-node broker's queues does not load the cluster transport.

    Example:
        >>> cluster_queue_keys("p:", "celery")["unacked"]
        'p:{celery}:unacked'
        >>> [p["poison"] for p in cluster_queue_keys("", "q", partitions=2)["partitions"]]
        ['{q}:poison', '{q#1}:poison']
    """
    module = importlib.import_module(_CLUSTER_TARGET.partition(":")[0])
    keys: dict[str, Any] = (
        module.queue_keys(prefix, queue, partitions=partitions)
        if steps is None
        else module.queue_keys(prefix, queue, steps, partitions=partitions)
    )
    return keys


def configured_partitions(conf: Mapping[str, Any]) -> dict[str, int]:
    """The ``{queue: N}`` partition counts an app's configuration gives the cluster transport.

    Read from ``broker_transport_options["partitions"]`` (which ``make_app`` / ``configure``
    set from ``celeryredis_cluster_partitions``); a value that does not parse counts as none
    here (the transport refuses it when it opens).

    Example:
        >>> configured_partitions({"broker_transport_options": {"partitions": {"q": 3}}})
        {'q': 3}
    """
    options = conf.get("broker_transport_options") or {}
    try:
        return parse_partitions(options.get("partitions"), "broker_transport_options['partitions']")
    except (TypeError, ValueError):
        return {}


def recorded_partitions(value: Any) -> int:
    """A queue's recorded partition count as read from its ``record`` key (1 if unset).

    Example:
        >>> recorded_partitions(b"4"), recorded_partitions(None), recorded_partitions(b"x")
        (4, 1, 1)
    """
    if value is None:
        return 1
    try:
        return max(1, int(value.decode() if isinstance(value, bytes) else value))
    except (TypeError, ValueError):
        return 1


def is_cluster_broker(conf: Mapping[str, Any]) -> bool:
    """Whether the app's ``broker_url`` opens a Redis Cluster broker (its first URL's scheme).

    Example:
        >>> is_cluster_broker({"broker_url": "celeryrediscluster://10.0.0.1:7000/0"})
        True
        >>> is_cluster_broker({"broker_url": "redis://10.0.0.1:6379/0"})
        False
    """
    url = conf.get("broker_url")
    if not isinstance(url, str):
        return False
    scheme = url.split(";", 1)[0].partition("://")[0].strip()
    return scheme in CLUSTER_SCHEMES or scheme in CLUSTER_SCHEMES.values()


def cluster_broker_url(url: str) -> str:
    """Rewrite a ``rediscluster://`` URL to the form kombu opens with the cluster transport.

    kombu reads one host per URL, so each node becomes one ``;``-separated URL (kombu's
    alternates: the transport gives all of them to the cluster client as startup nodes).
    URLs of other schemes are returned unchanged.

    Example:
        >>> cluster_broker_url("rediscluster://:pw@10.0.0.1:7000,10.0.0.2:7000/0")
        'celeryrediscluster://:pw@10.0.0.1:7000/0;celeryrediscluster://:pw@10.0.0.2:7000/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        return url
    rest, qmark, query = rest.partition("?")
    auth, at, tail = rest.rpartition("@")
    hosts, slash, path = tail.partition("/")
    path += qmark + query
    head = f"{CLUSTER_SCHEMES[scheme]}://{auth}{at}"
    return ";".join(f"{head}{host}{slash}{path}" for host in hosts.split(","))


def reliable_url(url: str) -> str:
    """Rewrite a broker URL (or a ``;``-separated failover list) to the reliable scheme.

    ``redis://`` becomes ``celeryredis://``, ``rediss://`` ``celeryrediss://``,
    ``redis+socket://`` ``celeryredis+socket://`` and ``sentinel://``
    ``celeryredissentinel://`` (each ``;``-separated sentinel keeps its own URL, which
    is how kombu reads several sentinels); other text is unchanged.

    Example:
        >>> reliable_url("redis://localhost:6379/0;redis://other:6379/0")
        'celeryredis://localhost:6379/0;celeryredis://other:6379/0'
        >>> reliable_url("sentinel://:pw@10.0.0.1:26379/0;sentinel://10.0.0.2:26379/0")
        'celeryredissentinel://:pw@10.0.0.1:26379/0;celeryredissentinel://10.0.0.2:26379/0'
    """
    parts = []
    for chunk in url.split(";"):
        scheme, sep, rest = chunk.partition("://")
        base, plus, tail = scheme.partition("+")
        if sep and base in RELIABLE_SCHEMES:
            parts.append(f"{RELIABLE_SCHEMES[base]}{plus}{tail}{sep}{rest}")
        elif sep and scheme in SENTINEL_SCHEMES:
            parts.append(f"{SENTINEL_SCHEMES[scheme]}{sep}{rest}")
        else:
            parts.append(chunk)
    return ";".join(parts)
