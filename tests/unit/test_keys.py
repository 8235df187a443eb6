"""Key names are built and read back only by celeryredis.keys."""

from __future__ import annotations

from celeryredis.keys import lock_key, lock_pattern, lock_task_name


def test_a_lock_key_gives_back_its_task_name_with_or_without_a_prefix() -> None:
    for conf in ({}, {"broker_transport_options": {"global_keyprefix": "app1:"}}):
        key = lock_key(conf, "billing.tasks:charge", "d1g3st")
        assert key.startswith(lock_pattern(conf)[:-1])
        assert lock_task_name(conf, key) == "billing.tasks:charge"
    assert lock_task_name({}, "celeryredis:dlq") is None
    assert lock_task_name({}, "other:lock:x:y") is None
