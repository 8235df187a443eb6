"""Every private Celery attribute celeryredis touches, behind one small interface.

Nothing else in the package reads or writes a Celery name that starts with ``_``
(``tests/unit/test_compat.py`` greps for it). Each use is listed in :data:`PRIVATE_API`
with the Celery versions it was checked against; :func:`check` verifies them on the
installed Celery and the unit tests call it, so an upgrade that drops one fails there
with the name, the version and what to do, not somewhere deep in a worker.

Supported: Celery 5.7 (``pyproject.toml``: ``celery>=5.7,<6``; ``make compat`` runs
the core suite on both edges of the range). Importing this module runs
:func:`require_supported`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import textwrap
from collections.abc import Mapping
from typing import Any, Final

import celery
from celery.app import defaults as _defaults

__all__ = [
    "CELERY_VERSION",
    "MIRRORED",
    "PRIVATE_API",
    "check",
    "decorated_class_keys",
    "discard_buffered_result",
    "exec_options",
    "made_by_decorator",
    "mirrored_changes",
    "missing",
    "old_setting_names",
    "pool_children",
    "prefork_pool",
    "reply_to",
    "require_supported",
    "set_exit_poll",
    "wrap_process_exit",
    "wrap_result_meta",
]

#: The installed Celery's version as a tuple of ints, e.g. ``(5, 7, 0)``.
CELERY_VERSION: Final = tuple(int(part) for part in celery.VERSION[:3])

#: The oldest Celery supported, the first one not, and the requirement in pyproject.toml.
FLOOR: Final = (5, 7)
CEILING: Final = (6, 0)
REQUIREMENT: Final = "celery>=5.7,<6"

#: (what, where it lives, why celeryredis needs it); :func:`check` looks each one up.
PRIVATE_API: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "celery.app.defaults._TO_NEW_KEY",
        "module",
        "validation: the complete table of old upper-case setting names",
    ),
    (
        "celery.app.task.Task._get_exec_options",
        "method",
        "enqueue_many: a task's own publish options, as apply_async reads them",
    ),
    (
        "celery.app.base.Celery.thread_oid",
        "attribute",
        "enqueue_many: the default reply_to of a message, as send_task sets it",
    ),
    (
        "celery.backends.base.BaseBackend._pending_messages",
        "instance attribute",
        "DeadLetterQueue.replay: drop a result message Celery buffered for a task id that "
        "is published again",
    ),
    (
        "celery.backends.base.BaseBackend._get_result_meta",
        "method",
        "_backend_guard.redact_stored_arguments: wrapped on the backend instance, so the "
        "result_extended meta stores a view of the request with sensitive arguments as ***",
    ),
    (
        "celery.backends.redis.RedisBackend._set",
        "method",
        "cluster.RedisClusterBackend overrides it: SET, then PUBLISH outside a pipeline "
        "(redis-py refuses PUBLISH in a cluster pipeline)",
    ),
    (
        "celery.backends.redis.ResultConsumer._reconnect_pubsub",
        "method",
        "cluster.ClusterResultConsumer overrides it: no connection_pool.reset(), "
        "mget_nonatomic, a node that answers",
    ),
    (
        "celery.backends.redis.ResultConsumer._reset_sync",
        "method",
        "cluster.ClusterResultConsumer.on_after_fork: fresh locks in a forked child",
    ),
    (
        "celery.backends.redis.ResultConsumer._locked",
        "method",
        "cluster.ClusterResultConsumer: pub/sub operations one at a time, as Celery's",
    ),
    (
        "celery.backends.redis.ResultConsumer._pubsub",
        "attribute",
        "cluster.ClusterResultConsumer: the pub/sub object it replaces on reconnect",
    ),
    (
        "celery.backends.redis.ResultConsumer._pending_unsubscribe",
        "instance attribute",
        "cluster.ClusterResultConsumer: unsubscribes queued while reconnecting",
    ),
    (
        "celery.backends.asynchronous.BaseResultConsumer._connection_errors",
        "attribute",
        "cluster.ClusterResultConsumer: cluster failover errors also trigger a reconnect",
    ),
    (
        "celery.concurrency.asynpool.AsynPool._event_process_exit",
        "method",
        "_prefork: wrapped on the pool instance to re-run maintain_pool() until an exited "
        "child is reaped",
    ),
    (
        "celery.concurrency.prefork.TaskPool._pool",
        "instance attribute",
        "_prefork: the worker's AsynPool (set when the pool starts)",
    ),
    (
        "billiard.pool.Pool._pool",
        "instance attribute",
        "_prefork: the pool's live child processes (an exited child leaves it when reaped)",
    ),
    (
        "billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL",
        "module",
        "_prefork: how often an exiting child checks that its results were read (0.1 s)",
    ),
    (
        "billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT",
        "module",
        "_prefork: how many checks before the exiting child gives up (300)",
    ),
)

#: Celery functions that :func:`celeryredis.enqueue_many` re-implements (``bulk._Sender``
#: builds each message as ``apply_async`` + ``send_task`` do), with the SHA-256 prefix of
#: their source in each Celery version the copy was checked against. A new Celery whose
#: source differs fails ``tests/unit/test_compat.py`` until bulk.py is compared again.
MIRRORED: Final[dict[str, dict[str, str]]] = {
    "celery.app.base.Celery.send_task": {"5.7.0": "b504731aa5f3b590"},
    "celery.app.task.Task.apply_async": {"5.7.0": "15d38f684796b349"},
    # What bulk._Sender relies on to build once per batch what these compute per call:
    # argsrepr/kwargsrepr (bulk._flat_repr gives saferepr's text for flat arguments),
    # routes that depend on the task's name only, and shadow_name returning None.
    "celery.app.amqp.AMQP.as_task_v2": {"5.7.0": "32e04ba75bbc1463"},
    "celery.utils.saferepr.saferepr": {"5.7.0": "5abccefe7765c229"},
    "celery.utils.saferepr._saferepr": {"5.7.0": "b6ec1ccef4493650"},
    "celery.utils.saferepr.reprstream": {"5.7.0": "2960b7ece616dee1"},
    "celery.utils.saferepr._format_chars": {"5.7.0": "8239644ed7e75d54"},
    "celery.utils.text.truncate": {"5.7.0": "fa21945ecf9c472a"},
    "celery.app.routes.Router.route": {"5.7.0": "3cf639f6f8dedbbc"},
    "celery.app.routes.MapRoute.__call__": {"5.7.0": "067499b5e7a30f7f"},
    "celery.app.task.Task.shadow_name": {"5.7.0": "76ef818a0da5b4ab"},
}

# Keys Celery itself puts into a decorated task's class dict (celery/app/base.py,
# Celery._task_from_fun), private ones among them.
_CLASS_DICT_KEYS: Final = frozenset(
    {
        "app",
        "name",
        "run",
        "_decorated",
        "_dump_pydantic_arguments",
        "_decorated_fun",
        "__doc__",
        "__module__",
        "__annotations__",
        "__header__",
        "__wrapped__",
        "__qualname__",
    }
)


def decorated_class_keys() -> frozenset[str]:
    """Keys ``@app.task`` puts into the class dict of the task class it creates."""
    return _CLASS_DICT_KEYS


def made_by_decorator(class_dict: Mapping[str, Any]) -> bool:
    """Whether ``@app.task`` created the class with this dict (Celery marks it ``_decorated``)."""
    return bool(class_dict.get("_decorated"))


def old_setting_names() -> Mapping[str, str]:
    """Celery's table of old upper-case setting names to their new names.

    Celery keeps it in a private dict (``celery.app.defaults._TO_NEW_KEY``); it is the
    only complete list, so it is read rather than copied.
    """
    table: Mapping[str, str] = getattr(_defaults, "_TO_NEW_KEY", {})
    return table


def exec_options(task: Any) -> dict[str, Any]:
    """A task's own publish options (queue, priority, serializer ...), None ones left out.

    ``Task._get_exec_options`` is what Celery's ``apply_async`` and ``send_task`` use.
    """
    options: Mapping[str, Any] = task._get_exec_options()
    return {k: v for k, v in options.items() if v is not None}


def reply_to(app: celery.Celery) -> str:
    """The default ``reply_to`` of a message sent from this thread (``Celery.thread_oid``)."""
    return str(app.thread_oid)


def discard_buffered_result(backend: Any, task_id: str) -> None:
    """Forget a result message Celery's result consumer buffered for ``task_id``.

    Celery's asynchronous result consumer keeps a READY message that arrives when nobody
    waits for it (``BaseBackend._pending_messages``), and hands it to the next
    ``AsyncResult`` of the same id. A task republished under its old id (a dead-letter
    replay) would then read its previous FAILURE at once. Does nothing on a backend
    without that buffer.
    """
    buffered = getattr(backend, "_pending_messages", None)
    if buffered is None:
        return
    dropped = buffered.pop(task_id, None)
    if dropped is not None and hasattr(buffered, "total"):
        buffered.total -= len(dropped)


def wrap_result_meta(backend: Any, wrap: Any) -> bool:
    """Replace ``backend``'s ``_get_result_meta`` on the instance with ``wrap(original)``.

    Celery builds every stored state's meta there (``result_extended`` adds the
    request's ``args``/``kwargs``, read from ``request``). False (nothing done) on a
    backend without it.
    """
    original = getattr(backend, "_get_result_meta", None)
    if original is None:
        return False
    backend._get_result_meta = wrap(original)
    return True


def prefork_pool(task_pool: Any) -> Any:
    """The ``AsynPool`` behind a worker's prefork ``TaskPool`` (None for other pools)."""
    return getattr(task_pool, "_pool", None)


def pool_children(pool: Any) -> list[Any]:
    """A billiard pool's live child processes (an exited child leaves when reaped)."""
    return list(pool._pool)


def set_exit_poll(interval: float) -> tuple[float, int]:
    """Make an exiting billiard child check every ``interval`` s; return (interval, checks).

    After its last task a child that exits (``worker_max_tasks_per_child``) waits until
    the main process has read its results, checking a shared counter every
    ``GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL`` seconds (billiard: 0.1 s) up to
    ``GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT`` times. The number of checks is scaled
    so the child waits as long in all (30 s in billiard). Children read both when they
    exit, so set them in the main process before it forks.
    """
    module = importlib.import_module("billiard.pool")
    budget = float(module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL) * int(
        module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT
    )
    checks = max(1, round(budget / interval))
    setattr(module, "GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL", interval)  # noqa: B010
    setattr(module, "GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT", checks)  # noqa: B010
    return interval, checks


def wrap_process_exit(pool: Any, wrap: Any) -> bool:
    """Replace ``pool._event_process_exit`` on the instance with ``wrap(original)``.

    The pool looks the handler up on the instance when it registers each child's
    sentinel, so replacing it after the pool started covers every child. Returns False
    (and changes nothing) when ``pool`` has no such handler.
    """
    original = getattr(pool, "_event_process_exit", None)
    if original is None:
        return False
    pool._event_process_exit = wrap(original)
    return True


def _lookup(dotted: str) -> Any:
    """The object a dotted ``celery.app...`` path names (module prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def missing() -> list[str]:
    """The entries of :data:`PRIVATE_API` the installed Celery lacks, as readable lines."""
    lacking = []
    for dotted, kind, why in PRIVATE_API:
        if kind == "instance attribute":
            continue  # set in __init__: tests/unit/test_compat.py pins it on a real instance
        try:
            _lookup(dotted)
        except (ImportError, AttributeError):
            lacking.append(f"{dotted} ({why})")
    return lacking


def check() -> None:
    """Verify every private Celery name in :data:`PRIVATE_API` exists here.

    Raises:
        ImportError: One is missing; the message names each, the installed Celery
            version, and what to do.
    """
    lacking = missing()
    if lacking:
        raise ImportError(
            f"celeryredis does not support the installed Celery {celery.__version__}: it lacks "
            + "; ".join(lacking)
            + f". Install {REQUIREMENT!r} (the range celeryredis is tested with)."
        )


def source_hash(dotted: str) -> str:
    """The SHA-256 prefix (16 hex digits) of a Celery function's dedented source."""
    text = textwrap.dedent(inspect.getsource(_lookup(dotted)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mirrored_changes() -> list[str]:
    """The functions in :data:`MIRRORED` whose installed source matches no checked version."""
    changed = []
    for dotted, checked in MIRRORED.items():
        found = source_hash(dotted)
        if found not in checked.values():
            changed.append(
                f"{dotted} in Celery {celery.__version__} (source {found}) differs from the "
                f"versions bulk._Sender was checked against ({', '.join(sorted(checked))})"
            )
    return changed


def require_supported(installed: tuple[int, ...] = CELERY_VERSION) -> None:
    """Refuse a Celery older than the floor; check the private API of a newer one.

    Runs when celeryredis is imported. Inside the tested range the private names are
    known to exist (``tests/unit/test_compat.py``, ``make compat``); above it they are
    looked up, so a Celery that dropped one fails here, by name, not deep in a worker.

    Raises:
        ImportError: The installed Celery is older than 5.7, or lacks a private name.
    """
    if installed < FLOOR:
        found = ".".join(map(str, installed))
        raise ImportError(
            f"celeryredis needs Celery >= 5.7, found {found}: its presets set "
            "task_acks_on_failure, task_acks_on_timeout and task_retry_on_worker_lost, "
            f"which Celery {found} does not know. Install {REQUIREMENT!r} "
            "(pip install -U 'celery>=5.7,<6')."
        )
    if installed >= CEILING:
        check()


require_supported()
