"""Parse, validate, normalise and redact Redis URLs.

Supported forms (the same for the broker and the result backend)::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db]?ssl_cert_reqs=required&ssl_ca_certs=...
    redis+socket://[[user]:password@]/path/to/redis.sock[?virtual_host=db]
    unix://[[user]:password@]/path/to/redis.sock[?db=N]        (normalised to redis+socket://)
    sentinel://[[user]:password@]host:port[/db];sentinel://host:port;...
    rediscluster://[[user]:password@]host:port[,host:port...][/0]
    redisclusters://[[user]:password@]host:port[,host:port...][/0]?ssl_cert_reqs=required&...

A Redis Cluster URL lists one or more of the cluster's nodes (the client discovers
the rest); ``redisclusters://`` is the TLS form. A cluster has no databases, so the
path is ``/0`` or absent. Cluster URLs serve the result backend
(:mod:`celeryredis.cluster`) and the broker (:mod:`celeryredis.transport._cluster`).
Other spellings of a cluster scheme and any other schemes are refused.

Every ``repr``, ``str`` and error message produced here shows the password as
``***``; only :meth:`RedisURL.geturl` returns the secret, for handing to Celery.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

from celeryredis.exceptions import ConfigurationError
from celeryredis.redaction import REDACTED, redact_text

__all__ = [
    "REDACTED",
    "SSL_CERT_REQS_VALUES",
    "RedisURL",
    "parse_redis_url",
    "redact_text",
    "redact_url",
    "redis_url_of_broker",
]

#: Accepted values of the ``ssl_cert_reqs`` query parameter, mapped to the
#: canonical lower-case form (kombu and Celery accept both spellings).
SSL_CERT_REQS_VALUES: Mapping[str, str] = MappingProxyType(
    {
        "required": "required",
        "cert_required": "required",
        "optional": "optional",
        "cert_optional": "optional",
        "none": "none",
        "cert_none": "none",
    }
)

_SSL_QUERY_KEYS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)
_COMMON_QUERY_KEYS = frozenset({"credential_provider"})
_SOCKET_QUERY_KEYS = frozenset({"virtual_host"})

_SCHEMES = ("redis", "rediss", "redis+socket", "unix", "sentinel", "rediscluster", "redisclusters")
#: The cluster schemes celeryredis reads.
CLUSTER_SCHEMES: Final = frozenset({"rediscluster", "redisclusters"})
# Spellings other libraries use for a cluster URL: refused with the one to write.
_OTHER_CLUSTER_SCHEMES = frozenset(
    {"redis+cluster", "redis-cluster", "rediss+cluster", "rediss-cluster", "cluster"}
)
_TLS_SCHEMES = frozenset({"rediss", "redisclusters"})
_DEFAULT_PORTS = MappingProxyType(
    {"redis": 6379, "rediss": 6379, "sentinel": 26379, "rediscluster": 6379, "redisclusters": 6379}
)
_DIGITS_RE = re.compile(r"[0-9]{1,9}")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SUPPORTED_TEXT = (
    "supported: redis://, rediss://, redis+socket:// (or unix://), "
    "sentinel://host:port;sentinel://host:port and, for the result backend, "
    "rediscluster://host:port,host:port (redisclusters:// with TLS)"
)


def redact_url(url: str | None) -> str | None:
    """Return ``url`` with its password (if any) replaced by ``***``.

    ``REDACTED`` and ``redact_text`` are re-exported here from
    :mod:`celeryredis.redaction`, the one home of redaction.

    Args:
        url: A URL, or None.

    Returns:
        The redacted URL, or None if ``url`` was None.
    """
    if url is None:
        return None
    return redact_text(url)


@dataclass(frozen=True)
class RedisURL:
    """A parsed and validated Redis URL.

    Build one with :func:`parse_redis_url`. ``str()`` and ``repr()`` are
    redacted; :meth:`geturl` gives the full URL for Celery.

    Attributes:
        scheme: ``redis``, ``rediss``, ``redis+socket``, ``sentinel``,
            ``rediscluster`` or ``redisclusters`` (``unix`` is normalised to
            ``redis+socket``).
        hosts: ``(host, port)`` pairs; several only for ``sentinel`` and the
            cluster schemes; empty for a Unix socket.
        socket_path: The socket path for ``redis+socket``, else None.
        username: The ACL user name, if any.
        password: The password, if any. Never shown in ``repr``.
        db: The database number.
        query: The remaining query parameters, normalised.
    """

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    socket_path: str | None
    username: str | None
    password: str | None = field(repr=False)
    db: int
    query: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_tls(self) -> bool:
        """True for ``rediss://`` and ``redisclusters://`` URLs."""
        return self.scheme in _TLS_SCHEMES

    @property
    def is_cluster(self) -> bool:
        """True for Redis Cluster URLs (``rediscluster://``, ``redisclusters://``)."""
        return self.scheme in CLUSTER_SCHEMES

    @property
    def is_sentinel(self) -> bool:
        """True for ``sentinel://`` URLs."""
        return self.scheme == "sentinel"

    @property
    def is_socket(self) -> bool:
        """True for Unix-socket URLs."""
        return self.scheme == "redis+socket"

    @property
    def ssl_cert_reqs(self) -> str | None:
        """The normalised ``ssl_cert_reqs`` query value, or None if absent."""
        return self.query.get("ssl_cert_reqs")

    def geturl(self) -> str:
        """Return the full URL, password included, in the form Celery accepts.

        Returns:
            The normalised URL. Handle it as a secret.
        """
        return self._build(self.password)

    def redacted(self) -> str:
        """Return the URL with the password shown as ``***``."""
        return self._build(REDACTED if self.password is not None else None)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"RedisURL({self.redacted()!r})"

    def _userinfo(self, password: str | None, *, first: bool) -> str:
        if not first or (self.username is None and password is None):
            return ""
        user = quote(self.username, safe="") if self.username else ""
        if password is None:
            return f"{user}@"
        secret = password if password == REDACTED else quote(password, safe="")
        return f"{user}:{secret}@"

    def _build(self, password: str | None) -> str:
        query = urlencode(dict(self.query), safe="/") if self.query else ""
        suffix = f"?{query}" if query else ""
        if self.is_socket:
            path = quote(self.socket_path or "", safe="/")
            return f"redis+socket://{self._userinfo(password, first=True)}{path}{suffix}"
        if self.is_cluster:
            nodes = ",".join(
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts
            )
            return f"{self.scheme}://{self._userinfo(password, first=True)}{nodes}/0{suffix}"
        chunks = []
        for index, (host, port) in enumerate(self.hosts):
            shown_host = f"[{host}]" if ":" in host else host
            userinfo = self._userinfo(password, first=index == 0)
            chunks.append(f"{self.scheme}://{userinfo}{shown_host}:{port}/{self.db}{suffix}")
        return ";".join(chunks)


def _fail(url: str, problem: str, *, setting: str | None) -> ConfigurationError:
    what = setting or "Redis URL"
    return ConfigurationError(
        f"{what} {_redact_invalid(url)!r} is not valid: {problem}", setting=setting
    )


def _redact_invalid(url: str) -> str:
    """``url`` redacted, knowing that it is meant as a URL.

    All from its user info's first ':' to the last '@' is hidden, with or without a
    scheme (``user:pw@host``), in each ';'-separated part (Sentinel lists).
    """
    return ";".join(_hide_userinfo(chunk) for chunk in redact_text(url).split(";"))


def _hide_userinfo(text: str) -> str:
    at = text.rfind("@")
    if at < 0:
        return text
    start = text.find("://")
    start = 0 if start < 0 or start > at else start + 3
    colon = text.find(":", start, at)
    return text if colon < 0 else f"{text[:colon]}:{REDACTED}{text[at:]}"


def _split_userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    if "@" not in netloc:
        return None, None, netloc
    userinfo, _, hostport = netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None), hostport


def _parse_hostport(url: str, hostport: str, scheme: str, setting: str | None) -> tuple[str, int]:
    if hostport.startswith("["):
        host, closed, rest = hostport[1:].partition("]")
        if not closed:
            raise _fail(
                url,
                f"the IPv6 address {hostport!r} has no closing ']' (e.g. redis://[::1]:6379/0)",
                setting=setting,
            )
        port_text = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            raise _fail(url, "the IPv6 address must be followed by ':port'", setting=setting)
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise _fail(
                url,
                f"{host!r} in brackets is not an IPv6 address (e.g. redis://[::1]:6379/0)",
                setting=setting,
            ) from None
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise _fail(
            url, "the host name is missing (e.g. redis://localhost:6379/0)", setting=setting
        )
    if port_text == "":
        return host, _DEFAULT_PORTS[scheme]
    if not _DIGITS_RE.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise _fail(url, f"port {port_text!r} is not a number from 1 to 65535", setting=setting)
    return host, int(port_text)


def _parse_db(url: str, text: str, setting: str | None) -> int:
    text = text.strip("/")
    if text == "":
        return 0
    if not _DIGITS_RE.fullmatch(text):
        raise _fail(
            url,
            f"the database {text!r} must be a non-negative integer (e.g. /0)",
            setting=setting,
        )
    return int(text)


def _parse_query(url: str, raw: str, scheme: str, setting: str | None) -> dict[str, str]:
    pairs = parse_qsl(raw, keep_blank_values=True)
    query: dict[str, str] = {}
    allowed = set(_COMMON_QUERY_KEYS)
    if scheme in {"rediss", "sentinel", "redisclusters"}:
        allowed |= _SSL_QUERY_KEYS
    if scheme == "redis+socket":
        allowed |= _SOCKET_QUERY_KEYS
    for key, raw_value in pairs:
        value = raw_value
        if key in query:
            raise _fail(url, f"query parameter {key!r} is given twice", setting=setting)
        if key in _SSL_QUERY_KEYS and scheme in {"redis", "rediscluster"}:
            tls = "rediss://" if scheme == "redis" else "redisclusters://"
            raise _fail(
                url,
                f"{key!r} only applies to TLS; use a {tls} URL for TLS connections",
                setting=setting,
            )
        if key not in allowed:
            hint = (
                "put timeouts and pool options in settings (broker_transport_options, "
                "redis_socket_timeout, ...), not in the URL"
            )
            raise _fail(
                url,
                f"unknown query parameter {key!r} (allowed here: "
                f"{', '.join(sorted(allowed)) or 'none'}); {hint}",
                setting=setting,
            )
        if key == "ssl_cert_reqs":
            canonical = SSL_CERT_REQS_VALUES.get(value.lower())
            if canonical is None:
                raise _fail(
                    url,
                    f"ssl_cert_reqs={value!r} is not one of required, optional, none",
                    setting=setting,
                )
            value = canonical
        query[key] = value
    return query


def parse_redis_url(url: str, *, setting: str | None = None) -> RedisURL:
    """Parse and validate a Redis URL.

    Args:
        url: The URL to parse.
        setting: The name of the setting the URL came from, used in error
            messages (e.g. ``"broker_url"``).

    Returns:
        The parsed URL; ``unix://`` is normalised to ``redis+socket://``.

    Raises:
        ConfigurationError: The URL is malformed, uses an unsupported scheme
            (Redis Cluster included) or has unknown or contradictory options.
            The message shows the URL with its password redacted.

    Example:
        >>> u = parse_redis_url("redis://app:s3cret@localhost:6380/2")
        >>> (u.hosts, u.db, u.username, str(u))
        ((('localhost', 6380),), 2, 'app', 'redis://app:***@localhost:6380/2')
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"{setting or 'Redis URL'} must be a non-empty string such as "
            f"'redis://localhost:6379/0', not {type(url).__name__}",
            setting=setting,
        )
    if url != url.strip() or any(ch.isspace() for ch in url):
        raise _fail(url, "it contains white space", setting=setting)
    match = _SCHEME_RE.match(url)
    if match is None:
        raise _fail(url, f"it has no scheme; {_SUPPORTED_TEXT}", setting=setting)
    scheme = match.group(1).lower()
    if scheme in _OTHER_CLUSTER_SCHEMES:
        tls = scheme.startswith("rediss")
        raise _fail(
            url,
            f"write a Redis Cluster URL as {'redisclusters' if tls else 'rediscluster'}"
            "://host:port,host:port (celeryredis reads no other spelling)",
            setting=setting,
        )
    if scheme not in _SCHEMES:
        raise _fail(url, f"scheme {scheme!r} is not supported; {_SUPPORTED_TEXT}", setting=setting)
    if scheme == "sentinel":
        return _parse_sentinel(url, setting)
    if ";" in url:
        if scheme in CLUSTER_SCHEMES:
            raise _fail(
                url,
                "separate a cluster's nodes with ',' (rediscluster://host:port,host:port), not ';'",
                setting=setting,
            )
        raise _fail(
            url, "only sentinel:// URLs may list several hosts separated by ';'", setting=setting
        )
    rest = url[match.end() :]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _fail(url, "a '#fragment' has no meaning in a Redis URL", setting=setting)
    rest, _, raw_query = rest.partition("?")
    if scheme in {"unix", "redis+socket"}:
        return _parse_socket(url, rest, raw_query, setting)
    if scheme in CLUSTER_SCHEMES:
        return _parse_cluster(url, scheme, rest, raw_query, setting)
    netloc, _, path = rest.partition("/")
    username, password, hostport = _split_userinfo(netloc)
    host, port = _parse_hostport(url, hostport, scheme, setting)
    db = _parse_db(url, path, setting)
    query = _parse_query(url, raw_query, scheme, setting)
    return RedisURL(scheme, ((host, port),), None, username, password, db, MappingProxyType(query))


def _parse_socket(url: str, rest: str, raw_query: str, setting: str | None) -> RedisURL:
    slash = rest.find("/")
    if slash < 0:
        raise _fail(
            url,
            "a socket URL needs an absolute path, e.g. redis+socket:///run/redis/redis.sock",
            setting=setting,
        )
    netloc, path = rest[:slash], rest[slash:]
    username, password, host = _split_userinfo(netloc)
    if host:
        raise _fail(
            url,
            f"a socket URL has no host ({host!r}); write redis+socket:///path/to/redis.sock",
            setting=setting,
        )
    if path in {"", "/"}:
        raise _fail(url, "the socket path is missing", setting=setting)
    pairs = dict(parse_qsl(raw_query, keep_blank_values=True))
    if "db" in pairs:  # unix://...?db=N is the redis-py spelling
        if "virtual_host" in pairs:
            raise _fail(url, "give the database once, as ?virtual_host=N", setting=setting)
        pairs["virtual_host"] = pairs.pop("db")
    query = _parse_query(url, urlencode(pairs), "redis+socket", setting)
    db = _parse_db(url, query.pop("virtual_host", "0"), setting)
    if db:
        query["virtual_host"] = str(db)
    return RedisURL(
        "redis+socket", (), unquote(path), username, password, db, MappingProxyType(query)
    )


def _parse_sentinel(url: str, setting: str | None) -> RedisURL:
    chunks = url.split(";")
    hosts: list[tuple[str, int]] = []
    username = password = None
    db = 0
    query: dict[str, str] = {}
    for index, chunk in enumerate(chunks):
        if not chunk.lower().startswith("sentinel://"):
            raise _fail(
                url,
                "every ';'-separated part of a Sentinel URL must start with sentinel://",
                setting=setting,
            )
        rest = chunk[len("sentinel://") :]
        rest, _, raw_query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        chunk_user, chunk_password, hostport = _split_userinfo(netloc)
        hosts.append(_parse_hostport(url, hostport, "sentinel", setting))
        chunk_db = _parse_db(url, path, setting)
        chunk_query = _parse_query(url, raw_query, "sentinel", setting)
        if index == 0:
            username, password, db, query = chunk_user, chunk_password, chunk_db, chunk_query
    if len(set(hosts)) != len(hosts):
        raise _fail(url, "a Sentinel host is listed twice", setting=setting)
    return RedisURL("sentinel", tuple(hosts), None, username, password, db, MappingProxyType(query))


def _parse_cluster(
    url: str, scheme: str, rest: str, raw_query: str, setting: str | None
) -> RedisURL:
    netloc, _, path = rest.partition("/")
    username, password, nodes = _split_userinfo(netloc)
    if not nodes:
        raise _fail(
            url,
            "list at least one cluster node, e.g. rediscluster://10.0.0.1:7000,10.0.0.2:7000",
            setting=setting,
        )
    hosts: list[tuple[str, int]] = []
    for node in nodes.split(","):
        if not node:
            raise _fail(url, "an empty node in the ','-separated node list", setting=setting)
        hosts.append(_parse_hostport(url, node, scheme, setting))
    if len(set(hosts)) != len(hosts):
        raise _fail(url, "a cluster node is listed twice", setting=setting)
    db_text = path.strip("/")
    if db_text not in {"", "0"}:
        raise _fail(
            url,
            f"a Redis Cluster has no databases: the path must be /0 or absent, not /{db_text}; "
            "keep apps apart with result_backend_transport_options={'global_keyprefix': ...}",
            setting=setting,
        )
    query = _parse_query(url, raw_query, scheme, setting)
    return RedisURL(scheme, tuple(hosts), None, username, password, 0, MappingProxyType(query))


#: The cluster transport's kombu schemes (``make_app()`` writes them into ``broker_url``).
_KOMBU_CLUSTER_SCHEMES: Final = {
    "celeryrediscluster": "rediscluster",
    "celeryredisclusters": "redisclusters",
}


def redis_url_of_broker(url: str) -> str:
    """The Redis URL behind a broker URL: the cluster transport's kombu form made whole again.

    ``make_app()`` writes a ``rediscluster://`` broker as one ``celeryrediscluster://``
    URL per node, ``;``-separated (kombu reads one host per URL); this gives back the
    ``rediscluster://host:port,host:port`` URL celeryredis's own clients connect with.
    Other URLs are returned unchanged.

    Example:
        >>> redis_url_of_broker("celeryrediscluster://h1:7000/0;celeryrediscluster://h2:7000/0")
        'rediscluster://h1:7000,h2:7000/0'
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _KOMBU_CLUSTER_SCHEMES:
        return url
    auth = at = path = ""
    hosts = []
    for chunk in url.split(";"):
        rest = chunk.partition("://")[2]
        rest, qmark, query = rest.partition("?")
        auth, at, tail = rest.rpartition("@")
        host, slash, tail_path = tail.partition("/")
        hosts.append(host)
        path = slash + tail_path + qmark + query
    return f"{_KOMBU_CLUSTER_SCHEMES[scheme]}://{auth}{at}{','.join(hosts)}{path}"
