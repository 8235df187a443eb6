"""Property tests: whatever goes into make_app()/configure(), a valid app or a ConfigurationError.

They extend the ones in test_urls.py (any string, generated URLs) and test_app.py (any
settings dict) to the other inputs: broker/backend URLs with query strings and several
sentinel hosts, preset specs, nested transport options and the ACL rule.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from celery import Celery
from celery.exceptions import ImproperlyConfigured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeryredis import ConfigurationError, configure, make_app
from celeryredis.acl import acl_rule
from celeryredis.urls import parse_redis_url

PASSWORD_MARK = "Zq"  # generated passwords start with it; no other text contains it

_host = st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True)
_query_value = st.one_of(
    st.sampled_from(["required", "optional", "none", "CERT_REQUIRED", "bogus", ""]),
    st.text(max_size=8),
)
_query = st.dictionaries(
    st.sampled_from(["ssl_cert_reqs", "ssl_ca_certs", "virtual_host", "db", "timeout", "x"]),
    _query_value,
    max_size=3,
)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["redis", "rediss", "sentinel", "unix", "redis+socket", "http"]))
    password = PASSWORD_MARK + draw(st.text(max_size=10))
    userinfo = draw(st.sampled_from(["", f":{quote(password, safe='')}@"]))
    if scheme in {"unix", "redis+socket"}:
        base = f"{scheme}://{userinfo}/tmp/{draw(_host)}.sock"
    elif scheme == "sentinel":
        hosts = draw(st.lists(st.tuples(_host, st.integers(0, 70000)), min_size=1, max_size=3))
        db = draw(st.integers(-1, 20))
        base = ";".join(
            f"sentinel://{userinfo if n == 0 else ''}{h}:{p}/{db}" for n, (h, p) in enumerate(hosts)
        )
    else:
        port = draw(st.integers(0, 70000))
        base = f"{scheme}://{userinfo}{draw(_host)}:{port}/{draw(st.integers(-1, 20))}"
    query = draw(_query)
    if query:
        base += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return base


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100_000),
    st.floats(allow_nan=True),
    st.text(max_size=6),
)
_options = st.dictionaries(
    st.sampled_from(
        [
            "visibility_timeout",
            "socket_timeout",
            "master_name",
            "global_keyprefix",
            "retry_policy",
            "health_check_interval",
            "bogus_key",
        ]
    ),
    st.one_of(_scalar, st.dictionaries(st.sampled_from(["max_retries", "x"]), _scalar, max_size=2)),
    max_size=4,
)
_preset_item = st.one_of(
    st.sampled_from(["production", "development", "throughput", "testing", "nope"]),
    st.dictionaries(st.sampled_from(["task_time_limit", "worker_prefetch_multiplier"]), _scalar),
)


def _leak_free(exc: ConfigurationError) -> None:
    assert PASSWORD_MARK not in str(exc)
    assert PASSWORD_MARK not in repr(exc)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(broker=_urls(), backend=st.one_of(st.none(), _urls()), options=_options)
def test_any_urls_and_transport_options_give_an_app_or_a_configuration_error(
    broker: str, backend: str | None, options: dict[str, Any]
) -> None:
    try:
        app = make_app(
            "prop",
            broker_url=broker,
            result_backend=backend,
            broker_transport_options=options,
            result_backend_transport_options={"master_name": "m"},
            validate="warn",
        )
    except ConfigurationError as exc:
        _leak_free(exc)
        return
    assert isinstance(app, Celery)
    assert app.conf.broker_url


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.one_of(_preset_item, st.lists(_preset_item, max_size=3)),
    mode=st.sampled_from(["error", "warn", "ignore", "loud"]),
)
def test_any_preset_spec_gives_an_app_or_a_configuration_error(spec: Any, mode: str) -> None:
    try:
        app = make_app("prop", broker_url="redis://localhost:6379/0", preset=spec, validate=mode)
    except ConfigurationError:
        return
    assert isinstance(app, Celery)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    host_conf=st.dictionaries(
        st.sampled_from(
            [
                "task_time_limit",
                "broker_transport_options",
                "BROKER_URL",
                "result_expires",
                "broker_url",
            ]
        ),
        st.one_of(_scalar, _options),
        max_size=3,
    )
)
def test_configure_accepts_any_host_configuration_or_raises_configuration_error(
    host_conf: dict[str, Any],
) -> None:
    app = Celery("host")
    app.conf.update(host_conf)
    try:
        app.conf["task_serializer"]  # Celery itself refuses mixed old and new names here
    except ImproperlyConfigured:
        return
    try:
        configure(app, validate="warn")
    except ConfigurationError:
        return
    # The host's URL (normalised), or none at all: celeryredis has no localhost default.
    url = app.conf.broker_url
    assert not url or url == parse_redis_url(url).geturl()


@given(prefix=st.text(min_size=1, max_size=12), db=st.integers(0, 15))
def test_acl_rule_covers_any_prefix_and_never_prints_the_password(prefix: str, db: int) -> None:
    conf = make_app(
        "acl",
        broker_url=f"redis://u:{PASSWORD_MARK}pw@localhost:6379/{db}",
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        validate="ignore",
    ).conf
    rule = acl_rule(conf)
    assert rule.rules[0] == f"~{prefix}*"
    assert f"&{prefix}/{db}.celery.pidbox" in rule.rules
    assert PASSWORD_MARK not in rule.command()
