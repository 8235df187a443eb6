"""A ``rediscluster://`` broker URL selects the cluster transport (no Redis needed here)."""

from __future__ import annotations

import pytest
from celery import Celery

from celeryredis import ConfigurationError, configure, make_app
from celeryredis.acl import acl_rule
from celeryredis.transport import cluster_broker_url
from celeryredis.transport._cluster import queue_keys
from celeryredis.urls import redis_url_of_broker

SECRET = "hunter2-Secret"  # one of tests/conftest.py's SECRETS


def test_the_url_becomes_one_alternate_per_node() -> None:
    assert cluster_broker_url(f"rediscluster://:{SECRET}@a:7000,b:7001/0") == (
        f"celeryrediscluster://:{SECRET}@a:7000/0;celeryrediscluster://:{SECRET}@b:7001/0"
    )
    assert cluster_broker_url("redisclusters://u:p@a:7000,b:7001/0?ssl_cert_reqs=required") == (
        "celeryredisclusters://u:p@a:7000/0?ssl_cert_reqs=required;"
        "celeryredisclusters://u:p@b:7001/0?ssl_cert_reqs=required"
    )
    assert cluster_broker_url("redis://a:6379/0") == "redis://a:6379/0"


def test_make_app_points_producers_and_consumers_at_the_cluster_transport() -> None:
    app = make_app("t", broker_url=f"rediscluster://:{SECRET}@a:7000,b:7001")
    expected = f"celeryrediscluster://:{SECRET}@a:7000/0;celeryrediscluster://:{SECRET}@b:7001/0"
    assert app.conf.broker_url == expected
    assert app.conf.broker_read_url == expected
    options = app.conf.broker_transport_options
    assert options["lease_seconds"] > 0
    assert options["lease_sweep_interval"] > 0
    with app.connection_for_write() as conn:  # building it connects nowhere
        assert type(conn.transport).__name__ == "Transport"
        assert type(conn.transport).__module__ == "celeryredis.transport._cluster"
        assert SECRET not in conn.as_uri()


def test_heartbeats_and_dead_letters_stay_on_with_a_cluster_broker() -> None:
    app = make_app("t", broker_url="rediscluster://a:7000", preset="production")
    assert app.conf.celeryredis_heartbeat_interval > 0
    assert app.conf.celeryredis_dead_letter is True
    explicit = make_app(
        "t", broker_url=f"rediscluster://:{SECRET}@a:7000", celeryredis_heartbeat_interval=5
    )
    assert explicit.conf.celeryredis_heartbeat_interval == 5


def test_own_clients_read_the_cluster_transports_url_back() -> None:
    app = make_app("t", broker_url=f"rediscluster://:{SECRET}@a:7000,b:7001")
    assert redis_url_of_broker(app.conf.broker_url) == f"rediscluster://:{SECRET}@a:7000,b:7001/0"
    assert redis_url_of_broker("redis://a:6379/0") == "redis://a:6379/0"
    rule = acl_rule(
        make_app(
            "t",
            broker_url="rediscluster://a:7000,b:7001",
            broker_transport_options={"global_keyprefix": "p:"},
        ).conf
    )
    assert "~p:*" in rule.rules


def test_one_node_from_the_environment_reaches_kombu_as_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "rediscluster://a:7000")
    app = make_app("t")
    # Celery reads $CELERY_BROKER_URL itself; kombu knows the scheme too.
    assert app.conf.broker_url == "rediscluster://a:7000"
    assert app.conf.broker_read_url == "celeryrediscluster://a:7000/0"
    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "celeryredis.transport._cluster"


def test_several_nodes_from_the_environment_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", f"rediscluster://:{SECRET}@a:7000,b:7001")
    with pytest.raises(ConfigurationError, match="kombu reads one host per URL") as excinfo:
        _ = make_app("t").conf.broker_read_url  # the settings are resolved on read
    assert "make_app(broker_url=...)" in str(excinfo.value)
    assert SECRET not in str(excinfo.value)


def test_several_nodes_in_redis_url_become_the_transports_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediscluster://a:7000,b:7001")  # Celery never reads it
    app = make_app("t")
    assert app.conf.broker_url == "celeryrediscluster://a:7000/0;celeryrediscluster://b:7001/0"


def test_a_cluster_broker_in_the_host_config() -> None:
    app = Celery("host", set_as_current=False)
    app.conf.update(broker_url="rediscluster://a:7000")
    configure(app)
    assert app.conf.broker_url == "rediscluster://a:7000"
    assert app.conf.broker_read_url == "celeryrediscluster://a:7000/0"
    assert app.conf.celeryredis_heartbeat_interval > 0


def test_every_key_of_a_queue_shares_its_hash_tag() -> None:
    keys = queue_keys("p:", "celery")
    assert keys["lists"] == [
        "p:{celery}",
        "p:{celery}\x06\x163",
        "p:{celery}\x06\x166",
        "p:{celery}\x06\x169",
    ]
    assert (keys["unacked"], keys["index"], keys["poison"]) == (
        "p:{celery}:unacked",
        "p:{celery}:unacked_index",
        "p:{celery}:poison",
    )
    with pytest.raises(ValueError, match="rename the queue"):
        queue_keys("", "a{b}")


@pytest.mark.parametrize(
    "url",
    [
        f"rediscluster://:{SECRET}@a:7000,b:7001/0",
        "redisclusters://u:p@a:7000,b:7001/0?ssl_cert_reqs=required",
        "rediscluster://a:7000",
        "redis://a:6379/0",
    ],
)
def test_the_test_guard_rewrites_a_cluster_url_as_the_settings_layer_does(url: str) -> None:
    from celeryredis.testing._guard import _kombu_form

    assert _kombu_form(url) == cluster_broker_url(url)


# --- partitioned queues (celeryredis_cluster_partitions) ----------------------------------


def test_partitions_become_the_cluster_transports_option() -> None:
    from celeryredis.transport import parse_partitions

    app = make_app(
        "t", broker_url="rediscluster://a:7000", celeryredis_cluster_partitions={"hot": 3}
    )
    assert app.conf.broker_transport_options["partitions"] == {"hot": 3}
    assert parse_partitions(None, "x") == {}
    plain = make_app("t", broker_url="rediscluster://a:7000")
    assert "partitions" not in plain.conf.broker_transport_options
    keys = queue_keys("p:", "hot", partitions=3)
    assert [p["unacked"] for p in keys["partitions"]] == [
        "p:{hot}:unacked",
        "p:{hot#1}:unacked",
        "p:{hot#2}:unacked",
    ]
    assert keys["partitions"][2]["wake"] == "p:{hot#2}:wake"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("hot", r"celeryredis_cluster_partitions='hot' must be a dict of \{queue name: number"),
        ({"hot": 0}, r"celeryredis_cluster_partitions\['hot'\]=0 must be from 1 .* to 64"),
        ({"hot": 65}, r"celeryredis_cluster_partitions\['hot'\]=65 must be from 1"),
        ({"hot": "3"}, r"\['hot'\]='3' must be a whole number of partitions"),
        ({"hot": True}, r"\['hot'\]=True must be a whole number"),
        ({"h{o}t": 2}, r"names the queue 'h\{o\}t', which contains '\{' or '\}'"),
        ({3: 2}, r"has the key 3; the keys are queue names"),
    ],
)
def test_a_wrong_partition_setting_is_refused_with_where_it_came_from(
    value: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as excinfo:
        _ = make_app(
            "t", broker_url="rediscluster://a:7000", celeryredis_cluster_partitions=value
        ).conf.broker_url
    assert "(from " in str(excinfo.value)
    assert excinfo.value.setting == "celeryredis_cluster_partitions"


def test_a_wrong_partitions_transport_option_is_refused_by_the_channel() -> None:
    from kombu import Connection

    with (
        Connection(
            "celeryrediscluster://127.0.0.1:1/0", transport_options={"partitions": [3]}
        ) as conn,
        pytest.raises(TypeError, match=r"broker_transport_options\['partitions'\]=\[3\] must be"),
    ):
        conn.default_channel  # noqa: B018


def test_the_tools_read_the_apps_partitions_and_tell_a_cluster_broker() -> None:
    from celeryredis.transport import (
        cluster_queue_keys,
        configured_partitions,
        is_cluster_broker,
        recorded_partitions,
    )
    from celeryredis.worker import PoisonStep

    app = make_app(
        "t", broker_url="rediscluster://a:7000", celeryredis_cluster_partitions={"hot": 3}
    )
    assert configured_partitions(app.conf) == {"hot": 3}
    assert configured_partitions({"broker_transport_options": {"partitions": [3]}}) == {}
    assert is_cluster_broker(app.conf)
    assert not is_cluster_broker(make_app("t", broker_url="redis://a:6380/0").conf)
    assert not is_cluster_broker({"broker_url": None})
    assert [recorded_partitions(v) for v in (b"4", "2", None, b"0", b"x")] == [4, 2, 1, 1, 1]
    poison = [p["poison"] for p in cluster_queue_keys("p:", "hot", partitions=3)["partitions"]]
    assert poison == ["p:{hot}:poison", "p:{hot#1}:poison", "p:{hot#2}:poison"]

    class Parent:  # what PoisonStep reads of Celery's consumer when it is created
        pass

    parent = Parent()
    parent.app = app  # type: ignore[attr-defined]
    app.conf.celeryredis_transport = "stock"  # no say on a cluster broker
    app.conf.celeryredis_dead_letter = True
    assert PoisonStep(parent).enabled
    app.conf.celeryredis_dead_letter = False
    assert not PoisonStep(parent).enabled


def test_the_heartbeat_reads_the_cluster_channels_own_poll_time() -> None:
    from celeryredis.heartbeat import poll_started_at
    from celeryredis.transport._cluster import Channel

    assert Channel.last_poll_at is None  # before its first fetch round or wait

    class Polled:
        last_poll_at = 12.5

    class KombuRedis:  # kombu's Redis channel: its BRPOP's send time
        _brpop_sent_at = 7.25

    assert poll_started_at(Polled()) == 12.5
    assert poll_started_at(KombuRedis()) == 7.25
    assert poll_started_at(object()) is None
