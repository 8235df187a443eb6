"""The celeryredis exception tree.

Every error the library raises derives from :class:`CeleryRedisError`, so a host
project can catch everything of ours with one ``except`` clause::

    CeleryRedisError
    ├── ConfigurationError (also a ValueError)
    ├── DuplicateTaskError
    │   └── celeryredis.bulk.BulkDuplicateError (also a BulkPublishError)
    ├── PublishError (also a ConnectionError)
    ├── NotDurableError (deliberately not a ConnectionError)
    ├── RedisRefusedError
    ├── ResultNotStoredError
    ├── LockError
    ├── RateLimitError
    ├── DeadLetterError
    │   └── DeadLetterNotFound
    ├── celeryredis.bulk.BulkPublishError (its resolve() needs the bulk machinery)
    └── celeryredis.testing: RedisServerError, WorkerProcessError, FaultProxyError

The library's errors live here (the modules that raise them re-export them); the bulk
errors live with ``enqueue_many``, whose report they carry, and the test fixtures' errors
with the fixtures.

Each error carries its context as attributes and a message that says what was
wrong and how to fix it. Messages never contain secrets: URLs are redacted
before they are put into a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "CeleryRedisError",
    "ConfigurationError",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DuplicateTaskError",
    "LockError",
    "NotDurableError",
    "PublishError",
    "RateLimitError",
    "RedisRefusedError",
    "ResultNotStoredError",
]


class CeleryRedisError(Exception):
    """Root of every exception raised by celeryredis."""


class ConfigurationError(CeleryRedisError, ValueError):
    """A URL, preset, setting or combination of settings is wrong.

    Args:
        message: What is wrong and how to fix it.
        setting: The setting (or URL) name the error is about, if there is one.
        check_ids: The ids of the validation checks that failed, if the error
            comes from validation.
    """

    def __init__(
        self,
        message: str,
        *,
        setting: str | None = None,
        check_ids: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.check_ids = tuple(check_ids)


class DuplicateTaskError(CeleryRedisError):
    """A unique task is already queued or running (``on_duplicate="raise"``).

    Args:
        message: What was refused.
        task_id: The id of the task that holds the lock.
        ttl: Seconds left on its lock, if known.
        key: The lock key.
    """

    def __init__(
        self, message: str, *, task_id: str, ttl: float | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.ttl = ttl
        self.key = key


class PublishError(CeleryRedisError, ConnectionError):
    """A task could not be published: Redis (broker or result backend) failed.

    Raised by ``celeryredis.Task.apply_async()`` (and so ``.delay()``). The task was
    **not** sent. The original error is the ``__cause__``.

    Two kinds, told apart by ``permanent``:

    - a *permanent* error (wrong or missing password, ``NOPERM``, a database index
      out of range, a TLS certificate that fails verification, an unknown command)
      is raised at once, without waiting for any retry: retrying cannot fix it. The
      message names the cause and the fix.
    - a *transient* one (connection refused, a timeout, ``LOADING``, a failover) is
      raised once Celery's own retries are used up: the result backend's
      ``result_backend_transport_options["retry_policy"]`` (it subscribes to the
      task's result channel first) and then ``task_publish_retry_policy``.

    Args:
        message: What failed and what to do.
        task_name: The task that was being published.
        elapsed: Seconds spent trying before giving up.
        permanent: True when retrying cannot help.
        kind: The short name of the cause (see :mod:`celeryredis._errors`),
            e.g. ``"wrong_password"`` or ``"unreachable"``.
    """

    def __init__(
        self,
        message: str,
        *,
        task_name: str,
        elapsed: float,
        permanent: bool = False,
        kind: str = "unreachable",
    ) -> None:
        super().__init__(message)
        self.task_name = task_name
        self.elapsed = elapsed
        self.permanent = permanent
        self.kind = kind


class NotDurableError(CeleryRedisError):
    """A durable publish reached the master but not enough replicas in time.

    Raised by the reliable transport's publish when ``celeryredis_durable_publish`` is
    N > 0 and Redis's ``WAIT N timeout`` after the ``LPUSH`` counted fewer than N
    replicas within ``celeryredis_durable_publish_timeout``. The message **is** on the
    master and may run; what is not known is that it survives the master's loss.

    Not a ``ConnectionError`` on purpose: kombu retries a publish on connection errors,
    and every retry would push one more copy of the message.

    Args:
        message: What happened and what to do.
        acked: Replicas that acknowledged the write.
        needed: Replicas asked for.
        timeout: Seconds the ``WAIT`` lasted at most.
    """

    def __init__(self, message: str, *, acked: int, needed: int, timeout: float) -> None:
        super().__init__(message)
        self.acked = acked
        self.needed = needed
        self.timeout = timeout


class RedisRefusedError(CeleryRedisError):
    """Redis refused the app for a reason that retrying will not fix.

    Raised instead of waiting out a retry budget, e.g. when the result backend
    cannot subscribe because the password is wrong. :class:`PublishError` wraps it
    when it happens during a publish.

    Args:
        message: The cause and how to fix it.
        kind: The short name of the cause (``"wrong_password"``, ``"no_permission"``...).
        where: ``"broker"``, ``"result backend"`` or ``"redis"``.
    """

    def __init__(self, message: str, *, kind: str, where: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.where = where


class ResultNotStoredError(CeleryRedisError):
    """``.get()`` was called on a task whose result is not stored.

    The task (or the app, e.g. the ``throughput`` preset) sets ``ignore_result``, so
    waiting would only run into the timeout.

    Args:
        message: Why and how to fix it.
        task_id: The task's id.
        task_name: The task's name, if known.
    """

    def __init__(self, message: str, *, task_id: str, task_name: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_name = task_name


class RateLimitError(CeleryRedisError):
    """Redis could not be asked for a rate-limit decision."""


class LockError(CeleryRedisError):
    """A lock operation failed.

    Attributes:
        lock_name: The lock's key.
    """

    def __init__(self, message: str, *, lock_name: str) -> None:
        super().__init__(message)
        self.lock_name = lock_name


class DeadLetterError(CeleryRedisError):
    """The dead-letter queue could not be read, written or replayed.

    Attributes:
        published: Ids of the tasks published before the error (for replay).
        not_published: Entry ids that were not published (and were put back).
    """

    def __init__(
        self, message: str, *, published: Iterable[str] = (), not_published: Iterable[str] = ()
    ) -> None:
        super().__init__(message)
        self.published = tuple(published)
        self.not_published = tuple(not_published)


class DeadLetterNotFound(DeadLetterError):  # noqa: N818 - reads as what happened
    """No dead-letter entry has these ids (nothing was replayed).

    Attributes:
        ids: The ids that were not found.
    """

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = tuple(ids)
        shown = ", ".join(repr(i) for i in self.ids)
        super().__init__(
            f"no dead-letter entry {shown}: it was replayed, purged or trimmed already, or "
            "the id is mistyped (ids look like 1764612000000-0; `celeryredis dlq list` shows them)"
        )
