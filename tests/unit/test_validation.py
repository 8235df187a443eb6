"""Validation checks: each fires on a bad configuration and stays silent on the presets."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest

from celeryredis import ConfigurationError, make_app
from celeryredis.presets import PRESETS
from celeryredis.validation import (
    CHECKS,
    Finding,
    enforce,
    required_visibility_timeout,
    run_checks,
)

URL = "redis://127.0.0.1:6379/0"

# One bad configuration per check id: (make_app keyword arguments).
BAD: dict[str, dict[str, Any]] = {
    # The visibility-timeout checks apply to the stock transport (leases replace them).
    "visibility-timeout": {
        "broker_transport_options": {"visibility_timeout": 60},
        "celeryredis_transport": "stock",
    },
    "acks-late-without-time-limit": {"task_time_limit": None, "task_soft_time_limit": None},
    "soft-limit-not-below-hard": {"task_soft_time_limit": 1800},
    "unknown-transport-option": {"broker_transport_options": {"visiblity_timeout": 10}},
    "tls-without-verification": {"broker_url": "rediss://127.0.0.1:6380/0"},
    "tls-optional-verification": {
        "broker_url": "rediss://127.0.0.1:6380/0?ssl_cert_reqs=optional&ssl_ca_certs=/ca.pem"
    },
    "sentinel-without-master-name": {"broker_url": "sentinel://127.0.0.1:26379"},
    "pickle-accepted": {"accept_content": ["json", "pickle"]},
    "old-setting-names": {},  # old names are refused before checks run; see below
    "restore-sweep-slow": {
        "broker_transport_options": {
            "unacked_restore_interval": 100,
            "unacked_restore_throttle": 100,
        },
        "celeryredis_transport": "stock",
    },
    "worker-lost-redelivery-loop": {"task_retry_on_worker_lost": False},
    "heartbeat-interval": {"celeryredis_heartbeat_interval": 0.01},
    "transport": {"celeryredis_transport": "reliable", "celeryredis_lease_seconds": 0.5},
}


def _conf(**kwargs: Any) -> Any:
    kwargs.setdefault("broker_url", URL)
    return make_app("t", validate="ignore", **kwargs).conf


PER_TASK = {"task-retry-backoff"}  # evaluated per task class: tests/unit/test_tasks.py
# Checks of the app rather than of a settings mapping: tests/unit/test_configure.py.
APP_LEVEL = {"broker-url", "task-class", "unknown-setting"}


def test_every_check_has_a_bad_case() -> None:
    assert set(BAD) | PER_TASK | APP_LEVEL == set(CHECKS)


@pytest.mark.parametrize("check_id", sorted(set(BAD) - {"old-setting-names"}))
def test_check_fires_on_bad_configuration(check_id: str) -> None:
    findings = run_checks(_conf(**BAD[check_id]))
    assert check_id in {f.check_id for f in findings}
    finding = next(f for f in findings if f.check_id == check_id)
    assert finding.severity == CHECKS[check_id].severity
    assert finding.message  # says what to do
    if CHECKS[check_id].severity == "error":
        with pytest.raises(ConfigurationError, match=check_id) as excinfo:
            make_app("t", **{"broker_url": URL, **BAD[check_id]})
        assert check_id in excinfo.value.check_ids


def test_old_setting_names_fire_on_a_conf_mapping() -> None:
    findings = run_checks({"CELERY_TASK_SERIALIZER": "json", "BROKER_URL": URL})
    old = [f for f in findings if f.check_id == "old-setting-names"]
    assert len(old) == 2
    assert "task_serializer" in str(old[1]) or "task_serializer" in str(old[0])


def test_result_backend_checks_too() -> None:
    ids = {
        f.check_id
        for f in run_checks(
            _conf(
                result_backend="sentinel://127.0.0.1:26379",
                result_backend_transport_options={"master_nam": "x"},
            )
        )
    }
    assert {"sentinel-without-master-name", "unknown-transport-option"} <= ids


def test_tls_with_verification_in_ssl_dict_is_accepted() -> None:
    conf = _conf(
        broker_url="rediss://127.0.0.1:6380/0",
        result_backend=None,
        broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
    )
    assert not [f for f in run_checks(conf) if f.check_id.startswith("tls")]


def test_pickle_opt_in_is_accepted() -> None:
    conf = _conf(accept_content=["json", "pickle"], celeryredis_allow_pickle=True)
    assert "pickle-accepted" not in {f.check_id for f in run_checks(conf)}


def test_unlimited_prefetch_fails_visibility_check() -> None:
    conf = _conf(worker_prefetch_multiplier=0, celeryredis_transport="stock")
    ids = {f.check_id for f in run_checks(conf)}
    assert "visibility-timeout" in ids


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_silent(name: str) -> None:
    assert run_checks(_conf(preset=name)) == []


def test_required_visibility_timeout_formula() -> None:
    base = {
        "celeryredis_eta_horizon": 100,
        "celeryredis_retry_backoff_max": 50,
        "task_time_limit": 10,
        "worker_prefetch_multiplier": 3,
    }
    assert required_visibility_timeout({**base, "task_acks_late": True}) == 100 + 50 + 3 * 10
    assert required_visibility_timeout({**base, "task_acks_late": False}) == 100 + 50 + 2 * 10
    assert required_visibility_timeout({**base, "worker_disable_prefetch": True}) == 150
    assert required_visibility_timeout({**base, "task_time_limit": None}) is None


def test_enforce_modes(caplog: pytest.LogCaptureFixture) -> None:
    err = Finding("soft-limit-not-below-hard", "error", "soft >= hard")
    warn = Finding("restore-sweep-slow", "warning", "slow sweep")
    with pytest.raises(ConfigurationError) as excinfo:
        enforce([err, warn])
    assert excinfo.value.check_ids == ("soft-limit-not-below-hard",)
    with caplog.at_level(logging.WARNING, logger="celeryredis.validation"):
        assert enforce([err, warn], "warn") == [err, warn]
    assert "soft >= hard" in caplog.text
    assert enforce([err, warn], "ignore") == []
    # per check: demote one error, promote one warning
    assert enforce([err], {"soft-limit-not-below-hard": "warn"}) == [err]
    with pytest.raises(ConfigurationError, match="restore-sweep-slow"):
        enforce([warn], "error", {"restore-sweep-slow": "error"})
    assert enforce([err], {"*": "ignore"}) == []


@pytest.mark.parametrize(
    ("validate", "per_check", "fragment"),
    [
        ("strict", None, "not a validation mode"),
        ({"visibilty-timeout": "warn"}, None, "did you mean 'visibility-timeout'"),
        ("error", {"soft-limit-not-below-hard": "loud"}, "not a validation mode"),
        ("error", ["x"], "dict"),
    ],
)
def test_bad_modes_are_refused(validate: Any, per_check: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        enforce([], validate, per_check)


def test_validate_mode_from_settings_is_honoured() -> None:
    app = make_app("t", broker_url=URL, task_soft_time_limit=1800, celeryredis_validate="warn")
    assert app.conf.celeryredis_validate == "warn"
    app = make_app(
        "t",
        broker_url=URL,
        task_soft_time_limit=1800,
        celeryredis_validate_checks={"soft-limit-not-below-hard": "ignore"},
    )
    assert app.conf.task_soft_time_limit == 1800
