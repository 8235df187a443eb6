"""Health report types, heartbeat interpretation and the heartbeat settings (no server)."""

from __future__ import annotations

import json
import logging

import pytest

from celeryredis import ConfigurationError, make_app
from celeryredis.health import HealthPart, HealthReport, _match
from celeryredis.heartbeat import _heartbeat_from, stall_after
from celeryredis.keys import heartbeat_key, workers_key
from celeryredis.queues import QueueDepth
from celeryredis.validation import run_checks

URL = "redis://:hunter2-Secret@127.0.0.1:6379/0"


def _beat(**fields: object) -> bytes:
    data = {"hostname": "w1@host", "pid": 7, "queues": ["celery"], "interval": 1.0}
    data.update(fields)
    return json.dumps(data).encode()


def test_beat_age_comes_from_the_keys_ttl_not_from_clocks() -> None:
    beat = _heartbeat_from(_beat(ttl_s=3.0, poll_age_s=0.5, beat_at=0), pttl=2000)
    assert beat is not None
    assert beat.beat_age_s == pytest.approx(1.0)
    assert beat.poll_age_s == pytest.approx(1.5)
    assert beat.state == "consuming"


def test_no_poll_for_too_long_is_stalled_and_saturated_is_busy() -> None:
    stalled = _heartbeat_from(_beat(ttl_s=3.0, poll_age_s=stall_after(1.0)), pttl=2500)
    assert stalled is not None
    assert stalled.state == "stalled"
    busy = _heartbeat_from(
        _beat(ttl_s=3.0, poll_age_s=60.0, saturated=True, active=1, reserved=3), pttl=2900
    )
    assert busy is not None
    assert busy.state == "busy"
    assert _heartbeat_from(b"not json", pttl=100) is None


def test_report_is_json_and_exit_code_is_the_worst_status() -> None:
    report = HealthReport(
        status="warn",
        parts=(
            HealthPart("broker", "ok", "reachable", 0.001),
            HealthPart("dead_letters", "warn", "2 task(s)", details={"depth": 2}),
        ),
        queues=(QueueDepth("celery", 3, {0: 2, 9: 1}, 1, 4.5, 0, 3),),
    )
    data = json.loads(report.to_json())
    assert data["exit_code"] == report.exit_code == 1
    assert data["queues"][0]["by_priority"] == {"0": 2, "9": 1}
    assert report.part("dead_letters").details == {"depth": 2}
    with pytest.raises(KeyError):
        report.part("nope")


def test_report_json_redacts_url_passwords() -> None:
    report = HealthReport(
        status="fail", parts=(HealthPart("broker", "fail", f"cannot reach {URL}"),)
    )
    assert "hunter2-Secret" not in report.to_json()


def test_heartbeat_keys_live_under_the_namespace_and_prefix() -> None:
    conf = {"broker_transport_options": {"global_keyprefix": "app1:"}}
    assert heartbeat_key(conf, "w1@host") == "app1:celeryredis:hb:w1@host"
    assert workers_key(conf) == "app1:celeryredis:workers"


def test_heartbeat_interval_is_a_preset_setting_with_validation() -> None:
    app = make_app("t", broker_url=URL)
    assert app.conf.celeryredis_heartbeat_interval == 5.0
    assert make_app("t", broker_url=URL, preset="testing").conf.celeryredis_heartbeat_interval == 1
    make_app("t", broker_url=URL, celeryredis_heartbeat_interval=0)  # 0: off, accepted
    with pytest.raises(ConfigurationError, match="heartbeat-interval"):
        make_app("t", broker_url=URL, celeryredis_heartbeat_interval=0.01)
    with pytest.raises(ConfigurationError, match="celeryredis_heartbeat_interval"):
        make_app("t", broker_url=URL, celeryredis_heartbeat_interval="5s")


def test_a_long_heartbeat_interval_warns(caplog: pytest.LogCaptureFixture) -> None:
    conf = make_app("t", broker_url=URL, validate="ignore", celeryredis_heartbeat_interval=300)
    (finding,) = [f for f in run_checks(conf.conf) if f.check_id == "heartbeat-interval"]
    assert finding.severity == "warning"
    with caplog.at_level(logging.WARNING):
        make_app("t", broker_url=URL, celeryredis_heartbeat_interval=300)
    assert "heartbeat-interval" in caplog.text


def test_a_short_worker_name_matches_by_the_part_before_the_at() -> None:
    names = ["celery@a", "celery@b", "mail@a"]
    assert _match("mail", names) == ["mail@a"]
    assert _match("celery", names) == ["celery@a", "celery@b"]  # ambiguous: the probe fails
    assert _match("celery@b", names) == ["celery@b"]
    assert _match("none", names) == []
