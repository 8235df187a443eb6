"""celeryredis's reliable kombu transport for Redis: atomic batched fetch and leases.

A subclass of kombu 5.7's Redis transport that keeps stock kombu's wire format (queue
lists, priority sub-queues, ``global_keyprefix``, message JSON, ``unacked`` and
``unacked_index`` entries), so stock and reliable producers and consumers share queues.
What changes is how a consumer takes messages: one Lua script pops a batch and records
it as unacked in the same call, a thread renews each held message's lease, acks ride on
the next fetch, and any worker requeues expired leases every second. See
``docs/transport.md``.

Importing this package (which ``import celeryredis`` does) registers two kombu URL
schemes, ``celeryredis://`` and ``celeryrediss://`` (TLS), and ``celeryredis+socket://``
for Unix sockets; the classes live in :mod:`celeryredis.transport._reliable` and are
imported only when kombu opens such a connection. A scheme alias, unlike Celery's
``broker_transport``, survives ``kombu.Connection.switch()`` on failover.
"""

from __future__ import annotations

from typing import Final

__all__ = ["RELIABLE_SCHEMES", "TRANSPORTS", "register_aliases", "reliable_url"]

#: The values of the ``celeryredis_transport`` setting.
TRANSPORTS: Final = ("reliable", "stock")

_TARGET: Final = "celeryredis.transport._reliable:Transport"

#: Stock scheme -> the reliable transport's scheme.
RELIABLE_SCHEMES: Final = {
    "redis": "celeryredis",
    "rediss": "celeryrediss",
}


def register_aliases() -> None:
    """Register the reliable transport's URL schemes with kombu (idempotent)."""
    from kombu.transport import TRANSPORT_ALIASES  # noqa: PLC0415 - a dict, cheap

    for scheme in RELIABLE_SCHEMES.values():
        TRANSPORT_ALIASES.setdefault(scheme, _TARGET)


def reliable_url(url: str) -> str:
    """Rewrite a broker URL (or a ``;``-separated failover list) to the reliable scheme.

    ``redis://`` becomes ``celeryredis://``, ``rediss://`` ``celeryrediss://`` and
    ``redis+socket://`` ``celeryredis+socket://``; other text is unchanged.

    Example:
        >>> reliable_url("redis://localhost:6379/0;redis://other:6379/0")
        'celeryredis://localhost:6379/0;celeryredis://other:6379/0'
    """
    parts = []
    for chunk in url.split(";"):
        scheme, sep, rest = chunk.partition("://")
        base, plus, tail = scheme.partition("+")
        if sep and base in RELIABLE_SCHEMES:
            parts.append(f"{RELIABLE_SCHEMES[base]}{plus}{tail}{sep}{rest}")
        else:
            parts.append(chunk)
    return ";".join(parts)


register_aliases()
