"""Every Redis key name celeryredis writes (the only place they are built).

All keys live in the broker's Redis under one prefix: the broker's
``global_keyprefix`` transport option (if any) followed by ``celeryredis:``, so one
ACL key pattern (``~<global_keyprefix>celeryredis:*``) covers them. Every key has a
TTL or a bound:

- ``{p}celeryredis:dlq`` — stream of dead-lettered tasks, bounded by ``MAXLEN``
  (``celeryredis_dead_letter_max_len``) and ``MINID`` (``celeryredis_dead_letter_max_age``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NAMESPACE", "dead_letter_key", "prefix"]

#: Our namespace inside the broker's key prefix.
NAMESPACE = "celeryredis:"


def prefix(conf: Mapping[str, Any]) -> str:
    """``<global_keyprefix>celeryredis:`` for an app's configuration."""
    options = conf.get("broker_transport_options") or {}
    return f"{options.get('global_keyprefix', '') or ''}{NAMESPACE}"


def dead_letter_key(conf: Mapping[str, Any]) -> str:
    """The dead-letter stream."""
    return f"{prefix(conf)}dlq"
