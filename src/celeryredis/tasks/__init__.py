"""Task base classes: subclass them or pass them as ``@app.task(base=...)``.

They are ordinary :class:`celery.Task` subclasses and combine through cooperative
``super()`` calls, e.g. ``class Charge(RetryTask, MyMixin)``.
"""

from __future__ import annotations

from celeryredis.tasks.base import Task
from celeryredis.tasks.ratelimited import RateLimitedTask
from celeryredis.tasks.retry import TRANSIENT_ERRORS, RetryTask
from celeryredis.tasks.unique import UniqueTask

__all__ = ["TRANSIENT_ERRORS", "RateLimitedTask", "RetryTask", "Task", "UniqueTask"]
