"""Start a test's ``celery worker`` only against the Redis servers the test session started.

``python -m celeryredis.testing._guard -A <app> worker ...`` is what the
``celery_worker_process`` fixture runs. Before Celery's worker starts, it:

1. imports the app (``celery.app.utils.find_app``, as ``celery -A`` does);
2. if the fixture was given a URL (``redis_url=`` or ``$REDIS_URL`` /
   ``$CELERY_BROKER_URL`` in ``env``), points the app at it, whatever URL the host
   app hard-codes: ``$CELERY_BROKER_URL`` / ``$CELERY_RESULT_BACKEND`` (which Celery
   reads over any setting) are set only *after* the import, so ``make_app`` does not
   see them disagree with its own URL, and the settings are updated too;
3. checks every Redis URL the worker would use (broker, read/write broker URLs,
   result backend): each must name a loopback port of a server (or fault proxy) the
   test process started and, the parent having just asked each of its running
   servers, one that still reports the ``run_id`` recorded when it was started.
   Anything else — the developer's Redis on 6379 — and the worker is refused: a line
   ``celeryredis.testing: refusing ...`` and exit status 3, before anything connects to
   it;
4. runs Celery's own command line (``celery -A <app> worker ...``).

The spec comes from the parent in ``$CELERYREDIS_TESTING_GUARD`` (JSON).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

from celeryredis.urls import parse_redis_url, redact_url

__all__ = ["GUARD_ENV", "REFUSED_EXIT", "check_urls", "main"]

#: The environment variable that carries the spec to the worker process.
GUARD_ENV: Final = "CELERYREDIS_TESTING_GUARD"
#: The worker's exit status when it is refused.
REFUSED_EXIT: Final = 3
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_REDIS_SCHEMES: Final = (
    "redis://",
    "rediss://",
    "sentinel://",
    "redis+socket://",
    "unix://",
    "rediscluster://",
    "redisclusters://",
    # The cluster broker transport's form (one URL per node, ';'-separated).
    "celeryrediscluster://",
    "celeryredisclusters://",
)


def _parse_all(url: str, setting: str) -> list[Any]:
    """The URL parsed; a ``celeryrediscluster://a;...;b`` list, each node's URL."""
    if url.startswith("celeryrediscluster"):
        return [
            parse_redis_url(part.removeprefix("celery"), setting=setting) for part in url.split(";")
        ]
    return [parse_redis_url(url, setting=setting)]


def _is_redis(url: Any) -> bool:
    return isinstance(url, str) and url.startswith(_REDIS_SCHEMES)


def check_urls(urls: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """Problems with ``urls`` (setting -> URL): any Redis the test session did not start.

    Nothing connects: the parent checked its servers' ``run_id`` just before (see
    :func:`celeryredis.testing._server.started_here`), so a worker's own credentials
    (an ACL user may not run ``INFO``) are never used for it.

    Args:
        urls: The worker's effective settings, e.g. ``{"broker_url": ...}``.
        spec: ``{"servers": {port: run_id}, "replaced": {port: run_id},
            "proxies": {port: upstream}, "trust": [port]}``.
    """
    servers: dict[str, Any] = dict(spec.get("servers") or {})
    replaced: dict[str, Any] = dict(spec.get("replaced") or {})
    proxies: dict[str, Any] = dict(spec.get("proxies") or {})
    trusted = {str(p) for p in spec.get("trust") or ()}
    problems: list[str] = []
    for setting, url in urls.items():
        if not _is_redis(url):
            continue
        shown = redact_url(url)
        try:
            parsed_all = _parse_all(url, setting)
        except ValueError as exc:
            problems.append(f"{setting} {shown}: {exc}")
            continue
        if any(parsed.is_socket for parsed in parsed_all):
            problems.append(f"{setting} {shown}: a unix socket, not a server the fixture started")
            continue
        for host, port in [pair for parsed in parsed_all for pair in parsed.hosts]:
            key = str(port)
            upstream = str(proxies.get(key))
            if host in _LOOPBACK and (key in replaced or upstream in replaced):
                problems.append(
                    f"{setting} {shown}: the server on port {port} (run_id "
                    f"{replaced.get(key) or replaced.get(upstream)}) is not the one the fixture "
                    "started there"
                )
            elif host not in _LOOPBACK or not (
                key in servers or upstream in servers or key in trusted
            ):
                problems.append(
                    f"{setting} {shown}: {host}:{port} is not a redis-server this test session "
                    "started"
                )
    return problems


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _app_name(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg in ("-A", "--app") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--app="):
            return arg.split("=", 1)[1]
    raise SystemExit("celeryredis.testing: no -A/--app argument")


def _kombu_form(url: str) -> str:
    """A ``rediscluster://`` URL in the form kombu opens: one URL per node, ``;``-joined.

    The same rewrite as ``celeryredis.transport.cluster_broker_url`` (which only
    ``celeryredis.app`` may import); other URLs are returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("rediscluster", "redisclusters"):
        return url
    rest, qmark, query = rest.partition("?")
    auth, at, tail = rest.rpartition("@")
    hosts, slash, path = tail.partition("/")
    head = f"celery{scheme}://{auth}{at}"
    return ";".join(f"{head}{host}{slash}{path}{qmark}{query}" for host in hosts.split(","))


def _point_at(app: Any, broker: str, backend: str | None) -> None:
    conf = app.conf
    # A cluster URL listing several nodes reaches kombu in the cluster transport's form.
    os.environ["CELERY_BROKER_URL"] = conf.broker_url = _kombu_form(broker)
    for name, var in (
        ("broker_read_url", "CELERY_BROKER_READ_URL"),
        ("broker_write_url", "CELERY_BROKER_WRITE_URL"),
    ):
        os.environ.pop(var, None)
        if conf.get(name):
            conf[name] = None
    if backend is None and _is_redis(conf.get("result_backend")):
        backend = broker  # the host app stores results in Redis: in the fixture's
    if backend is not None:
        os.environ["CELERY_RESULT_BACKEND"] = backend
        conf.result_backend = backend


def main(argv: Sequence[str] | None = None) -> None:
    """Import the app, point it at the fixture's Redis, check it, then run Celery."""
    args = list(sys.argv[1:] if argv is None else argv)
    spec: dict[str, Any] = json.loads(os.environ.pop(GUARD_ENV, "{}") or "{}")
    from celery.app.utils import find_app  # noqa: PLC0415

    app = find_app(_app_name(args))
    if spec.get("broker_url"):
        _point_at(app, spec["broker_url"], spec.get("result_backend"))
    conf = app.conf
    urls = {
        "broker_url": conf.broker_url,
        "broker_read_url": conf.broker_read_url,
        "broker_write_url": conf.broker_write_url,
        "result_backend": conf.result_backend,
    }
    problems = check_urls(urls, spec)
    if problems:
        _say(
            "celeryredis.testing: refusing to start the worker against a Redis this test "
            "session did not start: " + "; ".join(problems) + ". Pass the fixture's URL: "
            "celery_worker_process(app, redis_url=redis_url) (or env={'REDIS_URL': ...}), "
            "or trust_ports=[...] for a loopback server the test started itself"
        )
        raise SystemExit(REFUSED_EXIT)
    _say(
        f"celeryredis.testing: verified: broker {redact_url(conf.broker_url)}, "
        f"backend {redact_url(str(conf.result_backend)) if conf.result_backend else None}"
    )
    sys.argv = ["celery", *args]
    from celery.__main__ import main as celery_main  # noqa: PLC0415

    celery_main()


if __name__ == "__main__":
    main()
