"""The reliable transport over Sentinel, and durable publish, against real servers.

A Sentinel rig (1 master, 1 replica, 3 sentinels) and a real worker: the production
preset keeps the reliable transport on ``sentinel://`` and drains a backlog published
with durable publish on. Durable publish against a real server without a replica
raises :class:`~celeryredis.exceptions.NotDurableError`; with one, it returns. The
failover scenarios are in ``tests/faults/test_sentinel.py`` (``make faults``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from celeryredis import explain, make_app
from celeryredis.exceptions import NotDurableError
from celeryredis.testing import RedisServer
from celeryredis.transport import register_aliases
from tests._sentinel import MASTER, sentinel_rig
from tests._util import FAST_PRODUCTION, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOST = """
import os

import redis

from celeryredis import make_app

app = make_app(
    "sentapp",
    broker_url=os.environ["S_BROKER"],
    result_backend=None,
    preset="production",
    task_ignore_result=True,
    broker_transport_options={"master_name": "mymaster"},
    **{k: v for k, v in {FAST}.items()},
)
record = redis.Redis.from_url(os.environ["S_RECORD"])


@app.task(name="sent.work", shared=False)
def work(i):
    record.hincrby("runs", str(i), 1)
"""

TASKS = 300


def _app(broker: str, **settings: Any) -> Any:
    return make_app(
        "sentpub",
        broker_url=broker,
        result_backend=None,
        preset="production",
        task_ignore_result=True,
        **{**FAST_PRODUCTION, **settings},
    )


def test_reliable_transport_drains_over_sentinel_with_durable_publish(
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., Any],
) -> None:
    records = redis_server_factory()
    with sentinel_rig(redis_server_factory, tmp_path) as rig:
        options = {"master_name": MASTER}
        app = _app(rig.url(0), broker_transport_options=options, celeryredis_durable_publish=1)
        rows = {row.setting: row for row in explain(app)}
        assert rows["broker_read_url"].value.startswith("celeryredissentinel://")
        assert rows["broker_write_url"].value == rig.url(0, scheme="celeryredissentinel")
        assert "durable publish on" in rows["celeryredis_durable_publish"].reason
        for i in range(TASKS):
            app.send_task("sent.work", (i,))
        # Durable: one WAIT per publish, and every publish was on the replica when it
        # returned.
        stats = rig.master.client().info("commandstats")
        assert stats["cmdstat_wait"]["calls"] == TASKS
        assert int(rig.replica.client().llen("celery")) == TASKS
        (tmp_path / "sentapp.py").write_text(
            textwrap.dedent(HOST).replace("{FAST}", repr(dict(FAST_PRODUCTION)))
        )
        worker = celery_worker_process(
            "sentapp",
            cwd=tmp_path,
            env={"S_BROKER": rig.url(0), "S_RECORD": records.url},
            pool="prefork",
            concurrency=2,
            trust_ports=rig.ports,
        )
        worker.wait_ready()
        runs = records.client()
        wait_for(lambda: runs.hlen("runs") >= TASKS, 60, f"{TASKS} tasks to run")
        counts = {int(k): int(v) for k, v in runs.hgetall("runs").items()}
        assert sorted(counts) == list(range(TASKS))
        assert [i for i, n in counts.items() if n != 1] == []
        master = rig.master.client()
        wait_for(
            lambda: master.hlen("unacked") == 0 and master.zcard("unacked_index") == 0,
            20,
            "unacked to empty",
        )
        # The reliable transport consumed: its fetch script ran on the master.
        stats = master.info("commandstats")
        assert stats.get("cmdstat_evalsha", {}).get("calls", 0) > 0
        app.close()


def test_durable_publish_raises_without_a_replica_and_returns_with_one(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    # A password: a replica left over by another test (its master's port reused by this
    # server) cannot attach.
    lonely = redis_server_factory(password="Hunter2-integration-pw")
    assert lonely.client().info("replication")["connected_slaves"] == 0
    app = _app(lonely.url, celeryredis_durable_publish=1, celeryredis_durable_publish_timeout=0.2)
    with pytest.raises(NotDurableError) as caught:
        app.send_task("sent.work", (1,))
    error = caught.value
    assert (error.acked, error.needed, error.timeout) == (0, 1, 0.2)
    assert "only 0 of the 1 replica(s)" in str(error)
    assert "celeryredis_durable_publish_timeout" in str(error)
    # On the master all the same (once: NotDurableError is not retried as a connection
    # error, which would push another copy).
    assert lonely.client().llen("celery") == 1
    app.close()

    master = redis_server_factory()
    replica = redis_server_factory(extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    wait_for(
        lambda: replica.client().info("replication")["master_link_status"] == "up",
        30,
        "the replica to sync",
    )
    app = _app(master.url, celeryredis_durable_publish=1)
    app.send_task("sent.work", (2,))
    assert master.client().info("commandstats")["cmdstat_wait"]["calls"] == 1
    assert replica.client().llen("celery") == 1  # WAIT returned: the replica has it
    app.close()


def test_readonly_reply_ends_the_poll_like_a_lost_connection(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """A master demoted under a consumer (``READONLY``): reconnect, never a task error."""
    register_aliases()
    demoted, other = redis_server_factory(), redis_server_factory()
    with Connection(f"celeryredis://127.0.0.1:{demoted.port}/0") as conn:
        queue = conn.SimpleQueue("ro")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        message.ack()
        demoted.client().replicaof("127.0.0.1", other.port)
        wait_for(
            lambda: demoted.client().info("replication")["master_link_status"] == "up",
            30,
            "the demoted master to sync",
        )
        with pytest.raises(conn.connection_errors) as caught:
            queue.get(timeout=2)
        assert "is now a replica (READONLY)" in str(caught.value)
        queue.close()
