"""Scenario 5: Sentinel (1 master, 1 replica, 3 sentinels); the master is SIGKILLed mid-run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celeryredis.testing import RedisServer, WorkerProcess
from tests._sentinel import MASTER, master_port, sentinel_ready, sentinel_rig, sentinels
from tests._util import wait_for
from tests.faults._harness import FAULT_PASSWORD, Outcome, Publisher, Rig

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

RUN_AFTER_KILL_S = 12.0
# Sentinel promotes the replica ~2.3 s after the kill; Celery's worker reconnects on its
# fixed 2 s + 4 s backoff (fault-recipes.md: first task 6.1-6.3 s after the kill).
RESUME_BOUND = 20.0


def test_master_sigkill_fails_over_without_a_failed_publish(
    config: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
    fault_report: Any,
    secret_scan: Any,
) -> None:
    master = redis_server_factory(password=FAULT_PASSWORD)
    replica = redis_server_factory(
        password=FAULT_PASSWORD,
        extra_args=["--replicaof", "127.0.0.1", str(master.port), "--masterauth", FAULT_PASSWORD],
    )
    master.client().config_set("masterauth", FAULT_PASSWORD)  # in case it comes back
    records = redis_server_factory(password=FAULT_PASSWORD)
    with sentinels(tmp_path, master.port, FAULT_PASSWORD) as ports:
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            30,
            "the replica to sync",
        )
        wait_for(lambda: all(sentinel_ready(p) for p in ports), 60, "the sentinels to agree")

        def url(db: int) -> str:
            first, *rest = ports
            return ";".join(
                [f"sentinel://:{FAULT_PASSWORD}@127.0.0.1:{first}/{db}"]
                + [f"sentinel://127.0.0.1:{p}/{db}" for p in rest]
            )

        options = {"master_name": MASTER}
        rig = Rig(
            config,
            tmp_path,
            monkeypatch,
            celery_worker_process,
            worker_broker=url(0),
            worker_backend=url(1),
            publish_broker=url(0),
            publish_backend=url(1),
            record_url=f"redis://:{FAULT_PASSWORD}@127.0.0.1:{records.port}/0",
            settings={
                "broker_transport_options": options,
                "result_backend_transport_options": options,
                # production runs the reliable transport here: the default lease, which
                # outlasts the reconnect (the test-scale 3 s does not).
                **({"celeryredis_lease_seconds": 30.0} if config == "production" else {}),
            },
        )
        worker = rig.worker("s", concurrency=2, trust_ports=ports)  # sentinels: started here
        worker.wait_ready()
        publisher = Publisher(rig)
        try:
            wait_for(lambda: len(rig.done()) >= 5, 30, "tasks before the failover")
            master.kill()
            killed = time.time()
            time.sleep(RUN_AFTER_KILL_S)  # holding the fault while the publisher runs
            publisher.stop()
        finally:
            publisher.kill()
        published_at = publisher.accepted()
        failed = publisher.failed()
        accepted = sorted(published_at)
        all_done = rig.wait_done(accepted, 60)
        lost, twice = rig.counts(accepted)
        done_at = rig.done_at()
        after = [done_at[i] for i in accepted if published_at[i] > killed and i in done_at]
        resume = min(after) - killed if after else None
        lost_at = [round(published_at[i] - killed, 2) for i in accepted if not rig.done().get(i)]
    for text in failed:
        secret_scan.add("publish error", text)
    fault_report.add(
        Outcome(
            "5. Sentinel: master SIGKILLed",
            config,
            lost=lost,
            twice=twice,
            recover_s=resume,
            note=f"{len(accepted)} publishes returned, {len(failed)} raised; "
            "time = kill to first task published after it run"
            + (f"; lost ones were published {lost_at} s after the kill" if lost_at else ""),
        )
    )
    if config == "production":
        assert not failed, failed[:3]
        assert resume is not None
        assert resume <= RESUME_BOUND, f"resumed {resume:.1f} s after the kill"
        # Not asserted: a publish Redis acknowledged just before the kill and had not
        # yet copied to the replica is gone (asynchronous replication; seen once in 6
        # runs). The figure is in docs/reliability.md.
        assert all_done or lost <= 2, f"{lost} accepted publish(es) never ran"


BACKLOG = 2000
#: Celery's warning for each acks-late task it cancels at a connection loss.
CANCELLED = "cannot be acknowledged after a connection loss"
BACKLOG_BASE = 100_000  # backlog task numbers; the publisher counts from 0


@pytest.mark.parametrize(
    ("durable", "cancel"),
    [(0, True), (1, True), (1, False)],
    ids=["durable-off", "durable-on", "durable-on-no-cancel"],
)
def test_reliable_transport_drains_through_a_master_sigkill(
    durable: int,
    cancel: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
    fault_report: Any,
    secret_scan: Any,
) -> None:
    """The reliable transport over Sentinel: SIGKILL of the master mid-drain of 2,000 tasks.

    Every acknowledged publish runs; none runs twice except those Celery cancels at the
    connection loss and at most two whose fetch or ack the failover undid (they first
    ended within 1 s before the kill or during the failover); the worker resumes within
    the failover time + 5 s; with durable publish on, publishes acknowledged in the second
    before the kill run too. The killed master stays down: the new master has no replica,
    so durable publishes after the failover raise NotDurableError (never acknowledged).
    """
    records = redis_server_factory(password=FAULT_PASSWORD)
    with sentinel_rig(redis_server_factory, tmp_path, FAULT_PASSWORD) as sent:
        options = {"master_name": MASTER}
        rig = Rig(
            "production",
            tmp_path,
            monkeypatch,
            celery_worker_process,
            worker_broker=sent.url(0),
            worker_backend=sent.url(1),
            publish_broker=sent.url(0),
            publish_backend=sent.url(1),
            record_url=f"redis://:{FAULT_PASSWORD}@127.0.0.1:{records.port}/0",
            settings={
                "broker_transport_options": options,
                "result_backend_transport_options": options,
                "celeryredis_durable_publish": durable,
                "worker_cancel_long_running_tasks_on_connection_loss": cancel,
                # The default lease, not the test-scale 3 s: a lease must outlast the
                # reconnect (~6 s), or a task finishing across it is requeued before its
                # ack can be sent on the new connection.
                "celeryredis_lease_seconds": 30.0,
            },
        )
        work = rig.module.work
        for i in range(BACKLOG):
            work.apply_async((BACKLOG_BASE + i,), ignore_result=True)
        backlog = [BACKLOG_BASE + i for i in range(BACKLOG)]
        waits = sent.master.client().info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        assert waits == (BACKLOG if durable else 0)  # one WAIT per durable publish
        worker = rig.worker("s", concurrency=2, trust_ports=sent.ports)
        worker.wait_ready()
        publisher = Publisher(rig)
        try:
            wait_for(lambda: len(rig.done()) >= BACKLOG // 4, 60, "a quarter of the backlog")
            sent.master.kill()
            killed = time.time()
            old_port = sent.master.port
            wait_for(
                lambda: master_port(sent.ports[0]) not in (None, old_port),
                30,
                "the sentinels to promote the replica",
            )
            failover = time.time() - killed
            # The killed master stays down: brought back empty (no persistence), a second
            # failover could promote it and wipe the data (seen once). The new master has
            # no replica, so durable publishes now raise NotDurableError.
            time.sleep(max(0.0, RUN_AFTER_KILL_S - (time.time() - killed)))
            publisher.stop()
        finally:
            publisher.kill()
        published_at = publisher.accepted()
        failed = publisher.failed()
        accepted = sorted(published_at)
        everything = backlog + accepted
        rig.wait_done(everything, 90)
        lost_backlog, twice_backlog = rig.counts(backlog)
        lost_pub, twice_pub = rig.counts(accepted)
        done, done_at = rig.done(), rig.done_at()
        # Resumed: the first task done after the promotion (tasks take 0 to 0.05 s: the
        # ones running at the kill were done long before; this one came from the new master).
        after = [at for at in done_at.values() if at > killed + failover]
        resume = min(after) - killed if after else None
        last_second = [i for i in accepted if killed - 1.0 <= published_at[i] <= killed]
        lost_last_second = [i for i in last_second if not done.get(i)]
        lost_at = [round(published_at[i] - killed, 2) for i in accepted if not done.get(i)]
        cancelled = rig.logs().count(CANCELLED)
        # A fetch or an ack is bookkeeping no WAIT covers (docs/transport.md): one the
        # master applied but had not yet copied to the replica when it died is undone by
        # the failover, and that task runs again. Such a task first ended in the
        # replication window: just before the kill, or while the worker reconnected.
        first_at = rig.first_done_at()
        ran_twice = [i for i in everything if done.get(i, 0) > 1]
        in_window = [i for i in ran_twice if killed - 1.0 <= first_at[i] <= killed + failover]
        elsewhere = [round(first_at[i] - killed, 2) for i in ran_twice if i not in in_window]
    for text in failed:
        secret_scan.add("publish error", text)
    fault_report.add(
        Outcome(
            f"10. Sentinel, reliable transport: master SIGKILLed mid-drain, durable publish "
            f"{'on' if durable else 'off'}" + ("" if cancel else ", no cancel on connection loss"),
            "production",
            lost=lost_backlog + lost_pub,
            twice=twice_backlog + twice_pub,
            recover_s=resume,
            note=f"backlog {BACKLOG}: lost {lost_backlog}, twice {twice_backlog}; "
            f"{len(accepted)} publishes returned (lost {lost_pub}, twice {twice_pub}; "
            f"{len(last_second)} in the second before the kill, lost {len(lost_last_second)}), "
            f"{len(failed)} raised; {cancelled} cancelled by Celery at the connection loss; "
            f"{len(in_window)} of the twice first ended within 1 s before the kill or "
            "during the failover; "
            f"failover {failover:.2f} s; time = kill to first task done after the promotion"
            + (f"; lost ones were published {lost_at} s after the kill" if lost_at else ""),
            extra={"failover_s": round(failover, 2), "raised": failed[:3]},
        )
    )
    assert lost_backlog == 0, f"{lost_backlog} backlog task(s) never ran"
    # Nothing runs twice that did not first end in the replication window of the kill.
    assert not elsewhere, f"ran twice, first ended this long after the kill (s): {elsewhere}"
    if cancel:
        # Celery's worker_cancel_long_running_tasks_on_connection_loss (production's
        # choice) cancels every acks-late task it has not acked at the connection loss,
        # finished ones included, and they run again: Celery's behaviour, not a loss or
        # a duplicate of the transport's. Beyond those, only bookkeeping lost with the
        # master (a handful of tasks at most) may make a task run twice.
        assert twice_backlog + twice_pub <= cancelled + min(len(in_window), 2), (
            twice_backlog,
            twice_pub,
            cancelled,
            len(in_window),
        )
    else:
        assert twice_backlog + twice_pub <= min(len(in_window), 2), (
            twice_backlog,
            twice_pub,
            len(in_window),
        )
    assert resume is not None
    assert resume <= failover + 5.0, (
        f"resumed {resume:.1f} s after the kill (failover {failover:.1f} s)"
    )
    assert last_second, "no publish returned in the second before the kill"
    if durable:
        assert lost_pub == 0, f"durable publish lost {lost_pub} acknowledged task(s): {lost_at}"
