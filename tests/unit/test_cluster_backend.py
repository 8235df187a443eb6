"""The Redis Cluster result backend without a server: selection, keys, redaction, pins."""

from __future__ import annotations

import pytest
from celery import Celery
from redis.cluster import key_slot
from redis.exceptions import ClusterDownError, TryAgainError

from celeryredis import ConfigurationError, make_app, parse_redis_url
from celeryredis.cluster import ClusterResultConsumer, RedisClusterBackend, cluster_params

SECRET = "hunter2-Secret"  # one of tests/conftest.py's SECRETS
URL = f"rediscluster://app:{SECRET}@127.0.0.1:1,127.0.0.1:2/0"


def _backend(url: str = URL, **conf: object) -> RedisClusterBackend:
    app = Celery("cluster_unit", backend=url, set_as_current=False)
    app.conf.update(conf)
    backend = app.backend  # builds the object; connects nowhere
    assert isinstance(backend, RedisClusterBackend)
    return backend


@pytest.mark.parametrize(
    "url", ["rediscluster://127.0.0.1:1", "redisclusters://127.0.0.1:1?ssl_cert_reqs=required"]
)
def test_the_url_scheme_selects_the_cluster_backend(url: str) -> None:
    assert _backend(url).cluster_url.scheme == url.partition(":")[0]


def test_make_app_selects_it_from_result_backend() -> None:
    app = make_app("t", broker_url="redis://127.0.0.1:1/0", result_backend=URL)
    assert isinstance(app.backend, RedisClusterBackend)


def test_keys_carry_the_id_as_a_hash_tag() -> None:
    backend = _backend()
    assert backend.get_key_for_task("t-1") == b"celery-task-meta-{t-1}"
    assert backend.get_key_for_group("g-1") == b"celery-taskset-meta-{g-1}"
    assert backend.get_key_for_group("g-1", ".j") == b"celery-taskset-meta-{g-1}.j"
    assert backend.get_key_for_chord("g-1") == b"chord-unlock-{g-1}"
    chord_keys = [
        backend.get_key_for_group("g-1", suffix) for suffix in ("", ".j", ".t", ".s", ".d", ".c")
    ]
    assert len({key_slot(key) for key in chord_keys}) == 1
    assert backend.result_consumer._get_key_for_task("t-1") == b"celery-task-meta-{t-1}"
    with pytest.raises(ValueError, match="task_id must not be empty"):
        backend.get_key_for_task("")


def test_a_global_keyprefix_stays_in_front_of_the_tag() -> None:
    backend = _backend(result_backend_transport_options={"global_keyprefix": "app1:"})
    assert backend.get_key_for_task("t") == b"app1:celery-task-meta-{t}"


def test_a_global_keyprefix_with_a_brace_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="one slot"):
        _backend(result_backend_transport_options={"global_keyprefix": "{app}:"})


def test_a_single_node_url_is_refused_by_the_cluster_class() -> None:
    app = Celery("cluster_unit", set_as_current=False)
    with pytest.raises(ConfigurationError, match="needs a Redis Cluster URL") as excinfo:
        RedisClusterBackend(app=app, url=f"redis://:{SECRET}@127.0.0.1:1/0")
    assert SECRET not in str(excinfo.value)


def test_the_password_is_redacted_in_as_uri() -> None:
    backend = _backend()
    assert SECRET not in backend.as_uri()
    assert backend.as_uri() == "rediscluster://app:***@127.0.0.1:1,127.0.0.1:2/0"
    assert SECRET in backend.as_uri(include_password=True)


def test_tls_acl_and_timeouts_reach_the_cluster_client() -> None:
    backend = _backend(
        f"redisclusters://app:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=none&ssl_check_hostname=false",
        redis_socket_timeout=3.0,
        redis_socket_connect_timeout=2.0,
        redis_max_connections=7,
    )
    params = backend.client_params()
    assert params["ssl"] is True
    assert params["ssl_cert_reqs"] == "none"
    assert params["ssl_check_hostname"] is False
    assert (params["username"], params["password"]) == ("app", SECRET)
    assert params["socket_timeout"] == 3.0
    assert params["socket_connect_timeout"] == 2.0
    assert params["max_connections"] == 7


def test_redis_backend_use_ssl_turns_tls_on() -> None:
    backend = _backend(
        "rediscluster://127.0.0.1:1",
        redis_backend_use_ssl={"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"},
    )
    params = backend.client_params()
    assert params["ssl"] is True
    assert params["ssl_ca_certs"] == "/ca.pem"


def test_cluster_params_refuses_a_single_node_url() -> None:
    with pytest.raises(ConfigurationError, match="not a Redis Cluster URL"):
        cluster_params(parse_redis_url("redis://127.0.0.1:1/0"))


def test_the_consumer_pins_celerys_private_state() -> None:
    """``ClusterResultConsumer`` relies on these names of Celery's ResultConsumer."""
    consumer = _backend().result_consumer
    assert isinstance(consumer, ClusterResultConsumer)
    assert isinstance(consumer._pending_unsubscribe, set)
    assert consumer._pubsub is None
    assert ClusterDownError in consumer._connection_errors
    assert TryAgainError in consumer._connection_errors
    with consumer._locked():
        pass


def test_health_reports_an_unreachable_cluster_backend_without_its_password() -> None:
    from celeryredis.health import check_health

    app = make_app("t", broker_url="redis://127.0.0.1:1/0", result_backend=URL, preset="testing")
    report = check_health(app, timeout=0.5)
    backend = next(part for part in report.parts if part.name == "backend")
    assert backend.status == "fail"
    assert "result backend cluster unreachable" in backend.reason
    assert SECRET not in backend.reason
