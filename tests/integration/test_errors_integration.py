"""Errors retrying cannot fix fail at once with their own cause; transient ones still retry."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from celeryredis import (
    PublishError,
    ResultNotStoredError,
    check_health,
    enqueue_many,
    make_app,
)
from celeryredis.bulk import BulkPublishError
from celeryredis.testing import RedisServer
from celeryredis.testing._server import _free_port
from tests.faults.test_tls import _certificates

pytestmark = pytest.mark.integration

ADMIN_PW = "hunter2-Secret"
USER_PW = "Acl-Us3r-pw"
#: The brief's bound for an error retrying cannot fix (the retry budget is ~11 s).
PERMANENT_BOUND = 2.0


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _certificates(tmp_path_factory.mktemp("errors") / "tls")


@pytest.fixture
def locked(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A password-protected server with an ACL user that may touch only ``other:*`` keys."""
    server = redis_server_factory(password=ADMIN_PW)
    server.client().execute_command(
        "ACL", "SETUSER", "limited", "reset", "on", f">{USER_PW}", "~other:*", "&*", "+@all"
    )
    return server


def _case(
    name: str,
    locked: RedisServer,
    factory: Callable[..., RedisServer],
    tls_dir: Path,
) -> str:
    port = locked.port
    if name == "wrong_password":
        return f"redis://:{quote('not-' + USER_PW)}@127.0.0.1:{port}/0"
    if name == "no_password":
        return f"redis://127.0.0.1:{port}/0"
    if name == "no_permission":
        return f"redis://limited:{USER_PW}@127.0.0.1:{port}/0"
    if name == "db_out_of_range":
        return f"redis://:{ADMIN_PW}@127.0.0.1:{port}/40"
    if name == "unknown_command":
        plain = factory(extra_args=["--rename-command", "LPUSH", ""])
        return plain.url
    assert name == "tls_verify"
    tls_port = _free_port()
    factory(
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(tls_dir / "server.crt"),
            "--tls-key-file", str(tls_dir / "server.key"),
            "--tls-ca-cert-file", str(tls_dir / "ca.crt"),
            "--tls-auth-clients", "no",
        ]
    )  # fmt: skip
    wrong_ca = quote(str(tls_dir / "wrong-ca.crt"))
    return f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={wrong_ca}"


CASES = {
    "wrong_password": "refused the user name or password",
    "no_password": "requires a password and broker_url gives none|requires a password and "
    "result_backend gives none",
    "no_permission": "NOPERM",
    "db_out_of_range": "database number in .* is higher than the server has",
    "unknown_command": "does not know a command",
    "tls_verify": "TLS certificate failed verification",
}


@pytest.mark.parametrize("preset", ["production", "throughput"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_permanent_publish_errors_fail_at_once_with_their_own_cause(
    kind: str,
    preset: str,
    locked: RedisServer,
    redis_server_factory: Callable[..., RedisServer],
    tls_dir: Path,
) -> None:
    url = _case(kind, locked, redis_server_factory, tls_dir)
    app = make_app(f"errors-{kind}-{preset}", broker_url=url, preset=preset)

    @app.task(name="errors.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        add.delay(1, 2)
    elapsed = time.monotonic() - started
    error = info.value
    assert error.permanent is True
    assert error.kind == kind
    assert error.elapsed < PERMANENT_BOUND
    assert elapsed < PERMANENT_BOUND
    message = str(error)
    assert re.search(CASES[kind], message), message
    assert "retrying will not help" in message
    assert "Retry later" not in message
    assert USER_PW not in message
    assert ADMIN_PW not in message


def test_a_stopped_server_still_gets_the_retry_budget(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    url = server.url
    server.stop()
    app = make_app("errors-stopped", broker_url=url, preset="production")

    @app.task(name="errors.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        add.delay(1, 2)
    elapsed = time.monotonic() - started
    assert info.value.permanent is False
    assert info.value.kind == "unreachable"
    assert "Retry later" in str(info.value)
    # It says which Redis did not answer (a test that reached the wrong one shows it):
    # with results on, the result backend's subscribe comes first.
    assert f"the result backend's Redis (result_backend {url}): Redis did not answer" in str(
        info.value
    )
    # It waited out the retries (the production preset's budget is ~11 s), not failed at once.
    assert elapsed > PERMANENT_BOUND


WORKER_APP = """
import os

from celeryredis import make_app

app = make_app("refused", broker_url=os.environ["REFUSED_URL"], preset=os.environ["REFUSED_PRESET"])


@app.task(shared=False)
def add(x, y):
    return x + y
"""


@pytest.mark.parametrize(("preset", "pool"), [("production", "prefork"), ("throughput", "solo")])
@pytest.mark.parametrize("kind", ["wrong_password", "no_password"])
def test_a_worker_the_broker_refuses_for_good_stops_at_once_with_the_fix(
    kind: str,
    preset: str,
    pool: str,
    locked: RedisServer,
    redis_server_factory: Callable[..., RedisServer],
    tls_dir: Path,
    tmp_path: Path,
    celery_worker_process: Callable[..., Any],
) -> None:
    # Celery's own loop retries such a connection without end ("Trying again in 2.00
    # seconds... (1/None)" under the presets' unlimited broker_connection_max_retries).
    url = _case(kind, locked, redis_server_factory, tls_dir)
    (tmp_path / "refusedapp.py").write_text(WORKER_APP)
    env = {"REFUSED_URL": url, "REFUSED_PRESET": preset}
    worker = celery_worker_process("refusedapp", redis_url=url, env=env, pool=pool, cwd=tmp_path)
    code = worker.wait_exit(timeout=60)  # start-up included; refused at the first try
    log = worker.log_text()
    assert code != 0, log
    assert re.search(CASES[kind], log), log
    assert "retrying will not help" in log
    assert "Trying again" not in log  # not one retry
    assert USER_PW not in log
    assert ADMIN_PW not in log


def test_enqueue_many_and_health_name_a_permanent_error_at_once(locked: RedisServer) -> None:
    app = make_app(
        "errors-bulk", broker_url=f"redis://127.0.0.1:{locked.port}/0", preset="production"
    )

    @app.task(name="errors.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with pytest.raises(BulkPublishError, match="requires a password") as info:
        enqueue_many(add, [(1, 2)] * 5)
    assert time.monotonic() - started < PERMANENT_BOUND
    assert "nothing was published" in str(info.value)

    report = check_health(app, timeout=2)
    broker = report.part("broker")
    assert broker.status == "fail"
    assert broker.reason.startswith("refused the app: the server requires a password")
    assert "retrying will not help" in broker.reason


def test_get_on_a_result_that_is_not_stored_fails_at_once(redis_url: str) -> None:
    app = make_app("errors-ignored", broker_url=redis_url, preset="throughput")

    @app.task(name="errors.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)
    started = time.monotonic()
    with pytest.raises(ResultNotStoredError, match="does not store its result") as info:
        result.get(timeout=30)
    assert time.monotonic() - started < PERMANENT_BOUND
    assert info.value.task_id == result.id
    assert "throughput" in str(info.value)
    with pytest.raises(ResultNotStoredError):
        add.AsyncResult(result.id).get(timeout=30)
    # A call that asks for its result still gets a result that can wait.
    stored: Any = add.apply_async((1, 2), ignore_result=False)
    assert stored.ignored is False


def test_a_unique_task_fails_as_any_task_does_when_redis_refuses_or_is_down(
    locked: RedisServer, redis_server_factory: Callable[..., RedisServer]
) -> None:
    """UniqueTask's lock is taken before the publish: its Redis errors are PublishError too."""
    from celeryredis import UniqueTask

    refused = make_app(
        "errors-unique",
        broker_url=f"redis://:{quote('not-' + USER_PW)}@127.0.0.1:{locked.port}/0",
        preset="production",
    )

    @refused.task(base=UniqueTask, name="errors.unique", shared=False)
    def once(x: int) -> int:
        return x

    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        once.delay(1)
    assert time.monotonic() - started < PERMANENT_BOUND
    assert info.value.permanent is True
    assert info.value.kind == "wrong_password"
    assert USER_PW not in str(info.value)

    server = redis_server_factory()
    url = server.url
    server.stop()
    down = make_app("errors-unique-down", broker_url=url, preset="testing")

    @down.task(base=UniqueTask, name="errors.unique_down", shared=False)
    def once_down(x: int) -> int:
        return x

    with pytest.raises(PublishError) as info:
        once_down.delay(1)
    assert info.value.permanent is False
    assert info.value.kind == "unreachable"
