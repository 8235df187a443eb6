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

from typing import Final

__all__ = [
    "CLUSTER_SCHEMES",
    "RELIABLE_SCHEMES",
    "SENTINEL_SCHEMES",
    "TRANSPORTS",
    "cluster_broker_url",
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
