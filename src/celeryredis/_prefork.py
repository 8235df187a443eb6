"""Re-dispatch promptly a job handed to a prefork child that exits at its task limit.

Celery's prefork pool (``celery.concurrency.asynpool.AsynPool``, Celery 5.7) writes the
next job to a child as soon as that child's previous result arrives. A child that has
just run its ``worker_max_tasks_per_child``-th task exits instead of reading it. The
pool learns of the exit when the child's sentinel pipe becomes readable: it stops
watching the sentinel and runs ``maintain_pool()`` once, which re-dispatches the jobs
of *reaped* children only. Linux closes an exiting process's files before its exit
status can be collected, so that single ``maintain_pool()`` often runs a moment too
early, finds the child not reaped yet, and nothing looks again until another child
exits or the pool's 5-second maintenance timer fires. Until then the job, and the
prefetch slot it holds, sit idle: at ``worker_prefetch_multiplier = 1`` half of a
``-c 2`` worker's slots, and at the end of a backlog the whole worker, for up to 5 s
per recycle (``docs/transport.md``, "Prefork drain").

:class:`PreforkReapStep` wraps the pool's ``_event_process_exit`` on the pool instance:
when the exited child is still in the pool after ``maintain_pool()``, it runs
``maintain_pool()`` again from the worker's event loop 1 ms later, doubling the delay
to 0.5 s and then every 0.5 s, for about 6 s (:data:`_RETRY_DELAYS`). Celery's
5-second timer stays as well.

The private Celery/billiard API it needs is behind :mod:`celeryredis._celery_compat`
(``prefork_pool``, ``pool_children``, ``wrap_process_exit``; pinned by
``tests/unit/test_prefork_shim.py``).

The same step freezes the main process's heap (:func:`freeze_heap`, the standard
library's :func:`gc.freeze`) before the prefork pool forks its first child. Celery runs a
full :func:`gc.collect` before every fork (``AsynPool._create_worker_process``), and a
full collection walks every object of the host: up to 160 ms of a blocked event loop per
child recycled at ``worker_max_tasks_per_child`` (every slot idles meanwhile, not only
the recycled one). Objects alive at worker start-up (modules, the app, its tasks) are
moved to the permanent generation, which collections skip, so that collection only
walks what was allocated since; the children share those pages copy-on-write instead of
dirtying them on their own collections (the use :func:`gc.freeze` documents for servers
that fork). Cyclic garbage among the frozen objects is never collected; start-up
objects live as long as the worker does. It freezes again on the event loop's first
pass, once the consumer has connected.

Two more costs of the prefork pool's main process and recycles are trimmed here:
:func:`compact_timer` drops the cancelled time-limit entries of finished tasks from the
event loop's timer (kombu keeps them until the limit's time), and an exiting child
checks every :data:`EXIT_POLL_INTERVAL` seconds, not every 0.1 s, that the main process
has read its last results (``_celery_compat.set_exit_poll``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any, Final

from celery import bootsteps
from celery.signals import worker_before_create_process

from celeryredis import _celery_compat, _kombu_compat

__all__ = [
    "COMPACT_INTERVAL",
    "EXIT_POLL_INTERVAL",
    "PreforkReapStep",
    "compact_timer",
    "freeze_heap",
    "in_prefork_main",
    "install_reaper",
]

logger = logging.getLogger(__name__)

#: Seconds between the retries of ``maintain_pool()`` for an exited, unreaped child:
#: doubling from 1 ms, then every 0.5 s, about 6 s in all (past Celery's 5 s timer).
_RETRY_DELAYS: Final = (
    *(0.001 * 2**n for n in range(10)),  # 1 ms ... 512 ms, about 1 s in all
    *(0.5,) * 10,
)
_MARK: Final = "_celeryredis_reaper"


#: Set in a prefork pool's main process when the pool is created (:class:`PreforkReapStep`).
_PREFORK_MAIN: dict[str, bool] = {"now": False}


def in_prefork_main() -> bool:
    """True in a worker's main process whose pool is prefork.

    Tasks run in the children there, so the main process's event loop keeps turning
    while they run; with the solo pool a task blocks it. The reliable transport's reserve
    relies on that loop to hand back in time a message no slot took.
    """
    return _PREFORK_MAIN["now"]


def install_reaper(pool: Any) -> bool:
    """Wrap the pool's exit handler on the instance; True when installed.

    ``pool`` is an ``AsynPool``; anything else (the solo, threads or green pools'
    objects, or an ``AsynPool`` without the hook) is left alone and False returned.
    """
    if pool is None or not hasattr(pool, "maintain_pool") or getattr(pool, _MARK, False):
        return False

    def alive(proc: Any) -> bool:
        return proc in _celery_compat.pool_children(pool)

    def retry(hub: Any, proc: Any, attempt: int) -> None:
        if not alive(proc):
            return
        pool.maintain_pool()
        if alive(proc) and attempt + 1 < len(_RETRY_DELAYS):
            hub.call_later(_RETRY_DELAYS[attempt + 1], retry, hub, proc, attempt + 1)
        elif alive(proc):
            logger.debug(
                "celeryredis: pool process %s not reaped yet; left to Celery's timer",
                getattr(proc, "pid", None),
            )

    def wrap(original: Any) -> Any:
        def event_process_exit(hub: Any, proc: Any) -> None:
            original(hub, proc)
            if alive(proc):
                # The sentinel closed before the exit status could be collected.
                hub.call_later(_RETRY_DELAYS[0], retry, hub, proc, 0)

        return event_process_exit

    if not _celery_compat.wrap_process_exit(pool, wrap):
        return False
    setattr(pool, _MARK, True)
    return True


def freeze_heap() -> int:
    """Collect, then move every object the process tracks to the permanent generation.

    Returns how many objects are frozen (:func:`gc.get_freeze_count`).
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("celeryredis: froze %d objects of the main process before forking", frozen)
    return frozen


#: Seconds between an exiting child's checks that the main process read its last
#: results (billiard checks every 0.1 s, so a recycled child's slot usually idled 0.1 s).
EXIT_POLL_INTERVAL: Final = 0.005

#: Seconds between two passes of :func:`compact_timer` in a prefork worker's main process.
COMPACT_INTERVAL: Final = 30.0


def compact_timer(hub: Any) -> int:
    """Drop the event loop's cancelled timer entries; return how many went.

    The prefork pool schedules a task's soft (or hard) time limit on the event loop's
    timer when it starts the task, and cancels it when the task ends. kombu's timer
    only flags a cancelled entry, which stays in its heap until the limit's time would
    have come (``task_soft_time_limit``, 1,740 s under ``production``): one dead entry
    per task run in that span, each about 0.9 KB of the main process's memory and more
    objects for every garbage collection to walk (measured: 30,008 entries after 30,000
    tasks in 13.8 s, main process 55 to 82 MiB). Every :data:`COMPACT_INTERVAL` seconds
    they are dropped, and before each fork: the pool's full collection then walked five
    objects per task run since the last compaction (100,376 objects, 30 to 51 ms with the
    event loop blocked, at the 20th recycle of a 20,000-task drain).
    """
    dropped = _kombu_compat.compact_timer(hub.timer)
    if dropped:
        logger.debug("celeryredis: dropped %d cancelled timer entries", dropped)
    return dropped


def _is_prefork(task_pool: Any) -> bool:
    from celery.concurrency.prefork import TaskPool  # noqa: PLC0415 (prefork only)

    return isinstance(task_pool, TaskPool)


class PreforkReapStep(bootsteps.StartStopStep):
    """Worker bootstep of the prefork pool's main process (no-op on other pools).

    Before the pool forks: the short exit poll and a frozen heap. Once it started:
    :func:`install_reaper` (the pool registers each child's sentinel with the event loop
    after it started, through ``self._event_process_exit``, so wrapping the instance here
    covers every child, the replacements too), a second freeze on the loop's first pass
    and :func:`compact_timer` every :data:`COMPACT_INTERVAL` seconds and before each
    fork of a replacement child (Celery's ``worker_before_create_process`` signal, sent
    just before the pool's full collection, which would otherwise walk every entry).
    Each is independent of the others.
    """

    label = "celeryredis prefork reaper"
    requires = ("celery.worker.components:Pool",)
    #: The ``worker_before_create_process`` receiver :meth:`start` connected, if any.
    _before_fork: Callable[..., None] | None = None

    def create(self, parent: Any) -> None:
        """Before the prefork pool forks: the exit poll, then freeze the heap.

        Celery's ``Pool`` step creates the pool object here and forks the children when
        it starts, after every step's ``create``. The children inherit
        :data:`EXIT_POLL_INTERVAL` and the frozen heap (:func:`freeze_heap`).
        """
        if _is_prefork(getattr(parent, "pool", None)):
            _PREFORK_MAIN["now"] = True
            _celery_compat.set_exit_poll(EXIT_POLL_INTERVAL)
            freeze_heap()

    def start(self, parent: Any) -> None:
        """Wrap the prefork pool's exit handler; freeze again once the loop runs.

        The consumer starts after this step: it connects, imports the transport and
        builds the task strategies. The event loop's first pass freezes those too, so
        the collection before a recycle's fork walks only what was allocated since.
        No-op on other pools.
        """
        pool = _celery_compat.prefork_pool(getattr(parent, "pool", None))
        if pool is None:
            return
        install_reaper(pool)
        hub = getattr(parent, "hub", None)
        if hub is not None:
            hub.call_soon(freeze_heap)
            hub.call_repeatedly(COMPACT_INTERVAL, compact_timer, hub)

            def before_fork(sender: Any = None, **_: Any) -> None:
                if sender is pool:
                    compact_timer(hub)

            self._before_fork = before_fork
            worker_before_create_process.connect(before_fork, weak=False)

    def stop(self, parent: Any) -> None:
        """Disconnect the pre-fork compaction (:meth:`start` connected it)."""
        before_fork = self._before_fork
        if before_fork is not None:
            worker_before_create_process.disconnect(before_fork)
            self._before_fork = None
