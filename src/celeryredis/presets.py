"""Named, immutable, documented setting presets.

A preset maps setting names to values, and every value carries a one-line
reason. Names are Celery's own lower-case setting names, the library's own
``celeryredis_*`` settings, or ``<dict setting>.<key>`` for one key of a dict
setting that is merged key by key (see :data:`MERGED_DICT_SETTINGS`), e.g.
``broker_transport_options.visibility_timeout``.

Presets compose: :meth:`Preset.with_` derives a new preset, and
:func:`celeryredis.make_app` accepts a sequence of presets and dicts that are
applied in order.

Example:
    >>> from celeryredis.presets import PRODUCTION
    >>> PRODUCTION["task_acks_late"]
    True
    >>> fast = PRODUCTION.with_(worker_prefetch_multiplier=4)
    >>> fast["worker_prefetch_multiplier"], PRODUCTION["worker_prefetch_multiplier"]
    (4, 1)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from celeryredis.exceptions import ConfigurationError
from celeryredis.registry import SETTINGS

__all__ = [
    "DERIVED",
    "DEVELOPMENT",
    "LIBRARY_SETTINGS",
    "MERGED_DICT_SETTINGS",
    "PRESETS",
    "PRODUCTION",
    "TESTING",
    "THROUGHPUT",
    "Preset",
    "Setting",
    "get_preset",
    "known_settings",
]


class _Derived:
    """Marker for a value computed from other settings when the app is built."""

    _instance: _Derived | None = None

    def __new__(cls) -> _Derived:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DERIVED"


#: Marks a preset value that :func:`celeryredis.make_app` computes from the
#: effective settings (currently the visibility timeout), unless the user sets it.
DERIVED: Final = _Derived()

#: Dict settings that are merged key by key across presets and user settings,
#: so that overriding one transport option does not drop the others.
MERGED_DICT_SETTINGS: Final = frozenset(
    {"broker_transport_options", "result_backend_transport_options", "task_publish_retry_policy"}
)

#: The library's own settings (prefix ``celeryredis_``) with their defaults and meaning,
#: from :data:`celeryredis.registry.SETTINGS` (the one place they are defined).
LIBRARY_SETTINGS: Final[Mapping[str, tuple[Any, str]]] = MappingProxyType(
    {name: (entry.default, entry.reason) for name, entry in SETTINGS.items()}
)


@dataclass(frozen=True)
class Setting:
    """One preset value with the reason it was chosen.

    Attributes:
        value: The setting's value (or :data:`DERIVED`).
        reason: One line saying why.
    """

    value: Any
    reason: str


class Preset(Mapping[str, Any]):
    """An immutable, named mapping of setting names to values, each with a reason.

    Reading a preset like a dict gives values; :meth:`reason` and
    :attr:`settings` give the reasons.

    Args:
        name: The preset's name, shown by ``explain()`` as the source of its values.
        description: One paragraph on when to use it.
        settings: Setting name to :class:`Setting`.
    """

    __slots__ = ("_settings", "description", "name")

    def __init__(self, name: str, description: str, settings: Mapping[str, Setting]) -> None:
        for key, setting in settings.items():
            if not isinstance(setting, Setting):
                raise ConfigurationError(
                    f"preset {name!r}: {key!r} must be a Setting(value, reason), "
                    f"not {type(setting).__name__}",
                    setting=key,
                )
            if not setting.reason.strip():
                raise ConfigurationError(
                    f"preset {name!r}: {key!r} needs a one-line reason", setting=key
                )
        self.name = name
        self.description = description
        self._settings: Mapping[str, Setting] = MappingProxyType(dict(settings))

    @property
    def settings(self) -> Mapping[str, Setting]:
        """The preset's settings with their reasons (read-only)."""
        return self._settings

    def reason(self, key: str) -> str:
        """Return the one-line reason for ``key``.

        Raises:
            KeyError: ``key`` is not in this preset.
        """
        return self._settings[key].reason

    def with_(self, name: str | None = None, /, **changes: Any) -> Preset:
        """Derive a new preset with some values changed or added.

        Args:
            name: The new preset's name; defaults to ``"<name>+changes"``.
            **changes: Setting names to values, or to :class:`Setting` objects
                to give a reason. Dict settings may be given as ``a__b`` for
                ``a.b`` (``broker_transport_options__visibility_timeout``).

        Returns:
            A new preset; this one is unchanged.
        """
        merged = dict(self._settings)
        for key, value in changes.items():
            dotted = key.replace("__", ".", 1)
            merged[dotted] = (
                value
                if isinstance(value, Setting)
                else Setting(value, f"changed from preset {self.name!r} with with_()")
            )
        return Preset(name or f"{self.name}+changes", self.description, merged)

    def __getitem__(self, key: str) -> Any:
        return self._settings[key].value

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def __repr__(self) -> str:
        return f"<Preset {self.name!r}: {len(self)} settings>"


def _s(value: Any, reason: str) -> Setting:
    return Setting(value, reason)


_JSON_ONLY = {
    "task_serializer": _s("json", "JSON only: pickle from the broker is remote code execution."),
    "result_serializer": _s("json", "JSON only, for results too."),
    "accept_content": _s(["json"], "Workers refuse anything but JSON."),
    "result_accept_content": _s(["json"], "Clients refuse results that are not JSON."),
}

_RELIABLE_DELIVERY = {
    "task_acks_late": _s(
        True, "Ack after the task ran, so a worker that dies mid-task leaves it to redeliver."
    ),
    "task_acks_on_failure": _s(
        True, "A task that failed is acked (and recorded), not redelivered in a loop."
    ),
    "task_acks_on_timeout": _s(
        True, "A task killed by its hard time limit is acked, not redelivered in a loop."
    ),
    "task_reject_on_worker_lost": _s(
        True, "Requeue a task whose pool process died (OOM kill, SIGKILL) instead of failing it."
    ),
    "task_retry_on_worker_lost": _s(
        True, "Bound those redeliveries by max_retries, so a task that kills its worker stops."
    ),
    "broker_transport_options.visibility_timeout": _s(
        DERIVED,
        "Derived: ETA horizon + retry backoff cap + prefetch x hard time limit, plus 10%, "
        "so no waiting or running task is redelivered while its worker lives.",
    ),
    "broker_transport_options.unacked_restore_interval": _s(
        10, "Sweep for expired unacked messages every 10 s (kombu default 10)."
    ),
    "broker_transport_options.unacked_restore_throttle": _s(
        1, "Scan on every sweep, not every 10th: a dead worker's task returns ~1 VT later."
    ),
}

_DEAD_LETTERS = {
    "celeryredis_dead_letter": _s(
        True, "Tasks that fail for good and poison messages are kept, to look at and replay."
    ),
    "worker_consumer": _s(
        "celeryredis.worker:Consumer",
        "Celery's consumer plus dead-lettering of undecodable messages (Celery drops them).",
    ),
}

_CONNECTION_SAFETY = {
    "broker_transport_options.socket_timeout": _s(
        10.0, "A dead or half-open broker connection raises instead of hanging forever."
    ),
    "broker_transport_options.socket_connect_timeout": _s(
        5.0, "Connecting to an unreachable broker fails in seconds."
    ),
    "broker_transport_options.socket_keepalive": _s(
        True, "TCP keepalive detects connections that a NAT or firewall dropped."
    ),
    "broker_transport_options.health_check_interval": _s(
        10, "PING idle broker connections every 10 s before using them."
    ),
    "broker_transport_options.retry_on_timeout": _s(
        False,
        "Keeps kombu's batched publish safe from double sends (a retried timed-out MULTI "
        "could send a batch twice).",
    ),
    "broker_connection_retry_on_startup": _s(
        True, "A worker started before Redis waits for it instead of exiting."
    ),
    "broker_connection_max_retries": _s(
        None, "Workers keep reconnecting after a Redis outage, however long."
    ),
    "task_publish_retry_policy.max_retries": _s(
        8, "Publishing rides out a Sentinel failover (~6 s) instead of failing at once."
    ),
    "task_publish_retry_policy.interval_start": _s(0, "First publish retry at once."),
    "task_publish_retry_policy.interval_step": _s(0.5, "Then 0.5 s more per retry."),
    "task_publish_retry_policy.interval_max": _s(
        2, "At most 2 s between publish retries (~11 s in all)."
    ),
    "redis_socket_timeout": _s(
        10.0, "Result-backend reads fail in 10 s instead of 120 s on a dead connection."
    ),
    "redis_socket_connect_timeout": _s(5.0, "Connecting to the result backend fails in 5 s."),
    "redis_socket_keepalive": _s(True, "TCP keepalive on result-backend connections."),
    "redis_retry_on_timeout": _s(True, "Retry a result-backend command once after a timeout."),
    "redis_backend_health_check_interval": _s(
        10, "PING idle result-backend connections (off by default in Celery)."
    ),
    "result_backend_always_retry": _s(
        True, "Storing a result survives a short Redis outage instead of failing the task."
    ),
    "result_backend_max_retries": _s(10, "But gives up after 10 tries, never forever."),
    "result_backend_transport_options.retry_policy": _s(
        {"max_retries": 8, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
        "Publishing subscribes to the result first: ride out a failover (~11 s), not 19 s.",
    ),
}

PRODUCTION: Final = Preset(
    "production",
    "The default. Nothing is lost when a worker dies, nothing hangs when Redis "
    "blips, nothing runs twice while its worker is alive, and only JSON is accepted.",
    {
        **_RELIABLE_DELIVERY,
        **_CONNECTION_SAFETY,
        **_JSON_ONLY,
        **_DEAD_LETTERS,
        "worker_prefetch_multiplier": _s(
            1, "Reserve one task per process: short queues, fair spread, small VT term."
        ),
        "task_time_limit": _s(
            1800, "Every task has a hard limit (30 min), so the visibility timeout can cover it."
        ),
        "task_soft_time_limit": _s(
            1740, "SoftTimeLimitExceeded a minute before the hard kill, to clean up."
        ),
        "celeryredis_eta_horizon": _s(
            900.0, "Countdowns/ETAs up to 15 min; longer ones belong in a scheduler."
        ),
        "celeryredis_retry_backoff_max": _s(600.0, "Retry delays up to 10 min (Celery's cap)."),
        "result_expires": _s(86400, "Results expire after a day, so Redis cannot fill up."),
        "result_extended": _s(True, "Results keep task name, args and queue for debugging."),
        "task_track_started": _s(True, "A running task reports STARTED, not PENDING."),
        "worker_cancel_long_running_tasks_on_connection_loss": _s(
            True, "Cancel unackable tasks on broker loss (Celery 6 default); they redeliver."
        ),
        "worker_max_tasks_per_child": _s(1000, "Recycle pool processes to bound memory leaks."),
        "celeryredis_heartbeat_interval": _s(
            5.0, "A probe sees a dead, frozen or disconnected worker within 15 s."
        ),
        "worker_soft_shutdown_timeout": _s(
            30.0, "On SIGTERM, give running tasks 30 s to finish before requeueing them."
        ),
        "celeryredis_transport": _s(
            "reliable",
            "Atomic batched fetch with leases: no loss on half-open connections, long tasks "
            "and ETAs run once, a dead worker's tasks return in ~31 s, "
            "1.8-2.3x stock's drain rate.",
        ),
        "celeryredis_lease_seconds": _s(
            30.0, "A dead or frozen worker's messages are requeued 30 s after its last renewal."
        ),
    },
)

DEVELOPMENT: Final = Preset(
    "development",
    "For a laptop: production's delivery semantics, shorter limits, and a worker "
    "that gives up quickly when Redis is not running.",
    {
        **_RELIABLE_DELIVERY,
        **_CONNECTION_SAFETY,
        **_JSON_ONLY,
        **_DEAD_LETTERS,
        "worker_prefetch_multiplier": _s(1, "Same delivery semantics as production."),
        "task_time_limit": _s(300, "Runaway tasks are killed after 5 min."),
        "task_soft_time_limit": _s(290, "Soft limit 10 s before the hard one."),
        "celeryredis_eta_horizon": _s(300.0, "Countdowns up to 5 min while developing."),
        "celeryredis_retry_backoff_max": _s(60.0, "Retries come back within a minute."),
        "broker_connection_max_retries": _s(
            10, "A worker without Redis gives up after ~10 tries instead of waiting forever."
        ),
        "result_expires": _s(3600, "Results expire after an hour."),
        "result_extended": _s(True, "Results keep task name, args and queue for debugging."),
        "task_track_started": _s(True, "A running task reports STARTED."),
        "worker_send_task_events": _s(True, "Events on, so Flower and `celery events` work."),
        "celeryredis_heartbeat_interval": _s(5.0, "Same liveness probe as production."),
        "worker_cancel_long_running_tasks_on_connection_loss": _s(
            True, "Celery 6 behaviour, same as production."
        ),
        "celeryredis_transport": _s(
            "reliable",
            "Production's transport, so a laptop sees production's leases and acks "
            "(stock kombu with a warning on Redis < 6.2 or without scripting).",
        ),
    },
)

THROUGHPUT: Final = Preset(
    "throughput",
    "For high-volume idempotent work where speed beats at-least-once delivery: "
    "acks early, no results (.get() raises ResultNotStoredError), a deeper prefetch, "
    "the reliable transport. A task running when its worker dies is lost (unless its "
    "early ack had not reached Redis yet: then it runs again); prefetched tasks that "
    "had not started return after the lease.",
    {
        **_CONNECTION_SAFETY,
        **_JSON_ONLY,
        **_DEAD_LETTERS,
        "task_acks_late": _s(False, "Ack on receipt: fewer round trips; a crash loses the task."),
        "task_ignore_result": _s(
            True,
            "No results are stored: .get() raises ResultNotStoredError at once; give "
            "ignore_result=False to the tasks whose results you need.",
        ),
        "worker_prefetch_multiplier": _s(16, "Keep each process fed between broker round trips."),
        "task_time_limit": _s(300, "A bounded hard limit keeps the prefetched tail bounded."),
        "task_soft_time_limit": _s(290, "Soft limit 10 s before the hard one."),
        "celeryredis_eta_horizon": _s(300.0, "Countdowns/ETAs up to 5 min."),
        "celeryredis_retry_backoff_max": _s(300.0, "Retry delays up to 5 min."),
        "broker_transport_options.visibility_timeout": _s(
            DERIVED,
            "Derived: ETA horizon + retry backoff cap + (prefetch-1) x hard time limit, plus 10%.",
        ),
        "broker_transport_options.unacked_restore_interval": _s(
            10, "Sweep for expired unacked messages every 10 s."
        ),
        "broker_transport_options.unacked_restore_throttle": _s(1, "Scan on every sweep."),
        "result_expires": _s(3600, "Results that are stored expire after an hour."),
        "celeryredis_heartbeat_interval": _s(5.0, "Same liveness probe as production."),
        "worker_cancel_long_running_tasks_on_connection_loss": _s(True, "Celery 6 behaviour."),
        "celeryredis_transport": _s(
            "reliable",
            "Batched fetch with acks on the next fetch: 2.1-3.7x stock's drain; a dead "
            "worker's prefetched tasks return after the lease, not the visibility timeout.",
        ),
    },
)

TESTING: Final = Preset(
    "testing",
    "For host projects' test suites against a real Redis and a real worker (not "
    "eager mode): production's semantics with timeouts of seconds, so a broken "
    "test fails fast instead of hanging.",
    {
        **_RELIABLE_DELIVERY,
        **_CONNECTION_SAFETY,
        **_JSON_ONLY,
        **_DEAD_LETTERS,
        "worker_prefetch_multiplier": _s(1, "Same delivery semantics as production."),
        "task_time_limit": _s(30, "A stuck task fails the test in 30 s."),
        "task_soft_time_limit": _s(25, "Soft limit 5 s before the hard one."),
        "celeryredis_eta_horizon": _s(10.0, "Tests use countdowns of seconds."),
        "celeryredis_retry_backoff_max": _s(5.0, "Retries in tests come back within 5 s."),
        "broker_transport_options.unacked_restore_interval": _s(
            1, "Redeliver a killed worker's task within about a second of its timeout."
        ),
        "broker_transport_options.socket_timeout": _s(5.0, "Tests fail fast on a dead Redis."),
        "broker_transport_options.socket_connect_timeout": _s(2.0, "Tests fail fast."),
        "broker_transport_options.health_check_interval": _s(5, "Notice a dead connection fast."),
        "broker_connection_timeout": _s(2.0, "Give up connecting within 2 s per attempt."),
        "broker_connection_max_retries": _s(3, "A worker without Redis exits quickly."),
        "task_publish_retry_policy.max_retries": _s(2, "A publish without Redis fails fast."),
        "task_publish_retry_policy.interval_max": _s(0.5, "Short publish retries."),
        "result_backend_transport_options.retry_policy": _s(
            {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
            "A publish without Redis fails fast (result subscription retries).",
        ),
        "redis_socket_timeout": _s(5.0, "Result reads fail fast."),
        "redis_socket_connect_timeout": _s(2.0, "Result connects fail fast."),
        "result_backend_max_retries": _s(2, "A dead result backend fails the test quickly."),
        "result_expires": _s(600, "Results from tests expire in 10 min."),
        "result_extended": _s(True, "Results keep task name and args for assertions."),
        "task_track_started": _s(True, "Tests can observe STARTED."),
        "worker_hijack_root_logger": _s(False, "Leave the test runner's logging alone."),
        "celeryredis_heartbeat_interval": _s(
            1.0, "Tests see a dead or frozen worker's heartbeat expire within 3 s."
        ),
        "worker_cancel_long_running_tasks_on_connection_loss": _s(
            True, "Celery 6 behaviour, same as production."
        ),
    },
)

#: Every built-in preset by name.
PRESETS: Final[Mapping[str, Preset]] = MappingProxyType(
    {p.name: p for p in (PRODUCTION, DEVELOPMENT, THROUGHPUT, TESTING)}
)


def get_preset(name: str) -> Preset:
    """Return the built-in preset called ``name``.

    Raises:
        ConfigurationError: No preset has that name; the message lists them.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}, "
            "or pass a Preset or a dict of settings",
            setting="preset",
        ) from None


# Settings Celery reads with conf.get() without listing them in its defaults
# (celery/backends/redis.py, celery/backends/base.py in 5.7).
_HIDDEN_CELERY_SETTINGS: Final = frozenset(
    {
        "redis_backend_health_check_interval",
        "redis_backend_credential_provider",
        "redis_client_name",
        "result_backend_thread_safe",
        "result_failure_expires",
        "result_compression",
        "result_chord_expires",
        "result_backend_max_retries",
        "result_backend_always_retry",
        "result_backend_base_sleep_between_retries_ms",
        "result_backend_max_sleep_between_retries_ms",
    }
)


@functools.cache
def known_settings() -> frozenset[str]:
    """Every setting name celeryredis accepts: Celery's (lower case) and ``celeryredis_*``."""
    from celery.app.defaults import SETTING_KEYS  # noqa: PLC0415

    return frozenset(SETTING_KEYS) | _HIDDEN_CELERY_SETTINGS | frozenset(LIBRARY_SETTINGS)
