"""Selecting the reliable transport: settings, URL alias, explain(), validation."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES

from celeryredis import ConfigurationError, explain, make_app
from celeryredis.exceptions import CeleryRedisError, NotDurableError
from celeryredis.transport import reliable_url
from celeryredis.validation import run_checks

URL = "redis://127.0.0.1:6379/0"


def _ids(**kwargs: Any) -> set[str]:
    kwargs.setdefault("broker_url", URL)
    return {f.check_id for f in run_checks(make_app("t", validate="ignore", **kwargs).conf)}


def test_alias_registered_on_import() -> None:
    assert TRANSPORT_ALIASES["celeryredis"] == "celeryredis.transport._reliable:Transport"
    assert TRANSPORT_ALIASES["celeryrediss"] == "celeryredis.transport._reliable:Transport"
    assert (
        TRANSPORT_ALIASES["celeryredissentinel"]
        == "celeryredis.transport._reliable:SentinelTransport"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:1/0", "celeryredis://h:1/0"),
        ("rediss://h:1/0?ssl_cert_reqs=required", "celeryrediss://h:1/0?ssl_cert_reqs=required"),
        ("redis+socket:///tmp/r.sock", "celeryredis+socket:///tmp/r.sock"),
        ("redis://a:1/0;redis://b:2/0", "celeryredis://a:1/0;celeryredis://b:2/0"),
        ("sentinel://s:26379", "celeryredissentinel://s:26379"),
        (
            "sentinel://:pw@a:26379/0;sentinel://b:26380/0",
            "celeryredissentinel://:pw@a:26379/0;celeryredissentinel://b:26380/0",
        ),
    ],
)
def test_reliable_url(url: str, expected: str) -> None:
    assert reliable_url(url) == expected


def test_reliable_selects_the_alias_for_consumers_only() -> None:
    app = make_app(
        "t",
        broker_url="redis://:s3cr3t-Pa55@127.0.0.1:6379/0",
        celeryredis_transport="reliable",
        celeryredis_lease_seconds=12,
    )
    assert app.conf.broker_url.startswith("redis://")
    assert app.conf.broker_read_url.startswith("celeryredis://")
    options = app.conf.broker_transport_options
    assert options["lease_seconds"] == 12
    assert options["lease_sweep_interval"] == 1.0
    assert options["fetch_batch_max"] == 64
    assert options["reserve_seconds"] == 0.25
    rows = {row.setting: row for row in explain(app)}
    assert rows["celeryredis_transport"].value == "reliable"
    assert "reliable transport" in rows["broker_read_url"].reason
    assert "s3cr3t-Pa55" not in repr(rows["broker_read_url"].value)
    with app.connection_for_read() as conn:
        assert type(conn.transport).__module__ == "celeryredis.transport._reliable"
        assert conn.transport.driver_type == "redis"


def test_stock_leaves_the_read_url_alone() -> None:
    app = make_app("t", broker_url=URL, celeryredis_transport="stock")
    assert app.conf.broker_read_url == app.conf.broker_url
    rows = {row.setting: row for row in explain(app)}
    assert rows["celeryredis_transport"].value == "stock"
    assert "lease_seconds" not in app.conf.broker_transport_options


def test_alias_survives_failover_switch() -> None:
    conn = Connection("celeryredis://127.0.0.1:1/0;celeryredis://127.0.0.1:2/0")
    conn.switch("celeryredis://127.0.0.1:2/0")
    assert conn.transport_cls == "celeryredis"


def test_validation_of_transport_settings() -> None:
    assert "transport" in _ids(celeryredis_transport="fast")
    assert "transport" in _ids(celeryredis_transport="reliable", celeryredis_fetch_batch_max=0)
    assert "transport" in _ids(
        celeryredis_transport="reliable",
        celeryredis_lease_seconds=5,
        celeryredis_lease_sweep_interval=6,
    )
    assert "transport" in _ids(celeryredis_transport="reliable", celeryredis_reserve_seconds=61)
    for reserve in (-1, "0.5", True, float("nan")):
        with pytest.raises(ConfigurationError, match="celeryredis_reserve_seconds"):
            _ids(celeryredis_transport="reliable", celeryredis_reserve_seconds=reserve)
    for reserve in (0, 0.25, 60):
        assert "transport" not in _ids(
            celeryredis_transport="reliable", celeryredis_reserve_seconds=reserve
        ), reserve
    assert "transport" not in _ids(celeryredis_transport="reliable")


SENTINEL = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"


def test_reliable_runs_on_sentinel() -> None:
    app = make_app(
        "t",
        broker_url=SENTINEL,
        result_backend=None,
        broker_transport_options={"master_name": "mymaster"},
        celeryredis_transport="reliable",
    )
    assert app.conf.broker_url == SENTINEL  # producers unchanged (durable publish off)
    assert app.conf.broker_read_url == (
        "celeryredissentinel://127.0.0.1:26379/0;celeryredissentinel://127.0.0.1:26380/0"
    )
    assert app.conf.broker_transport_options["master_name"] == "mymaster"
    with app.connection_for_read() as conn:
        assert type(conn.transport).__name__ == "SentinelTransport"
        assert type(conn.transport).__module__ == "celeryredis.transport._reliable"
        assert conn.transport.driver_type == "redis"
        assert conn.transport.default_port == 26379
        assert conn.alt == app.conf.broker_read_url.split(";")


def test_sentinel_alias_survives_failover_switch() -> None:
    conn = Connection("celeryredissentinel://127.0.0.1:1/0;celeryredissentinel://127.0.0.1:2/0")
    conn.switch("celeryredissentinel://127.0.0.1:2/0")
    assert conn.transport_cls == "celeryredissentinel"


def test_leases_replace_the_visibility_timeout_formula() -> None:
    tiny = {"broker_transport_options": {"visibility_timeout": 60}}
    assert "visibility-timeout" in _ids(celeryredis_transport="stock", **tiny)
    assert "visibility-timeout" not in _ids(celeryredis_transport="reliable", **tiny)


@pytest.mark.parametrize("preset", ["production", "development", "throughput"])
def test_presets_that_use_the_reliable_transport(preset: str) -> None:
    app = make_app("t", broker_url=URL, preset=preset)
    rows = {row.setting: row for row in explain(app)}
    assert rows["celeryredis_transport"].value == "reliable"
    assert rows["celeryredis_transport"].source == f"preset:{preset}"
    assert app.conf.broker_read_url == "celeryredis://127.0.0.1:6379/0"


def test_testing_preset_keeps_the_stock_transport() -> None:
    app = make_app("t", broker_url=URL, preset="testing")
    assert app.conf.celeryredis_transport == "stock"
    assert app.conf.broker_read_url in (None, URL)


def test_production_keeps_the_reliable_transport_on_sentinel() -> None:
    app = make_app(
        "t",
        broker_url=SENTINEL,
        result_backend=None,
        broker_transport_options={"master_name": "mymaster"},
    )
    rows = {row.setting: row for row in explain(app)}
    assert rows["celeryredis_transport"].value == "reliable"
    assert rows["celeryredis_transport"].source == "preset:production"
    assert app.conf.broker_read_url.startswith("celeryredissentinel://")


# --- durable publish ------------------------------------------------------------------


def test_durable_publish_is_off_by_default_and_explain_says_so() -> None:
    app = make_app("t", broker_url="redis://127.0.0.1:7379/0", result_backend=None)
    rows = {row.setting: row for row in explain(app)}
    assert rows["celeryredis_durable_publish"].value == 0
    assert rows["celeryredis_durable_publish"].source == "default"
    assert "durable publish off" in rows["celeryredis_durable_publish"].reason
    assert "can be lost" in rows["celeryredis_durable_publish"].reason
    assert app.conf.broker_write_url in (None, app.conf.broker_url)
    assert "durable_publish" not in app.conf.broker_transport_options


@pytest.mark.parametrize("transport", ["reliable", "stock"])
def test_durable_publish_routes_producers_through_the_reliable_channel(transport: str) -> None:
    app = make_app(
        "t",
        broker_url="redis://:s3cr3t-Pa55@127.0.0.1:7379/0",
        result_backend=None,
        celeryredis_transport=transport,
        celeryredis_durable_publish=1,
        celeryredis_durable_publish_timeout=0.5,
    )
    assert app.conf.broker_url.startswith("redis://")
    assert app.conf.broker_write_url == "celeryredis://:s3cr3t-Pa55@127.0.0.1:7379/0"
    options = app.conf.broker_transport_options
    assert (options["durable_publish"], options["durable_publish_timeout"]) == (1, 0.5)
    rows = {row.setting: row for row in explain(app)}
    durable = rows["celeryredis_durable_publish"]
    assert (durable.value, durable.source) == (1, "argument")
    assert "durable publish on" in durable.reason
    assert "1 replica(s)" in durable.reason
    assert "0.5 s" in durable.reason
    assert "WAIT" in rows["broker_write_url"].reason
    assert "s3cr3t-Pa55" not in repr(rows["broker_write_url"].value)
    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "celeryredis.transport._reliable"


def test_durable_publish_on_sentinel_uses_the_sentinel_scheme() -> None:
    app = make_app(
        "t",
        broker_url=SENTINEL,
        result_backend=None,
        broker_transport_options={"master_name": "mymaster"},
        celeryredis_durable_publish=1,
    )
    assert app.conf.broker_write_url == app.conf.broker_read_url
    assert app.conf.broker_write_url.startswith("celeryredissentinel://")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"celeryredis_durable_publish": 101}, "celeryredis_durable_publish=101"),
        ({"celeryredis_durable_publish": 1.5}, "celeryredis_durable_publish=1.5"),
        (
            {"celeryredis_durable_publish": 1, "celeryredis_durable_publish_timeout": 0},
            "celeryredis_durable_publish_timeout=0",
        ),
        (
            {"celeryredis_durable_publish": 1, "celeryredis_durable_publish_timeout": 120},
            "celeryredis_durable_publish_timeout=120",
        ),
    ],
)
def test_durable_publish_validation(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        make_app("t", broker_url="redis://127.0.0.1:7379/0", result_backend=None, **settings)
    assert fragment in str(excinfo.value)


def test_durable_publish_refused_on_a_cluster_broker() -> None:
    with pytest.raises(ConfigurationError, match="Redis Cluster") as excinfo:
        make_app(
            "t",
            broker_url="rediscluster://127.0.0.1:7000/0",
            result_backend=None,
            celeryredis_durable_publish=1,
        )
    assert "transport" in excinfo.value.check_ids
    assert "celeryredis_durable_publish=0" in str(excinfo.value)


def test_not_durable_error_is_not_a_connection_error() -> None:
    # kombu retries a publish on its transport's connection errors (OSError, KeyError,
    # redis ConnectionError ...): each retry would push another copy of the message.
    from kombu.transport.redis import Transport

    error = NotDurableError("x", acked=0, needed=1, timeout=1.0)
    assert isinstance(error, CeleryRedisError)
    assert not isinstance(error, Transport.connection_errors)
    assert (error.acked, error.needed, error.timeout) == (0, 1, 1.0)
