"""The one classification of Redis failures, its shims, and binding errors at publish."""

from __future__ import annotations

import inspect
import ssl
from typing import Any

import pytest
from celery.backends.redis import RedisBackend
from kombu.exceptions import OperationalError
from redis import exceptions as rx
from redis.sentinel import MasterNotFoundError

from celeryredis import RateLimitedTask, RedisRefusedError, RetryTask, UniqueTask, make_app
from celeryredis._backend_guard import guard_backend
from celeryredis._errors import (
    PERMANENT_KINDS,
    classify,
    describe,
    is_redis_failure,
    permanent_errback,
)


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def _tls_failure() -> BaseException:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    return _chained(rx.ConnectionError("Error 1 connecting to 127.0.0.1:7000. [SSL: ...]"), verify)


PERMANENT = [
    (
        rx.AuthenticationError("invalid username-password pair or user is disabled."),
        "wrong_password",
    ),
    (rx.AuthenticationError("Authentication required."), "no_password"),
    (
        rx.AuthenticationError("HELLO must be called with the client already authenticated"),
        "no_password",
    ),
    (
        rx.AuthenticationError(
            "AUTH <password> called without any password configured for the default user"
        ),
        "unexpected_password",
    ),
    (
        rx.NoPermissionError("this user has no permissions to run the 'lpush' command"),
        "no_permission",
    ),
    (rx.ResponseError("DB index is out of range"), "db_out_of_range"),
    (rx.ResponseError("unknown command 'LPUSH', with args beginning with: "), "unknown_command"),
    (_tls_failure(), "tls_verify"),
    (
        # redis-py's cluster client when no startup node passes TLS verification: not a
        # RedisError, the node's error only in the message (measured: a wrong CA on a TLS cluster).
        rx.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: "
            "Error 1 connecting to 127.0.0.1:7000. [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: self-signed certificate in certificate chain (_ssl.c:1006)."
        ),
        "tls_verify",
    ),
    (
        rx.ConnectionError("Error while reading: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert"),
        "tls_client_certificate",
    ),
    (
        _chained(OperationalError("invalid password"), rx.AuthenticationError("WRONGPASS x")),
        "wrong_password",
    ),
    (
        _chained(
            RuntimeError("Retry limit exceeded"), rx.ResponseError("DB index is out of range")
        ),
        "db_out_of_range",
    ),
]

TRANSIENT = [
    (rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."), "unreachable"),
    (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
    (rx.TimeoutError("Timeout reading from socket"), "timeout"),
    (rx.BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
    (rx.ReadOnlyError("You can't write against a read only replica."), "read_only"),
    (MasterNotFoundError("No master found for 'mymaster'"), "failover"),
    (
        _chained(RuntimeError("Retry limit exceeded"), rx.ConnectionError("Error 111 connecting")),
        "unreachable",
    ),
]


@pytest.mark.parametrize(("exc", "kind"), PERMANENT)
def test_permanent_errors_have_their_own_kind_cause_and_fix(exc: BaseException, kind: str) -> None:
    diagnosis = classify(exc)
    assert diagnosis.permanent is True
    assert diagnosis.kind == kind
    assert (diagnosis.cause, diagnosis.fix) == PERMANENT_KINDS[kind]
    assert is_redis_failure(exc)
    text = describe(diagnosis, "broker_url")
    assert "retrying will not help" in text
    assert "{setting}" not in text


@pytest.mark.parametrize(("exc", "kind"), TRANSIENT)
def test_transient_errors_keep_the_retry_budget(exc: BaseException, kind: str) -> None:
    diagnosis = classify(exc)
    assert diagnosis.permanent is False
    assert diagnosis.kind == kind
    assert "retrying will not help" not in describe(diagnosis)


def test_an_error_that_is_not_about_redis_is_not_a_redis_failure() -> None:
    assert classify(ValueError("bad input")).kind == "other"
    assert not is_redis_failure(ValueError("bad input"))
    assert not is_redis_failure(TypeError("add() missing 1 required positional argument"))


def test_detail_hides_pipeline_arguments_and_url_passwords() -> None:
    exc = rx.NoPermissionError(
        'Command # 1 (LPUSH celery {"body": "c2VjcmV0"}) of pipeline caused error: no permissions'
    )
    assert classify(exc).detail == "NoPermissionError: no permissions"
    leaky = rx.AuthenticationError("WRONGPASS for redis://:hunter2-Secret@127.0.0.1:1/0")
    assert "hunter2-Secret" not in classify(leaky).detail


def test_the_publish_errback_ends_retries_only_for_permanent_errors() -> None:
    seen: list[Any] = []
    errback = permanent_errback(lambda exc, interval: seen.append((exc, interval)))
    refused = rx.AuthenticationError("invalid username-password pair")
    with pytest.raises(RedisRefusedError, match="broker's Redis refused the app") as info:
        errback(refused, 1.0)
    assert info.value.kind == "wrong_password"
    assert info.value.__cause__ is refused
    transient = rx.ConnectionError("Error 111 connecting")
    errback(transient, 2.0)
    assert seen == [(transient, 2.0)]


def test_celery_backend_hook_the_shim_relies_on() -> None:
    # Pins the private use documented in _backend_guard.py.
    parameters = list(inspect.signature(RedisBackend.on_connection_error).parameters)
    assert parameters == ["self", "max_retries", "exc", "intervals", "retries"]
    assert "partial(self.on_connection_error" in inspect.getsource(RedisBackend.ensure)


def test_guarded_backend_raises_for_permanent_and_defers_otherwise() -> None:
    calls: list[Any] = []

    class Backend:
        def on_connection_error(
            self, max_retries: Any, exc: Any, intervals: Any, retries: Any
        ) -> float:
            calls.append(exc)
            return 1.0

    backend = Backend()
    guard_backend(backend)
    guard_backend(backend)  # idempotent
    with pytest.raises(RedisRefusedError, match="result backend's Redis") as info:
        backend.on_connection_error(3, rx.ResponseError("DB index is out of range"), iter(()), 0)
    assert info.value.where == "result backend"
    assert backend.on_connection_error(3, rx.ConnectionError("refused"), iter(()), 0) == 1.0
    assert len(calls) == 1


def _app() -> Any:
    return make_app("binding", broker_url="redis://127.0.0.1:1/0", preset="testing")


def test_binding_errors_are_type_errors_at_publish_for_every_base() -> None:
    app = _app()

    @app.task(name="b.unique", base=UniqueTask, unique_on=["report_id"], shared=False)
    def unique(report_id: int, fmt: str) -> None: ...

    @app.task(name="b.rate", base=RateLimitedTask, distributed_rate_limit="5/s", shared=False)
    def rate(a: int, b: int) -> None: ...

    @app.task(name="b.retry", base=RetryTask, retry_for=(OSError,), shared=False)
    def retry(a: int) -> None: ...

    class Rated(RateLimitedTask):
        name = "b.rated"
        distributed_rate_limit = "5/s"

        def run(self, a: int, b: int) -> None: ...

    rated = app.register_task(Rated())
    for task, args in ((unique, (7,)), (rate, (1,)), (retry, (1, 2)), (rated, (1,))):
        with pytest.raises(TypeError, match="argument"):
            task.delay(*args)


def test_only_single_host_urls_fail_fast() -> None:
    from celeryredis._errors import fails_fast

    assert fails_fast("redis://:pw@127.0.0.1:6400/0")
    assert fails_fast("rediss://127.0.0.1:6400/0?ssl_cert_reqs=required")
    assert fails_fast("sentinel://127.0.0.1:26379/0")
    # Several hosts: kombu tries the next one, which may accept what this one refused.
    assert not fails_fast("sentinel://:pw@127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0")
    assert not fails_fast(None)
    assert not fails_fast("rpc://")
