"""Cross-setting checks: settings in, findings out; no I/O.

Every check has a stable id, a severity (``error`` or ``warning``) and a message
that says what is wrong and how to fix it. :func:`run_checks` returns the
findings for a Celery-shaped settings mapping (a plain dict or ``app.conf``);
:func:`enforce` applies the validation mode: ``"error"`` raises one
:class:`~celeryredis.exceptions.ConfigurationError` listing every error-severity
finding and logs the warnings, ``"warn"`` logs everything, ``"ignore"`` drops
everything. The mode can be overridden per check id.

The checks run when :func:`celeryredis.make_app` / :func:`celeryredis.configure`
build the app, and again when a worker starts (see :mod:`celeryredis.worker`),
so settings changed in between are caught too.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from celeryredis.exceptions import ConfigurationError
from celeryredis.registry import setting, uses_reliable_transport
from celeryredis.urls import RedisURL, parse_redis_url

__all__ = [
    "BACKEND_TRANSPORT_OPTIONS",
    "CHECKS",
    "MODES",
    "UNWAIVABLE",
    "Check",
    "Finding",
    "Mode",
    "broker_transport_options",
    "derive_visibility_timeout",
    "enforce",
    "normalise_modes",
    "old_setting_names",
    "required_visibility_timeout",
    "run_checks",
    "settings_view",
    "unknown_namespaced_settings",
    "uses_reliable_transport",
]

logger = logging.getLogger(__name__)

Mode = Literal["error", "warn", "ignore"]

#: Checks whose findings no mode turns into a warning: what they refuse cannot be run
#: at all. With no broker URL Celery connects to its own default broker,
#: ``amqp://guest@localhost:5672//``, so ``validate="warn"`` would only trade the error
#: for a confusing one later, from whatever listens there.
UNWAIVABLE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "broker-url": (
            "with no broker URL Celery would connect to its own default, "
            "amqp://guest@localhost:5672//"
        ),
    }
)
Severity = Literal["error", "warning"]

#: The accepted validation modes.
MODES: Final = ("error", "warn", "ignore")


@functools.cache
def broker_transport_options() -> frozenset[str]:
    """Return the ``broker_transport_options`` keys that kombu 5.7's Redis transport reads."""
    # kombu copies only listed names from transport_options (virtual/base.py) and
    # ignores the rest silently; these lists are the source of truth.
    from kombu.transport.redis import SentinelChannel  # noqa: PLC0415 - keep import cost lazy

    return frozenset(SentinelChannel.from_transport_options) | {
        # Read elsewhere in kombu 5.7 (redis.py register_with_event_loop, virtual Transport).
        "polling_interval",
        "reauth_check_interval",
        # Connection-level failover options (kombu/connection.py _extract_failover_opts).
        "max_retries",
        "interval_start",
        "interval_step",
        "interval_max",
        "connect_retries_timeout",
        "errback",
        "callback",
        # Sentinel-only keys are in SentinelChannel.from_transport_options; master_name
        # and sentinel_kwargs are read from transport_options directly.
        "master_name",
        "sentinel_kwargs",
        "min_other_sentinels",
        # Read by celeryredis's reliable transport (celeryredis.transport), set from the
        # celeryredis_lease_seconds / _lease_sweep_interval / _fetch_batch_max /
        # _reserve_seconds settings.
        "lease_seconds",
        "lease_sweep_interval",
        "fetch_batch_max",
        "reserve_seconds",
        # Read by the Redis Cluster transport (transport/_cluster.py); ``partitions`` is
        # set from celeryredis_cluster_partitions.
        "partitions",
        "wake_up",
        "idle_fetch_interval",
        # ... and by its publish, from celeryredis_durable_publish / _timeout.
        "durable_publish",
        "durable_publish_timeout",
    }


#: ``result_backend_transport_options`` keys that Celery 5.7's Redis backend reads.
BACKEND_TRANSPORT_OPTIONS: Final = frozenset(
    {
        "retry_policy",
        "result_chord_ordered",
        "global_keyprefix",
        "additional_connection_errors",
        "master_name",
        "sentinel_kwargs",
        "min_other_sentinels",
    }
)

_PICKLE_NAMES = frozenset({"pickle", "application/x-python-serialize"})


@dataclass(frozen=True)
class Finding:
    """One failed check.

    Attributes:
        check_id: The stable id of the check.
        severity: ``"error"`` or ``"warning"`` before the mode is applied.
        message: What is wrong and how to fix it (secrets redacted).
        settings: The setting names involved.
    """

    check_id: str
    severity: Severity
    message: str
    settings: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"[{self.check_id}] {self.message}"


@dataclass(frozen=True)
class Check:
    """A validation check.

    Attributes:
        id: Stable id, used in findings and in per-check mode overrides.
        severity: The default severity of its findings.
        title: One line: what the check refuses.
        why: One line: what goes wrong if it is ignored.
        run: The function that returns the findings for a settings mapping.
    """

    id: str
    severity: Severity
    title: str
    why: str
    run: Callable[[Mapping[str, Any]], Iterable[Finding]]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _opts(conf: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = conf.get(name)
    return value if isinstance(value, Mapping) else {}


def _url(conf: Mapping[str, Any], name: str) -> RedisURL | None:
    value = conf.get(name)
    if not isinstance(value, str) or not value.startswith(
        ("redis", "rediss", "sentinel", "unix", "redis+socket")
    ):
        return None
    try:
        return parse_redis_url(value, setting=name)
    except ConfigurationError:
        return None  # URL errors are raised where the URL is resolved, not here.


def _effective_prefetch(conf: Mapping[str, Any]) -> float | None:
    if conf.get("worker_disable_prefetch"):
        return 1.0
    return _num(conf.get("worker_prefetch_multiplier", 4))


def required_visibility_timeout(conf: Mapping[str, Any]) -> float | None:
    """Return the smallest safe visibility timeout for these settings.

    With Redis, an unacked message is redelivered once it has been held longer
    than the visibility timeout, counted from when a worker fetched it. A message
    can legitimately be held for its ETA/countdown (at most the ETA horizon), a
    retry's backoff (at most the backoff cap), and the time the tasks ahead of it
    in the worker's prefetch run (prefetch x hard time limit, one fewer with
    early acks). The timeout must exceed that sum.

    Args:
        conf: Celery-shaped settings.

    Returns:
        ``H + cap + M*T`` (``(M-1)*T`` without ``task_acks_late``), or None when
        it cannot be bounded (no hard time limit, or unlimited prefetch).
    """
    horizon = _num(setting(conf, "celeryredis_eta_horizon")) or 0.0
    backoff = _num(setting(conf, "celeryredis_retry_backoff_max")) or 0.0
    limit = _num(conf.get("task_time_limit"))
    prefetch = _effective_prefetch(conf)
    if limit is None or prefetch is None or prefetch <= 0:
        return None
    held = prefetch if conf.get("task_acks_late") else prefetch - 1
    return horizon + backoff + max(held, 0) * limit


def derive_visibility_timeout(conf: Mapping[str, Any]) -> float | None:
    """Return the visibility timeout presets derive: the requirement plus 10% (at least 1 s).

    Returns None when :func:`required_visibility_timeout` cannot bound it.
    """
    required = required_visibility_timeout(conf)
    if required is None:
        return None
    derived = required + max(1.0, 0.1 * required)
    return float(math.ceil(derived)) if math.isfinite(derived) else None


# --- the checks ---------------------------------------------------------------------------


def _check_visibility_timeout(conf: Mapping[str, Any]) -> Iterable[Finding]:
    if uses_reliable_transport(conf):
        # Leases: a held message (running, prefetched or waiting for its ETA) is renewed
        # while its worker lives, so the visibility timeout no longer bounds how long a
        # task may wait or run; the transport check covers the lease settings.
        return
    vt = _num(_opts(conf, "broker_transport_options").get("visibility_timeout", 3600))
    prefetch = _effective_prefetch(conf)
    if prefetch is not None and prefetch <= 0:
        yield Finding(
            "visibility-timeout",
            "error",
            "worker_prefetch_multiplier=0 lets a worker reserve unlimited messages; with Redis "
            "the ones waiting longer than the visibility timeout run twice. Set "
            "worker_prefetch_multiplier to 1 (or a small number).",
            ("worker_prefetch_multiplier",),
        )
        return
    required = required_visibility_timeout(conf)
    if required is None or vt is None:
        return  # acks-late-without-time-limit reports the missing hard limit.
    if vt <= required:
        horizon = setting(conf, "celeryredis_eta_horizon")
        backoff = setting(conf, "celeryredis_retry_backoff_max")
        factor = "prefetch" if conf.get("task_acks_late") else "(prefetch - 1)"
        yield Finding(
            "visibility-timeout",
            "error",
            f"broker_transport_options['visibility_timeout']={vt:g} s is not above "
            f"celeryredis_eta_horizon ({horizon} s) + celeryredis_retry_backoff_max "
            f"({backoff} s) + {factor} x task_time_limit ({prefetch:g} x "
            f"{conf.get('task_time_limit')} s) = {required:g} s, so a task that waits or "
            "runs that long is redelivered and runs twice. Leave visibility_timeout unset "
            "(celeryredis derives it), raise it above that sum, or lower the other terms.",
            (
                "broker_transport_options",
                "celeryredis_eta_horizon",
                "celeryredis_retry_backoff_max",
                "task_time_limit",
                "worker_prefetch_multiplier",
            ),
        )


def _check_acks_late_time_limit(conf: Mapping[str, Any]) -> Iterable[Finding]:
    if conf.get("task_acks_late") and _num(conf.get("task_time_limit")) is None:
        yield Finding(
            "acks-late-without-time-limit",
            "error",
            "task_acks_late is on but task_time_limit is not set: a task that runs longer than "
            "the visibility timeout is redelivered while it still runs. Set task_time_limit "
            "(seconds) to bound every task.",
            ("task_acks_late", "task_time_limit"),
        )


def _check_soft_limit(conf: Mapping[str, Any]) -> Iterable[Finding]:
    soft, hard = _num(conf.get("task_soft_time_limit")), _num(conf.get("task_time_limit"))
    if soft is not None and hard is not None and soft >= hard:
        yield Finding(
            "soft-limit-not-below-hard",
            "error",
            f"task_soft_time_limit ({soft:g} s) must be below task_time_limit ({hard:g} s), "
            "or SoftTimeLimitExceeded never gets a chance to run; lower the soft limit.",
            ("task_soft_time_limit", "task_time_limit"),
        )


def _unknown_keys(conf: Mapping[str, Any], name: str, known: frozenset[str]) -> Iterable[Finding]:
    for key in sorted(_opts(conf, name)):
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
        yield Finding(
            "unknown-transport-option",
            "error",
            f"{name} has the key {key!r}, which the Redis transport never reads (kombu and "
            f"Celery ignore unknown keys silently); {hint}",
            (name,),
        )


def _check_transport_options(conf: Mapping[str, Any]) -> Iterable[Finding]:
    yield from _unknown_keys(conf, "broker_transport_options", broker_transport_options())
    yield from _unknown_keys(conf, "result_backend_transport_options", BACKEND_TRANSPORT_OPTIONS)


def _ssl_dict_cert_reqs(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    reqs = value.get("ssl_cert_reqs", value.get("cert_reqs"))
    if reqs is None:
        return None
    text = getattr(reqs, "name", str(reqs)).lower()
    return {"cert_required": "required", "cert_optional": "optional", "cert_none": "none"}.get(
        text, text
    )


def _tls_level(conf: Mapping[str, Any], url_setting: str, ssl_setting: str) -> str | None:
    url = _url(conf, url_setting)
    if url is None or not url.is_tls:
        return None
    return url.ssl_cert_reqs or _ssl_dict_cert_reqs(conf.get(ssl_setting)) or "missing"


def _check_tls(conf: Mapping[str, Any]) -> Iterable[Finding]:
    for url_setting, ssl_setting in (
        ("broker_url", "broker_use_ssl"),
        ("result_backend", "redis_backend_use_ssl"),
    ):
        level = _tls_level(conf, url_setting, ssl_setting)
        if level in {"missing", "none"}:
            what = "does not say" if level == "missing" else "turns off"
            yield Finding(
                "tls-without-verification",
                "error",
                f"{url_setting} is a rediss:// URL that {what} certificate verification "
                "(kombu then falls back to CERT_NONE: anyone on the path can impersonate "
                f"Redis). Add ?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem to the URL, "
                f"or set {ssl_setting}={{'ssl_cert_reqs': ssl.CERT_REQUIRED, ...}}.",
                (url_setting, ssl_setting),
            )


def _check_tls_optional(conf: Mapping[str, Any]) -> Iterable[Finding]:
    for url_setting, ssl_setting in (
        ("broker_url", "broker_use_ssl"),
        ("result_backend", "redis_backend_use_ssl"),
    ):
        if _tls_level(conf, url_setting, ssl_setting) == "optional":
            yield Finding(
                "tls-optional-verification",
                "warning",
                f"{url_setting} uses ssl_cert_reqs=optional: a certificate is checked only if "
                "the server sends one. Use ssl_cert_reqs=required.",
                (url_setting, ssl_setting),
            )


def _check_sentinel(conf: Mapping[str, Any]) -> Iterable[Finding]:
    for url_setting, options in (
        ("broker_url", "broker_transport_options"),
        ("result_backend", "result_backend_transport_options"),
    ):
        url = _url(conf, url_setting)
        if url is not None and url.is_sentinel and not _opts(conf, options).get("master_name"):
            yield Finding(
                "sentinel-without-master-name",
                "error",
                f"{url_setting} is a sentinel:// URL but {options} has no 'master_name'; "
                f"set {options}={{'master_name': 'mymaster'}} (the name your sentinels monitor).",
                (url_setting, options),
            )


def _as_names(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, Iterable):
        return {str(v) for v in value}
    return set()


def _check_pickle(conf: Mapping[str, Any]) -> Iterable[Finding]:
    if conf.get("celeryredis_allow_pickle"):
        return
    for name in ("accept_content", "result_accept_content", "task_serializer", "result_serializer"):
        if _as_names(conf.get(name)) & _PICKLE_NAMES:
            yield Finding(
                "pickle-accepted",
                "error",
                f"{name} allows pickle: anyone who can write to Redis can run code in your "
                "workers and clients. Use JSON, or set celeryredis_allow_pickle=True to accept "
                "the risk explicitly.",
                (name, "celeryredis_allow_pickle"),
            )


def old_setting_names() -> Mapping[str, str]:
    """Return Celery's table of old upper-case setting names to their new names."""
    from celeryredis import _celery_compat  # noqa: PLC0415

    return _celery_compat.old_setting_names()


def _check_old_names(conf: Mapping[str, Any]) -> Iterable[Finding]:
    table = old_setting_names()
    for key in sorted(k for k in conf if isinstance(k, str) and k in table):
        yield Finding(
            "old-setting-names",
            "error",
            f"{key!r} is an old upper-case setting name; use {table[key]!r} (Celery refuses to "
            "mix old and new names, and Celery 6 drops the old ones).",
            (key,),
        )


def _check_broker_url(conf: Mapping[str, Any]) -> Iterable[Finding]:
    if conf.get("broker_url") or conf.get("task_always_eager"):
        return
    yield Finding(
        "broker-url",
        "error",
        "no broker URL: pass make_app(broker_url=...), set the app's broker_url setting "
        "(CELERY_BROKER_URL under Django's namespace), or set $CELERY_BROKER_URL or "
        "$REDIS_URL. celeryredis has no silent localhost default, so no test or worker "
        "reaches a Redis by accident.",
        ("broker_url",),
    )


def settings_view(conf: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The effective settings of ``app.conf`` by their plain names, for the checks.

    ``app.conf`` under a namespace (Django's ``CELERY_``) holds keys such as
    ``CELERY_BROKER_URL`` and every other setting of the host; iterating it would read
    them as old setting names. This view holds each known setting's effective value
    (``conf.get`` resolves the namespace), plus the old upper-case names the host's own
    configuration really uses, so that check still finds them.

    Args:
        conf: ``app.conf`` (or any mapping of settings).
        known: The plain setting names to read.
    """
    finalize = getattr(conf, "finalize", None)
    if callable(finalize):
        finalize()  # an app.conf not loaded yet answers no `in` test until Celery loads it
    view = {name: conf.get(name) for name in known if name in conf}
    table = old_setting_names()
    names = frozenset(known)
    prefix, keys = _host_keys(conf)
    for mapping, key in keys:
        if prefix:
            rest = key[len(prefix) :]
            if rest.lower() not in names and rest.upper() in table:
                view.setdefault(rest.upper(), mapping[key])
        elif key in table and key not in names:
            view.setdefault(key, mapping[key])
    return view


def _host_keys(conf: Any) -> tuple[str, Iterator[tuple[Any, str]]]:
    """The namespace prefix (upper case, "" for none) and the host's own string keys.

    The keys of every layer of ``app.conf`` but Celery's defaults and celeryredis's
    layer (of ``conf`` itself for a plain mapping); under a namespace, only those with
    its prefix.
    """
    prefix = getattr(conf, "prefix", None)
    prefix = prefix.upper() if isinstance(prefix, str) else ""
    maps = getattr(conf, "maps", None)
    sources: list[Any] = list(maps)[:-1] if maps else [conf]

    def keys() -> Iterator[tuple[Any, str]]:
        for mapping in sources:
            if getattr(mapping, "celeryredis_layer", False):
                continue
            for key in list(mapping):
                if isinstance(key, str) and key.upper().startswith(prefix):
                    yield mapping, key

    return prefix, keys()


def unknown_namespaced_settings(conf: Mapping[str, Any], known: Iterable[str]) -> list[Finding]:
    """Findings for the keys of the host's configuration under its namespace nobody knows.

    Under a namespace (Django's ``CELERY_``) a misspelt setting such as
    ``CELERY_TASK_TIME_LIMT`` is ignored by Celery without a word. Every key of the
    host's own configuration with the namespace's prefix must name a Celery or
    ``celeryredis_*`` setting (or an old name, which its own check reports). Without a
    namespace the host's mapping also holds whatever else its module defines, so
    nothing is judged there (``make_app()`` and ``configure()`` refuse a misspelt
    keyword at once).

    Args:
        conf: ``app.conf``.
        known: The plain setting names accepted.
    """
    prefix, keys = _host_keys(conf)
    if not prefix or not getattr(conf, "maps", None):
        return []
    names = frozenset(known)
    table = old_setting_names()
    findings: list[Finding] = []
    seen: set[str] = set()
    for _mapping, key in keys:
        rest = key[len(prefix) :]
        if key in seen or rest.lower() in names or rest.upper() in table:
            continue
        seen.add(key)
        close = difflib.get_close_matches(rest.lower(), sorted(names), n=1, cutoff=0.6)
        hint = f"did you mean {prefix + close[0].upper()!r}? " if close else ""
        findings.append(
            Finding(
                "unknown-setting",
                "error",
                f"{key!r} in the app's configuration is not a Celery or celeryredis "
                f"setting under the {prefix!r} namespace, and Celery would ignore it "
                f"without a word; {hint}(if it belongs to another library, set "
                "celeryredis_validate_checks={'unknown-setting': 'warn'})",
                (key,),
            )
        )
    return findings


def _check_restore_sweep(conf: Mapping[str, Any]) -> Iterable[Finding]:
    if uses_reliable_transport(conf):
        return  # The reliable transport sweeps every celeryredis_lease_sweep_interval.
    opts = _opts(conf, "broker_transport_options")
    vt = _num(opts.get("visibility_timeout", 3600))
    interval = _num(opts.get("unacked_restore_interval", 10)) or 10.0
    throttle = _num(opts.get("unacked_restore_throttle", 10)) or 10.0
    if vt is not None and interval * throttle > vt:
        yield Finding(
            "restore-sweep-slow",
            "warning",
            f"unacked messages are swept every unacked_restore_interval x "
            f"unacked_restore_throttle = {interval * throttle:g} s, longer than the "
            f"visibility timeout ({vt:g} s): a dead worker's task waits that much longer. "
            "Set broker_transport_options unacked_restore_throttle=1.",
            ("broker_transport_options",),
        )


def _check_worker_lost_loop(conf: Mapping[str, Any]) -> Iterable[Finding]:
    if (
        conf.get("task_acks_late")
        and conf.get("task_reject_on_worker_lost")
        and not conf.get("task_retry_on_worker_lost")
    ):
        yield Finding(
            "worker-lost-redelivery-loop",
            "warning",
            "task_reject_on_worker_lost without task_retry_on_worker_lost requeues a task that "
            "kills its worker forever; set task_retry_on_worker_lost=True to bound it by "
            "max_retries.",
            ("task_reject_on_worker_lost", "task_retry_on_worker_lost"),
        )


def _check_heartbeat_interval(conf: Mapping[str, Any]) -> Iterable[Finding]:
    value = setting(conf, "celeryredis_heartbeat_interval")
    interval = _num(value)
    if interval is None or interval < 0 or (0 < interval < 0.1):
        yield Finding(
            "heartbeat-interval",
            "error",
            f"celeryredis_heartbeat_interval={value!r} is not valid: give seconds between "
            "worker heartbeats of at least 0.1 (5 is the default), or 0 to turn them off.",
            ("celeryredis_heartbeat_interval",),
        )
    elif interval > 60:
        yield Finding(
            "heartbeat-interval",
            "warning",
            f"celeryredis_heartbeat_interval={interval:g} s: a liveness probe notices a dead "
            f"or frozen worker only after {3 * interval:g} s; 5 to 30 s is usual.",
            ("celeryredis_heartbeat_interval",),
        )


def _check_transport(conf: Mapping[str, Any]) -> Iterable[Finding]:
    name = setting(conf, "celeryredis_transport")
    if name not in ("reliable", "stock"):
        yield Finding(
            "transport",
            "error",
            f"celeryredis_transport={name!r} is not a transport; use 'reliable' (atomic "
            "batched fetch with leases) or 'stock' (kombu's own Redis transport).",
            ("celeryredis_transport",),
        )
        return
    lease = _num(setting(conf, "celeryredis_lease_seconds"))
    sweep = _num(setting(conf, "celeryredis_lease_sweep_interval"))
    batch = setting(conf, "celeryredis_fetch_batch_max")
    if lease is None or lease < 1:
        yield Finding(
            "transport",
            "error",
            f"celeryredis_lease_seconds={conf.get('celeryredis_lease_seconds')!r} must be at "
            "least 1 second (leases are renewed every third of it; 30 is the default).",
            ("celeryredis_lease_seconds",),
        )
    if sweep is None or sweep < 0.1 or (lease is not None and sweep > lease):
        yield Finding(
            "transport",
            "error",
            f"celeryredis_lease_sweep_interval={conf.get('celeryredis_lease_sweep_interval')!r}"
            " must be from 0.1 s up to celeryredis_lease_seconds (1 is the default): expired "
            "leases are requeued that often.",
            ("celeryredis_lease_sweep_interval", "celeryredis_lease_seconds"),
        )
    reserve = _num(setting(conf, "celeryredis_reserve_seconds"))
    if reserve is None or not 0 <= reserve <= 60:
        yield Finding(
            "transport",
            "error",
            f"celeryredis_reserve_seconds={conf.get('celeryredis_reserve_seconds')!r} must be "
            "a number of seconds from 0 (off) to 60 (0.25 is the default): how long a prefork "
            "worker holds the message it fetched one ahead of its prefetch window before "
            "putting it back.",
            ("celeryredis_reserve_seconds",),
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        yield Finding(
            "transport",
            "error",
            f"celeryredis_fetch_batch_max={batch!r} must be a whole number from 1 to 10000 "
            "(64 is the default).",
            ("celeryredis_fetch_batch_max",),
        )
    yield from _check_durable_publish(conf)


def _check_durable_publish(conf: Mapping[str, Any]) -> Iterable[Finding]:
    replicas = setting(conf, "celeryredis_durable_publish")
    timeout = _num(setting(conf, "celeryredis_durable_publish_timeout"))
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 100:
        yield Finding(
            "transport",
            "error",
            f"celeryredis_durable_publish={replicas!r} must be a whole number of replicas "
            "from 0 (off, the default) to 100; 1 makes each publish wait until one replica "
            "has it.",
            ("celeryredis_durable_publish",),
        )
        return
    if timeout is None or not 0.001 <= timeout <= 60:
        yield Finding(
            "transport",
            "error",
            f"celeryredis_durable_publish_timeout="
            f"{conf.get('celeryredis_durable_publish_timeout')!r} must be from 0.001 to 60 "
            "seconds (1 is the default): a publish waits that long for its replicas at most.",
            ("celeryredis_durable_publish_timeout",),
        )
    scheme = str(conf.get("broker_url") or "").split(":", 1)[0]
    if replicas and scheme.endswith(("rediscluster", "redisclusters")):
        yield Finding(
            "transport",
            "error",
            f"celeryredis_durable_publish={replicas} is not supported on a Redis Cluster "
            "broker yet (the cluster transport does not send WAIT); set "
            "celeryredis_durable_publish=0 or use a single-node or Sentinel broker.",
            ("celeryredis_durable_publish", "broker_url"),
        )


def _per_task_only(conf: Mapping[str, Any]) -> Iterable[Finding]:
    """No settings part: checks run per task class or on the app itself.

    Per task class: ``celeryredis_findings``; on the app:
    :func:`celeryredis.worker.app_findings`.
    """
    return ()


#: Every check, by id, in the order they run.
CHECKS: Final[Mapping[str, Check]] = MappingProxyType(
    {
        c.id: c
        for c in (
            Check(
                "visibility-timeout",
                "error",
                "The visibility timeout must exceed ETA horizon + retry backoff cap + "
                "prefetch x hard time limit.",
                "Tasks that wait or run longer are redelivered and run twice.",
                _check_visibility_timeout,
            ),
            Check(
                "acks-late-without-time-limit",
                "error",
                "task_acks_late needs a finite task_time_limit.",
                "A long task outlives the visibility timeout and runs again while running.",
                _check_acks_late_time_limit,
            ),
            Check(
                "soft-limit-not-below-hard",
                "error",
                "task_soft_time_limit must be below task_time_limit.",
                "The soft limit never fires; tasks get no chance to clean up.",
                _check_soft_limit,
            ),
            Check(
                "unknown-transport-option",
                "error",
                "broker/result-backend transport option keys must be ones kombu/Celery read.",
                "A misspelt key is ignored silently and the intended protection is off.",
                _check_transport_options,
            ),
            Check(
                "tls-without-verification",
                "error",
                "rediss:// URLs must verify the server certificate.",
                "kombu falls back to CERT_NONE: TLS without authentication.",
                _check_tls,
            ),
            Check(
                "tls-optional-verification",
                "warning",
                "ssl_cert_reqs=optional checks a certificate only when one is sent.",
                "An attacker who sends no certificate is not checked.",
                _check_tls_optional,
            ),
            Check(
                "sentinel-without-master-name",
                "error",
                "sentinel:// URLs need transport option master_name.",
                "kombu fails at first connect; the result backend has no check at all.",
                _check_sentinel,
            ),
            Check(
                "pickle-accepted",
                "error",
                "Pickle needs the explicit opt-in celeryredis_allow_pickle=True.",
                "Whoever can write to Redis can run code in workers.",
                _check_pickle,
            ),
            Check(
                "old-setting-names",
                "error",
                "Old upper-case setting names are refused.",
                "Celery refuses mixed old and new names, or silently uses the old set.",
                _check_old_names,
            ),
            Check(
                "broker-url",
                "error",
                "A broker URL must be set; there is no silent localhost default. No mode "
                "waives it.",
                "A worker or a test would reach whatever Redis listens on localhost:6379.",
                _check_broker_url,
            ),
            Check(
                "unknown-setting",
                "error",
                "Every key of the host's configuration under its namespace (Django's "
                "CELERY_) names a Celery or celeryredis setting.",
                "Celery ignores a misspelt namespaced setting without a word: "
                "CELERY_TASK_TIME_LIMT leaves the time limit at its default.",
                _per_task_only,
            ),
            Check(
                "task-class",
                "warning",
                "The app's default task class should derive from celeryredis.Task.",
                "@shared_task tasks get no lifecycle records and never reach the dead-letter "
                "queue.",
                _per_task_only,
            ),
            Check(
                "restore-sweep-slow",
                "warning",
                "Unacked messages should be swept at least once per visibility timeout.",
                "A task lost with a dead worker is redelivered much later than expected.",
                _check_restore_sweep,
            ),
            Check(
                "task-retry-backoff",
                "error",
                "A RetryTask's retry_backoff_max must fit the app's celeryredis_retry_backoff_max "
                "(checked per task when it is defined and when a worker starts).",
                "A retry that waits longer than the visibility timeout runs twice.",
                _per_task_only,
            ),
            Check(
                "worker-lost-redelivery-loop",
                "warning",
                "task_reject_on_worker_lost should come with task_retry_on_worker_lost.",
                "A task that kills its worker is requeued forever.",
                _check_worker_lost_loop,
            ),
            Check(
                "transport",
                "error",
                "celeryredis_transport is 'reliable' or 'stock'; lease, sweep, batch and "
                "durable-publish settings are in range (no durable publish on a cluster).",
                "A bad lease lets live workers' messages be redelivered, or dead ones' wait.",
                _check_transport,
            ),
            Check(
                "heartbeat-interval",
                "error",
                "celeryredis_heartbeat_interval must be 0 (off) or at least 0.1 s (over 60 warns).",
                "Heartbeats too tight load Redis; too loose ones make probes slow to notice.",
                _check_heartbeat_interval,
            ),
        )
    }
)


def run_checks(conf: Mapping[str, Any]) -> list[Finding]:
    """Run every check against Celery-shaped settings.

    Args:
        conf: A settings mapping (a dict, or ``app.conf``).

    Returns:
        The findings, in check order; empty when everything is fine.
    """
    findings: list[Finding] = []
    for check in CHECKS.values():
        findings.extend(check.run(conf))
    return findings


def _check_mode(name: str, value: Any) -> Mode:
    if value not in MODES:
        raise ConfigurationError(
            f"{name}={value!r} is not a validation mode; use one of {', '.join(MODES)}",
            setting=name,
        )
    return value  # type: ignore[no-any-return]


def normalise_modes(validate: Any, per_check: Any = None) -> tuple[Mode, Mapping[str, Mode]]:
    """Check and split a validation mode specification.

    Args:
        validate: ``"error"``, ``"warn"`` or ``"ignore"``, or a mapping of check
            ids to modes (whose ``"*"`` key, if any, is the default mode).
        per_check: Extra per-check overrides (``celeryredis_validate_checks``).

    Returns:
        The default mode and the per-check overrides.

    Raises:
        ConfigurationError: An unknown mode or check id, or a check of
            ``UNWAIVABLE`` set to another mode than ``"error"``.
    """
    overrides: dict[str, Any] = {}
    if isinstance(validate, Mapping):
        overrides.update(validate)
        validate = overrides.pop("*", "error")
    default = _check_mode("validate", validate)
    if per_check is not None and not isinstance(per_check, Mapping):
        raise ConfigurationError(
            "celeryredis_validate_checks must be a dict of {check_id: mode}",
            setting="celeryredis_validate_checks",
        )
    overrides.update(per_check or {})
    for check_id, mode in overrides.items():
        if check_id not in CHECKS:
            close = difflib.get_close_matches(str(check_id), list(CHECKS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"checks: {', '.join(CHECKS)}"
            raise ConfigurationError(
                f"unknown validation check id {check_id!r}; {hint}",
                setting="celeryredis_validate_checks",
            )
        _check_mode(f"validate[{check_id!r}]", mode)
        if check_id in UNWAIVABLE and mode != "error":
            raise ConfigurationError(
                f"validation check {check_id!r} cannot be set to {mode!r}: "
                f"{UNWAIVABLE[check_id]}; fix what it reports instead",
                setting="celeryredis_validate_checks",
            )
    return default, MappingProxyType(overrides)


def enforce(
    findings: Iterable[Finding],
    validate: Any = "error",
    per_check: Any = None,
    *,
    context: str = "celeryredis",
) -> list[Finding]:
    """Apply the validation mode to findings.

    Args:
        findings: Findings from :func:`run_checks`.
        validate: The default mode, or a mapping of check ids to modes.
        per_check: Per-check overrides, ``{check_id: mode}``.
        context: Where validation runs, for the message (e.g. the app name).

    Returns:
        The findings that were logged as warnings.

    Raises:
        ConfigurationError: When at least one finding's mode is ``"error"`` and
            its severity is ``"error"`` (or its mode was set to ``"error"``
            explicitly), or a finding's check is in ``UNWAIVABLE`` (whatever
            the mode). The message lists all of them, one per line.
    """
    default, overrides = normalise_modes(validate, per_check)
    errors: list[Finding] = []
    warnings: list[Finding] = []
    for finding in findings:
        mode = overrides.get(finding.check_id, default)
        explicit = finding.check_id in overrides
        if finding.check_id in UNWAIVABLE:
            errors.append(finding)
            continue
        if mode == "ignore":
            continue
        if mode == "error" and (finding.severity == "error" or explicit):
            errors.append(finding)
        else:
            warnings.append(finding)
    for finding in warnings:
        logger.warning("%s: %s", context, finding)
    if errors:
        lines = "\n".join(f"  - {f}" for f in errors)
        fatal = sorted({f.check_id for f in errors if f.check_id in UNWAIVABLE})
        unwaivable = "; ".join(f"no mode waives [{c}]: {UNWAIVABLE[c]}" for c in fatal)
        if len(fatal) == len({f.check_id for f in errors}):
            hint = f"Fix it: {unwaivable}."
        else:
            hint = "Fix them, or set validate='warn' (or {check_id: 'warn'}) to accept the risk"
            hint += f"; {unwaivable}." if fatal else "."
        raise ConfigurationError(
            f"{context}: {len(errors)} configuration problem(s):\n{lines}\n{hint}",
            setting=errors[0].settings[0] if errors[0].settings else None,
            check_ids=[f.check_id for f in errors],
        )
    return warnings
