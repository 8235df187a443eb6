"""enqueue_many's shortcuts in building messages give what Celery computes per call.

``bulk._flat_repr`` stands in for Celery's ``saferepr`` (``argsrepr`` / ``kwargsrepr``
headers) on flat arguments; it must return exactly saferepr's text or None (then
saferepr is called). The byte-for-byte comparison of whole messages with
``apply_async``'s is in tests/integration/test_bulk_integration.py. ``bulk._new_ids``
stands in for ``str(uuid.uuid4())`` per task.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery.utils.saferepr import saferepr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeryredis.bulk import _flat_repr, _new_ids

_scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=40),
    st.text(alphabet="'\"\\\n\t ab", max_size=12),
)
_flat = st.one_of(
    st.tuples(),
    st.lists(_scalars, max_size=8).map(tuple),
    st.lists(_scalars, max_size=8),
    st.dictionaries(st.text(alphabet="'\"\\ xyz", max_size=8), _scalars, max_size=6),
    st.dictionaries(st.integers(-5, 5), _scalars, max_size=4),
)
_nested = st.recursive(
    _scalars | st.binary(max_size=6) | st.sets(st.integers(), max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(value=_flat, maxlen=st.one_of(st.none(), st.integers(1, 120), st.just(1024)))
def test_flat_repr_is_saferepr_or_declines(value: Any, maxlen: int | None) -> None:
    text = _flat_repr(value, maxlen)
    if text is not None:
        assert text == saferepr(value, maxlen, maxlevels=3)
        assert text == saferepr(value, maxlen, maxlevels=1)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=_nested)
def test_anything_else_is_declined_or_equal(value: Any) -> None:
    text = _flat_repr(value, 1024)
    if text is not None:
        assert text == saferepr(value, 1024, maxlevels=3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((), "()"),
        ((1,), "(1,)"),
        ((1, 2.5, True, None), "(1, 2.5, True, None)"),
        (("it's", 'say "hi"', "a\\b\nc"), "('it\\'s', 'say \"hi\"', 'a\\b\nc')"),
        ([3, "x"], "[3, 'x']"),
        ({}, "{}"),
        ({"y": 5, "name": "o'k"}, "{'y': 5, 'name': 'o\\'k'}"),
    ],
)
def test_common_arguments_take_the_short_path(value: Any, expected: str) -> None:
    assert _flat_repr(value, 1024) == expected == saferepr(value, 1024)


@pytest.mark.parametrize(
    "value",
    [
        ((1, 2),),  # nested: maxlevels applies
        (b"raw",),
        ({1, 2},),
        ("x" * 1030,),  # longer than the limit: saferepr truncates
        (1, object()),
        "not a container",
    ],
)
def test_what_saferepr_treats_specially_is_left_to_it(value: Any) -> None:
    assert _flat_repr(value, 1024) is None


def test_new_ids_are_distinct_version_4_uuids_in_their_usual_form() -> None:
    ids = _new_ids(5000)
    assert len(ids) == len(set(ids)) == 5000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert _new_ids(0) == []
