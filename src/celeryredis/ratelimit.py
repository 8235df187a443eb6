"""Distributed rate limits on Redis: one round trip per decision (GCRA in Lua).

Celery's own ``rate_limit`` is per worker instance, so N workers run N times the
limit. A :class:`RateLimiter` keeps the schedule in Redis, shared by every worker
and every process: a generic cell rate algorithm whose state is the next slot's time
(``{p}celeryredis:rl:<name>``, with a TTL of about one burst window).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

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
        self._interval_arg = f"{self.interval_ms:.3f}"
        self._tolerance_arg = f"{(self.burst - 1) * self.interval_ms:.3f}"
        # Leased permits of this process: (usable from, usable until, slot); see acquire().
        self._permits: deque[tuple[float, float, float]] = deque()
        self._permits_lock = threading.Lock()

    def acquire(
        self,
        *,
        reserve: bool = False,
        max_wait: float = math.inf,
        lease: int = 1,
        lease_window: float = 0.01,
    ) -> Decision:
        """One decision, at most one round trip.

        Args:
            reserve: When over the limit, take the next free slot (so callers that
                are deferred do not all come back at the same instant); the caller
                must then proceed at that time without asking again.
            max_wait: Reserve only a slot at most this many seconds away.
            lease: Take up to this many permits in the round trip, when allowed, and
                keep the others in this limiter for the next calls (which then need no
                round trip). Only permits whose slots fall within ``lease_window`` of
                the decision are taken, so a lease happens only above ``1 /
                lease_window`` per second (or with a burst).
            lease_window: Each leased permit is used within this many seconds after its
                slot or dropped unused; one whose slot is still ahead when it is taken
                is waited for (at most this long).

        The bound, in the Redis server's clock: every permit (asked or leased) is a slot
        of the limiter's schedule (GCRA: at most ``burst + rate * T`` slots in any T
        seconds, over every process), and a leased permit is used in ``[slot, slot +
        lease_window]``. So in any T seconds at most ``burst + rate * (T +
        lease_window)`` permits are used, and also at most ``lease - 1`` per process
        more than the slots in those T seconds. Unused permits are lost, never used late.
        """
        if lease > 1:
            leased = self._leased()
            if leased is not None:
                return leased
        max_wait_ms = int(min(max_wait, 10**9) * 1000)
        args: list[Any] = [
            self._interval_arg,
            self._tolerance_arg,
            "1" if reserve else "0",
            max_wait_ms,
        ]
        if lease > 1:
            args += [int(lease), f"{lease_window * 1000:.3f}"]
        sent = time.monotonic()
        try:
            reply = self._script(keys=[self.key], args=args)
        except REDIS_ERRORS as exc:
            raise RateLimitError(f"rate limiter {self.key!r}: {exc}") from exc
        allowed, wait_ms, slot_ms = reply[:3]
        wait = max(0.0, float(wait_ms) / 1000)
        slot = float(slot_ms) / 1000 if int(slot_ms) else None
        if int(allowed) == 1:
            if len(reply) > 3 and int(reply[3]) > 1:
                self._keep(reply, sent, time.monotonic(), lease_window)
            return Decision(True, 0.0, slot=slot)
        return Decision(False, wait, reserved=int(allowed) == 2, slot=slot)

    def _keep(self, reply: Any, sent: float, received: float, window: float) -> None:
        """Keep permits 1..n-1 of a lease, with the local times they may be used in."""
        count, first, now = int(reply[3]), float(reply[4]) / 1000, float(reply[5]) / 1000
        interval = self.interval_ms / 1000
        # The server read its clock (now) between sent and received: mapping a slot to
        # local time with `received` never uses it early, with `sent` never late.
        early, late = received - now, sent - now
        with self._permits_lock:
            for i in range(1, count):
                at = max(now, first + i * interval)
                self._permits.append((at + early, at + late + window, at))

    def _leased(self) -> Decision | None:
        """The next leased permit (waiting for its slot if ahead), or None."""
        with self._permits_lock:
            while self._permits:
                start, end, slot = self._permits.popleft()
                now = time.monotonic()
                if now > end:  # too late for this slot: dropped, never used late
                    continue
                if start > now:
                    time.sleep(start - now)  # at most the lease window
                    if time.monotonic() > end:
                        continue
                return Decision(True, 0.0, slot=slot)
        return None

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
