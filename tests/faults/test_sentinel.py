"""Scenario 5: Sentinel (1 master, 1 replica, 3 sentinels); the master is SIGKILLed mid-run."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis.testing import RedisServer, WorkerProcess, find_redis_server
from celeryredis.testing._server import _free_port
from tests._util import wait_for
from tests.faults._harness import FAULT_PASSWORD, Outcome, Publisher, Rig

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

MASTER = "mymaster"
RUN_AFTER_KILL_S = 12.0
# Sentinel promotes the replica ~2.3 s after the kill; Celery's worker reconnects on its
# fixed 2 s + 4 s backoff (fault-recipes.md: first task 6.1-6.3 s after the kill).
RESUME_BOUND = 20.0

SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
daemonize no
dir {dir}
logfile {dir}/sentinel-{port}.log
sentinel monitor {master} 127.0.0.1 {master_port} 2
sentinel auth-pass {master} {password}
sentinel down-after-milliseconds {master} 1000
sentinel failover-timeout {master} 5000
sentinel parallel-syncs {master} 1
"""


@contextlib.contextmanager
def _sentinels(directory: Path, master_port: int) -> Iterator[list[int]]:
    """Three sentinels watching ``master_port``; stopped by PID at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    ports = [_free_port() for _ in range(3)]
    try:
        for port in ports:
            conf = directory / f"sentinel-{port}.conf"
            conf.write_text(
                SENTINEL_CONF.format(
                    port=port, dir=directory, master=MASTER, master_port=master_port,
                    password=FAULT_PASSWORD,
                )
            )  # fmt: skip
            processes.append(
                subprocess.Popen(
                    [find_redis_server(), str(conf), "--sentinel"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield ports
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _sentinel_ready(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
    try:
        info = client.execute_command("SENTINEL", "MASTER", MASTER)
    except redis.RedisError:
        return False
    finally:
        client.close()
    fields = dict(zip(info[::2], info[1::2], strict=False)) if isinstance(info, list) else info
    return int(fields["num-other-sentinels"]) >= 2 and int(fields["num-slaves"]) >= 1


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
    with _sentinels(tmp_path, master.port) as ports:
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            30,
            "the replica to sync",
        )
        wait_for(lambda: all(_sentinel_ready(p) for p in ports), 60, "the sentinels to agree")

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
