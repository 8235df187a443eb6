"""``celeryredis.Task`` combined with Celery's Django task class.

Celery's Django fixup makes ``celery.contrib.django.task:DjangoTask`` (``delay_on_commit``,
``apply_async_on_commit``) the default task class of an app in a Django project.
:func:`celeryredis.configure` replaces that default with :class:`DjangoTask`, which is both:
``@shared_task`` tasks get celeryredis's lifecycle records and dead letters *and* keep
``delay_on_commit``. Importing this module imports Django.
"""

from __future__ import annotations

from typing import Any

from celery.contrib.django.task import DjangoTask as CeleryDjangoTask

from celeryredis.tasks.base import Task

__all__ = ["DjangoTask"]


class DjangoTask(Task, CeleryDjangoTask[Any, Any]):
    """:class:`celeryredis.Task` with Celery's ``delay_on_commit`` / ``apply_async_on_commit``."""
