"""Redis Cluster URLs: parsing, validation, redaction, and the broker's refusal (no server)."""

from __future__ import annotations

import pytest

from celeryredis import ConfigurationError, make_app, parse_redis_url
from celeryredis.redaction import redact_text

SECRET = "hunter2-Secret"  # one of tests/conftest.py's SECRETS


def test_cluster_url_lists_every_node() -> None:
    url = parse_redis_url("rediscluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert url.is_cluster
    assert not url.is_tls
    assert url.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert url.db == 0
    assert url.geturl() == "rediscluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0"


def test_cluster_url_with_acl_user_and_tls() -> None:
    url = parse_redis_url(
        f"redisclusters://app:{SECRET}@a:7000,b/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/ca.pem"
    )
    assert url.is_cluster
    assert url.is_tls
    assert (url.username, url.password) == ("app", SECRET)
    assert url.hosts == (("a", 7000), ("b", 6379))
    assert url.ssl_cert_reqs == "required"
    assert url.query["ssl_ca_certs"] == "/ca.pem"
    assert parse_redis_url(url.geturl()) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("rediscluster://a:7000/3", "a Redis Cluster has no databases"),
        ("rediscluster://a:7000,,b:7001", "empty node"),
        ("rediscluster://a:7000,a:7000", "listed twice"),
        ("rediscluster://", "at least one cluster node"),
        ("rediscluster://a:7000;rediscluster://b:7001", "separate a cluster's nodes with ','"),
        ("rediscluster://a:7000/0?ssl_cert_reqs=required", "redisclusters://"),
        ("rediscluster://a:7000/0?socket_timeout=1", "unknown query parameter"),
        ("redis-cluster://a:7000", "rediscluster://host:port"),
        ("rediss+cluster://a:7000", "redisclusters://host:port"),
        ("rediscluster://a:99999", "port"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_redis_url(url, setting="result_backend")


@pytest.mark.parametrize(
    "url",
    [
        f"rediscluster://:{SECRET}@a:7000,b:7001",
        f"redisclusters://app:{SECRET}@a:7000,b:7001/0?ssl_cert_reqs=required",
    ],
)
def test_cluster_password_never_in_repr_or_str(url: str) -> None:
    parsed = parse_redis_url(url)
    for shown in (repr(parsed), str(parsed), parsed.redacted(), redact_text(url)):
        assert SECRET not in shown
        assert "***" in shown
    assert SECRET in parsed.geturl()


@pytest.mark.parametrize(
    "url",
    [
        f"rediscluster://app:{SECRET}@a:7000,b:7001/4",
        f"rediscluster://app:{SECRET}@a:7000,,b:7001",
        f"rediscluster://:{SECRET}@a:7000,b:x",
    ],
)
def test_cluster_password_never_in_error_messages(url: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        parse_redis_url(url, setting="result_backend")
    assert SECRET not in str(excinfo.value)
    assert SECRET not in repr(excinfo.value)


def test_redact_text_hides_the_password_of_a_node_list() -> None:
    text = f"backend rediscluster://app:{SECRET}@a:7000,b:7001,c:7002/0 is down"
    assert redact_text(text) == "backend rediscluster://app:***@a:7000,b:7001,c:7002/0 is down"


def test_make_app_accepts_a_cluster_result_backend() -> None:
    app = make_app(
        "t", broker_url="redis://localhost:6379/0", result_backend="rediscluster://a:7000,b:7001"
    )
    assert app.conf.result_backend == "rediscluster://a:7000,b:7001/0"


def test_a_cluster_result_backend_from_the_environment_selects_the_cluster_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "rediscluster://a:7000,b:7001")
    app = make_app("t", broker_url="redis://localhost:6379/0")
    assert type(app.backend).__name__ == "RedisClusterBackend"
    assert app.backend.cluster_url.hosts == (("a", 7000), ("b", 7001))


def test_configure_reads_a_cluster_result_backend_from_the_host_config() -> None:
    from celery import Celery

    from celeryredis import configure

    app = Celery("host", set_as_current=False)
    app.conf.update(
        broker_url="redis://localhost:6379/0", result_backend="rediscluster://a:7000,b:7001"
    )
    configure(app)
    assert type(app.backend).__name__ == "RedisClusterBackend"
