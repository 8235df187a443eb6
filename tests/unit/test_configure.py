"""configure() on a host's own app: lazy, a defaults layer under the host, live, namespaced.

Each test builds its host the way hosts do (``config_from_object`` with an object, a module
path or Django-style ``namespace="CELERY"``); no server is needed: nothing here connects.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from celery import Celery, shared_task
from celery import Task as CeleryTask

import celeryredis
from celeryredis import ConfigurationError, configure, explain, make_app
from celeryredis.presets import known_settings
from celeryredis.validation import run_checks, settings_view
from celeryredis.worker import app_findings

URL = "redis://127.0.0.1:6390/3"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)


def _worker_start_findings(app: Celery) -> list[Any]:
    """What celeryredis's worker bootstep checks when a worker starts."""
    return run_checks(settings_view(app.conf, known_settings())) + app_findings(app)


def _settings_class(**extra: Any) -> type:
    attrs = {
        "DEBUG": True,
        "SECRET_KEY": "x",
        "CELERY_BROKER_URL": URL,
        "CELERY_RESULT_BACKEND": URL,
        "CELERY_TASK_TIME_LIMIT": 600,
        "CELERY_TASK_SOFT_TIME_LIMIT": 500,
        **extra,
    }
    return type("Settings", (), attrs)


def _refused_on_load(settings: type) -> str:
    """The message of the ConfigurationError a configured Django-like app raises on load."""
    app = Celery("refused")
    app.config_from_object(settings, namespace="CELERY")
    configure(app)
    with pytest.raises(ConfigurationError) as excinfo:
        app.conf.get("task_time_limit")
    return str(excinfo.value)


def test_namespaced_host_gives_no_finding_at_worker_start() -> None:
    """The issue's repro: 13 old-setting-names findings before; none now."""
    settings = type("S", (), {"CELERY_BROKER_URL": URL})
    app = Celery("x")
    app.config_from_object(settings, namespace="CELERY")
    configure(app, task_time_limit=300, task_soft_time_limit=280)
    assert _worker_start_findings(app) == []
    app = Celery("django_like")
    app.config_from_object(_settings_class(), namespace="CELERY")
    configure(app)
    assert _worker_start_findings(app) == []
    assert app.conf.result_backend == URL


def test_a_misspelt_namespaced_setting_is_refused_with_the_right_name() -> None:
    # Celery ignores CELERY_TASK_TIME_LIMT without a word: the limit stays the preset's.
    text = _refused_on_load(_settings_class(CELERY_TASK_TIME_LIMT=60, CELERY_WORKER_CONCURENCY=4))
    assert "[unknown-setting] 'CELERY_TASK_TIME_LIMT'" in text
    assert "did you mean 'CELERY_TASK_TIME_LIMIT'?" in text
    assert "did you mean 'CELERY_WORKER_CONCURRENCY'?" in text
    # Another library's CELERY_ setting: waived for that check alone, reported as a warning.
    other = Celery("other_lib")
    other.config_from_object(_settings_class(CELERY_ONCE={"backend": "x"}), namespace="CELERY")
    configure(other, celeryredis_validate_checks={"unknown-setting": "warn"})
    assert other.conf.task_time_limit == 600
    assert [f.check_id for f in _worker_start_findings(other)] == ["unknown-setting"]
    # Without a namespace the host's mapping holds whatever its module defines: not judged.
    plain = Celery("plain")
    plain.config_from_object(type("S", (), {"broker_url": URL, "os": object(), "helper": 1}))
    configure(plain)
    assert _worker_start_findings(plain) == []


def test_old_names_under_a_namespace_are_still_found() -> None:
    app = Celery("old")
    app.config_from_object(_settings_class(CELERY_CELERYD_CONCURRENCY=4), namespace="CELERY")
    configure(app, validate="warn")
    ids = [f.check_id for f in _worker_start_findings(app)]
    assert ids == ["old-setting-names"]


def test_configure_reads_nothing_until_celery_loads_the_configuration() -> None:
    """Import-time configure() while the host's settings are half loaded (Django layout)."""
    name = "celeryredis_test_settings_not_yet_importable"
    app = Celery("proj")
    app.config_from_object(f"{name}:Settings", namespace="CELERY")
    configure(app)  # the settings module does not exist yet: nothing may import it
    assert not app.configured
    module = types.ModuleType(name)
    module.Settings = _settings_class(CELERY_TASK_TIME_LIMIT=120, CELERY_TASK_SOFT_TIME_LIMIT=100)  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        assert app.conf.task_time_limit == 120  # the host's value
        assert app.conf.task_acks_late is True  # the preset, under the host
        assert app.conf.broker_url == URL
    finally:
        del sys.modules[name]


def test_configure_before_config_from_object() -> None:
    app = Celery("early")
    configure(app, worker_prefetch_multiplier=2)
    app.config_from_object(_settings_class(), namespace="CELERY")
    assert app.conf.task_time_limit == 600
    assert app.conf.worker_prefetch_multiplier == 2
    assert app.conf.broker_url == URL


def _rows(app: Celery) -> dict[str, tuple[Any, str]]:
    return {r.setting: (r.value, r.source) for r in explain(app)}


def test_lazy_and_loaded_configure_give_the_same_result() -> None:
    lazy = Celery("lazy")
    lazy.config_from_object(_settings_class(), namespace="CELERY")
    configure(lazy, worker_prefetch_multiplier=2)
    loaded = Celery("loaded")
    loaded.config_from_object(_settings_class(), namespace="CELERY")
    loaded.conf.get("task_serializer")  # Celery loads the host's configuration first
    configure(loaded, worker_prefetch_multiplier=2)
    assert _rows(lazy) == _rows(loaded)
    for name in known_settings():
        assert lazy.conf.get(name) == loaded.conf.get(name), name


def test_host_settings_stay_live() -> None:
    """pytest-django's settings fixture changes the settings object; Celery must see it."""
    settings = _settings_class()
    app = Celery("live")
    app.config_from_object(settings, namespace="CELERY")
    configure(app, worker_prefetch_multiplier=3)
    assert app.conf.task_always_eager is False
    settings.CELERY_TASK_ALWAYS_EAGER = True  # type: ignore[attr-defined]
    settings.CELERY_TASK_TIME_LIMIT = 900  # type: ignore[attr-defined]
    settings.CELERY_WORKER_PREFETCH_MULTIPLIER = 8  # type: ignore[attr-defined]
    assert app.conf.task_always_eager is True
    assert app.conf.task_time_limit == 900
    assert app.conf.worker_prefetch_multiplier == 3  # a keyword of configure() wins
    # Derived values follow: the visibility timeout covers the new limit.
    vt = app.conf.broker_transport_options["visibility_timeout"]
    assert vt > 900
    del settings.CELERY_TASK_ALWAYS_EAGER  # type: ignore[attr-defined]
    assert app.conf.task_always_eager is False  # back to Celery's default under the host


def test_host_dicts_merge_with_the_presets_live() -> None:
    settings = _settings_class(CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 9000})
    app = Celery("dicts")
    app.config_from_object(settings, namespace="CELERY")
    configure(app, preset=[celeryredis.presets.PRODUCTION, {"celeryredis_transport": "stock"}])
    opts = app.conf.broker_transport_options
    assert opts["visibility_timeout"] == 9000
    assert opts["socket_timeout"] == 10.0  # the preset's key survives
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 9500}  # type: ignore[attr-defined]
    assert app.conf.broker_transport_options["visibility_timeout"] == 9500


def test_conf_update_before_configure_is_merged_and_update_after_wins() -> None:
    app = Celery("upd")
    app.conf.update(broker_url=URL, broker_transport_options={"visibility_timeout": 7777})
    configure(app, preset=[celeryredis.presets.PRODUCTION, {"celeryredis_transport": "stock"}])
    assert app.conf.broker_transport_options["visibility_timeout"] == 7777
    assert app.conf.broker_transport_options["socket_timeout"] == 10.0
    app.conf.task_time_limit = 50
    app.conf.task_soft_time_limit = 40
    assert app.conf.task_time_limit == 50


def test_explain_loads_the_configuration_of_an_app_configured_on_load() -> None:
    app = Celery("late")
    app.config_from_object(_settings_class(), namespace="CELERY")

    @app.on_after_configure.connect
    def _late(sender: Celery, **kwargs: Any) -> None:
        configure(sender)

    rows = {r.setting: r for r in explain(app)}
    assert rows["task_time_limit"].source == "app config"
    assert rows["task_time_limit"].value == 600
    assert rows["task_acks_late"].source == "preset:production"


def test_findings_name_where_each_value_came_from() -> None:
    text = _refused_on_load(
        type("S", (), {"CELERY_BROKER_URL": URL, "CELERY_TASK_TIME_LIMIT": 120})
    )
    assert "task_soft_time_limit=1740 from preset:production" in text
    assert "task_time_limit=120 from app config" in text


def test_missing_broker_url_is_an_error_that_lists_the_sources() -> None:
    app = Celery("nourl")
    app.config_from_object(type("S", (), {"task_time_limit": 10, "task_soft_time_limit": 5}))
    configure(app)
    with pytest.raises(ConfigurationError, match=r"broker-url.*\$REDIS_URL"):
        app.conf.get("broker_url")
    eager = Celery("eager")
    eager.config_from_object(type("S", (), {"task_always_eager": True}))
    configure(eager)
    assert eager.conf.broker_url is None  # an eager-only host needs none


@pytest.mark.parametrize(
    "validate",
    ["warn", "ignore", {"*": "warn"}, {"*": "ignore", "soft-limit-not-below-hard": "warn"}],
)
def test_no_mode_waives_a_missing_broker_url(validate: Any) -> None:
    # With no URL Celery would fall back to its own amqp://guest@localhost:5672// default.
    with pytest.raises(ConfigurationError) as excinfo:
        make_app("nourl", validate=validate)
    text = str(excinfo.value)
    assert "[broker-url]" in text
    assert "no mode waives [broker-url]" in text
    assert "validate='warn'" not in text  # the hint does not offer what would not work
    app = Celery("nourl_configured")
    configure(app, validate=validate)
    with pytest.raises(ConfigurationError, match=r"no mode waives \[broker-url\]"):
        app.conf.get("broker_url")


@pytest.mark.parametrize("mode", ["warn", "ignore"])
def test_setting_the_broker_url_check_to_another_mode_is_refused(mode: str) -> None:
    for kwargs in (
        {"validate": {"broker-url": mode}},
        {"celeryredis_validate_checks": {"broker-url": mode}},
    ):
        with pytest.raises(ConfigurationError, match=rf"'broker-url' cannot be set to '{mode}'"):
            make_app("t", broker_url=URL, **kwargs)


def test_other_problems_keep_their_waiver_hint_beside_a_missing_url() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        make_app("t", validate="error", task_soft_time_limit=400, task_time_limit=300)
    last = str(excinfo.value).splitlines()[-1]
    assert last.startswith("Fix them, or set validate='warn'")
    assert "no mode waives [broker-url]" in last


# --- the default task class --------------------------------------------------------------


@pytest.fixture
def host_app() -> Celery:
    app = Celery("tasks_host", set_as_current=False)
    app.config_from_object(_settings_class(), namespace="CELERY")
    return app


def test_configure_makes_celeryredis_task_the_default(host_app: Celery) -> None:
    configure(host_app)

    @host_app.task
    def direct() -> None: ...

    assert isinstance(direct, celeryredis.Task)
    assert app_findings(host_app) == []


def test_shared_tasks_of_a_configured_app_get_celeryredis_task() -> None:
    app = Celery("shared_host")
    app.config_from_object(_settings_class(), namespace="CELERY")
    configure(app)

    @shared_task(name="celeryredis_tests.shared_probe")
    def shared_probe() -> int:
        return 1

    task = app.tasks["celeryredis_tests.shared_probe"]
    assert isinstance(task, celeryredis.Task)


def test_a_foreign_host_task_class_gets_a_finding_that_says_how_to_combine() -> None:
    class HostTask(CeleryTask):  # type: ignore[type-arg]
        pass

    app = Celery("own_cls", task_cls=HostTask)
    app.config_from_object(_settings_class())
    configure(app, validate="warn")
    findings = app_findings(app)
    assert [f.check_id for f in findings] == ["task-class"]
    assert "class AppTask(celeryredis.Task, HostTask)" in findings[0].message
    assert app.task_cls is HostTask  # the host's choice is kept

    class Combined(celeryredis.Task, HostTask):  # type: ignore[misc]
        pass

    good = Celery("combined", task_cls=Combined)
    good.config_from_object(_settings_class())
    configure(good)
    assert app_findings(good) == []


def test_an_eager_host_does_not_retry_its_result_backend() -> None:
    settings = _settings_class(CELERY_TASK_ALWAYS_EAGER=True)
    app = Celery("eager_host")
    app.config_from_object(settings, namespace="CELERY")
    configure(app)
    assert app.conf.result_backend_always_retry is False
    settings.CELERY_TASK_ALWAYS_EAGER = False  # type: ignore[attr-defined]
    assert app.conf.result_backend_always_retry is True  # the preset's, for workers
    settings.CELERY_RESULT_BACKEND_ALWAYS_RETRY = True  # type: ignore[attr-defined]
    settings.CELERY_TASK_ALWAYS_EAGER = True  # type: ignore[attr-defined]
    assert app.conf.result_backend_always_retry is True  # the host chose it


def test_celerys_django_task_class_becomes_ours_combined_with_it() -> None:
    """Celery's Django fixup sets DjangoTask as the default: ours keeps delay_on_commit."""
    app = Celery("django_fixup", set_as_current=False)
    app.task_cls = "celery.contrib.django.task:DjangoTask"  # what the fixup sets
    app.config_from_object(_settings_class())
    configure(app)
    assert app.task_cls == "celeryredis.tasks.django:DjangoTask"
    # examples/django's suite runs it in a real Django project (delay_on_commit included).


def test_celerys_override_layer_beats_keyword_settings_as_in_celery() -> None:
    """app.conf.update wins over everything in Celery; explain() and the checks agree."""
    from celeryredis import make_app

    app = make_app("over", broker_url=URL, task_time_limit=60, task_soft_time_limit=50)
    other = "redis://127.0.0.1:6391/0"
    app.conf.update(broker_url=other, task_time_limit=90)
    assert app.conf.broker_url == other
    assert app.conf.task_time_limit == 90
    rows = {r.setting: r for r in explain(app)}
    assert (rows["broker_url"].value, rows["broker_url"].source) == (other, "app.conf.update")
    assert (rows["task_time_limit"].value, rows["task_time_limit"].source) == (
        90,
        "app.conf.update",
    )
