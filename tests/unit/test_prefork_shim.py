"""celeryredis._prefork: the private Celery/billiard API it relies on, and its retries.

The behaviour (a recycled child strands no job) is tested with real workers in
``tests/integration/test_prefork_drain.py``; this pins the hooks and the retry schedule.
"""

from __future__ import annotations

import inspect
from typing import Any

from billiard.pool import Pool as BilliardPool
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

from celeryredis import _prefork, make_app
from celeryredis._prefork import PreforkReapStep, install_reaper


def test_private_hooks_exist_with_the_expected_shape() -> None:
    assert list(inspect.signature(AsynPool._event_process_exit).parameters) == [
        "self",
        "hub",
        "proc",
    ]
    source = inspect.getsource(AsynPool._track_child_process)
    assert "self._event_process_exit" in source  # looked up on the instance
    assert "self._event_process_exit" not in inspect.getsource(AsynPool.__init__)
    assert callable(BilliardPool.maintain_pool)
    assert "self._pool = " in inspect.getsource(BilliardPool.__init__)  # live children
    assert "self._pool = " in inspect.getsource(TaskPool.on_start)  # the AsynPool


class FakeHub:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> None:
        self.later.append((delay, callback, args))

    def run_next(self) -> float:
        delay, callback, args = self.later.pop(0)
        callback(*args)
        return delay


class FakePool:
    """Children are reaped on the ``reap_on``-th call of maintain_pool."""

    def __init__(self, proc: object, reap_on: int) -> None:
        self._pool = [proc]
        self.proc = proc
        self.reap_on = reap_on
        self.calls = 0
        self.exit_events = 0

    def maintain_pool(self) -> None:
        self.calls += 1
        if self.calls >= self.reap_on and self.proc in self._pool:
            self._pool.remove(self.proc)

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        self.exit_events += 1
        self.maintain_pool()


def test_reaped_at_once_schedules_nothing() -> None:
    proc, hub = object(), FakeHub()
    pool = FakePool(proc, reap_on=1)
    assert install_reaper(pool)
    pool._event_process_exit(hub, proc)
    assert (pool.exit_events, pool.calls, hub.later) == (1, 1, [])


def test_unreaped_child_is_retried_with_doubling_delays_until_reaped() -> None:
    proc, hub = object(), FakeHub()
    pool = FakePool(proc, reap_on=4)
    install_reaper(pool)
    pool._event_process_exit(hub, proc)
    delays = []
    while hub.later:
        delays.append(hub.run_next())
    assert pool.calls == 4
    assert proc not in pool._pool
    assert delays == [0.001, 0.002, 0.004]


def test_retries_stop_after_the_last_delay() -> None:
    proc, hub = object(), FakeHub()
    pool = FakePool(proc, reap_on=10**6)
    install_reaper(pool)
    pool._event_process_exit(hub, proc)
    delays = []
    while hub.later:
        delays.append(hub.run_next())
    assert delays == list(_prefork._RETRY_DELAYS)
    assert pool.calls == 1 + len(_prefork._RETRY_DELAYS)


def test_install_is_idempotent_and_skips_other_pools() -> None:
    proc = object()
    pool = FakePool(proc, reap_on=2)
    assert install_reaper(pool)
    wrapped = pool._event_process_exit
    assert not install_reaper(pool)
    assert pool._event_process_exit is wrapped
    assert not install_reaper(None)
    assert not install_reaper(object())


def test_make_app_installs_the_step() -> None:
    app = make_app("pf-unit", broker_url="redis://127.0.0.1:1/0", result_backend=None)
    try:
        assert PreforkReapStep in app.steps["worker"]
        # Celery resolves a step's `requires` in place once a worker blueprint is built (an
        # in-process worker earlier in the session): compare the names either way.
        names = [getattr(r, "name", str(r)) for r in PreforkReapStep.requires]
        assert names in (["celery.worker.components:Pool"], ["celery.worker.components.Pool"])
    finally:
        app.close()


def test_compact_timer_drops_cancelled_entries_and_keeps_the_schedule() -> None:
    """A real kombu Timer: cancelled entries leave the heap, the rest fire in order."""
    from kombu.asynchronous.timer import Timer

    from celeryredis import _kombu_compat

    timer = Timer()
    fired: list[int] = []
    entries = [timer.call_at(1000.0 + i, fired.append, (i,)) for i in range(100)]
    for i, entry in enumerate(entries):
        if i % 5:
            timer.cancel(entry)
    heap = timer._queue
    assert _kombu_compat.compact_timer(timer) == 80
    assert timer._queue is heap  # rebuilt in place: the timer's iterator holds the list
    assert len(timer) == 20
    assert _kombu_compat.compact_timer(timer) == 0
    for item in sorted(timer._queue):
        item.entry()
    assert fired == list(range(0, 100, 5))
    assert [item.eta for item in timer.queue] == [1000.0 + i for i in range(0, 100, 5)]


def test_set_exit_poll_keeps_billiards_total_wait() -> None:
    """The exiting child checks more often, for the same 30 s in all."""
    import billiard.pool

    from celeryredis import _celery_compat

    before = (
        billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL,
        billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT,
    )
    try:
        billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL = 0.1
        billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT = 300
        assert _celery_compat.set_exit_poll(0.005) == (0.005, 6000)
        assert billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL == 0.005
        assert billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT == 6000
        assert _celery_compat.set_exit_poll(0.005) == (0.005, 6000)  # idempotent
    finally:
        (
            billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL,
            billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT,
        ) = before
