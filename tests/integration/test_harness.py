"""The test harness itself: throwaway servers and worker processes are really stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis.testing import RedisServer, WorkerProcess

pytestmark = pytest.mark.integration

TASKS = """
import os
from celeryredis import make_app

app = make_app("harness_app", broker_url=os.environ["HARNESS_URL"], preset="testing")


@app.task(shared=False)
def mul(x, y):
    return x * y
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); count it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(
        _alive(int(p.name))
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(int(p.name)) == pgid
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_redis_server_start_stop_kill_restart(tmp_path: Path) -> None:
    server = RedisServer(directory=tmp_path, appendonly=True)
    try:
        server.start()
        pid, port = server.pid, server.port
        assert server.client().ping()
        server.client().set("k", "v")
        server.kill()
        assert not _alive(pid)
        server.restart()  # same port and directory; AOF brings the key back
        assert server.port == port
        assert server.client().get("k") == b"v"
        pid = server.pid
        server.stop()
        assert not _alive(pid)
        assert not server.is_running()
    finally:
        server.cleanup()


def test_redis_url_gives_each_test_a_clean_database_first(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("left-behind", 1)


def test_redis_url_gives_each_test_a_clean_database_second(redis_url: str) -> None:
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_worker_process_runs_a_task_and_kill_leaves_no_process(
    redis_url: str, tmp_path: Path, celery_worker_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "harness_app.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.setenv("HARNESS_URL", redis_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    import harness_app  # type: ignore[import-not-found]

    worker: WorkerProcess = celery_worker_process(
        "harness_app", cwd=tmp_path, env={"HARNESS_URL": redis_url}, concurrency=2
    )
    worker.wait_ready()
    assert harness_app.mul.delay(6, 7).get(timeout=20) == 42
    children = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(int(p.name)) == worker.pgid
    ]
    assert len(children) >= 3  # main process + 2 pool processes
    worker.kill(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _group_alive(worker.pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(worker.pgid)
    assert worker.returncode == -signal.SIGKILL


def test_inprocess_worker_runs_a_task(celeryredis_app: Any, inprocess_worker: Any) -> None:
    @celeryredis_app.task(shared=False)
    def triple(x: int) -> int:
        return 3 * x

    inprocess_worker(celeryredis_app, pool="solo")
    assert triple.delay(5).get(timeout=20) == 15


def test_demo_runs_on_an_embedded_redis_and_stops_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "REDIS_URL"}}
    proc = subprocess.run(
        [sys.executable, "-m", "celeryredis.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "throwaway redis-server" in proc.stdout
    assert "add.delay(2, 3).get() -> 5" in proc.stdout
    # The tour: retry with backoff, dead letter replayed, duplicate refused, rate-limited
    # burst, bulk publish seen by the queue inspector, summary table, then `check`.
    for line in (
        "attempt 3: 'EUR rates fetched on attempt 3'",
        "-> 'order 42 charged'; dead letters left: 0",
        "DuplicateTaskError",
        "all 10 ran within",
        "'bulk' has 10,000 waiting",
        "purged 10,000 messages",
        "Summary:",
        "OK      workers",
        "OK (exit 0)",
        "Done.",
    ):
        assert line in proc.stdout, line
    match = re.search(r"\(pid (\d+)\); it is stopped at the end", proc.stdout)
    assert match
    assert not _alive(int(match.group(1)))


def test_demo_cluster_runs_on_a_throwaway_cluster_and_stops_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "REDIS_URL"}}
    proc = subprocess.run(
        [sys.executable, "-m", "celeryredis.cli", "demo", "--cluster"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Started a throwaway Redis Cluster of 3 masters" in out
    assert "transport      celeryredis.transport._cluster" in out
    assert "result backend RedisClusterBackend" in out
    # Three queues on three different masters, each master serving commands.
    homes = re.findall(r"queue '\w+' +key '\{\w+\}' +slot +\d+ on (127\.0\.0\.1:\d+)", out)
    assert len(set(homes)) == 3, out
    served = re.findall(r"master (127\.0\.0\.1:\d+): +([\d,]+) commands", out)
    assert {home for home, _ in served} == set(homes)
    assert all(int(n.replace(",", "")) > 0 for _, n in served)
    for line in (
        "add.delay(2, 3).get() -> 5",
        "each ran exactly once (counted with HINCRBY)",
        "chord(resize(0..19)) | tally -> 190",
        "group(add(i, i)) -> [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]",
        "celery-task-meta-{",
        "{'ok': 'pong'}",
        "Summary:",
        "Done.",
    ):
        assert line in out, line
    match = re.search(r"\(pids ([\d, ]+)\); it is stopped at the end", out)
    assert match, out
    pids = [int(pid) for pid in match.group(1).split(", ")]
    assert len(pids) == 3
    assert not any(_alive(pid) for pid in pids)


PROXY_PW = "Hunter2-integration-pw"


def _no_retry_client(port: int) -> redis.Redis:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=port, password=PROXY_PW, socket_timeout=1, retry=Retry(NoBackoff(), 0))


def test_fault_proxy_pauses_half_opens_and_cuts(fault_proxy_factory: Any) -> None:
    with RedisServer(password=PROXY_PW) as server:
        proxy = fault_proxy_factory(server.port)
        client = _no_retry_client(proxy.port)
        assert client.ping()

        proxy.pause()  # a partition: the request waits, unanswered
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.resume()
        assert _no_retry_client(proxy.port).ping()

        fresh = _no_retry_client(proxy.port)
        assert fresh.ping()
        assert proxy.zombie() >= 1  # open connections stay open and never answer
        with pytest.raises(redis.TimeoutError):
            fresh.ping()
        late = _no_retry_client(proxy.port)  # new connections work
        assert late.ping()
        assert proxy.status()["connections"] >= 1

        assert proxy.cut() >= 1
        assert proxy.status()["connections"] == 0
        proxy.stop()
        with pytest.raises(redis.ConnectionError):
            _no_retry_client(proxy.port).ping()


def _servers_under(directory: Path) -> set[int]:
    """PIDs of live processes whose working directory is under ``directory``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        if cwd.is_relative_to(directory.resolve()) and _alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def _redis_cli_hanging(tmp_path: Path, real: str | None) -> Path:
    """A redis-cli stand-in that hangs the first time (as a join that never completes)."""
    mark = tmp_path / "hung-once"
    then = f'exec {real} "$@"' if real else "exec sleep 60"
    script = tmp_path / "redis-cli"
    script.write_text(
        f'#!/bin/sh\nif [ -n "{real or ""}" ] && [ -e {mark} ]; then {then}; fi\n'
        f"touch {mark}\necho joining\nexec sleep 60\n"
    )
    script.chmod(0o755)
    return script


def test_a_cluster_whose_join_hangs_is_made_again_from_fresh_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeryredis.testing import LocalRedisCluster, find_redis_cli

    cli = _redis_cli_hanging(tmp_path, find_redis_cli())
    monkeypatch.setenv("CELERYREDIS_REDIS_CLI", str(cli))
    directory = tmp_path / "cluster"
    cluster = LocalRedisCluster(masters=3, replicas=0, start_timeout=10, directory=directory)
    cluster.start()
    try:
        # Only the second attempt's nodes are running: the first ones were stopped.
        assert _servers_under(directory) == {node.pid for node in cluster.nodes}
        client = cluster.client()
        try:
            client.set("joined", "yes")
            assert client.get("joined") == b"yes"
        finally:
            client.close()
    finally:
        cluster.stop()
    assert not _servers_under(directory)


def test_a_cluster_that_never_forms_fails_and_leaves_no_node_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeryredis.testing import LocalRedisCluster, RedisServerError

    monkeypatch.setenv("CELERYREDIS_REDIS_CLI", str(_redis_cli_hanging(tmp_path, None)))
    directory = tmp_path / "cluster"
    cluster = LocalRedisCluster(masters=3, replicas=0, start_timeout=3, directory=directory)
    with pytest.raises(RedisServerError, match="twice from fresh nodes") as caught:
        cluster.start()
    message = str(caught.value)
    assert message.count("did not finish within 3 s; its output: joining") == 2
    assert "(log tail)" in message
    assert not _servers_under(directory)
