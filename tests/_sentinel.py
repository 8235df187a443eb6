"""A Sentinel rig for tests: 1 master, 1 replica and 3 sentinels, all throwaway processes.

Used by the integration test of the reliable transport over Sentinel (``make test``) and
by the fault scenarios (``make faults``). Every process listens on a free loopback port
and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from celeryredis.testing import RedisServer, find_redis_server
from celeryredis.testing._server import _free_port
from tests._util import wait_for

MASTER = "mymaster"

SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
daemonize no
dir {dir}
logfile {dir}/sentinel-{port}.log
sentinel monitor {master} 127.0.0.1 {master_port} 2
{auth}sentinel down-after-milliseconds {master} 1000
sentinel failover-timeout {master} 5000
sentinel parallel-syncs {master} 1
"""


@contextlib.contextmanager
def sentinels(directory: Path, master_port: int, password: str | None) -> Iterator[list[int]]:
    """Three sentinels watching ``master_port``; stopped by PID at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    ports = [_free_port() for _ in range(3)]
    auth = f"sentinel auth-pass {MASTER} {password}\n" if password else ""
    try:
        for port in ports:
            conf = directory / f"sentinel-{port}.conf"
            conf.write_text(
                SENTINEL_CONF.format(
                    port=port, dir=directory, master=MASTER, master_port=master_port, auth=auth
                )
            )
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


def sentinel_ready(port: int) -> bool:
    """True when the sentinel on ``port`` sees 2 other sentinels and a replica."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
    try:
        info = client.execute_command("SENTINEL", "MASTER", MASTER)
    except redis.RedisError:
        return False
    finally:
        client.close()
    fields = dict(zip(info[::2], info[1::2], strict=False)) if isinstance(info, list) else info
    return int(fields["num-other-sentinels"]) >= 2 and int(fields["num-slaves"]) >= 1


def master_port(sentinel_port: int) -> int | None:
    """The master's port as the sentinel on ``sentinel_port`` names it (None: unknown)."""
    client = redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=1)
    try:
        addr: Any = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
    except redis.RedisError:
        return None
    finally:
        client.close()
    return int(addr[1]) if addr else None


@dataclass
class SentinelRig:
    """The rig's servers and the sentinels' ports."""

    master: RedisServer
    replica: RedisServer
    ports: list[int]
    password: str | None

    def url(self, db: int, scheme: str = "sentinel") -> str:
        """The ``sentinel://a;sentinel://b;sentinel://c`` URL (password on the first)."""
        auth = f":{self.password}@" if self.password else ""
        first, *rest = self.ports
        return ";".join(
            [f"{scheme}://{auth}127.0.0.1:{first}/{db}"]
            + [f"{scheme}://127.0.0.1:{p}/{db}" for p in rest]
        )


@contextlib.contextmanager
def sentinel_rig(
    factory: Callable[..., RedisServer], directory: Path, password: str | None = None
) -> Iterator[SentinelRig]:
    """Start the rig and wait until the replica synced and the sentinels agree."""
    auth = ["--masterauth", password] if password else []
    master = factory(password=password)
    replica = factory(
        password=password, extra_args=["--replicaof", "127.0.0.1", str(master.port), *auth]
    )
    if password:
        master.client().config_set("masterauth", password)  # in case it comes back
    with sentinels(directory, master.port, password) as ports:
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            30,
            "the replica to sync",
        )
        wait_for(lambda: all(sentinel_ready(p) for p in ports), 60, "the sentinels to agree")
        yield SentinelRig(master, replica, ports, password)
