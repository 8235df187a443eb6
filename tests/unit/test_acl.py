"""The ACL rule of `celery -A proj redis acl` (pure; scenario 7 proves it on a server)."""

from __future__ import annotations

import pytest

from celeryredis import ConfigurationError, make_app
from celeryredis.acl import acl_rule


def _conf(**settings: object) -> object:
    return make_app("acl", broker_url="redis://svc:pw@localhost:6379/3", **settings).conf


def test_rule_covers_prefix_keys_channels_and_literal_psubscribe_patterns() -> None:
    rule = acl_rule(
        _conf(
            broker_transport_options={"global_keyprefix": "billing:"},
            result_backend_transport_options={"global_keyprefix": "billing:"},
        )
    )
    assert rule.user == "svc"
    assert rule.rules == (
        "~billing:*",
        "&billing:*",
        "&billing:/3.celery.pidbox",
        "&billing:/3.celeryev/worker.#",
        "+@all",
        "-@dangerous",
    )
    assert rule.command().startswith("ACL SETUSER svc reset on ><password> ~billing:*")
    assert "pw" not in rule.command().replace("<password>", "")


def test_a_separate_backend_prefix_is_added_with_celerys_underscore() -> None:
    rule = acl_rule(
        _conf(
            broker_transport_options={"global_keyprefix": "q:"},
            result_backend_transport_options={"global_keyprefix": "res"},
        ),
        user="worker",
    )
    assert rule.user == "worker"
    assert "~res_*" in rule.rules
    assert "&res_*" in rule.rules


def test_without_a_key_prefix_no_rule_can_limit_the_user() -> None:
    with pytest.raises(ConfigurationError, match="global_keyprefix"):
        acl_rule(_conf())
