"""Celery's Redis result backend on a Redis Cluster (``result_backend="rediscluster://..."``).

:class:`RedisClusterBackend` is Celery's :class:`~celery.backends.redis.RedisBackend`
with a ``redis.cluster.RedisCluster`` client and cluster-safe keys:

- Every key carries its id as a hash tag: ``celery-task-meta-{<task id>}``,
  ``celery-taskset-meta-{<group id>}`` and the chord's ``.j``/``.t``/``.s``/``.d``/``.c``
  keys beside it, so the chord script Celery runs on one key set stays in one slot
  (atomic, as on a single node), while different tasks and groups spread over the
  masters.
- A result is stored with SET, then PUBLISHed on its key (redis-py refuses PUBLISH in a
  cluster pipeline); classic pub/sub reaches subscribers on every node.
- Reading many results uses ``mget_nonatomic`` (one MGET per slot) where Celery uses MGET.
- The result consumer subscribes on one node; when that connection is lost it picks a
  node that answers, reads the results it waits for (``mget_nonatomic``) and subscribes
  again.

The ``rediscluster`` and ``redisclusters`` (TLS) URL schemes select this class through
Celery's ``celery.result_backends`` entry point (``pyproject.toml``); a cluster broker
uses the transport in :mod:`celeryredis.transport._cluster` (``docs/cluster.md``).
Private Celery names used here are listed in
:data:`celeryredis._celery_compat.PRIVATE_API`.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Final

import redis
from celery.backends.redis import (  # type: ignore[attr-defined]
    RedisBackend,
    ResultConsumer,
)
from kombu.utils import symbol_by_name
from redis.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from celeryredis.exceptions import ConfigurationError
from celeryredis.urls import RedisURL, parse_redis_url

__all__ = [
    "CLUSTER_ERRORS",
    "ClusterResultConsumer",
    "RedisClusterBackend",
    "cluster_client",
    "cluster_params",
    "hash_tagged",
]

#: Errors a cluster raises while it changes hands (failover, resharding): retried like
#: a lost connection.
CLUSTER_ERRORS: Final = (
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    SlotNotCoveredError,
    ClusterError,
)

# Connection parameters Celery's RedisBackend collects (from redis_* settings) that a
# cluster client passes on to each node's connection. Not redis_retry_on_timeout:
# redis-py (>= 6) deprecates it on a client and the cluster client retries timeouts itself.
_NODE_PARAMS: Final = (
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "client_name",
    "max_connections",
    "driver_info",
    "lib_name",
    "lib_version",
    "username",
    "password",
    "credential_provider",
)
_SSL_PARAMS: Final = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def hash_tagged(id_: Any) -> str:
    """``{<id>}``: the part of a key Redis Cluster hashes, so keys of one id share a slot."""
    return "{" + str(id_) + "}"


def cluster_client(
    url: RedisURL | str, params: dict[str, Any] | None = None, *, setting: str = "result_backend"
) -> RedisCluster:
    """A ``redis.cluster.RedisCluster`` for a ``rediscluster://`` URL (it connects at once).

    Args:
        url: The cluster URL (its nodes are the startup nodes; user, password and
            ``ssl_*`` query keys apply to every node).
        params: More connection parameters (timeouts, ``ssl_*``, ``ssl=True``...);
            the URL's user, password and TLS settings win.
        setting: Where the URL came from, for error messages.

    Raises:
        ConfigurationError: ``url`` is not a Redis Cluster URL.
    """
    parsed = url if isinstance(url, RedisURL) else parse_redis_url(url, setting=setting)
    kwargs = cluster_params(parsed, params, setting=setting)
    nodes = [ClusterNode(host, port) for host, port in parsed.hosts]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, **kwargs)


def cluster_params(
    parsed: RedisURL, params: dict[str, Any] | None = None, *, setting: str = "result_backend"
) -> dict[str, Any]:
    """The keyword arguments :func:`cluster_client` gives ``RedisCluster`` (no I/O).

    Raises:
        ConfigurationError: ``parsed`` is not a Redis Cluster URL.
    """
    if not parsed.is_cluster:
        raise ConfigurationError(
            f"{setting} {parsed.redacted()!r} is not a Redis Cluster URL; write "
            "rediscluster://host:port,host:port (redisclusters:// with TLS)",
            setting=setting,
        )
    kwargs: dict[str, Any] = {k: v for k, v in (params or {}).items() if v is not None}
    if parsed.username is not None:
        kwargs["username"] = parsed.username
    if parsed.password is not None:
        kwargs["password"] = parsed.password
    provider = parsed.query.get("credential_provider")
    if provider:
        kwargs["credential_provider"] = symbol_by_name(provider)()
    if "credential_provider" in kwargs:
        kwargs.pop("username", None)
        kwargs.pop("password", None)
    if parsed.is_tls:
        kwargs["ssl"] = True
        for key in _SSL_PARAMS:
            if key in parsed.query:
                kwargs[key] = parsed.query[key]
        if "ssl_check_hostname" in parsed.query:
            kwargs["ssl_check_hostname"] = parsed.query["ssl_check_hostname"].lower() in {
                "1",
                "true",
                "yes",
            }
    return kwargs


class ClusterResultConsumer(ResultConsumer):  # type: ignore[misc]
    """Celery's Redis result consumer, reconnecting to any node of the cluster."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        errors: tuple[type[BaseException], ...] = self._connection_errors  # type: ignore[has-type]
        self._connection_errors = (*errors, *CLUSTER_ERRORS)

    def on_after_fork(self) -> None:
        """In a forked child: fresh locks, and drop the parent's pub/sub connection.

        Celery's version resets ``client.connection_pool``, which a cluster client does
        not have; its per-node pools notice the fork themselves (redis-py checks the pid).
        """
        self._reset_sync()
        with self._locked():
            if self._pubsub is not None:
                self._pubsub.close()

    def _reconnect_pubsub(self) -> None:
        # Celery's version calls client.connection_pool.reset() and a cross-slot MGET.
        try:
            self._resubscribe()
        except RedisClusterException as exc:  # "cannot be connected": retried like one
            raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc

    def _resubscribe(self) -> None:
        """Subscribe again on a reachable node, then read what was stored meanwhile.

        In that order: results stored while the connection was down were published to
        nobody, so they are read; a result stored after the read is published to the new
        subscription. Celery's version reads first, and a result stored between its read
        and its subscribe reached nobody, leaving ``get()`` waiting for ever. A result
        both read and heard reaches its waiter once: the second finds it done.
        """
        with self._locked():
            self._pubsub = None
            # The new connection never subscribed to cancelled channels: forget them.
            self.subscribed_to -= self._pending_unsubscribe
            self._pending_unsubscribe.clear()
            pubsub = self.backend.new_pubsub()
            if self.subscribed_to:
                pubsub.subscribe(*self.subscribed_to)
            self._pubsub = pubsub
            if self.subscribed_to:
                # Ready ones are cancelled on the new connection when the lock is released.
                for meta in self.backend.mget(list(self.subscribed_to)):
                    if meta:
                        self.on_state_change(self.backend.decode_result(meta), None)


class RedisClusterBackend(RedisBackend):
    """Celery's Redis result backend on a Redis Cluster.

    Select it with ``result_backend="rediscluster://host:port,host:port"`` (or
    ``redisclusters://`` for TLS). Celery's ``redis_*`` settings (timeouts, keepalive,
    ``redis_backend_use_ssl``, ``redis_max_connections``) apply to every node.
    """

    ResultConsumer = ClusterResultConsumer

    def __init__(
        self, host: str | None = None, *args: Any, url: str | None = None, **kwargs: Any
    ) -> None:
        if host and "://" in host:
            url, host = host, None
        if not url:
            raise ConfigurationError(
                "RedisClusterBackend needs a Redis Cluster URL: set "
                "result_backend='rediscluster://host:port,host:port'",
                setting="result_backend",
            )
        self.cluster_url = parse_redis_url(url, setting="result_backend")
        if not self.cluster_url.is_cluster:
            raise ConfigurationError(
                f"RedisClusterBackend needs a Redis Cluster URL, not "
                f"{self.cluster_url.redacted()!r}; write rediscluster://host:port,host:port",
                setting="result_backend",
            )
        # Celery's URL parser reads one host; the cluster's nodes are ours.
        super().__init__(host, *args, url=None, **kwargs)  # type: ignore[misc]
        self.url = url
        errors: tuple[type[BaseException], ...] = self.connection_errors  # type: ignore[has-type]
        self.connection_errors = (*errors, *CLUSTER_ERRORS)
        options = (
            self.app.conf.get(  # type: ignore[attr-defined]
                "result_backend_transport_options"
            )
            or {}
        )
        prefix = options.get("global_keyprefix") or ""
        if "{" in prefix:
            raise ConfigurationError(
                f"result_backend_transport_options['global_keyprefix'] {prefix!r} contains "
                "'{': Redis Cluster would hash every key by it, putting all results into one "
                "slot; choose a prefix without braces (celeryredis tags each key by its id)",
                setting="result_backend_transport_options",
            )

    # -- where things are -------------------------------------------------------------

    def as_uri(self, include_password: bool = False) -> str:
        """The cluster URL, its password shown as ``***`` unless ``include_password``."""
        if include_password:
            return self.cluster_url.geturl()
        return self.cluster_url.redacted()

    def get_key_for_task(self, task_id: Any, key: Any = "") -> Any:
        """``celery-task-meta-{<task id>}``: one slot per task."""
        if not task_id:
            return super().get_key_for_task(task_id, key)
        return super().get_key_for_task(hash_tagged(task_id), key)

    def get_key_for_group(self, group_id: Any, key: Any = "") -> Any:
        """``celery-taskset-meta-{<group id>}`` and its chord keys (``.j``...) in one slot."""
        if not group_id:
            return super().get_key_for_group(group_id, key)
        return super().get_key_for_group(hash_tagged(group_id), key)

    def get_key_for_chord(self, group_id: Any, key: Any = "") -> Any:
        """``chord-unlock-{<group id>}``."""
        if not group_id:
            return super().get_key_for_chord(group_id, key)
        return super().get_key_for_chord(hash_tagged(group_id), key)

    # -- the client -------------------------------------------------------------------

    def client_params(self) -> dict[str, Any]:
        """What :attr:`client` is built with: the URL's and Celery's ``redis_*`` settings."""
        connparams: dict[str, Any] = self.connparams  # type: ignore[attr-defined]
        params: dict[str, Any] = {k: connparams[k] for k in _NODE_PARAMS if k in connparams}
        connection_class = connparams.get("connection_class")
        if isinstance(connection_class, type) and issubclass(connection_class, redis.SSLConnection):
            params["ssl"] = True  # redis_backend_use_ssl
            params.update({k: connparams[k] for k in _SSL_PARAMS if k in connparams})
        return cluster_params(self.cluster_url, params)

    @functools.cached_property
    def client(self) -> RedisCluster:
        """The ``RedisCluster`` client (connects to the cluster when first used)."""
        nodes = [
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in self.cluster_url.hosts
        ]
        return RedisCluster(startup_nodes=nodes, **self.client_params())

    def new_pubsub(self) -> ClusterPubSub:
        """A pub/sub object on a node that answers PING now (any node hears every PUBLISH).

        Raises:
            redis.ConnectionError: No node answered (Celery's retry policy retries).
        """
        client = self.client
        nodes = list(client.get_nodes())  # type: ignore[no-untyped-call]
        random.shuffle(nodes)
        for node in nodes:
            connection = node.redis_connection
            if connection is None:
                continue
            try:
                connection.ping()
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            pubsub: ClusterPubSub = client.pubsub(  # type: ignore[no-untyped-call]
                node=node, ignore_subscribe_messages=True
            )
            return pubsub
        client.nodes_manager.initialize()  # the next attempt starts from a fresh view
        raise redis.ConnectionError(
            f"no node of the Redis Cluster {self.as_uri()} answered PING "
            f"(tried {', '.join(node.name for node in nodes) or 'none'})"
        )

    # -- reads and writes -------------------------------------------------------------

    def mget(self, keys: list[Any]) -> list[Any]:
        """One MGET per slot (keys of different tasks live in different slots)."""
        if not keys:
            return []
        return self.client.mget_nonatomic(list(keys))

    def _set(self, key: Any, value: Any, expires: int | None = None) -> None:
        # Celery pipelines SET with PUBLISH; redis-py refuses PUBLISH in a cluster pipeline.
        if expires is None:
            expires = self.expires  # type: ignore[attr-defined]
        client = self.client
        if expires:
            client.set(key, value, ex=expires)
        else:
            client.set(key, value)
        client.publish(key, value)
