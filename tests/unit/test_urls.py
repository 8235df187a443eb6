"""URL parsing, normalisation and redaction (pure, no server)."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeryredis import ConfigurationError, parse_redis_url
from celeryredis.urls import redact_text, redact_url

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "scheme", "hosts", "db", "user"),
    [
        ("redis://localhost", "redis", (("localhost", 6379),), 0, None),
        ("redis://localhost:6380/3", "redis", (("localhost", 6380),), 3, None),
        (f"redis://app:{SECRET}@10.0.0.1:6379/1", "redis", (("10.0.0.1", 6379),), 1, "app"),
        (f"redis://:{SECRET}@h/2", "redis", (("h", 6379),), 2, None),
        ("redis://[::1]:6390/0", "redis", (("::1", 6390),), 0, None),
        (
            "rediss://h:6380/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/etc/ca.pem",
            "rediss",
            (("h", 6380),),
            0,
            None,
        ),
        (
            f"sentinel://:{SECRET}@s1:26379/1;sentinel://s2:26380;sentinel://s3",
            "sentinel",
            (("s1", 26379), ("s2", 26380), ("s3", 26379)),
            1,
            None,
        ),
    ],
)
def test_valid_urls_parse(
    url: str, scheme: str, hosts: tuple[tuple[str, int], ...], db: int, user: str | None
) -> None:
    parsed = parse_redis_url(url)
    assert parsed.scheme == scheme
    assert parsed.hosts == hosts
    assert parsed.db == db
    assert parsed.username == user
    # the normalised URL parses back to the same thing
    assert parse_redis_url(parsed.geturl()) == parsed


def test_percent_encoded_password_round_trips() -> None:
    parsed = parse_redis_url("redis://user:p%40ss%3Aword@h:6379/0")
    assert parsed.password == "p@ss:word"
    assert parse_redis_url(parsed.geturl()).password == "p@ss:word"


def test_ssl_cert_reqs_is_normalised() -> None:
    assert parse_redis_url("rediss://h/0?ssl_cert_reqs=CERT_REQUIRED").ssl_cert_reqs == "required"
    assert parse_redis_url("rediss://h/0?ssl_cert_reqs=none").ssl_cert_reqs == "none"


def test_unix_is_normalised_to_redis_socket() -> None:
    parsed = parse_redis_url(f"unix://:{SECRET}@/run/redis/redis.sock?db=2")
    assert parsed.scheme == "redis+socket"
    assert parsed.socket_path == "/run/redis/redis.sock"
    assert parsed.db == 2
    assert parsed.geturl() == f"redis+socket://:{SECRET}@/run/redis/redis.sock?virtual_host=2"
    assert parse_redis_url("redis+socket:///tmp/r.sock?virtual_host=4").db == 4
    assert parse_redis_url("redis+socket:///tmp/r.sock").geturl() == "redis+socket:///tmp/r.sock"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "non-empty"),
        ("localhost:6379", "no scheme"),
        ("amqp://guest@localhost//", "not supported"),
        ("http://h/0", "not supported"),
        ("rediscluster://h:7000/1", "no databases"),
        ("redis+cluster://h:7000", "rediscluster://"),
        ("redis://h:notaport/0", "port"),
        ("redis://h:70000/0", "port"),
        ("redis://h:0/0", "port"),
        ("redis://h/abc", "database"),
        ("redis://h/-1", "database"),
        ("redis://:6379/0", "host"),
        ("redis://h/0?ssl_cert_reqs=required", "rediss"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://h/0?socket_timeout=5", "unknown query parameter"),
        ("rediss://h/0?ssl_cert_reqs=required&ssl_cert_reqs=none", "twice"),
        ("redis://h1:6379;redis://h2:6379", "sentinel"),
        ("sentinel://s1:26379;redis://s2", "sentinel://"),
        ("sentinel://s1:26379;sentinel://s1:26379", "twice"),
        ("redis+socket://", "path"),
        ("redis+socket://host/tmp/r.sock", "no host"),
        ("unix:///tmp/r.sock?db=1&virtual_host=2", "once"),
        ("redis://h/0#frag", "fragment"),
        (" redis://h/0", "white space"),
    ],
)
def test_bad_urls_raise_configuration_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_redis_url(url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://app:{SECRET}@h:6379/0",
        f"rediss://:{SECRET}@h:6379/0?ssl_cert_reqs=required",
        f"unix://:{SECRET}@/tmp/r.sock",
        f"sentinel://:{SECRET}@s1:26379;sentinel://s2:26379",
    ],
)
def test_password_never_in_repr_or_str(url: str) -> None:
    parsed = parse_redis_url(url)
    assert SECRET not in repr(parsed)
    assert SECRET not in str(parsed)
    assert SECRET not in parsed.redacted()
    assert "***" in str(parsed)
    assert SECRET in parsed.geturl()


@pytest.mark.parametrize(
    "url",
    [
        f"redis://app:{SECRET}@h:bad/0",
        f"amqp://app:{SECRET}@h//",
        f"redis://app:{SECRET}@h/0?bogus=1",
        f"rediscluster://:{SECRET}@h:7000/2",
        f"rediscluster://app:{SECRET}@h:7000,h2:bad",
        # Malformed: no "://", so no scheme to anchor on (found by a new-user trial).
        f"redis//:{SECRET}@127.0.0.1:6555/0",
        f"redis:/:{SECRET}@127.0.0.1:6555/0",
        f":{SECRET}@127.0.0.1:6555",
        f"redis//app:{SECRET}@h/0",
        f"redis:{SECRET}@h/0",
        f"app:{SECRET}@h:6379/0",  # no scheme at all
        f"redis://:{SECRET}@[::1:6379/0",  # an unclosed IPv6 bracket (a new-user trial)
        f"sentinel://:{SECRET}@a:1;sentinel//:{SECRET}@b:2",
    ],
)
def test_password_never_in_error_messages(url: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        parse_redis_url(url)
    assert SECRET not in str(excinfo.value)
    assert SECRET not in repr(excinfo.value)


def test_redact_text_handles_several_urls() -> None:
    text = f"broker redis://a:{SECRET}@h/0 and backend rediss://:{SECRET}@h2/1 done"
    assert redact_text(text) == "broker redis://a:***@h/0 and backend rediss://:***@h2/1 done"
    assert redact_url(None) is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"'redis//:{SECRET}@h:1/0' is not valid", "'redis//:***@h:1/0' is not valid"),
        (f"redis:/:{SECRET}@h", "redis:***@h"),
        (f"x :{SECRET}@h:1", "x :***@h:1"),
        (f"redis://:p@{SECRET}@h/0", "redis://:***@h/0"),  # a raw "@" in the password
        (f"redis://u:/{SECRET}@h", "redis://u:***@h"),
        (f"redis://u://{SECRET}@h", "redis://u:***@h"),
        (
            f"sentinel://:{SECRET}@a:1;sentinel://:{SECRET}@b:2",
            "sentinel://:***@a:1;sentinel://:***@b:2",
        ),
        (
            f'{{"url":"redis://u:{SECRET}@h/0","to":"a@b"}}',
            '{"url":"redis://u:***@h/0","to":"a@b"}',
        ),
        (f"redis:{SECRET}@h", "redis:***@h"),
        (f"redis:app:{SECRET}@h", "redis:***@h"),
        # No password: nothing to hide, and a log line's times and node names stay.
        ("redis://user@h:1/0", "redis://user@h:1/0"),
        ("[2026-12-02 22:00:01,123: WARNING/MainProcess] celery@vm ready.", None),
        # A label before a Celery node name (`check --worker`; found by a new-user trial).
        ("OK    worker:celery@web-1  consuming", None),
        ('{"name": "worker:flask1@vm"}', None),
    ],
)
def test_redact_text_hides_passwords_of_urls_that_do_not_parse(
    text: str, shown: str | None
) -> None:
    assert redact_text(text) == (text if shown is None else shown)


@given(st.text(max_size=80))
def test_any_string_parses_or_raises_configuration_error(text: str) -> None:
    with contextlib.suppress(ConfigurationError):
        parse_redis_url(text)


_host = st.from_regex(r"[a-z][a-z0-9\-]{0,10}", fullmatch=True)
# A marker no generated tail can contain, so a leak cannot be a coincidence.
_password = st.text(max_size=20).map(lambda p: f"Zq{p}")


@given(
    scheme=st.sampled_from(["redis", "rediss", "sentinel"]),
    host=_host,
    port=st.integers(1, 65535),
    db=st.integers(0, 64),
    user=st.one_of(st.none(), _host),
    password=_password,
    tail=st.text(alphabet=st.characters(blacklist_characters="Z"), max_size=20),
)
def test_generated_urls_round_trip_and_never_leak(
    scheme: str, host: str, port: int, db: int, user: str | None, password: str, tail: str
) -> None:
    userinfo = f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
    url = f"{scheme}://{userinfo}{host}:{port}/{db}"
    parsed = parse_redis_url(url)
    assert parsed.password == password
    assert parse_redis_url(parsed.geturl()) == parsed
    assert quote(password, safe="") not in parsed.redacted()
    assert "Zq" not in repr(parsed)
    try:
        parse_redis_url(url + tail)
    except ConfigurationError as exc:
        message = str(exc)
    else:
        message = ""
    assert "Zq" not in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://[::1:6379/0", "has no closing ']'"),
        ("redis://[nope]:6379/0", "'nope' in brackets is not an IPv6 address"),
    ],
)
def test_a_malformed_ipv6_host_is_a_configuration_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        parse_redis_url(url, setting="broker_url")
    assert parse_redis_url("redis://[::1]:6380/0").hosts == (("::1", 6380),)
