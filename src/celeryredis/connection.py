"""``get_redis(app)``: one redis-py client per app, built from the broker's settings.

celeryredis keeps its own keys in the broker's Redis (see :mod:`celeryredis.keys`).
The client uses the broker URL and the socket options of
``broker_transport_options`` (timeouts, keepalive, health checks), and follows a
Sentinel master when the broker URL is ``sentinel://``. redis-py connection pools
are fork-safe, so the client may be created before a prefork pool forks.

With a Redis Cluster broker (``rediscluster://``) the client is a
``redis.cluster.RedisCluster`` on the same nodes: single-key commands, scripts and
transactions on one hash slot, non-transactional pipelines and ``scan_iter`` (every
primary) work on both kinds; :func:`is_cluster` tells them apart where a caller must
group keys by slot.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Final

import redis
from celery import Celery
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from celeryredis.cluster import cluster_client
from celeryredis.exceptions import ConfigurationError
from celeryredis.urls import RedisURL, parse_redis_url, redis_url_of_broker

__all__ = ["REDIS_ERRORS", "Client", "get_redis", "is_cluster", "new_redis"]

#: What :func:`get_redis` and :func:`new_redis` return: one Redis (or a Sentinel master)
#: or, for a ``rediscluster://`` broker, a cluster client.
Client = redis.Redis | RedisCluster
#: What a :data:`Client` raises when Redis fails: a cluster client also raises
#: ``RedisClusterException`` (no node reachable, slot map unknown), not a ``RedisError``.
REDIS_ERRORS: Final = (redis.RedisError, RedisClusterException)

_CLIENTS: weakref.WeakKeyDictionary[Celery, tuple[str, Client]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_SOCKET_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (keys must then be grouped by slot)."""
    return isinstance(client, RedisCluster)


def _client_for(url: RedisURL, options: dict[str, Any]) -> Client:
    kwargs: dict[str, Any] = {k: options[k] for k in _SOCKET_OPTIONS if options.get(k) is not None}
    if url.is_cluster:
        cluster_kwargs = {k: v for k, v in kwargs.items() if k != "health_check_interval"}
        return cluster_client(url, cluster_kwargs, setting="broker_url")
    if url.is_sentinel:
        master = options.get("master_name")
        if not master:
            raise ConfigurationError(
                "broker_url is a sentinel:// URL but broker_transport_options has no 'master_name'",
                setting="broker_transport_options",
            )
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(url.hosts), sentinel_kwargs=options.get("sentinel_kwargs") or {}, **kwargs
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            master, db=url.db, username=url.username, password=url.password, **kwargs
        )
        return client
    if url.is_socket:
        return redis.Redis(
            unix_socket_path=url.socket_path,
            db=url.db,
            username=url.username,
            password=url.password,
            **{k: v for k, v in kwargs.items() if k != "socket_connect_timeout"},
        )
    return redis.Redis.from_url(url.geturl(), **kwargs)


def get_redis(app: Celery) -> Client:
    """Return the app's redis-py client for celeryredis's own keys (cached per app).

    Raises:
        ConfigurationError: The broker URL is not a Redis URL.
    """
    broker = app.conf.broker_url
    with _LOCK:
        cached = _CLIENTS.get(app)
        if cached is not None and cached[0] == broker:
            return cached[1]
        url = parse_redis_url(redis_url_of_broker(broker), setting="broker_url")
        options = dict(app.conf.broker_transport_options or {})
        client = _client_for(url, options)
        _CLIENTS[app] = (broker, client)
        return client


def new_redis(app: Celery, *, url: str | None = None, timeout: float | None = None) -> Client:
    """Return a new (uncached) redis-py client; the caller closes it.

    Args:
        app: The app whose broker settings (URL, transport options) are used.
        url: Another Redis URL to connect to with the same options (the result
            backend's, say); the broker's by default.
        timeout: Socket and connect timeout in seconds, overriding the transport
            options' (for probes that must answer in time).

    Raises:
        ConfigurationError: The URL is not a Redis URL.
    """
    setting = "broker_url" if url is None else "result_backend"
    parsed = parse_redis_url(url or redis_url_of_broker(app.conf.broker_url), setting=setting)
    options = dict(app.conf.broker_transport_options or {})
    if timeout is not None:
        options["socket_timeout"] = timeout
        options["socket_connect_timeout"] = timeout
    return _client_for(parsed, options)
