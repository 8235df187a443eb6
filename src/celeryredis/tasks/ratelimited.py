"""``celeryredis.RateLimitedTask``: at most N per second across all workers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from celery.exceptions import Ignore

from celeryredis.exceptions import ConfigurationError
from celeryredis.keys import rate_limit_key
from celeryredis.ratelimit import RateLimiter, parse_rate, rate_limiter
from celeryredis.tasks._options import OptionCheck, as_positive_int, as_seconds
from celeryredis.tasks.base import Task, emit

__all__ = ["RESERVED_HEADER", "RateLimitedTask"]

logger = logging.getLogger(__name__)

#: Header of a message re-published for a reserved slot (the slot, epoch seconds on the
#: Redis clock): it runs without asking again. A running attempt finds its granted slot
#: in ``self.request.celeryredis_rate_slot``.
RESERVED_HEADER = "celeryredis_rate_slot"
# Most limiters (one per rate_limit_key value) a worker process keeps built.
_LIMITERS_MAX = 1024


def _rate(name: str, value: Any) -> None:
    if value is not None:
        parse_rate(value)


class RateLimitedTask(Task):
    """A task whose executions, over every worker, stay within ``distributed_rate_limit``.

    Before an attempt starts, one Redis round trip decides. Over the limit, the task
    reserves its next free slot (so deferred tasks do not all come back at the same
    instant) and is re-published once, with a countdown to that slot — never through
    ``retry()``, so no retry budget is used — and the worker does not sleep for it. A slot
    further away than the app's ``celeryredis_eta_horizon`` is not reserved (the
    visibility timeout covers countdowns only up to that horizon): the task comes back
    after the horizon and asks again.

    Above ``1 / rate_limit_lease_window`` per second (100/s by default), one round trip
    takes up to ``rate_limit_lease`` permits whose slots fall within the window, and the
    worker process runs the next attempts on them without asking Redis again: each
    leased permit is used within ``rate_limit_lease_window`` seconds after its slot (an
    attempt that comes before its slot waits for it, at most the window) or dropped. The
    bound over every worker: in any T seconds at most ``burst + rate * (T +
    rate_limit_lease_window)`` attempts start, and at most ``rate_limit_lease - 1`` per
    worker process more than the schedule's slots in those T seconds (see
    :meth:`celeryredis.ratelimit.RateLimiter.acquire`). ``rate_limit_lease=1`` asks Redis for
    every attempt.

    Attributes:
        distributed_rate_limit: Celery's rate syntax: ``"100/m"``, ``"10/s"``.
        rate_limit_burst: Executions allowed at once after a quiet spell (default 1).
        rate_limit_lease: Most permits one round trip takes (default 16; 1: no lease).
        rate_limit_lease_window: Seconds a leased permit stays usable after its slot
            (default 0.01).
    """

    distributed_rate_limit: ClassVar[str | None] = None
    rate_limit_burst: ClassVar[int] = 1
    rate_limit_lease: ClassVar[int] = 16
    rate_limit_lease_window: ClassVar[float] = 0.01

    celeryredis_options: ClassVar[Mapping[str, OptionCheck]] = {
        "distributed_rate_limit": _rate,
        "rate_limit_burst": as_positive_int,
        "rate_limit_lease": as_positive_int,
        "rate_limit_lease_window": as_seconds,
    }

    def rate_limit_key(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The limit's key for a call, e.g. a customer id; None: one limit for the task."""
        return None

    def _rate(self) -> str:
        if self.distributed_rate_limit is None:
            raise ConfigurationError(
                f"task {self.name!r} is a RateLimitedTask without distributed_rate_limit",
                setting="distributed_rate_limit",
            )
        return self.distributed_rate_limit

    def _limiter(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> RateLimiter:
        rate = self._rate()
        extra = self.rate_limit_key(args, kwargs)
        name = self.name if extra is None else f"{self.name}:{extra}"
        cache = self._worker_cache()
        if cache is None:
            return rate_limiter(self.app, name, rate, burst=self.rate_limit_burst)
        # Kept per worker process: building one reads the app's configuration.
        limiters: dict[tuple[str, str, int], RateLimiter] = cache.setdefault("limiters", {})
        handle = (name, rate, self.rate_limit_burst)
        limiter = limiters.get(handle)
        if limiter is None:
            if len(limiters) >= _LIMITERS_MAX:  # many rate_limit_key values: start afresh
                limiters.clear()
            limiter = limiters[handle] = RateLimiter(
                self._redis(), rate_limit_key(self.app.conf, name), rate, self.rate_limit_burst
            )
        return limiter

    def _horizon(self) -> float:
        cache = self._worker_cache()
        if cache is None:
            return float(self.app.conf.get("celeryredis_eta_horizon") or 0.0)
        horizon: float | None = cache.get("eta_horizon")
        if horizon is None:
            horizon = cache["eta_horizon"] = float(
                self.app.conf.get("celeryredis_eta_horizon") or 0.0
            )
        return horizon

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Run now, or reserve the next slot, re-publish for it and skip this attempt.

        An eager run is not limited: it runs at once, as Celery runs an eager task's
        countdown. With ``celeryredis_eager_redis`` on, the limiter is asked; over the
        limit with ``task_always_eager`` (where a re-publish would run at once and ask
        again) the run is logged and counted as ``deferred`` and runs now.
        """
        request = self.request
        if not self._redis_allowed():
            self._rate()  # still refuse a missing rate
            super().before_start(task_id, args, kwargs)
            return
        headers = getattr(request, "headers", None) or {}
        slot = getattr(request, RESERVED_HEADER, None) or headers.get(RESERVED_HEADER)
        if slot:
            request.celeryredis_rate_slot = float(slot)  # type: ignore[attr-defined]
            super().before_start(task_id, args, kwargs)
            return
        horizon = self._horizon()
        decision = self._limiter(args, kwargs).acquire(
            reserve=True,
            max_wait=horizon,
            # Leased permits live in the worker's cached limiter (none outside a worker).
            lease=self.rate_limit_lease if self._worker_cache() is not None else 1,
            lease_window=float(self.rate_limit_lease_window),
        )
        if decision.allowed:
            request.celeryredis_rate_slot = decision.slot  # type: ignore[attr-defined]
            super().before_start(task_id, args, kwargs)
            return
        countdown = decision.wait if decision.reserved else max(horizon, 0.1)
        if self.app.conf.task_always_eager:
            # celeryredis_eager_redis: a re-publish would run right here, at once (Celery
            # ignores an eager countdown), and ask again: run now instead, as Celery would.
            fields = self.lifecycle_fields(task_id)
            fields.update(
                event="deferred", delay_s=0.0, reserved=decision.reserved, note="eager: runs now"
            )
            emit(logging.INFO, fields)
            self._count("rate_limit_deferrals")
            super().before_start(task_id, args, kwargs)
            return
        new_headers = {k: v for k, v in headers.items() if k != RESERVED_HEADER}
        if decision.reserved:
            new_headers[RESERVED_HEADER] = repr(decision.slot)
        self.apply_async(
            args,
            kwargs,
            task_id=task_id,
            countdown=countdown,
            headers=new_headers,
            retries=request.retries or 0,
        )
        fields = self.lifecycle_fields(task_id)
        fields.update(event="deferred", delay_s=countdown, reserved=decision.reserved)
        emit(logging.INFO, fields)
        self._count("rate_limit_deferrals")
        raise Ignore
