"""Drain time of one worker on the Redis Cluster broker (docs/cluster.md, "A full window").

Starts a throwaway 3-master cluster (``LocalRedisCluster``, no replicas), publishes N
no-op tasks (``production`` preset, no results) to the ``celery`` queue, starts one
``celery worker -P <pool> -c 2`` and prints the seconds from starting the worker to an
empty queue (the worker's start-up included). Figures are printed, never asserted.

Usage: ``python benchmarks/cluster_prefork_drain.py [N] [prefork|solo]`` (2000, prefork).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from celeryredis.testing import LocalRedisCluster

APP = """
import os
from celeryredis import make_app

app = make_app("drainapp", broker_url=os.environ["CLUSTER_URL"], result_backend=None)
app.conf.task_ignore_result = True


@app.task(shared=False)
def noop(i):
    return i
"""


def _waiting(app: object) -> int:
    with app.connection_for_write() as conn:  # type: ignore[attr-defined]
        try:
            return int(conn.default_channel.queue_declare("celery", passive=True).message_count)
        except Exception:
            return 0


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    pool = sys.argv[2] if len(sys.argv) > 2 else "prefork"
    directory = Path(tempfile.mkdtemp(prefix="cluster-drain-"))
    (directory / "drainapp.py").write_text(textwrap.dedent(APP))
    with LocalRedisCluster(directory=directory / "cluster", masters=3, replicas=0) as cluster:
        os.environ["CLUSTER_URL"] = cluster.url
        sys.path.insert(0, str(directory))
        import drainapp  # noqa: PLC0415

        for i in range(count):
            drainapp.noop.delay(i)
        print(f"published {_waiting(drainapp.app)} tasks")
        path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path)
        command = [sys.executable, "-m", "celery", "-A", "drainapp", "worker", "-P", pool]
        command += ["-c", "2", "-l", "WARNING", "--without-heartbeat", "--without-gossip"]
        command += ["--without-mingle"]
        start = time.monotonic()
        worker = subprocess.Popen(command, env=env, cwd=directory)
        try:
            while _waiting(drainapp.app) and time.monotonic() - start < 600:
                time.sleep(0.1)
            print(
                f"{pool} -c 2: {count} tasks drained {time.monotonic() - start:.2f} s after start"
            )
        finally:
            worker.terminate()
            worker.wait(30)


if __name__ == "__main__":
    main()
