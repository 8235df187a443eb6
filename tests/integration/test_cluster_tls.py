"""Redis Cluster over TLS with an ACL user: a real 3-master TLS cluster, a real worker.

The cluster (``LocalRedisCluster(tls=True, user=...)``) serves TLS on every node, runs
its cluster bus over TLS and knows an ACL user ``app``; the app is
``make_app(broker_url="redisclusters://app:...@...?ssl_cert_reqs=required&ssl_ca_certs=...")``
with the same URL as its result backend. Tasks with results, a unique lock and a dead
letter go over TLS as that user; ``celery -A ... redis check`` reports each master; a
wrong CA file fails at once with the TLS verification named. No password appears in
any output.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeryredis import PublishError, make_app
from celeryredis.connection import get_redis
from celeryredis.deadletter import DeadLetterQueue
from celeryredis.testing import LocalRedisCluster
from tests._cluster_host import cluster_host, ready_worker
from tests._util import FAST_PRODUCTION, wait_for

pytestmark = pytest.mark.integration

ADMIN_SECRET = "Hunter2-integration-pw"  # the default user's (tests/conftest.py's SECRETS)
USER_SECRET = "Acl-Us3r-pw"  # the ACL user's, in the app's URL
SECRETS = (ADMIN_SECRET, USER_SECRET)
# A certificate that fails verification is an error retrying cannot fix: it fails at once.
FAIL_BOUND = 2.0

APP = """
import os

from celeryredis import UniqueTask, make_app

URL = os.environ["CLUSTER_URL"]
app = make_app(
    "tlsclusterapp",
    broker_url=URL,
    result_backend=URL,
    preset="testing",
    celeryredis_dead_letter=True,
)


@app.task(shared=False)
def add(x, y):
    return x + y


@app.task(shared=False)
def fail(why):
    raise ValueError("fails on purpose: " + why)


@app.task(base=UniqueTask, shared=False, ignore_result=True)
def once(key):
    pass
"""


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(
        replicas=0,
        password=ADMIN_SECRET,
        user=("app", USER_SECRET),
        tls=True,
        directory=tmp_path_factory.mktemp("tlscluster"),
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="module")
def host(tls_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The host module (``app``, ``add``, ``fail``, ``once``, ``DIR``, ``ENV``) and a worker."""
    directory = tmp_path_factory.mktemp("tlsclusterapp")
    with cluster_host(tls_cluster, directory, "tlsclusterapp", APP) as module:
        module.WORKER = ready_worker(module, "tls")
        try:
            yield module
        finally:
            module.WORKER.stop(timeout=5)


def test_the_url_is_tls_with_the_acl_user_and_every_client_uses_it(
    host: Any, tls_cluster: LocalRedisCluster
) -> None:
    url = tls_cluster.url
    assert url.startswith(f"redisclusters://app:{USER_SECRET}@127.0.0.1:")
    assert f"ssl_cert_reqs=required&ssl_ca_certs={tls_cluster.ca_file}" in url
    assert set(tls_cluster.tls_ports).isdisjoint(tls_cluster.ports)
    assert host.app.conf.broker_url.startswith("celeryredisclusters://app:")
    with host.app.connection_for_write() as conn:
        broker_client = conn.default_channel.client
        clients = {
            "broker": broker_client,
            "result backend": host.app.backend.client,
            "get_redis": get_redis(host.app),
        }
        for where, client in clients.items():
            assert client.ping() is True, where
            nodes = client.get_nodes()
            assert {n.port for n in nodes} == set(tls_cluster.tls_ports), where
            for node in nodes:
                pool = node.redis_connection.connection_pool
                kwargs = pool.connection_kwargs
                assert pool.connection_class.__name__ == "SSLConnection", where
                assert kwargs["username"] == "app", where
                assert kwargs["ssl_ca_certs"] == str(tls_cluster.ca_file), where
                assert kwargs["ssl_cert_reqs"] in {"required", ssl.CERT_REQUIRED}, where
            assert client.acl_whoami() == "app", where


def test_tasks_a_unique_lock_and_a_dead_letter_over_tls(
    host: Any, tls_cluster: LocalRedisCluster
) -> None:
    results = [host.add.delay(n, n) for n in range(20)]
    assert [r.get(timeout=30) for r in results] == [2 * n for n in range(20)]

    # A unique lock, taken at publish (the queue has no consumer, so it stays held).
    first = host.once.apply_async(("k1",), queue="tls-unconsumed")
    assert host.once.apply_async(("k1",), queue="tls-unconsumed").id == first.id
    lock = host.once.unique_lock_key(("k1",), {})
    client = tls_cluster.client()
    try:
        assert client.get(lock) == first.id.encode()
    finally:
        client.close()

    failed = host.fail.delay("tls")
    with pytest.raises(ValueError, match="fails on purpose"):
        failed.get(timeout=30)
    dlq = DeadLetterQueue(host.app)
    wait_for(lambda: any(e.task_id == failed.id for e in dlq.list()), 20, "the dead letter")
    log = host.WORKER.log_text()
    assert "Task tlsclusterapp.add" in log
    _no_secret(log)

    # Leave nothing for `redis check` to warn about: the waiting message, its lock, the letter.
    with host.app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge("tls-unconsumed") == 1
    client = tls_cluster.client()
    try:
        assert client.delete(lock) == 1
    finally:
        client.close()
    assert dlq.purge() == 1


def _redis_check(host: Any, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tlsclusterapp", "redis", "check"],
        cwd=host.DIR,
        env={**os.environ, **host.ENV, "CLUSTER_URL": url, "PYTHONPATH": str(host.DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_redis_check_reports_each_master_without_the_password(
    host: Any, tls_cluster: LocalRedisCluster
) -> None:
    done = _redis_check(host, tls_cluster.url)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for port in tls_cluster.tls_ports:
        assert f"master 127.0.0.1:{port}" in output
    _no_secret(output)
    _no_secret(host.WORKER.log_text())


def _wrong_ca(directory: Path) -> Path:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", "wrong-ca.key", "-out", "wrong-ca.crt", "-subj", "/CN=wrong-ca"],
        cwd=directory, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return directory / "wrong-ca.crt"


def test_a_wrong_ca_fails_at_once_naming_tls_verification(
    host: Any, tls_cluster: LocalRedisCluster
) -> None:
    wrong_url = tls_cluster.url.replace(str(tls_cluster.ca_file), str(_wrong_ca(host.DIR)))
    assert wrong_url != tls_cluster.url
    wrong = make_app(
        "tls-cluster-wrong-ca", broker_url=wrong_url, result_backend=wrong_url, **FAST_PRODUCTION
    )

    @wrong.task(name="tlsclusterapp.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with pytest.raises(PublishError, match="CERTIFICATE_VERIFY_FAILED") as excinfo:
        add.delay(1, 2)
    assert time.monotonic() - started <= FAIL_BOUND
    assert excinfo.value.permanent
    message = str(excinfo.value)
    assert "TLS certificate failed verification" in message
    assert "ssl_ca_certs" in message
    assert "(broker_url redisclusters://app:***@127.0.0.1:" in message  # the URL as written
    _no_secret(message)
    _no_secret(str(excinfo.getrepr(style="long")))

    done = _redis_check(host, wrong_url)
    output = done.stdout + done.stderr
    assert done.returncode == 78, output  # EX_CONFIG: a setting is wrong
    assert "Error: Redis at redisclusters://app:***@127.0.0.1:" in output
    assert "refused the app: the server's TLS certificate failed verification" in output
    assert "CERTIFICATE_VERIFY_FAILED" in output
    _no_secret(output)
