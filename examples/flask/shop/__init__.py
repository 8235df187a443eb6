"""A Flask app factory with Celery, as in Flask's "Background Tasks with Celery", on celeryredis."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celeryredis import RetryTask, Task, configure
from flask import Flask


class FlaskTask(Task):
    """A ``celeryredis.Task`` whose body runs inside the Flask app's context.

    Flask's docs define this class inside ``celery_init_app`` (a closure over the app);
    here it finds the app on the Celery app instead, so that it can be combined with
    the other celeryredis bases at import time (``FlaskRetryTask`` below).
    """

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self.app.flask_app.app_context():  # type: ignore[attr-defined]
            # super().__call__, not self.run: celeryredis.Task's own __call__ (task
            # context on log records, the retries of RetryTask) runs inside the context.
            return super().__call__(*args, **kwargs)


class FlaskRetryTask(FlaskTask, RetryTask):
    """``celeryredis.RetryTask`` inside the Flask app's context."""


def celery_init_app(app: Flask) -> Celery:
    """Create the Flask app's Celery app (Flask's pattern, configured by celeryredis)."""
    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    configure(celery_app)
    celery_app.flask_app = app  # type: ignore[attr-defined]
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The application factory."""
    app = Flask(__name__)
    app.config.from_mapping(
        GREETING="Thanks for your order",
        CELERY={
            "broker_url": os.environ.get("REDIS_URL"),  # no localhost fallback
            "task_ignore_result": True,
        },
    )
    if test_config is None:
        app.config.from_prefixed_env()
    else:
        app.config.from_mapping(test_config)
    celery_init_app(app)

    from shop import views

    app.register_blueprint(views.bp)
    return app
