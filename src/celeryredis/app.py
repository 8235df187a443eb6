"""``make_app()``, ``configure()`` and ``explain()``.

Data flow: resolve the broker and result-backend URLs (argument, then
environment, then the default) and validate them with :mod:`celeryredis.urls`;
apply the presets in order, then the host's own configuration (``configure``
only), then the keyword settings; derive the visibility timeout unless it was
set; run :mod:`celeryredis.validation`; hand the result to Celery with
``conf.update``; install the worker bootstep that validates again at start-up.

Nothing here runs at import time: the environment is read when ``make_app`` or
``configure`` is called.
"""

from __future__ import annotations

import difflib
import math
import os
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, cast

from celery import Celery

from celeryredis import presets as _presets
from celeryredis import signals, worker
from celeryredis.exceptions import ConfigurationError
from celeryredis.presets import DERIVED, LIBRARY_SETTINGS, MERGED_DICT_SETTINGS, Preset
from celeryredis.tasks import Task
from celeryredis.transport import reliable_url
from celeryredis.urls import REDACTED, parse_redis_url, redact_text
from celeryredis.validation import (
    CHECKS,
    derive_visibility_timeout,
    enforce,
    normalise_modes,
    old_setting_names,
    run_checks,
)

__all__ = ["DEFAULT_REDIS_URL", "ExplainRow", "PresetSpec", "configure", "explain", "make_app"]

#: Used when no URL is given and no environment variable is set.
DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"

#: What ``preset=`` accepts: a preset name, a :class:`~celeryredis.presets.Preset`,
#: a dict of settings, or a sequence of those applied in order.
PresetSpec = str | Preset | Mapping[str, Any] | Sequence[str | Preset | Mapping[str, Any]]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()

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
_URL_SETTINGS: Final = frozenset({"broker_url", "result_backend"})
_SECRET_WORDS: Final = ("password", "secret", "token", "credential")
_NEGATIVE_OK: Final = frozenset({"result_cache_max"})
# Keys Celery keeps in its own settings that are not settings.
_INTERNAL_KEYS: Final = frozenset({"deprecated_settings"})


def _known_settings() -> frozenset[str]:
    from celery.app.defaults import SETTING_KEYS  # noqa: PLC0415

    return frozenset(SETTING_KEYS) | _HIDDEN_CELERY_SETTINGS | frozenset(LIBRARY_SETTINGS)


def _declared_types() -> dict[str, str]:
    from celery.app.defaults import NAMESPACES, flatten  # noqa: PLC0415

    # flatten() yields (key, Option) pairs; celery-types declares it as a dict.
    options = cast("Iterable[tuple[str, Any]]", flatten(NAMESPACES))
    types = {key: str(opt.type) for key, opt in options}
    for name, (default, _) in LIBRARY_SETTINGS.items():
        types[name] = {
            bool: "bool",
            int: "int",
            float: "float",
            str: "string",
            dict: "dict",
            tuple: "any",
        }[type(default)]
    # Celery declares these as bool/float but documents dicts and timedeltas for them.
    for name in ("broker_use_ssl", "redis_backend_use_ssl"):
        types[name] = "any"
    return types


def _check_value(name: str, value: Any, declared: str) -> None:
    """Refuse values of the wrong type for numeric and boolean settings."""
    if value is None or declared not in {"int", "float", "bool"}:
        return
    if declared == "bool":
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be True or False, not {value!r}", setting=name)
        return
    if isinstance(value, timedelta) and declared == "float":
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{name} must be a number{' of seconds' if declared == 'float' else ''}, not {value!r}",
            setting=name,
        )
    if math.isnan(value) or (value < 0 and name not in _NEGATIVE_OK):
        raise ConfigurationError(
            f"{name} must be a non-negative number, not {value!r}", setting=name
        )


@dataclass(frozen=True)
class ExplainRow:
    """One line of :func:`explain`.

    Attributes:
        setting: The setting name; ``<dict setting>.<key>`` for one key of a merged
            dict setting such as ``broker_transport_options.visibility_timeout``.
        value: The value, with secrets redacted.
        source: Where it came from: ``preset:<name>``, ``argument``,
            ``env:<VAR>``, ``app config``, ``default`` or ``derived``.
        reason: The preset's reason, or how the value was derived; may be empty.
    """

    setting: str
    value: Any
    source: str
    reason: str = ""


@dataclass
class _Layered:
    value: Any
    source: str
    reason: str


@dataclass
class _AppState:
    rows: tuple[ExplainRow, ...]


_STATE: weakref.WeakKeyDictionary[Celery, _AppState] = weakref.WeakKeyDictionary()


def _unknown_setting(name: str, known: frozenset[str]) -> ConfigurationError:
    old = old_setting_names()
    if name in old:
        hint = f"{name!r} is an old upper-case name; use {old[name]!r}"
    else:
        close = difflib.get_close_matches(name.lower(), sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "see Celery's configuration reference"
    return ConfigurationError(
        f"unknown setting {name!r}: not a Celery setting nor a celeryredis_* setting; {hint}",
        setting=name,
    )


def _flatten(
    values: Mapping[str, Any], source: str, reasons: Mapping[str, str] | None = None
) -> dict[str, _Layered]:
    known = _known_settings()
    declared = _declared_types()
    flat: dict[str, _Layered] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise ConfigurationError(f"setting names must be strings, not {name!r}")
        base, dot, _ = name.partition(".")
        if base not in known:
            raise _unknown_setting(base, known)
        if dot:
            if base not in MERGED_DICT_SETTINGS:
                raise ConfigurationError(
                    f"{name!r}: only {', '.join(sorted(MERGED_DICT_SETTINGS))} take per-key names",
                    setting=name,
                )
            flat[name] = _Layered(value, source, (reasons or {}).get(name, ""))
            continue
        if value is not DERIVED:
            _check_value(name, value, declared.get(name, "any"))
        if base in MERGED_DICT_SETTINGS:
            if not isinstance(value, Mapping):
                raise ConfigurationError(
                    f"{base} must be a dict, not {type(value).__name__}", setting=base
                )
            for sub, subvalue in value.items():
                if not isinstance(sub, str):
                    raise ConfigurationError(f"{base} keys must be strings, not {sub!r}")
                flat[f"{base}.{sub}"] = _Layered(subvalue, source, "")
        else:
            flat[name] = _Layered(value, source, (reasons or {}).get(name, ""))
    return flat


def _preset_layers(spec: PresetSpec) -> list[tuple[str, Mapping[str, Any], Mapping[str, str]]]:
    items: Sequence[Any]
    if isinstance(spec, str | Preset | Mapping):
        items = [spec]
    elif isinstance(spec, Sequence):
        items = list(spec)
    else:
        raise ConfigurationError(
            f"preset must be a name, a Preset, a dict or a list of them, not {type(spec).__name__}",
            setting="preset",
        )
    layers: list[tuple[str, Mapping[str, Any], Mapping[str, str]]] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = _presets.get_preset(item)  # noqa: PLW2901
        if isinstance(item, Preset):
            reasons = {k: s.reason for k, s in item.settings.items()}
            layers.append((f"preset:{item.name}", item, reasons))
        elif isinstance(item, Mapping):
            layers.append((f"preset:dict[{index}]", item, {}))
        else:
            raise ConfigurationError(
                f"preset item {index} must be a name, a Preset or a dict, "
                f"not {type(item).__name__}",
                setting="preset",
            )
    return layers


def _assemble(flat: Mapping[str, _Layered]) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    for name, layered in flat.items():
        base, dot, key = name.partition(".")
        if dot:
            conf.setdefault(base, {})[key] = layered.value
        else:
            conf[name] = layered.value
    return conf


def _resolve_url(
    explicit: Any,
    setting: str,
    env_names: Iterable[str],
    environ: Mapping[str, str],
    fallback: tuple[str, str] | None,
) -> tuple[str | None, str]:
    if explicit is not _UNSET:
        if explicit is None:
            return None, "argument"
        return parse_redis_url(explicit, setting=setting).geturl(), "argument"
    for var in env_names:
        value = environ.get(var)
        if value:
            return parse_redis_url(value, setting=f"{setting} (from ${var})").geturl(), f"env:{var}"
    if fallback is None:
        return None, "default"
    return parse_redis_url(fallback[0], setting=setting).geturl(), fallback[1]


def _refuse_env_override(
    environ: Mapping[str, str], var: str, setting: str, value: Any, source: str
) -> None:
    """Celery reads $CELERY_BROKER_URL / $CELERY_RESULT_BACKEND over any setting."""
    env = environ.get(var)
    if not env or source.startswith("env:"):
        return
    try:
        same = value is not None and parse_redis_url(env) == parse_redis_url(value)
    except ConfigurationError:
        same = False
    if not same:
        raise ConfigurationError(
            f"${var} is set ({redact_text(env)!r}) but {setting} is "
            f"{redact_text(str(value))!r} (from {source}); Celery lets ${var} override every "
            f"setting, so the app would silently use the environment's value. Unset ${var} "
            f"or make it agree with {setting}.",
            setting=setting,
        )


def _redact_value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if any(word in name.lower() for word in _SECRET_WORDS):
            return REDACTED
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(f"{name}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(name, v) for v in value)
    return value


def _build(
    *,
    host_conf: Mapping[str, Any],
    broker_url: Any,
    result_backend: Any,
    preset: PresetSpec,
    validate: Any,
    settings: Mapping[str, Any],
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], tuple[ExplainRow, ...], Any, Any]:
    flat: dict[str, _Layered] = {}
    for source, values, reasons in _preset_layers(preset):
        flat.update(_flatten(values, source, reasons))
    # The host's own configuration (configure() only) beats the presets.
    host = {k: v for k, v in host_conf.items() if k not in _URL_SETTINGS}
    flat.update(_flatten(host, "app config"))
    flat.update(_flatten(settings, "argument"))

    mode_source = "argument"
    if validate is None:
        layered = flat.get("celeryredis_validate")
        validate, mode_source = (layered.value, layered.source) if layered else ("error", "default")
    checks = flat.get("celeryredis_validate_checks")
    default_mode, overrides = normalise_modes(validate, checks.value if checks else None)
    flat["celeryredis_validate"] = _Layered(default_mode, mode_source, "validation mode")
    flat["celeryredis_validate_checks"] = _Layered(
        dict(overrides), checks.source if checks else mode_source, "per-check modes"
    )

    if broker_url is _UNSET and host_conf.get("broker_url"):
        broker_url, broker_source = host_conf["broker_url"], "app config"
        broker_url = parse_redis_url(broker_url, setting="broker_url").geturl()
    else:
        broker_url, broker_source = _resolve_url(
            broker_url,
            "broker_url",
            ("CELERY_BROKER_URL", "REDIS_URL"),
            environ,
            (DEFAULT_REDIS_URL, "default"),
        )
    if broker_url is None:
        raise ConfigurationError(
            "broker_url=None: celeryredis needs a Redis broker; pass a redis:// URL",
            setting="broker_url",
        )
    if result_backend is _UNSET and "result_backend" in host_conf:
        backend_value = host_conf["result_backend"]
        backend_source = "app config"
        if isinstance(backend_value, str) and backend_value.split(":", 1)[0] in {
            "redis",
            "rediss",
            "sentinel",
            "unix",
            "redis+socket",
        }:
            backend_value = parse_redis_url(backend_value, setting="result_backend").geturl()
    else:
        backend_value, backend_source = _resolve_url(
            result_backend,
            "result_backend",
            ("CELERY_RESULT_BACKEND",),
            environ,
            (broker_url, "derived: the broker's Redis"),
        )
    _refuse_env_override(environ, "CELERY_BROKER_URL", "broker_url", broker_url, broker_source)
    _refuse_env_override(
        environ, "CELERY_RESULT_BACKEND", "result_backend", backend_value, backend_source
    )
    flat["broker_url"] = _Layered(broker_url, broker_source, "")
    flat["result_backend"] = _Layered(backend_value, backend_source, "")

    _scale_publish_retries(flat, broker_url)
    conf = _assemble(flat)
    vt_key = "broker_transport_options.visibility_timeout"
    if vt_key in flat and flat[vt_key].value is DERIVED:
        derived = derive_visibility_timeout(conf)
        if derived is None:
            del flat[vt_key]
            del conf["broker_transport_options"]["visibility_timeout"]
        else:
            conf["broker_transport_options"]["visibility_timeout"] = derived
            flat[vt_key] = _Layered(
                derived,
                "derived",
                "ETA horizon + retry backoff cap + prefetch x task_time_limit, plus 10%",
            )

    _apply_transport(flat, conf)

    rows = tuple(
        ExplainRow(name, _redact_value(name, layered.value), layered.source, layered.reason)
        for name, layered in sorted(flat.items())
    )
    return conf, rows, default_mode, overrides


_TRANSPORT_OPTIONS: Final = {
    "celeryredis_lease_seconds": "lease_seconds",
    "celeryredis_lease_sweep_interval": "lease_sweep_interval",
    "celeryredis_fetch_batch_max": "fetch_batch_max",
}


def _apply_transport(flat: dict[str, _Layered], conf: dict[str, Any]) -> None:
    """Select the consuming transport: the reliable one through its URL scheme alias.

    Consumers connect through ``broker_read_url``; with ``celeryredis_transport=
    "reliable"`` it becomes the broker URL with the ``celeryredis://`` scheme (a kombu
    alias, which survives failover, unlike ``broker_transport``), and the lease settings
    become transport options. Producers keep ``broker_url``: publishing is the same.
    """
    layered = flat.get("celeryredis_transport")
    if layered is None:
        default = LIBRARY_SETTINGS["celeryredis_transport"][0]
        layered = flat["celeryredis_transport"] = _Layered(
            default, "default", "celeryredis's default transport"
        )
    if layered.value != "reliable":
        return
    read = conf.get("broker_read_url") or conf["broker_url"]
    sentinel = not isinstance(read, str) or read.split(":", 1)[0] == "sentinel"
    if sentinel and layered.source.startswith("preset:"):
        # A preset's choice gives way: Sentinel users of `production` keep a working app.
        conf["celeryredis_transport"] = "stock"
        flat["celeryredis_transport"] = _Layered(
            "stock",
            "derived",
            f"{layered.source} chooses 'reliable', which does not support sentinel:// "
            "broker URLs yet: kombu's stock transport",
        )
        return
    if sentinel:
        return  # validation refuses an explicit 'reliable' with sentinel://
    aliased = reliable_url(read)
    source = flat["broker_read_url"].source if "broker_read_url" in flat else "derived"
    conf["broker_read_url"] = aliased
    flat["broker_read_url"] = _Layered(
        aliased,
        source,
        "consumers use celeryredis's reliable transport (celeryredis_transport='reliable') "
        "through its URL scheme",
    )
    options = conf.setdefault("broker_transport_options", {})
    for setting, option in _TRANSPORT_OPTIONS.items():
        entry = flat.get(setting)
        value = entry.value if entry else LIBRARY_SETTINGS[setting][0]
        options.setdefault(option, value)
        flat.setdefault(
            f"broker_transport_options.{option}",
            _Layered(options[option], "derived", f"from {setting}"),
        )


def _scale_publish_retries(flat: dict[str, _Layered], broker_url: str) -> None:
    """Give a multi-host (Sentinel) broker URL the publish retry time a preset promises.

    kombu treats the hosts of a ``sentinel://a;sentinel://b;...`` URL as alternates:
    each retry tries the next host and it sleeps only after a full round, so a preset's
    ``max_retries`` of 8 over 3 sentinels gave 0.5 s of retrying instead of ~11 s, and a
    publish failed during a Sentinel failover (found by tests/faults).
    """
    key = "task_publish_retry_policy.max_retries"
    layered = flat.get(key)
    if layered is None or not layered.source.startswith("preset:"):
        return
    hosts = len(parse_redis_url(broker_url).hosts)
    if hosts > 1 and isinstance(layered.value, int) and not isinstance(layered.value, bool):
        flat[key] = _Layered(
            layered.value * hosts,
            "derived",
            f"{layered.source} value {layered.value} x {hosts} broker hosts: kombu counts "
            "one retry per host and sleeps once per round",
        )


def make_app(
    main: str,
    *,
    broker_url: str | None = None,
    result_backend: str | _Unset | None = _UNSET,
    preset: PresetSpec = "production",
    include: Iterable[str] = (),
    task_cls: str | type | None = None,
    validate: Any = None,
    **settings: Any,
) -> Celery:
    """Build a Celery app wired for Redis.

    Args:
        main: The app's main module name (``Celery(main)``).
        broker_url: The broker's Redis URL. Default: ``$CELERY_BROKER_URL``,
            then ``$REDIS_URL``, then ``redis://localhost:6379/0``.
        result_backend: The result backend's Redis URL. Unset: ``$CELERY_RESULT_BACKEND``,
            then the broker's URL. ``None``: no result backend.
        preset: A preset name (``"production"``, ``"development"``,
            ``"throughput"``, ``"testing"``), a :class:`~celeryredis.presets.Preset`,
            a dict, or a sequence of those applied in order.
        include: Task modules for workers to import.
        task_cls: The app's default task class (:class:`celeryredis.Task` if None).
        validate: ``"error"``, ``"warn"`` or ``"ignore"``, or a mapping of check
            ids to modes (``"*"`` for the default). None (the default) uses the
            ``celeryredis_validate`` setting if one is given, else ``"error"``.
        **settings: Celery setting names (lower case) or ``celeryredis_*``
            settings; they win over the presets.

    Returns:
        An ordinary :class:`celery.Celery` app.

    Raises:
        ConfigurationError: An unknown preset or setting name, a bad URL, or a
            failed validation check in ``"error"`` mode.

    Example:
        >>> app = make_app("billing", broker_url="redis://localhost:6379/0",
        ...                task_time_limit=300)
        >>> app.conf.task_acks_late, app.conf.task_time_limit
        (True, 300)
    """
    broker: Any = _UNSET if broker_url is None else broker_url
    conf, rows, mode, overrides = _build(
        host_conf={},
        broker_url=broker,
        result_backend=result_backend,
        preset=preset,
        validate=validate,
        settings=settings,
        environ=os.environ,
    )
    enforce(run_checks(conf), mode, overrides, context=f"make_app({main!r})")
    app = Celery(main, include=list(include), task_cls=task_cls or Task)
    app.conf.update(conf)
    _install(app, rows)
    return app


def configure(
    app: Celery,
    *,
    preset: PresetSpec = "production",
    validate: Any = None,
    **settings: Any,
) -> Celery:
    """Apply presets, settings and validation to a Celery app the host built.

    The host's own configuration (``config_from_object``, ``conf.update``,
    Django settings with ``namespace="CELERY"``) wins over the presets, and
    ``**settings`` win over both. Transport-option dicts are merged key by key.
    URLs come from the app's ``broker_url`` / ``result_backend`` if set,
    otherwise as in :func:`make_app`.

    Args:
        app: The app to configure; it is changed in place.
        preset: As for :func:`make_app`.
        validate: As for :func:`make_app`.
        **settings: As for :func:`make_app`.

    Returns:
        The same app.

    Raises:
        ConfigurationError: As for :func:`make_app`, or if ``configure`` was
            already applied to this app.
    """
    if app in _STATE:
        raise ConfigurationError(
            f"configure() was already applied to app {app.main!r}; call it once, with every setting"
        )
    host_conf = _host_settings(app)
    findings = list(CHECKS["old-setting-names"].run(host_conf))
    if findings:
        enforce(findings, "error", context=f"configure({app.main!r})")
    conf, rows, mode, overrides = _build(
        host_conf=host_conf,
        broker_url=_UNSET,
        result_backend=_UNSET,
        preset=preset,
        validate=validate,
        settings=settings,
        environ=os.environ,
    )
    enforce(run_checks(conf), mode, overrides, context=f"configure({app.main!r})")
    prefix = _namespace_prefix(app)
    if prefix:
        # Celery looks a setting up under its prefixed name first, in every layer:
        # an unprefixed value would lose to the host's own prefixed one.
        conf = {prefix + key.upper(): value for key, value in conf.items()}
    app.conf.update(conf)
    _install(app, rows)
    return app


def _namespace_prefix(app: Celery) -> str:
    """``"CELERY_"`` for ``config_from_object(..., namespace="CELERY")``, else ``""``."""
    prefix = getattr(app.conf, "prefix", None)
    return prefix.upper() if isinstance(prefix, str) else ""


def _host_settings(app: Celery) -> dict[str, Any]:
    """The settings the host set on ``app`` itself (not Celery's defaults).

    Under a namespace (Django's ``namespace="CELERY"``) the host's keys are
    ``CELERY_TASK_TIME_LIMIT`` and so on: they are read without the prefix, in
    lower case, as Celery itself reads them; a prefixed key beats a plain one.
    """
    known = _known_settings() | set(old_setting_names())
    app.conf["task_serializer"]  # loads the host's pending (lazy) configuration
    prefix = _namespace_prefix(app)
    plain: dict[str, Any] = {}
    prefixed: dict[str, Any] = {}
    for key, value in app.conf.without_defaults().items():
        if prefix and key.upper().startswith(prefix):
            name = key[len(prefix) :].lower()
            if name in known and name not in _INTERNAL_KEYS:
                prefixed[name] = value
        # A config *object* also exposes its dunder attributes and module-level names.
        elif key in known and key not in _INTERNAL_KEYS:
            plain[key] = value
    return plain | prefixed


def _install(app: Celery, rows: tuple[ExplainRow, ...]) -> None:
    _STATE[app] = _AppState(rows)
    worker.install(app)
    signals.install(app)


def explain(app: Celery) -> list[ExplainRow]:
    """Return every setting celeryredis or the user set, with its source.

    Values are redacted: URL passwords and values of settings whose name
    contains ``password``, ``secret``, ``token`` or ``credential`` show ``***``.

    Args:
        app: An app built by :func:`make_app` or passed to :func:`configure`.

    Returns:
        One :class:`ExplainRow` per setting, sorted by name.

    Raises:
        ConfigurationError: The app was not built or configured by celeryredis.
    """
    state = _STATE.get(app)
    if state is None:
        raise ConfigurationError(
            f"app {getattr(app, 'main', app)!r} was not built by make_app() nor passed to "
            "configure(); explain() knows only those"
        )
    return list(state.rows)


def format_explain(rows: Iterable[ExplainRow]) -> str:
    """Render :func:`celeryredis.explain` rows as an aligned text table."""
    table = [("setting", "value", "source", "reason")] + [
        (r.setting, repr(r.value), r.source, r.reason) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()
        for a, b, c, d in table
    )
