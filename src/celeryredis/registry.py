"""The registry of celeryredis's own settings (``celeryredis_*``): one home for each.

Each setting has a name, a default, a type, a one-line reason and, where it has one, the
closed set of values it accepts. Presets, validation, the settings layer of
``celeryredis.app``, the worker, the transport, the dead-letter queue, the task bases
and the reference page read it from here; nothing else spells a default out.

Example:
    >>> from celeryredis.registry import default, setting
    >>> default("celeryredis_lease_seconds")
    30.0
    >>> setting({"celeryredis_lease_seconds": None}, "celeryredis_lease_seconds")
    30.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

__all__ = ["SETTINGS", "LibrarySetting", "default", "setting", "uses_reliable_transport"]

Kind = Literal["float", "int", "bool", "str", "names", "dict"]


@dataclass(frozen=True)
class LibrarySetting:
    """One ``celeryredis_*`` setting.

    Attributes:
        name: The setting's name.
        default: Its value when neither a preset nor the host sets it.
        type: ``float`` (seconds), ``int``, ``bool``, ``str``, ``names`` (a sequence of
            strings) or ``dict``.
        reason: What it does, in one line.
        choices: The values it accepts, when they are a closed set.
    """

    name: str
    default: Any
    type: Kind
    reason: str
    choices: tuple[str, ...] | None = None


#: Every ``celeryredis_*`` setting, by name.
SETTINGS: Final[Mapping[str, LibrarySetting]] = MappingProxyType(
    {
        s.name: s
        for s in (
            LibrarySetting(
                "celeryredis_eta_horizon",
                900.0,
                "float",
                "Longest countdown/ETA (seconds) the app publishes; part of the visibility-"
                "timeout formula.",
            ),
            LibrarySetting(
                "celeryredis_retry_backoff_max",
                600.0,
                "float",
                "Longest retry delay (seconds) any task may choose; part of the visibility-"
                "timeout formula (Celery's own retry_backoff_max default).",
            ),
            LibrarySetting(
                "celeryredis_allow_pickle",
                False,
                "bool",
                "Explicit opt-in to pickle serialisation (refused by validation otherwise).",
            ),
            LibrarySetting(
                "celeryredis_dead_letter",
                False,
                "bool",
                "Keep tasks that fail for good (and poison messages) in the dead-letter queue.",
            ),
            LibrarySetting(
                "celeryredis_dead_letter_max_len",
                10000,
                "int",
                "Most entries the dead-letter stream keeps (the oldest go first).",
            ),
            LibrarySetting(
                "celeryredis_dead_letter_max_age",
                604800.0,
                "float",
                "Seconds a dead-letter entry is kept.",
            ),
            LibrarySetting(
                "celeryredis_heartbeat_interval",
                5.0,
                "float",
                "Seconds between a worker's heartbeats (its key lives three intervals); 0 turns "
                "the heartbeat off.",
            ),
            LibrarySetting(
                "celeryredis_sensitive_names",
                (),
                "names",
                "Extra words that make a task argument name sensitive (its value is shown as ***).",
            ),
            LibrarySetting(
                "celeryredis_transport",
                "stock",
                "str",
                "Which kombu transport consumes: 'reliable' (celeryredis's atomic batched fetch "
                "with leases, wire-compatible with stock) or 'stock' (kombu's BRPOP transport).",
                choices=("reliable", "stock"),
            ),
            LibrarySetting(
                "celeryredis_lease_seconds",
                30.0,
                "float",
                "Reliable transport: seconds a held message's lease lasts (renewed every third); "
                "a dead worker's messages return this long after its last renewal.",
            ),
            LibrarySetting(
                "celeryredis_lease_sweep_interval",
                1.0,
                "float",
                "Reliable transport: seconds between sweeps that requeue expired leases.",
            ),
            LibrarySetting(
                "celeryredis_fetch_batch_max",
                64,
                "int",
                "Reliable transport: most messages one fetch pops (the prefetch window bounds it "
                "too).",
            ),
            LibrarySetting(
                "celeryredis_reserve_seconds",
                0.25,
                "float",
                "Reliable transport, in a prefork worker's main process: each fetch takes one "
                "message more than the prefetch window, held by the transport (leased, unseen "
                "by Celery) and handed over when a slot frees, without a round trip; if none "
                "frees within this many seconds it goes back to the head of its queue, "
                "unchanged. 0: off.",
            ),
            LibrarySetting(
                "celeryredis_cluster_partitions",
                {},
                "dict",
                "Redis Cluster broker: {queue name: N} splits a hot queue into N partitions, "
                "each its own hash slot (FIFO and priorities then hold per partition only).",
            ),
            LibrarySetting(
                "celeryredis_durable_publish",
                0,
                "int",
                "Replicas each publish waits for (Redis WAIT on the publishing connection); "
                "fewer within celeryredis_durable_publish_timeout raise NotDurableError. 0: "
                "no wait, an acknowledged publish can be lost if the master dies before "
                "replicating it.",
            ),
            LibrarySetting(
                "celeryredis_durable_publish_timeout",
                1.0,
                "float",
                "Seconds a durable publish waits for its replicas at most.",
            ),
            LibrarySetting(
                "celeryredis_eager_redis",
                False,
                "bool",
                "Let the task bases use Redis (unique locks, rate limits, dead letters, "
                "counters) when a task runs eagerly (task_always_eager, apply()); off, eager "
                "runs never touch Redis, so a host's eager tests leave nothing in it and need "
                "no Redis running.",
            ),
            LibrarySetting(
                "celeryredis_validate",
                "error",
                "str",
                "What a failed validation check does: 'error', 'warn' or 'ignore'.",
                choices=("error", "warn", "ignore"),
            ),
            LibrarySetting(
                "celeryredis_validate_checks",
                {},
                "dict",
                "Per-check override of celeryredis_validate: {check_id: 'error'|'warn'|'ignore'}.",
            ),
        )
    }
)


def default(name: str) -> Any:
    """The default of the ``celeryredis_*`` setting ``name``.

    Raises:
        KeyError: ``name`` is not a celeryredis setting.
    """
    return SETTINGS[name].default


def setting(conf: Mapping[str, Any], name: str) -> Any:
    """The value of ``name`` in ``conf`` (``app.conf`` or a dict); its default if unset or None."""
    value = conf.get(name)
    return SETTINGS[name].default if value is None else value


def uses_reliable_transport(conf: Mapping[str, Any]) -> bool:
    """True when ``celeryredis_transport`` selects the reliable (leased) transport."""
    return bool(setting(conf, "celeryredis_transport") == "reliable")
