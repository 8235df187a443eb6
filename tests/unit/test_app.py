"""make_app(), configure() and explain() without a server (building an app opens no socket)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celeryredis
from celeryredis import ConfigurationError, configure, explain, make_app
from celeryredis.app import format_explain
from celeryredis.presets import PRODUCTION, TESTING
from celeryredis.worker import ValidationStep

SECRET = "hunter2-Secret"
URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)


def _source(app: Celery, setting: str) -> str:
    return next(r.source for r in explain(app) if r.setting == setting)


def test_make_app_returns_a_plain_celery_app_with_production_defaults() -> None:
    app = make_app("billing", broker_url=URL, include=["billing.tasks"])
    assert type(app) is Celery
    assert app.main == "billing"
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"]
    assert app.conf.broker_transport_options["socket_timeout"] == 10.0
    assert app.conf.include == ["billing.tasks"]
    assert app.conf.result_backend == URL
    assert ValidationStep in app.steps["worker"]


def test_visibility_timeout_is_derived_from_the_effective_settings() -> None:
    app = make_app(
        "t",
        broker_url=URL,
        task_time_limit=4,
        task_soft_time_limit=3,
        celeryredis_eta_horizon=0,
        celeryredis_retry_backoff_max=1,
    )
    # H + cap + M*T = 0 + 1 + 1*4 = 5, plus max(1, 10%) = 6
    assert app.conf.broker_transport_options["visibility_timeout"] == 6
    assert _source(app, "broker_transport_options.visibility_timeout") == "derived"
    default = make_app("t", broker_url=URL)
    assert default.conf.broker_transport_options["visibility_timeout"] == 3630


def test_user_visibility_timeout_wins_and_dicts_merge_per_key() -> None:
    app = make_app("t", broker_url=URL, broker_transport_options={"visibility_timeout": 7200})
    opts = app.conf.broker_transport_options
    assert opts["visibility_timeout"] == 7200
    assert opts["socket_timeout"] == 10.0  # the preset's other keys survive
    assert _source(app, "broker_transport_options.visibility_timeout") == "argument"


def test_url_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # No silent localhost default: a missing URL says where one can come from.
    with pytest.raises(ConfigurationError, match=r"no broker URL.*\$REDIS_URL"):
        make_app("t")
    assert make_app("t", task_always_eager=True).conf.broker_url is None  # eager needs none
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/1")
    app = make_app("t")
    assert app.conf.broker_url == "redis://r:6379/1"
    assert _source(app, "broker_url") == "env:REDIS_URL"
    assert app.conf.result_backend == "redis://r:6379/1"
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://b:6379/2")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://rb:6379/3")
    app = make_app("t")
    assert (app.conf.broker_url, app.conf.result_backend) == (
        "redis://b:6379/2",
        "redis://rb:6379/3",
    )
    assert _source(app, "result_backend") == "env:CELERY_RESULT_BACKEND"
    # Celery itself lets $CELERY_BROKER_URL beat any setting: a conflict is refused.
    with pytest.raises(ConfigurationError, match=r"\$CELERY_BROKER_URL is set"):
        make_app("t", broker_url="redis://arg:6379/4")
    with pytest.raises(ConfigurationError, match=r"\$CELERY_RESULT_BACKEND is set"):
        make_app("t", result_backend=None)
    monkeypatch.delenv("CELERY_BROKER_URL")
    monkeypatch.delenv("CELERY_RESULT_BACKEND")
    app = make_app("t", broker_url="redis://arg:6379/4", result_backend=None)
    assert app.conf.broker_url == "redis://arg:6379/4"
    assert app.conf.result_backend is None
    assert _source(app, "broker_url") == "argument"
    assert _source(app, "result_backend") == "argument"


def test_unix_url_is_normalised_for_celery() -> None:
    app = make_app("t", broker_url="unix:///tmp/redis.sock?db=2")
    assert app.conf.broker_url == "redis+socket:///tmp/redis.sock?virtual_host=2"


def test_bad_env_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"amqp://u:{SECRET}@h//")
    with pytest.raises(ConfigurationError, match=r"\$REDIS_URL") as excinfo:
        make_app("t")
    assert SECRET not in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"task_acks_lates": True}, "did you mean 'task_acks_late'"),
        ({"CELERY_TASK_SERIALIZER": "json"}, "use 'task_serializer'"),
        ({"celeryredis_eta_horizn": 5}, "did you mean 'celeryredis_eta_horizon'"),
        ({"broker_transport_options": "visibility_timeout=5"}, "must be a dict"),
        ({"preset": "prod"}, "unknown preset 'prod'"),
        ({"preset": 42}, "preset must be"),
        ({"preset": ["production", 42]}, "preset item 1"),
        ({"broker_url": "amqp://localhost//"}, "not supported"),
        ({"task_time_limit": "300"}, "must be a number of seconds"),
        ({"task_time_limit": -1}, "non-negative"),
        ({"task_time_limit": float("nan")}, "non-negative"),
        # found by hypothesis; the stock transport's visibility timeout cannot cover it
        ({"task_time_limit": 1.7e308, "celeryredis_transport": "stock"}, "visibility-timeout"),
        ({"task_acks_late": "yes"}, "True or False"),
        ({"worker_prefetch_multiplier": 1.5}, None),
        ({"celeryredis_eta_horizon": "1h"}, "must be a number"),
    ],
)
def test_bad_arguments_raise_configuration_error(
    kwargs: dict[str, Any], fragment: str | None
) -> None:
    kwargs = {"broker_url": URL, **kwargs}
    if fragment is None:  # accepted: Celery's int settings take floats fine
        make_app("t", **kwargs)
        return
    with pytest.raises(ConfigurationError, match=fragment):
        make_app("t", **kwargs)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        make_app("t", no_such_setting=1)


def test_presets_compose_in_order() -> None:
    app = make_app(
        "t",
        broker_url=URL,
        preset=["production", {"worker_prefetch_multiplier": 2}, TESTING.with_(task_time_limit=40)],
    )
    assert app.conf.task_time_limit == 40
    assert app.conf.worker_prefetch_multiplier == 1  # TESTING came last
    assert _source(app, "task_time_limit") == "preset:testing+changes"
    derived = PRODUCTION.with_("fast", worker_prefetch_multiplier=4)
    assert derived.name == "fast"
    assert derived["worker_prefetch_multiplier"] == 4
    assert PRODUCTION["worker_prefetch_multiplier"] == 1
    app = make_app("t", broker_url=URL, preset=derived)
    assert app.conf.worker_prefetch_multiplier == 4
    assert _source(app, "worker_prefetch_multiplier") == "preset:fast"


def test_presets_are_immutable() -> None:
    with pytest.raises(TypeError):
        PRODUCTION["task_acks_late"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        PRODUCTION.settings["task_acks_late"] = None  # type: ignore[index]


def test_every_preset_value_has_a_reason() -> None:
    for preset in celeryredis.presets.PRESETS.values():
        for name, setting in preset.settings.items():
            assert setting.reason.strip(), (preset.name, name)


def test_explain_redacts_secrets_and_names_sources() -> None:
    app = make_app(
        "t",
        broker_url=f"redis://app:{SECRET}@127.0.0.1:6379/0",
        redis_password=SECRET,
        task_time_limit=100,
        task_soft_time_limit=90,
    )
    rows = explain(app)
    text = format_explain(rows) + repr(rows)
    assert SECRET not in text
    assert "redis://app:***@127.0.0.1:6379/0" in text
    by_name = {r.setting: r for r in rows}
    assert by_name["redis_password"].value == "***"
    assert by_name["task_time_limit"].source == "argument"
    assert by_name["task_acks_late"].source == "preset:production"
    assert by_name["task_acks_late"].reason
    assert by_name["result_backend"].source.startswith("derived")


def test_explain_refuses_foreign_apps() -> None:
    with pytest.raises(ConfigurationError, match="not built by make_app"):
        explain(Celery("plain"))


class HostConfig:
    broker_url = URL
    task_time_limit = 120
    task_soft_time_limit = 100
    broker_transport_options = {"visibility_timeout": 9000}  # noqa: RUF012


def test_configure_applies_presets_under_the_hosts_own_settings() -> None:
    app = Celery("django_proj")
    app.config_from_object(HostConfig)
    assert configure(app, worker_prefetch_multiplier=2) is app
    assert app.conf.task_acks_late is True  # from the preset
    assert app.conf.task_time_limit == 120  # the host's value beats the preset
    assert app.conf.worker_prefetch_multiplier == 2  # arguments beat both
    assert app.conf.broker_transport_options["visibility_timeout"] == 9000
    assert app.conf.broker_transport_options["socket_timeout"] == 10.0
    assert _source(app, "task_time_limit") == "app config"
    assert _source(app, "broker_url") == "app config"
    with pytest.raises(ConfigurationError, match="already applied"):
        configure(app)


class DjangoSettings:
    """A Django settings module read with ``namespace="CELERY"``."""

    DEBUG = True
    CELERY_BROKER_URL = "redis://127.0.0.1:6390/3"
    CELERY_TASK_TIME_LIMIT = 600
    CELERY_TASK_SOFT_TIME_LIMIT = 500
    CELERY_TASK_ACKS_LATE = False
    CELERY_TASK_SERIALIZER = "json"  # an old name without the prefix, a new one with it


def test_configure_reads_namespaced_host_settings() -> None:
    app = Celery("django_proj")
    app.config_from_object(DjangoSettings, namespace="CELERY")
    configure(app, worker_prefetch_multiplier=3, task_soft_time_limit=550)
    assert app.conf.task_time_limit == 600
    assert app.conf.task_acks_late is False
    assert app.conf.broker_url == DjangoSettings.CELERY_BROKER_URL
    assert app.conf.worker_prefetch_multiplier == 3  # from the preset's layer, under the prefix
    assert app.conf.task_soft_time_limit == 550  # an argument beats the host's prefixed value
    for name in ("task_time_limit", "task_acks_late", "broker_url"):
        assert _source(app, name) == "app config", name
    # The visibility timeout is derived from the host's limit, not the preset's.
    vt = app.conf.broker_transport_options["visibility_timeout"]
    assert vt > 600


def test_configure_refuses_old_setting_names() -> None:
    app = Celery("old")
    app.config_from_object({"CELERY_TASK_SERIALIZER": "json", "BROKER_URL": URL})
    configure(app)  # lazy: nothing is read yet
    with pytest.raises(ConfigurationError, match="old-setting-names"):
        app.conf.get("task_serializer")  # Celery loads the configuration: the check runs


def test_configure_validates() -> None:
    app = Celery("bad")
    app.conf.update(broker_url=URL, task_soft_time_limit=5000)
    configure(app)
    with pytest.raises(
        ConfigurationError,
        match=r"soft-limit-not-below-hard.*task_soft_time_limit=5000 from app.conf.update"
        r".*task_time_limit=1800 from preset:production",
    ):
        app.conf.get("task_time_limit")
    # After loading, configure() validates at once.
    loaded = Celery("loaded")
    loaded.conf.update(broker_url=URL, task_soft_time_limit=5000)
    loaded.conf.get("task_time_limit")
    with pytest.raises(ConfigurationError, match="soft-limit-not-below-hard"):
        configure(loaded)


def test_import_has_no_side_effects() -> None:
    code = (
        "import socket, celery.signals as s\n"
        "def refuse(*a, **k): raise AssertionError('socket opened at import')\n"
        "socket.socket.connect = refuse\n"
        "before = {n: len(getattr(s, n).receivers or []) for n in dir(s) "
        "if hasattr(getattr(s, n), 'receivers')}\n"
        "import celeryredis, celeryredis.app, celeryredis.worker, celeryredis.validation\n"
        "after = {n: len(getattr(s, n).receivers or []) for n in before}\n"
        "assert before == after, (before, after)\n"
        "from kombu.transport import TRANSPORT_ALIASES as A\n"
        "assert 'celeryredis' not in A and 'celeryrediscluster' not in A, 'aliases at import'\n"
        "from celeryredis import make_app\n"
        "app = make_app('t', broker_url='redis://127.0.0.1:1/0')\n"
        "assert app.conf.broker_read_url.startswith('celeryredis://')\n"
        "assert 'celeryredis' in A, 'the loaded app registers its schemes'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


_names = st.sampled_from(
    [
        "task_time_limit",
        "task_soft_time_limit",
        "worker_prefetch_multiplier",
        "task_acks_late",
        "broker_transport_options",
        "accept_content",
        "celeryredis_eta_horizon",
        "result_expires",
        "nonsense_setting",
        "BROKER_URL",
    ]
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(
        st.sampled_from(["visibility_timeout", "socket_timeout", "bogus"]),
        st.integers(-5, 10_000),
        max_size=3,
    ),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_names, _values, max_size=5), st.sampled_from(["error", "warn", "ignore"]))
def test_any_settings_give_an_app_or_a_configuration_error(
    kwargs: dict[str, Any], mode: str
) -> None:
    try:
        app = make_app("prop", broker_url=URL, validate=mode, **kwargs)
    except ConfigurationError:
        return
    assert isinstance(app, Celery)


def test_publish_retries_scale_with_the_sentinel_hosts_kombu_cycles_through() -> None:
    hosts = ";".join(f"sentinel://127.0.0.1:2637{n}/0" for n in range(3))
    app = make_app(
        "s", broker_url=hosts, result_backend=None, broker_transport_options={"master_name": "m"}
    )
    assert app.conf.task_publish_retry_policy["max_retries"] == 8 * 3
    row = next(r for r in explain(app) if r.setting == "task_publish_retry_policy.max_retries")
    assert row.source == "derived"
    # A value the user chose is theirs.
    app = make_app(
        "s",
        broker_url=hosts,
        result_backend=None,
        broker_transport_options={"master_name": "m"},
        task_publish_retry_policy={"max_retries": 5},
    )
    assert app.conf.task_publish_retry_policy["max_retries"] == 5
