"""(b) pytest-django's ``settings`` fixture changes what the Celery app reads."""

from __future__ import annotations

from typing import Any

from celeryredis import explain

from proj.celery import app


def test_flipping_eager_mode_off(settings: Any) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    assert app.conf.task_always_eager is False


def test_eager_mode_is_back_in_the_next_test() -> None:
    assert app.conf.task_always_eager is True


def test_a_time_limit_from_the_settings_fixture(settings: Any) -> None:
    settings.CELERY_TASK_TIME_LIMIT = 30
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 25
    assert app.conf.task_time_limit == 30
    assert app.conf.task_soft_time_limit == 25


def test_the_project_settings_win_over_the_preset() -> None:
    # proj/settings.py sets CELERY_TASK_TIME_LIMIT = 120 and the soft limit 110.
    assert app.conf.task_time_limit == 120
    assert app.conf.task_soft_time_limit == 110
    rows = {row.setting: row for row in explain(app)}
    assert rows["task_time_limit"].value == 120
    assert rows["task_time_limit"].source == "app config"


def test_the_preset_fills_in_what_the_project_did_not_set() -> None:
    assert app.conf.task_acks_late is True
    assert app.conf.accept_content == ["json"]
