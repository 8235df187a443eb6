"""Distributed rate limits on Redis: one round trip per decision (GCRA in Lua).

Celery's own ``rate_limit`` is per worker instance, so N workers run N times the
limit. A :class:`RateLimiter` keeps the schedule in Redis, shared by every worker
and every process: a generic cell rate algorithm whose state is the next slot's time
(``{p}celeryredis:rl:<name>``, with a TTL of about one burst window).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import TracebackType

from celery import Celery

from celeryredis._scripts import source
from celeryredis.connection import REDIS_ERRORS, Client, get_redis
from celeryredis.exceptions import ConfigurationError, RateLimitError
from celeryredis.keys import rate_limit_key

__all__ = ["Decision", "RateLimitError", "RateLimiter", "parse_rate", "rate_limiter"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_rate(text: str) -> float:
    """Parse Celery's rate syntax (``"100/m"``, ``"10/s"``, ``"5"``) into events per second.

    Raises:
        ConfigurationError: Not a positive rate in that syntax.

    Example:
        >>> parse_rate("120/m")
        2.0
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"rate {text!r} is not valid: write N/s, N/m or N/h with N > 0 (e.g. '100/m')",
            setting="distributed_rate_limit",
        )
    return float(match.group(1)) / _PER[match.group(2)]


@dataclass(frozen=True)
class Decision:
    """A rate-limit decision.

    Attributes:
        allowed: You may proceed now.
        wait: Seconds until you may (0 when allowed).
        reserved: The slot ``wait`` seconds from now is yours (see ``reserve=True``).
        slot: The granted or reserved slot, epoch seconds on the Redis server's clock
            (None when refused).
    """

    allowed: bool
    wait: float
    reserved: bool = False
    slot: float | None = None

    def __bool__(self) -> bool:
        return self.allowed


class RateLimiter:
    """At most ``rate`` events per second across every process sharing ``key``.

    Args:
        client: The redis-py client.
        key: The Redis key of this limiter.
        rate: Celery's rate syntax (``"10/s"``, ``"100/m"``) or events per second.
        burst: How many events may go at once after a quiet spell (>= 1).

    Use it as a callable or a context manager; both say whether you may proceed and
    how long to wait::

        limiter = rate_limiter(app, "partner-api", "10/s")
        with limiter as decision:
            if decision.allowed:
                call_partner()
            else:
                schedule_later(decision.wait)
    """

    def __init__(self, client: Client, key: str, rate: str | float, burst: int = 1) -> None:
        per_second = parse_rate(rate) if isinstance(rate, str) else float(rate)
        if not per_second > 0 or not math.isfinite(per_second):
            raise ConfigurationError(f"rate {rate!r} must be > 0", setting="rate")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(f"burst {burst!r} must be an integer >= 1", setting="burst")
        self.client = client
        self.key = key
        self.rate = per_second
        self.burst = burst
        self.interval_ms = 1000.0 / per_second
        self._script = client.register_script(source("gcra"))

    def acquire(self, *, reserve: bool = False, max_wait: float = math.inf) -> Decision:
        """One decision, one round trip.

        Args:
            reserve: When over the limit, take the next free slot (so callers that
                are deferred do not all come back at the same instant); the caller
                must then proceed at that time without asking again.
            max_wait: Reserve only a slot at most this many seconds away.
        """
        max_wait_ms = int(min(max_wait, 10**9) * 1000)
        try:
            allowed, wait_ms, slot_ms = self._script(
                keys=[self.key],
                args=[
                    f"{self.interval_ms:.3f}",
                    f"{(self.burst - 1) * self.interval_ms:.3f}",
                    "1" if reserve else "0",
                    max_wait_ms,
                ],
            )
        except REDIS_ERRORS as exc:
            raise RateLimitError(f"rate limiter {self.key!r}: {exc}") from exc
        wait = max(0.0, float(wait_ms) / 1000)
        slot = float(slot_ms) / 1000 if int(slot_ms) else None
        if int(allowed) == 1:
            return Decision(True, 0.0, slot=slot)
        return Decision(False, wait, reserved=int(allowed) == 2, slot=slot)

    __call__ = acquire

    def __enter__(self) -> Decision:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __repr__(self) -> str:
        return f"<RateLimiter {self.key!r} {self.rate:g}/s burst={self.burst}>"


def rate_limiter(app: Celery, key: str, rate: str | float, *, burst: int = 1) -> RateLimiter:
    """A :class:`RateLimiter` named ``key`` in the app's broker Redis.

    Args:
        app: The Celery app (its broker Redis holds the state).
        key: The limiter's name; every caller using the same name shares the limit.
        rate: ``"10/s"``, ``"100/m"``, ``"5/h"`` or events per second.
        burst: Events allowed at once after a quiet spell.
    """
    return RateLimiter(get_redis(app), rate_limit_key(app.conf, key), rate, burst)
