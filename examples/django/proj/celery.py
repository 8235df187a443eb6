import os

from celery import Celery
from celeryredis import configure

# Set the default Django settings module for the 'celery' program.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")

# Using a string here means the worker doesn't have to serialize
# the configuration object to child processes.
# - namespace='CELERY' means all celery-related configuration keys
#   should have a `CELERY_` prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")

# celeryredis: the production preset under the CELERY_* settings, checks, task bases.
configure(app)

# Load task modules from all registered Django apps.
app.autodiscover_tasks()
