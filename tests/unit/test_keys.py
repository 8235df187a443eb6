"""Key names are built and read back only by celeryredis.keys."""

from __future__ import annotations

from redis.crc import key_slot

from celeryredis.keys import bulk_marker_key, hash_tag, lock_key, lock_pattern, lock_task_name


def test_a_lock_key_gives_back_its_task_name_with_or_without_a_prefix() -> None:
    for conf in ({}, {"broker_transport_options": {"global_keyprefix": "app1:"}}):
        key = lock_key(conf, "billing.tasks:charge", "d1g3st")
        assert key.startswith(lock_pattern(conf)[:-1])
        assert lock_task_name(conf, key) == "billing.tasks:charge"
    assert lock_task_name({}, "celeryredis:dlq") is None
    assert lock_task_name({}, "other:lock:x:y") is None


def test_a_bulk_marker_shares_the_slot_of_its_queue_only_on_a_cluster() -> None:
    conf = {"broker_transport_options": {"global_keyprefix": "app1:"}}
    assert bulk_marker_key(conf, "b1", 3) == "app1:celeryredis:bulk:b1:3"  # one node: as before
    for queue_key in ("app1:{celery}", "app1:{celery}\x06\x166", "app1:{celery}:unacked"):
        marker = bulk_marker_key(conf, "b1", 3, slot_key=queue_key)
        assert marker == "app1:celeryredis:bulk:b1:3:{celery}"
        assert key_slot(marker.encode()) == key_slot(queue_key.encode())
    untagged = bulk_marker_key(conf, "b1", 3, slot_key="plain-list")
    assert key_slot(untagged.encode()) == key_slot(b"plain-list")
    assert hash_tag("a{}b") == "a{}b"  # an empty tag: Redis hashes the whole key
