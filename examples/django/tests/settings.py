"""Test settings: the project's settings, with Celery in eager mode by default.

Importing ``proj.settings`` imports the ``proj`` package first, hence ``proj/celery.py``
and its ``configure(app)``, while these settings are still half loaded.
"""

from proj.settings import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
