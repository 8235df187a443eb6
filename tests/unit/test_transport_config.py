"""Selecting the reliable transport: settings, URL alias, explain(), validation."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES

from celeryredis import ConfigurationError, explain, make_app
from celeryredis.transport import reliable_url
from celeryredis.validation import run_checks

URL = "redis://127.0.0.1:6379/0"


def _ids(**kwargs: Any) -> set[str]:
    kwargs.setdefault("broker_url", URL)
    return {f.check_id for f in run_checks(make_app("t", validate="ignore", **kwargs).conf)}


def test_alias_registered_on_import() -> None:
    assert TRANSPORT_ALIASES["celeryredis"] == "celeryredis.transport._reliable:Transport"
    assert TRANSPORT_ALIASES["celeryrediss"] == "celeryredis.transport._reliable:Transport"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:1/0", "celeryredis://h:1/0"),
        ("rediss://h:1/0?ssl_cert_reqs=required", "celeryrediss://h:1/0?ssl_cert_reqs=required"),
        ("redis+socket:///tmp/r.sock", "celeryredis+socket:///tmp/r.sock"),
        ("redis://a:1/0;redis://b:2/0", "celeryredis://a:1/0;celeryredis://b:2/0"),
        ("sentinel://s:26379", "sentinel://s:26379"),
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
    assert "transport" not in _ids(celeryredis_transport="reliable")


def test_reliable_refuses_sentinel() -> None:
    with pytest.raises(ConfigurationError, match="sentinel") as excinfo:
        make_app(
            "t",
            broker_url="sentinel://127.0.0.1:26379",
            broker_transport_options={"master_name": "mymaster"},
            celeryredis_transport="reliable",
        )
    assert "transport" in excinfo.value.check_ids


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


def test_production_gives_way_to_stock_on_sentinel() -> None:
    app = make_app(
        "t",
        broker_url="sentinel://127.0.0.1:26379",
        result_backend=None,
        broker_transport_options={"master_name": "mymaster"},
    )
    rows = {row.setting: row for row in explain(app)}
    assert rows["celeryredis_transport"].value == "stock"
    assert "sentinel" in rows["celeryredis_transport"].reason
    assert app.conf.broker_read_url.startswith("sentinel://")
