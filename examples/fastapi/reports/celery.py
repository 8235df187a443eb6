"""The Celery app: ``celery -A reports worker`` finds it here (``reports.celery:app``).

The broker is ``$REDIS_URL`` (or ``$CELERY_BROKER_URL``), read when this module is imported.
"""

from celeryredis import make_app

app = make_app("reports", include=["reports.tasks"], task_time_limit=60, task_soft_time_limit=50)
