"""``make_app()``, ``configure()`` and ``explain()``: celeryredis's settings layer.

celeryredis adds one *layer* to the app's configuration (Celery's ``app.add_defaults``,
so it is attached when Celery loads the configuration, not before). Celery reads a
setting from the first place that has it: its override layer (``app.conf.update``),
then this layer, then the host's configuration object (``config_from_object``, Django
settings under any ``namespace=``), then Celery's defaults. The layer answers:

* for a setting the host set in its configuration: nothing, so Celery reads the host's
  value, live (a later change, e.g. pytest-django's ``settings`` fixture, is seen) —
  except for keyword settings of :func:`configure`, which win;
* for the merged dict settings (``broker_transport_options`` and friends), the URLs,
  ``broker_read_url`` and ``celeryredis_transport``: the value resolved from the presets,
  the host's live values, the keywords and what is derived from them (the visibility
  timeout, the reliable transport's URL and lease options, publish retries per host);
* otherwise the presets' value, then the ``celeryredis_*`` defaults.

Resolution (:func:`_resolve`) is one pure step over typed sources: presets, host
configuration, keywords, environment, derived. Validation runs when the layer is
attached (the first time Celery loads the configuration), again when a worker starts,
and :func:`make_app` runs it when it builds the app. Nothing here runs at import time.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Final, Literal, cast

from celery import Celery

from celeryredis import presets as _presets
from celeryredis import signals, worker
from celeryredis.exceptions import ConfigurationError
from celeryredis.presets import (
    DERIVED,
    MERGED_DICT_SETTINGS,
    Preset,
    known_settings,
)
from celeryredis.redaction import redact_setting, redact_text
from celeryredis.registry import SETTINGS, default
from celeryredis.tasks import Task
from celeryredis.transport import (
    CLUSTER_SCHEMES,
    RELIABLE_SCHEMES,
    SENTINEL_SCHEMES,
    cluster_broker_url,
    is_cluster_broker,
    reliable_url,
)
from celeryredis.urls import parse_redis_url, redact_url
from celeryredis.validation import (
    Finding,
    derive_visibility_timeout,
    enforce,
    normalise_modes,
    old_setting_names,
    run_checks,
    settings_view,
)

__all__ = ["ExplainRow", "PresetSpec", "configure", "explain", "make_app"]

logger = logging.getLogger(__name__)

#: What ``preset=`` accepts: a preset name, a :class:`~celeryredis.presets.Preset`,
#: a dict of settings, or a sequence of those applied in order.
PresetSpec = str | Preset | Mapping[str, Any] | Sequence[str | Preset | Mapping[str, Any]]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()

_REDIS_SCHEMES: Final = (
    "redis",
    "rediss",
    "sentinel",
    "unix",
    "redis+socket",
    "rediscluster",
    "redisclusters",
)
_NEGATIVE_OK: Final = frozenset({"result_cache_max"})
#: The URL schemes of celeryredis's own kombu transports (written by this module).
_TRANSPORT_SCHEMES: Final = frozenset(
    {*RELIABLE_SCHEMES.values(), *CLUSTER_SCHEMES.values(), *SENTINEL_SCHEMES.values()}
)
#: Settings the layer resolves on every read (they depend on other settings).
_RESOLVED: Final = MERGED_DICT_SETTINGS | {
    "broker_url",
    "result_backend",
    "broker_read_url",
    "broker_write_url",
    "celeryredis_transport",
    "celeryredis_durable_publish",
    "celeryredis_validate",
    "celeryredis_validate_checks",
    "result_backend_always_retry",
}
#: The host settings the resolved settings depend on (what the layer reads to resolve).
_RESOLUTION_INPUTS: Final = _RESOLVED | {
    "task_always_eager",
    "task_store_eager_result",
    "task_time_limit",
    "task_acks_late",
    "worker_prefetch_multiplier",
    "worker_disable_prefetch",
    "celeryredis_eta_horizon",
    "celeryredis_retry_backoff_max",
    "celeryredis_lease_seconds",
    "celeryredis_lease_sweep_interval",
    "celeryredis_fetch_batch_max",
    "celeryredis_reserve_seconds",
    "celeryredis_cluster_partitions",
    "celeryredis_durable_publish_timeout",
}

Kind = Literal["preset", "host", "argument", "env", "derived", "default"]


def _declared_types() -> dict[str, str]:
    from celery.app.defaults import NAMESPACES, flatten  # noqa: PLC0415

    # flatten() yields (key, Option) pairs; celery-types declares it as a dict.
    options = cast("Iterable[tuple[str, Any]]", flatten(NAMESPACES))
    types = {key: str(opt.type) for key, opt in options}
    for name, entry in SETTINGS.items():
        types[name] = {"str": "string", "names": "any"}.get(entry.type, entry.type)
    # Celery declares these as bool/float but documents dicts and timedeltas for them.
    for name in ("broker_use_ssl", "redis_backend_use_ssl"):
        types[name] = "any"
    return types


def _check_value(name: str, value: Any, declared: str, where: str) -> None:
    """Refuse values of the wrong type for numeric and boolean settings."""
    if value is None or declared not in {"int", "float", "bool"}:
        return
    if declared == "bool":
        if not isinstance(value, bool):
            raise ConfigurationError(
                f"{name} must be True or False, not {value!r} (from {where})", setting=name
            )
        return
    if isinstance(value, timedelta) and declared == "float":
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{name} must be a number{' of seconds' if declared == 'float' else ''}, "
            f"not {value!r} (from {where})",
            setting=name,
        )
    if math.isnan(value) or (value < 0 and name not in _NEGATIVE_OK):
        raise ConfigurationError(
            f"{name} must be a non-negative number, not {value!r} (from {where})", setting=name
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


@dataclass(frozen=True)
class _Layered:
    """A value with its provenance: ``kind`` drives behaviour, ``source`` is shown."""

    value: Any
    kind: Kind
    source: str
    reason: str = ""


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
    values: Mapping[str, Any],
    kind: Kind,
    source: str,
    reasons: Mapping[str, str] | None = None,
    *,
    strict: bool = True,
) -> dict[str, _Layered]:
    """Settings to ``{name or dict.key: _Layered}``; ``strict`` checks names and types."""
    known = known_settings()
    declared = _declared_types() if strict else {}
    flat: dict[str, _Layered] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise ConfigurationError(f"setting names must be strings, not {name!r} (from {source})")
        base, dot, _ = name.partition(".")
        if base not in known:
            raise _unknown_setting(base, known)
        if dot:
            if base not in MERGED_DICT_SETTINGS:
                raise ConfigurationError(
                    f"{name!r}: only {', '.join(sorted(MERGED_DICT_SETTINGS))} take per-key names",
                    setting=name,
                )
            flat[name] = _Layered(value, kind, source, (reasons or {}).get(name, ""))
            continue
        if strict and value is not DERIVED:
            _check_value(name, value, declared.get(name, "any"), source)
        if base in MERGED_DICT_SETTINGS:
            flat.update(_flatten_dict(base, value, kind, source, strict=strict))
        else:
            flat[name] = _Layered(value, kind, source, (reasons or {}).get(name, ""))
    return flat


def _flatten_dict(
    base: str, value: Any, kind: Kind, source: str, *, strict: bool
) -> dict[str, _Layered]:
    if not isinstance(value, Mapping):
        if not strict:
            return {}
        raise ConfigurationError(
            f"{base} must be a dict, not {type(value).__name__} (from {source})", setting=base
        )
    flat: dict[str, _Layered] = {}
    for sub, subvalue in value.items():
        if not isinstance(sub, str):
            if strict:
                raise ConfigurationError(f"{base} keys must be strings, not {sub!r}")
            continue
        flat[f"{base}.{sub}"] = _Layered(subvalue, kind, source)
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


# --- resolution: one pure step over the sources -----------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What :func:`make_app` / :func:`configure` were given (all but the host's settings)."""

    context: str
    presets: Mapping[str, _Layered]
    keywords: Mapping[str, _Layered]
    broker_url: Any  # _UNSET, or a URL given as an argument
    result_backend: Any  # _UNSET, None or a URL given as an argument
    environ: Mapping[str, str]  # the URL variables, read when make_app/configure ran
    validate: Any  # None: the celeryredis_validate setting decides

    @property
    def managed(self) -> frozenset[str]:
        names = {n.partition(".")[0] for n in (*self.presets, *self.keywords)}
        return frozenset(names | set(SETTINGS) | _RESOLVED)


_URL_ENV: Final = ("CELERY_BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND")


def _make_spec(
    context: str,
    preset: PresetSpec,
    settings: Mapping[str, Any],
    *,
    validate: Any,
    broker_url: Any = _UNSET,
    result_backend: Any = _UNSET,
) -> _Spec:
    """Check the arguments (names, types, URLs, modes) and freeze them; reads no host config."""
    presets: dict[str, _Layered] = {}
    for source, values, reasons in _preset_layers(preset):
        presets.update(_flatten(values, "preset", source, reasons))
    keywords = _flatten(settings, "argument", "argument")
    environ = {k: v for k in _URL_ENV if (v := os.environ.get(k))}
    if broker_url is not _UNSET:
        if broker_url is None:
            raise ConfigurationError(
                "broker_url=None: celeryredis needs a Redis broker; pass a redis:// URL",
                setting="broker_url",
            )
        broker_url = parse_redis_url(broker_url, setting="broker_url").geturl()
    if isinstance(result_backend, str):
        result_backend = parse_redis_url(result_backend, setting="result_backend").geturl()
    for var in ("CELERY_BROKER_URL", "REDIS_URL"):
        if var in environ:
            setting = f"broker_url (from ${var})"
            parse_redis_url(environ[var], setting=setting)
    spec = _Spec(context, presets, keywords, broker_url, result_backend, environ, validate)
    mode, per_check = _modes(spec, {**spec.presets, **spec.keywords})
    normalise_modes(mode, per_check)
    return spec


def _modes(spec: _Spec, flat: Mapping[str, _Layered]) -> tuple[Any, Any]:
    validate = spec.validate
    if validate is None:
        layered = flat.get("celeryredis_validate")
        validate = layered.value if layered else "error"
    checks = flat.get("celeryredis_validate_checks")
    return validate, checks.value if checks else None


def _normal_url(value: Any, setting: str, source: str, *, strict: bool) -> Any:
    """A Redis URL in the form Celery and kombu read (``unix://`` -> ``redis+socket://``).

    A URL already in one of celeryredis's transport forms (``celeryredis://``,
    ``celeryrediscluster://``: what the settings layer itself writes, e.g. into a test
    worker's configuration) is kept as it is.
    """
    if isinstance(value, str) and value.split(":", 1)[0].split("+", 1)[0] in _TRANSPORT_SCHEMES:
        return value
    if not isinstance(value, str) or value.split(":", 1)[0] not in _REDIS_SCHEMES:
        if strict and setting == "broker_url" and value is not None:
            parse_redis_url(str(value), setting=f"broker_url (from {source})")  # raises
        return value
    try:
        parsed = parse_redis_url(value, setting=f"{setting} (from {source})")
        return parsed.geturl()
    except ConfigurationError:
        if strict:
            raise
        return value


def _resolve(
    spec: _Spec,
    host: Mapping[str, Any],
    *,
    strict: bool,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, _Layered]:
    """Every setting celeryredis has a say in, with its provenance.

    Order (later wins): presets, the host's configuration, keyword settings, Celery's
    override layer (``app.conf.update``); then the URLs; then what is derived
    (visibility timeout, publish retries per broker host, the reliable transport's read
    URL and options). Pure: no I/O, no app.
    """
    overrides = overrides or {}
    urls = ("broker_url", "result_backend")
    flat: dict[str, _Layered] = dict(spec.presets)
    plain_host = {k: v for k, v in host.items() if k not in urls}
    flat.update(_flatten(plain_host, "host", "app config", strict=strict))
    flat.update(spec.keywords)
    plain_overrides = {k: v for k, v in overrides.items() if k not in urls}
    flat.update(_flatten(plain_overrides, "host", "app.conf.update", strict=strict))
    host = {**host, **{k: v for k, v in overrides.items() if k in urls}}
    url_overrides = {k for k in urls if k in overrides}

    validate, per_check = _modes(spec, flat)
    if spec.validate is not None:
        mode_kind: Kind = "argument"
    else:
        mode_kind = (
            flat["celeryredis_validate"].kind if "celeryredis_validate" in flat else "default"
        )
    try:
        default_mode, overrides = normalise_modes(validate, per_check)
    except ConfigurationError:
        if strict:
            raise
        default_mode, overrides = "error", {}
    flat["celeryredis_validate"] = _Layered(
        default_mode,
        mode_kind,
        _label(mode_kind, flat.get("celeryredis_validate")),
        "validation mode",
    )
    checks = flat.get("celeryredis_validate_checks")
    flat["celeryredis_validate_checks"] = _Layered(
        dict(overrides),
        checks.kind if checks else mode_kind,
        checks.source if checks else _label(mode_kind, None),
        "per-check modes",
    )

    broker = _broker(spec, host, strict=strict, override="broker_url" in url_overrides)
    if broker is not None:
        flat["broker_url"] = broker
    backend = _backend(
        spec, host, broker, strict=strict, override="result_backend" in url_overrides
    )
    if backend is not None:
        flat["result_backend"] = backend

    if broker is not None and isinstance(broker.value, str):
        _scale_publish_retries(flat, broker.value)
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
                "derived",
                "ETA horizon + retry backoff cap + prefetch x task_time_limit, plus 10%",
            )
    _apply_transport(flat, conf)
    _eager_backend(flat)
    return flat


def _eager_backend(flat: dict[str, _Layered]) -> None:
    """An eager app does not retry its result backend for a preset (tests never wait)."""
    retry = flat.get("result_backend_always_retry")
    eager = flat.get("task_always_eager")
    stored = flat.get("task_store_eager_result")
    if retry is None or retry.kind != "preset" or not retry.value:
        return
    if stored is not None and stored.value is True:
        return  # eager results are written: the retries protect that write
    if eager is not None and eager.value is True:
        flat["result_backend_always_retry"] = _Layered(
            False,
            "derived",
            "derived",
            f"task_always_eager is on: {retry.source}'s result-backend retries would make "
            "a test that reads a result with Redis down wait through every backoff",
        )


def _label(kind: Kind, layered: _Layered | None) -> str:
    if layered is not None and layered.kind == kind:
        return layered.source
    return {"argument": "argument", "default": "default"}.get(kind, kind)


def _broker(
    spec: _Spec, host: Mapping[str, Any], *, strict: bool, override: bool = False
) -> _Layered | None:
    if spec.broker_url is not _UNSET and not override:
        return _Layered(spec.broker_url, "argument", "argument")
    if host.get("broker_url"):
        where = "app.conf.update" if override else "app config"
        value = _normal_url(host["broker_url"], "broker_url", where, strict=strict)
        return _Layered(value, "host", where)
    for var in ("CELERY_BROKER_URL", "REDIS_URL"):
        if var in spec.environ:
            value = _normal_url(spec.environ[var], "broker_url", f"${var}", strict=strict)
            return _Layered(value, "env", f"env:{var}")
    return None


def _backend(
    spec: _Spec,
    host: Mapping[str, Any],
    broker: _Layered | None,
    *,
    strict: bool,
    override: bool = False,
) -> _Layered | None:
    if spec.result_backend is not _UNSET and not override:
        return _Layered(spec.result_backend, "argument", "argument")
    if "result_backend" in host:
        where = "app.conf.update" if override else "app config"
        value = _normal_url(host["result_backend"], "result_backend", where, strict=strict)
        return _Layered(value, "host", where)
    if "CELERY_RESULT_BACKEND" in spec.environ:
        value = _normal_url(
            spec.environ["CELERY_RESULT_BACKEND"],
            "result_backend",
            "$CELERY_RESULT_BACKEND",
            strict=strict,
        )
        return _Layered(value, "env", "env:CELERY_RESULT_BACKEND")
    if broker is None:
        return None
    return _Layered(broker.value, "derived", "derived: the broker's Redis")


def _env_conflicts(flat: Mapping[str, _Layered], environ: Mapping[str, str]) -> None:
    """Celery reads $CELERY_BROKER_URL / $CELERY_RESULT_BACKEND over any setting."""
    for var, setting in (
        ("CELERY_BROKER_URL", "broker_url"),
        ("CELERY_RESULT_BACKEND", "result_backend"),
    ):
        env = environ.get(var)
        layered = flat.get(setting)
        if not env or layered is None or layered.kind == "env" or env == layered.value:
            continue  # (equal text: also a cluster broker's celeryrediscluster:// form)
        try:
            same = layered.value is not None and parse_redis_url(env) == parse_redis_url(
                layered.value
            )
        except ConfigurationError:
            same = False
        if not same:
            raise ConfigurationError(
                f"${var} is set ({redact_text(env)!r}) but {setting} is "
                f"{redact_text(str(layered.value))!r} (from {layered.source}); Celery lets "
                f"${var} override every setting, so the app would silently use the "
                f"environment's value. Unset ${var} or make it agree with {setting}.",
                setting=setting,
            )


_TRANSPORT_OPTIONS: Final = {
    "celeryredis_lease_seconds": "lease_seconds",
    "celeryredis_lease_sweep_interval": "lease_sweep_interval",
    "celeryredis_fetch_batch_max": "fetch_batch_max",
    "celeryredis_reserve_seconds": "reserve_seconds",
}
_DURABLE_OPTIONS: Final = {
    "celeryredis_durable_publish": "durable_publish",
    "celeryredis_durable_publish_timeout": "durable_publish_timeout",
}


def _apply_transport(flat: dict[str, _Layered], conf: dict[str, Any]) -> None:
    """Select the consuming transport: the reliable one through its URL scheme alias.

    Consumers connect through ``broker_read_url``; with ``celeryredis_transport=
    "reliable"`` it becomes the broker URL with the ``celeryredis://`` scheme
    (``celeryredissentinel://`` for ``sentinel://``: a kombu alias, which survives
    failover, unlike ``broker_transport``), and the lease settings become transport
    options. Producers keep ``broker_url`` unless durable publish is on (below).
    """
    layered = flat.get("celeryredis_transport")
    if layered is None:
        layered = flat["celeryredis_transport"] = _Layered(
            default("celeryredis_transport"),
            "default",
            "default",
            "celeryredis's default transport",
        )
    if is_cluster_broker(conf):
        _apply_cluster_transport(flat, conf, conf["broker_url"])
        return
    _apply_durable_publish(flat, conf)
    if layered.value != "reliable":
        return
    if _reliable_alias(
        flat,
        conf,
        "broker_read_url",
        "consumers use celeryredis's reliable transport (celeryredis_transport='reliable') "
        "through its URL scheme",
    ):
        _lease_options(flat, conf)


def _reliable_alias(flat: dict[str, _Layered], conf: dict[str, Any], name: str, why: str) -> bool:
    """Point ``name`` (``broker_read_url``/``broker_write_url``) at the reliable scheme.

    Its value, or the broker URL, in the reliable transport's scheme; False when there
    is no URL string to rewrite.
    """
    url = conf.get(name) or conf.get("broker_url")
    if not isinstance(url, str):
        return False
    from celeryredis.transport import register_aliases  # noqa: PLC0415

    register_aliases()  # kombu learns the scheme when the transport is selected
    aliased = reliable_url(url)
    own = flat.get(name)
    conf[name] = aliased
    flat[name] = _Layered(
        aliased, own.kind if own else "derived", own.source if own else "derived", why
    )
    return True


def _apply_durable_publish(flat: dict[str, _Layered], conf: dict[str, Any]) -> None:
    """``celeryredis_durable_publish`` > 0: producers publish through the reliable channel.

    Its publish sends ``WAIT`` after the ``LPUSH`` on the same connection, so
    ``broker_write_url`` becomes the broker URL in the reliable scheme and the two
    settings become transport options. Always leaves a ``celeryredis_durable_publish``
    row saying which mode is in force (for :func:`explain`).
    """
    entry = flat.get("celeryredis_durable_publish")
    value = entry.value if entry else default("celeryredis_durable_publish")
    replicas = value if isinstance(value, int) and not isinstance(value, bool) else 0
    timeout_entry = flat.get("celeryredis_durable_publish_timeout")
    timeout = (
        timeout_entry.value if timeout_entry else default("celeryredis_durable_publish_timeout")
    )
    if replicas > 0:
        mode = (
            f"on: each publish waits (WAIT) up to {timeout!r} s for {replicas} replica(s) "
            "and raises NotDurableError if fewer acknowledged"
        )
    else:
        mode = (
            "off: a publish returns once the master has it (asynchronous replication: "
            "an acknowledged publish can be lost if the master dies before replicating)"
        )
    flat["celeryredis_durable_publish"] = _Layered(
        value,
        entry.kind if entry else "default",
        entry.source if entry else "default",
        f"durable publish {mode}",
    )
    if replicas <= 0:
        return
    if not _reliable_alias(
        flat,
        conf,
        "broker_write_url",
        "producers publish through celeryredis's reliable channel, which sends WAIT after "
        "each publish (celeryredis_durable_publish)",
    ):
        return
    options = conf.setdefault("broker_transport_options", {})
    for name, option in _DURABLE_OPTIONS.items():
        layered = flat.get(name)
        options.setdefault(option, layered.value if layered else default(name))
        flat.setdefault(
            f"broker_transport_options.{option}",
            _Layered(options[option], "derived", "derived", f"from {name}"),
        )


def _lease_options(flat: dict[str, _Layered], conf: dict[str, Any]) -> None:
    """The lease settings become the consuming transport's options (unless set there)."""
    options = conf.setdefault("broker_transport_options", {})
    for setting, option in _TRANSPORT_OPTIONS.items():
        entry = flat.get(setting)
        value = entry.value if entry else default(setting)
        options.setdefault(option, value)
        flat.setdefault(
            f"broker_transport_options.{option}",
            _Layered(options[option], "derived", "derived", f"from {setting}"),
        )


def _apply_cluster_transport(flat: dict[str, _Layered], conf: dict[str, Any], broker: str) -> None:
    """A ``rediscluster://`` broker: producers and consumers use the cluster transport.

    Both ``broker_url`` and ``broker_read_url`` become the ``celeryrediscluster://``
    form (one ``;``-separated URL per node), whatever ``celeryredis_transport`` says:
    kombu's stock Redis transport cannot run on a cluster.
    """
    from celeryredis.transport import register_aliases  # noqa: PLC0415

    register_aliases()
    given = flat.get("broker_url")
    # Celery reads these itself: the host's broker_url and $CELERY_BROKER_URL (not $REDIS_URL).
    celerys = given is not None and (
        given.kind == "host" or (given.kind == "env" and given.source.endswith("CELERY_BROKER_URL"))
    )
    if given is not None and celerys and "," in broker.rpartition("@")[2]:
        raise ConfigurationError(
            f"broker_url {redact_url(broker)!r} (from {given.source}) lists several Redis "
            "Cluster nodes, but Celery hands this value to kombu unchanged and kombu reads "
            "one host per URL; name one node (the cluster client finds the others), or "
            "pass the URL to make_app(broker_url=...)",
            setting="broker_url",
        )
    why = "a Redis Cluster broker uses celeryredis's cluster transport (celeryrediscluster://)"
    for setting in ("broker_url", "broker_read_url"):
        value = conf.get(setting) or broker
        if celerys and setting == "broker_url":
            continue  # Celery reads the host's value (or the variable) itself
        aliased = cluster_broker_url(value) if isinstance(value, str) else value
        own = flat.get(setting)
        conf[setting] = aliased
        flat[setting] = _Layered(
            aliased, own.kind if own else "derived", own.source if own else "derived", why
        )
    _lease_options(flat, conf)
    _partition_options(flat, conf)


def _partition_options(flat: dict[str, _Layered], conf: dict[str, Any]) -> None:
    """``celeryredis_cluster_partitions`` becomes the cluster transport's ``partitions``.

    Checked here, so a wrong value fails when the app is made, naming where it came from;
    ``broker_transport_options["partitions"]`` set directly wins (and is checked by the
    transport).
    """
    from celeryredis.transport import parse_partitions  # noqa: PLC0415

    name = "celeryredis_cluster_partitions"
    entry = flat.get(name)
    value = entry.value if entry else default(name)
    try:
        checked = parse_partitions(value, name)
    except (TypeError, ValueError) as exc:
        source = entry.source if entry else "the default"
        raise ConfigurationError(f"{exc} (from {source})", setting=name) from None
    if not checked:
        return
    options = conf.setdefault("broker_transport_options", {})
    options.setdefault("partitions", checked)
    flat.setdefault(
        "broker_transport_options.partitions",
        _Layered(options["partitions"], "derived", "derived", f"from {name}"),
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
    if layered is None or layered.kind != "preset":
        return
    try:
        hosts = len(parse_redis_url(broker_url).hosts)
    except ConfigurationError:
        return
    if hosts > 1 and isinstance(layered.value, int) and not isinstance(layered.value, bool):
        flat[key] = _Layered(
            layered.value * hosts,
            "derived",
            "derived",
            f"{layered.source} value {layered.value} x {hosts} broker hosts: kombu counts "
            "one retry per host and sleeps once per round",
        )


# --- the layer in app.conf --------------------------------------------------------------


class _Layer(Mapping[str, Any]):
    """celeryredis's layer in ``app.conf``, between Celery's overrides and the host's config.

    See the module docstring for what it answers. It reads the host's configuration
    live, so it holds no copy of it; keys may be plain (``task_time_limit``), prefixed
    by the app's namespace (``CELERY_TASK_TIME_LIMIT``) or Celery's old names.
    """

    #: Marks this mapping for :func:`celeryredis.validation.settings_view`.
    celeryredis_layer: Final = True

    def __init__(self, app: Celery, spec: _Spec) -> None:
        self._app = weakref.ref(app)
        self.spec = spec
        self._managed = spec.managed
        self._top_keywords = {
            k: v for k, v in _assemble(spec.keywords).items() if k not in _RESOLVED
        }
        self._top_presets = {k: v for k, v in _assemble(spec.presets).items() if k not in _RESOLVED}
        self._old_names = {new: old for old, new in old_setting_names().items()}
        #: Merged-dict values the host put in Celery's override layer before we attached.
        self.absorbed: dict[str, Any] = {}
        self._cache: tuple[tuple[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._split: (
            tuple[tuple[Mapping[str, Any], ...], list[Mapping[str, Any]], list[Mapping[str, Any]]]
            | None
        ) = None
        #: The namespace prefix of the configuration the layer is attached to.
        self.prefix: str | None = None

    # Mapping protocol ---------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        name = self._name(key)
        if name is None:
            raise KeyError(key)
        if name in _RESOLVED:
            conf = self.resolved_conf()
            if name not in conf:
                raise KeyError(key)
            value = conf[name]
            return dict(value) if isinstance(value, dict) else value  # callers may change it
        if name in self._top_keywords:
            return self._top_keywords[name]
        if self._host_has(name):
            raise KeyError(key)  # the host's value, read live by Celery
        if name in self._top_presets:
            return self._top_presets[name]
        if name in SETTINGS:
            return SETTINGS[name].default
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        for name in sorted(self._managed):
            if name in self:
                yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<celeryredis settings layer of {self.spec.context}>"

    # the host's configuration ----------------------------------------------------------

    def _conf(self) -> Any:
        app = self._app()
        if app is None or not _loaded(app):
            return None
        return app.conf

    def _prefix(self) -> str:
        if self.prefix is not None:
            return self.prefix
        conf = self._conf()
        prefix = getattr(conf, "prefix", None) if conf is not None else None
        return prefix.upper() if isinstance(prefix, str) else ""

    def bind(self, conf: Any) -> None:
        """Remember the loaded configuration's namespace (a reload attaches again)."""
        self.prefix = None
        self.prefix = self._prefix() if conf is not None else None

    def _name(self, key: str) -> str | None:
        if key in self._managed:
            return key
        prefix = self._prefix()
        if prefix and key.upper().startswith(prefix):
            plain = key[len(prefix) :].lower()
            return plain if plain in self._managed else None
        return None

    def _maps(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """The maps of ``app.conf`` above this layer and below it, without the defaults.

        Above: Celery's override layer (``app.conf.update``); below: the host's config.
        """
        conf = self._conf()
        if conf is None:
            return [], []
        chain: list[Mapping[str, Any]] = getattr(conf, "maps", [])
        # Celery only ever adds maps (add_defaults): the split is kept while the chain's
        # maps are the same objects, checked by identity on every call (cheap).
        cached = self._split
        if (
            cached is not None
            and len(cached[0]) == len(chain)
            and all(a is b for a, b in zip(cached[0], chain, strict=True))
        ):
            return cached[1], cached[2]
        maps = list(chain)[:-1]  # not the defaults
        position = next((i for i, m in enumerate(maps) if m is self), len(maps))
        above = [m for m in maps[:position] if not getattr(m, "celeryredis_layer", False)]
        below = [m for m in maps[position + 1 :] if not getattr(m, "celeryredis_layer", False)]
        self._split = (tuple(chain), above, below)
        return above, below

    def _host_maps(self) -> list[Mapping[str, Any]]:
        return self._maps()[1]

    def _candidates(self, name: str, prefix: str) -> tuple[str, ...]:
        """The keys Celery would look ``name`` up under (namespaced, plain, old name)."""
        cached = self._keys.get((name, prefix))
        if cached is None:
            old = self._old_names.get(name)
            keys = (prefix + name.upper(), name) if prefix else (name,)
            cached = self._keys[name, prefix] = (*keys, old) if old else keys
        return cached

    def host_get(self, name: str) -> Any:
        """The host's value of ``name`` (as Celery would find it), or :data:`_UNSET`."""
        if name in self.absorbed:
            return self.absorbed[name]
        return self._find(name, self._host_maps(), self._prefix())

    def _find(self, name: str, maps: list[Mapping[str, Any]], prefix: str) -> Any:
        keys = self._candidates(name, prefix)
        for mapping in maps:
            for key in keys:
                if key in mapping:
                    return mapping[key]
        return _UNSET

    def _host_has(self, name: str) -> bool:
        return self.host_get(name) is not _UNSET

    def host_settings(
        self, names: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The host's own values (plain names) of ``names`` (default: every known setting).

        Two dicts: its configuration's (below this layer), and what it put in Celery's
        override layer (``app.conf.update``, above this layer: they beat even keywords).
        """
        above, below = self._maps()
        prefix = self._prefix()
        host: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for name in known_settings() if names is None else names:
            # Merged dicts absorbed from the override layer count as the host's own.
            mine = self.absorbed.get(name, _UNSET)
            for found, value in (
                (overrides, self._find(name, above, prefix)),
                (host, mine if mine is not _UNSET else self._find(name, below, prefix)),
            ):
                if value is not _UNSET and not (name == "broker_url" and value is None):
                    found[name] = value
        return host, overrides

    def resolved(self, *, strict: bool = False) -> dict[str, _Layered]:
        """The resolution over all of the host's live settings (explain, validation)."""
        host, overrides = self.host_settings()
        return _resolve(self.spec, host, strict=strict, overrides=overrides)

    def resolved_conf(self) -> dict[str, Any]:
        """The resolved settings, computed again only when a host input changed."""
        inputs = self.host_settings(_RESOLUTION_INPUTS)
        cached = self._cache
        if cached is not None and cached[0] == inputs:
            return cached[1]
        host, overrides = inputs
        conf = _assemble(_resolve(self.spec, host, strict=False, overrides=overrides))
        self._cache = (copy.deepcopy(inputs), conf)
        return conf

    def describe_findings(self, findings: Iterable[Finding]) -> list[Finding]:
        """The findings, each naming where its values came from (for the worker's check)."""
        return _with_sources(findings, self.resolved())


_LAYERS: weakref.WeakKeyDictionary[Celery, _Layer] = weakref.WeakKeyDictionary()


def _loaded(app: Celery) -> bool:
    """Has Celery loaded the app's configuration (``Celery.configured``)?"""
    return bool(getattr(app, "configured", False))


def _attach(app: Celery, layer: _Layer) -> None:
    """Put the layer into the loaded ``app.conf`` (once), then validate."""
    conf: Any = app.conf
    if any(m is layer for m in conf.maps):
        return
    changes = conf.changes
    for name in MERGED_DICT_SETTINGS:
        for key in layer._candidates(name, layer._prefix()):
            if isinstance(changes.get(key), Mapping):
                # Set with conf.update() before configure(): merged like the host's own.
                layer.absorbed[name] = changes.pop(key)
                break
    from celeryredis.transport import register_aliases  # noqa: PLC0415

    register_aliases()  # kombu learns celeryredis's URL schemes with the first app that loads
    conf.add_defaults(layer)
    layer.bind(conf)
    _validate(app, layer)


def _on_after_configure(sender: Celery, **kwargs: Any) -> None:
    """Celery loaded the configuration again (config_from_object on a loaded app)."""
    layer = _LAYERS.get(sender)
    if layer is None:
        return
    try:
        _attach(sender, layer)
    except ConfigurationError as exc:
        # A signal receiver cannot stop Celery; the worker refuses to start on it.
        logger.error("%s", exc)  # noqa: TRY400 - the message is the whole story


def _validate(app: Celery, layer: _Layer) -> None:
    """The checks of make_app()/configure(), on the live configuration."""
    flat = layer.resolved(strict=True)
    _env_conflicts(flat, os.environ)
    view = settings_view(app.conf, known_settings())
    findings = run_checks(view) + worker.app_findings(app)
    mode, per_check = _modes(layer.spec, flat)
    enforce(_with_sources(findings, flat), mode, per_check, context=layer.spec.context)


def _with_sources(findings: Iterable[Finding], flat: Mapping[str, _Layered]) -> list[Finding]:
    """Name where each value in a finding came from (preset, app config, argument, ...)."""
    out = []
    for finding in findings:
        parts: list[str] = []
        for name in finding.settings:
            rows = [(name, flat[name])] if name in flat else []
            if not rows and name in MERGED_DICT_SETTINGS:
                rows = [
                    (key, layered)
                    for key, layered in flat.items()
                    if key.startswith(f"{name}.") and key.partition(".")[2] in finding.message
                ]
            parts.extend(
                f"{key}={redact_setting(key, layered.value)!r} from {layered.source}"
                for key, layered in rows
            )
        if parts:
            finding = replace(finding, message=f"{finding.message} [{'; '.join(parts)}]")  # noqa: PLW2901
        out.append(finding)
    return out


#: Celery's own default task classes, which configure() replaces with ours.
_CELERY_DEFAULT_TASK_CLASSES: Final = {
    "celery.app.task:Task": "celeryredis.tasks:Task",
    "celery.app.task.Task": "celeryredis.tasks:Task",
    "celery:Task": "celeryredis.tasks:Task",
    # Celery's Django fixup: ours combined with it (delay_on_commit stays).
    "celery.contrib.django.task:DjangoTask": "celeryredis.tasks.django:DjangoTask",
}


def _default_task_class(app: Celery) -> None:
    """celeryredis.Task becomes the default task class unless the host chose its own.

    Celery's defaults (``celery.Task``, and ``DjangoTask`` that its Django fixup sets)
    are replaced; a class the host passed (``Celery(task_cls=...)``) is kept and the
    ``task-class`` check says how to combine it.
    """
    current: Any = app.task_cls
    if isinstance(current, type):
        current = f"{current.__module__}:{current.__qualname__}"
    ours = _CELERY_DEFAULT_TASK_CLASSES.get(str(current))
    if ours is None:
        return
    app.task_cls = cast("Any", Task) if ours.endswith("tasks:Task") else ours
    if "Task" in vars(app):  # the base class was built already: build it again
        del app.Task


def _install(app: Celery, spec: _Spec) -> _Layer:
    layer = _Layer(app, spec)
    _LAYERS[app] = layer
    worker.install(app)
    signals.install(app)
    app.on_after_configure.connect(_on_after_configure, weak=False)
    if _loaded(app):
        _attach(app, layer)
    else:

        def attach_when_loaded() -> dict[str, Any]:
            _attach(app, layer)
            return {}

        app.add_defaults(attach_when_loaded)
    return layer


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
            then ``$REDIS_URL``; with none of them, :class:`ConfigurationError`
            (there is no silent ``localhost`` default).
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
        An ordinary :class:`celery.Celery` app. Its configuration stays lazy: a later
        ``app.conf.update(...)`` wins, as it does over Celery's defaults.

    Raises:
        ConfigurationError: An unknown preset or setting name, a bad or missing URL,
            or a failed validation check in ``"error"`` mode.

    Example:
        >>> app = make_app("billing", broker_url="redis://localhost:6379/0",
        ...                task_time_limit=300)
        >>> app.conf.task_acks_late, app.conf.task_time_limit
        (True, 300)
    """
    context = f"make_app({main!r})"
    spec = _make_spec(
        context,
        preset,
        settings,
        validate=validate,
        broker_url=_UNSET if broker_url is None else broker_url,
        result_backend=result_backend,
    )
    # No host configuration yet: validate what was given, now.
    app = Celery(main, include=list(include), task_cls=task_cls or Task)
    layer = _Layer(app, spec)
    flat = layer.resolved(strict=True)
    _env_conflicts(flat, os.environ)
    findings = run_checks(_assemble(flat))
    mode, per_check = _modes(spec, flat)
    enforce(_with_sources(findings, flat), mode, per_check, context=context)
    _install(app, spec)
    return app


def configure(
    app: Celery,
    *,
    preset: PresetSpec = "production",
    validate: Any = None,
    **settings: Any,
) -> Celery:
    """Layer presets, settings and validation under a Celery app the host built.

    Safe anywhere a host calls it: at import time of its Celery module, before or after
    ``config_from_object`` (Django settings with ``namespace="CELERY"``, a module path,
    an object). It does not load the host's configuration: it takes effect when Celery
    loads it, with the same result as a call after loading.

    The host's configuration wins over the presets and stays live (a later change to a
    ``CELERY_*`` Django setting is what ``app.conf`` returns); ``**settings`` win over
    both. Dict settings (``broker_transport_options``, ...) are merged key by key. URLs
    come from the app's ``broker_url`` / ``result_backend``, otherwise as in
    :func:`make_app`. :class:`celeryredis.Task` becomes the app's default task class
    unless the host chose its own. Validation runs when the configuration is loaded and
    again when a worker starts.

    Args:
        app: The app to configure; it is changed in place.
        preset: As for :func:`make_app`.
        validate: As for :func:`make_app`.
        **settings: As for :func:`make_app`.

    Returns:
        The same app.

    Raises:
        ConfigurationError: An unknown preset or setting name, a bad value among
            ``**settings``, or ``configure`` was already applied to this app; at load
            time (the first read of ``app.conf``), a bad URL or a failed check.
    """
    if app in _LAYERS:
        raise ConfigurationError(
            f"configure() was already applied to app {app.main!r}; call it once, with every setting"
        )
    spec = _make_spec(f"configure({app.main!r})", preset, settings, validate=validate)
    _default_task_class(app)
    _install(app, spec)
    return app


def explain(app: Celery) -> list[ExplainRow]:
    """Return every setting celeryredis, the host or the user set, with its source.

    Loads the app's configuration first (as a worker would), so an app whose
    :func:`configure` runs when its configuration loads is explained too. Values are
    redacted: URL passwords and values of settings whose name contains ``password``,
    ``secret``, ``token`` or ``credential`` show ``***``.

    Args:
        app: An app built by :func:`make_app` or passed to :func:`configure`.

    Returns:
        One :class:`ExplainRow` per setting, sorted by name.

    Raises:
        ConfigurationError: The app was not built or configured by celeryredis.
    """
    conf = getattr(app, "conf", None)
    if conf is not None:
        conf.get("task_serializer")  # Celery loads the configuration (and runs on_after_configure)
    layer = _LAYERS.get(app)
    if layer is None:
        raise ConfigurationError(
            f"app {getattr(app, 'main', app)!r} was not built by make_app() nor passed to "
            "configure(); explain() knows only those"
        )
    flat = layer.resolved()
    return [
        ExplainRow(name, redact_setting(name, layered.value), layered.source, layered.reason)
        for name, layered in sorted(flat.items())
    ]


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
