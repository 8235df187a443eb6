"""A throwaway Redis Cluster (masters + replicas) on free loopback ports.

Each node is a :class:`~celeryredis.testing.RedisServer` started with
``--cluster-enabled yes`` in a directory of its own; ``redis-cli --cluster create``
joins them. Used by the ``redis_cluster`` pytest fixture; it does not import pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
from redis.cluster import RedisCluster

from celeryredis.testing._server import RedisServer, RedisServerError, RedisServerNotFound

__all__ = ["LocalRedisCluster", "find_redis_cli"]

#: A cluster node also listens on its port + 10000 (the cluster bus).
_BUS_OFFSET = 10000


def find_redis_cli() -> str:
    """Return the path of ``redis-cli`` (``$CELERYREDIS_REDIS_CLI`` wins).

    Raises:
        RedisServerNotFound: It is not installed; the message says how to get it.
    """
    explicit = os.environ.get("CELERYREDIS_REDIS_CLI")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise RedisServerNotFound(f"$CELERYREDIS_REDIS_CLI={explicit!r} is not an executable file")
    found = shutil.which("redis-cli")
    if found is None:
        raise RedisServerNotFound(
            "redis-cli is not installed (it creates the test cluster): run "
            "scripts/ensure-redis.sh (as root it installs Debian's redis-tools package) or "
            "`apt-get install redis-tools`, or set $CELERYREDIS_REDIS_CLI"
        )
    return found


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free loopback port whose cluster-bus port (+10000) is free too (never 6379)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        port = 20000 + port % 35000  # keep port + 10000 below 65536
        if port != 6379 and _bindable(port) and _bindable(port + _BUS_OFFSET):
            return port
    raise RedisServerError("found no free loopback port pair (port, port + 10000) for a node")


class LocalRedisCluster:
    """A Redis Cluster on 127.0.0.1 that this process started and will stop.

    Args:
        masters: Number of masters (3 at least; the hash slots are split evenly).
        replicas: Replicas per master.
        node_timeout_ms: ``cluster-node-timeout``: how long a master may be silent
            before its replica takes over (about 2x this, measured on loopback).
        password: Start every node with ``--requirepass`` (and ``--masterauth``);
            :attr:`url` then carries it (never shown in a repr).
        user: ``(name, password)`` of an ACL user created on every node
            (``user <name> on ><password> ~* &* +@all``); :attr:`url` then carries this
            user instead of ``password``. The default user stays as ``password`` makes it
            (replication and this helper's own admin connections use it).
        tls: Also serve TLS: :meth:`start` makes a CA and a server certificate for IP
            127.0.0.1 with ``openssl`` in :attr:`directory` (``tls/ca.crt`` is
            :attr:`ca_file`); every node gets a ``tls-port``, ``tls-cluster yes`` and
            ``tls-replication yes`` (the cluster bus and replication run over TLS) and
            does not ask clients for certificates. :attr:`url` then is the
            ``redisclusters://`` URL of the TLS ports with ``ssl_cert_reqs=required``
            and ``ssl_ca_certs``. Each node keeps a plain port on loopback
            (:attr:`ports`) for this helper's own admin connections.
        directory: Parent directory for the nodes' files; a temporary one by default.
        start_timeout: Seconds to wait for ``cluster_state:ok``.

    Every node runs in its own session and is stopped by PID (:meth:`stop`, or
    leaving a ``with`` block).
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1500,
        password: str | None = None,
        directory: str | Path | None = None,
        start_timeout: float = 30.0,
        user: tuple[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs 3 masters at least, not {masters}")
        self.master_count = masters
        self.replica_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.user = user
        self.tls = tls
        self.start_timeout = start_timeout
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="celeryredis-cluster-"))
        self.nodes: list[RedisServer] = []
        self._tls_ports: dict[int, int] = {}  # plain port -> TLS port

    # -- addresses -------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's port, in start order (the first ``masters`` began as masters)."""
        return [node.port for node in self.nodes]

    @property
    def tls_ports(self) -> list[int]:
        """Every node's TLS port, in start order (empty without ``tls=True``)."""
        return [self._tls_ports[port] for port in self.ports if port in self._tls_ports]

    @property
    def ca_file(self) -> Path:
        """The CA certificate the nodes' server certificate is signed with (``tls=True``)."""
        return self.directory / "tls" / "ca.crt"

    @property
    def url(self) -> str:
        """``rediscluster://[[user]:password@]127.0.0.1:<port>,...`` listing every node.

        With ``tls=True``: ``redisclusters://...`` of the TLS ports, with
        ``?ssl_cert_reqs=required&ssl_ca_certs=<ca_file>``.
        """
        if self.user is not None:
            auth = f"{quote(self.user[0], safe='')}:{quote(self.user[1], safe='')}@"
        else:
            auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            nodes = ",".join(f"127.0.0.1:{port}" for port in self.tls_ports)
            query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(self.ca_file))}"
            return f"redisclusters://{auth}{nodes}/0?{query}"
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"rediscluster://{auth}{nodes}/0"

    def node(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster listens on port {port}")

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new ``redis.cluster.RedisCluster`` client for this cluster."""
        live = [node for node in self.nodes if node.is_running()]
        if not live:
            raise RedisServerError("no node of the cluster is running")
        return RedisCluster(
            host="127.0.0.1",
            port=live[0].port,
            password=self.password,
            socket_timeout=kwargs.pop("socket_timeout", 5),
            **kwargs,
        )

    def _node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=2)

    def _cluster_nodes(self) -> list[tuple[int, list[str], bool]]:
        """``(port, flags, serves slots)`` per node, as the first running node sees it."""
        for node in self.nodes:
            if not node.is_running():
                continue
            client = self._node_client(node.port)
            try:
                table = client.cluster("NODES")
            except redis.RedisError:
                continue
            finally:
                client.close()
            return [
                (
                    int(address.split("@", 1)[0].rsplit(":", 1)[1]),
                    str(row["flags"]).split(","),
                    bool(row.get("slots")),
                )
                for address, row in table.items()
            ]
        raise RedisServerError("no running node answered CLUSTER NODES")

    @property
    def masters(self) -> list[int]:
        """Ports of the nodes that are masters now, not failed and serving slots, sorted.

        Serving slots: right after ``--cluster create`` a node's table can still flag a
        node that is becoming a replica as a master (with no slots) until gossip reaches it.
        """
        return sorted(
            port
            for port, flags, slots in self._cluster_nodes()
            if "master" in flags and "fail" not in flags and "fail?" not in flags and slots
        )

    def master_for(self, key: str) -> int:
        """The port of the master that owns ``key``'s hash slot now."""
        client = self.client()
        try:
            return int(client.get_node_from_key(key).port)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalRedisCluster:
        """Start the nodes, join them into a cluster, wait for ``cluster_state:ok``.

        A start that fails stops every node it started. When ``redis-cli --cluster
        create`` does not finish in time, the cluster is made once more from fresh nodes:
        under load a node can let the handshake of a ``CLUSTER MEET`` time out, and then
        it never learns of the others (seen once in the tests, the others knowing it and
        it only itself), so the join it waits for never completes.

        Raises:
            RedisServerNotFound: No ``redis-server`` or ``redis-cli`` binary.
            RedisServerError: A node did not start, or the cluster was not ok in time.
        """
        cli = find_redis_cli()
        certs = self._certificates() if self.tls else None
        try:
            self._form(cli, certs)
            self.wait_ok(self.start_timeout)
            self._wait_roles(self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, cli: str, certs: Path | None) -> None:
        """Start the nodes and create the cluster, once more from fresh nodes if it hangs."""
        self._start_nodes(certs)
        first = self._create(cli)
        if first is None:
            return
        self._discard_nodes()
        self._start_nodes(certs)
        second = self._create(cli)
        if second is not None:
            raise RedisServerError(
                f"the cluster did not form, twice from fresh nodes: {first}\n\nand again: {second}"
            )

    def _start_nodes(self, certs: Path | None) -> None:
        auth = ["--masterauth", self.password] if self.password else []
        if self.user is not None:
            name, secret = self.user
            auth += ["--user", name, "on", f">{secret}", "~*", "&*", "+@all"]
        for index in range(self.master_count * (1 + self.replica_count)):
            directory = self.directory / f"node-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            tls_port = _cluster_port() if certs is not None else 0
            node = RedisServer(
                directory=directory,
                databases=1,
                password=self.password,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(directory / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--repl-diskless-sync-delay", "0",
                    *auth,
                    *self._tls_args(certs, tls_port),
                ],
            )  # fmt: skip
            if certs is None:
                node.port = _cluster_port()
            self.nodes.append(node)
            node.start_timeout = self.start_timeout
            node.start()
            if tls_port:
                self._tls_ports[node.port] = tls_port

    def _discard_nodes(self) -> None:
        """Stop the nodes and forget them, files included (a fresh start needs new ones)."""
        self.stop()
        for index in range(len(self.nodes)):
            shutil.rmtree(self.directory / f"node-{index}", ignore_errors=True)
        self.nodes = []
        self._tls_ports = {}

    def _create(self, cli: str) -> str | None:
        """``redis-cli --cluster create`` over the nodes: None, or why it did not finish.

        Returns:
            None when it finished; when it did not within ``start_timeout``, its output
            and each node's log tail.

        Raises:
            RedisServerError: It failed.
        """
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # not on the command line
        tls_flags = ["--tls", "--cacert", str(self.ca_file)] if self.tls else []
        try:
            create = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [
                    cli, *tls_flags, "--cluster", "create",
                    *(f"127.0.0.1:{port}" for port in (self.tls_ports if self.tls else self.ports)),
                    "--cluster-replicas", str(self.replica_count),
                    "--cluster-yes",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=self.start_timeout,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            return (
                f"redis-cli --cluster create did not finish within {self.start_timeout} s; "
                f"its output: {_text(exc.stdout)[-1500:]}{self._node_logs()}"
            )
        if create.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed ({create.returncode}): "
                f"{(create.stdout + create.stderr)[-2000:]}{self._node_logs()}"
            )
        return None

    def _node_logs(self) -> str:
        """Each node's last log lines, for an error about the cluster's creation."""
        return "".join(
            f"\n--- node {node.port} (log tail):\n{node._log_tail(8)}" for node in self.nodes
        )

    def _wait_roles(self, timeout: float) -> None:
        """Wait until the node :attr:`masters` asks sees every replica as a replica.

        ``cluster_state:ok`` comes before gossip has told every node which of the others
        ``--cluster create`` made replicas.
        """
        deadline = time.monotonic() + timeout
        replicas = self.master_count * self.replica_count
        while time.monotonic() < deadline:
            nodes = self._cluster_nodes()
            if (
                len(self.masters) == self.master_count
                and sum("slave" in flags for _port, flags, _slots in nodes) == replicas
            ):
                return
            time.sleep(0.05)
        raise RedisServerError(f"the cluster's roles did not settle within {timeout} s")

    def _tls_args(self, certs: Path | None, port: int) -> list[str]:
        """A node's TLS arguments (``port``: its TLS port, whose bus port is free)."""
        if certs is None:
            return []
        return [
            "--tls-port", str(port),
            "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", "no",
            "--tls-cluster", "yes",
            "--tls-replication", "yes",
        ]  # fmt: skip

    def _certificates(self) -> Path:
        """A CA and a server certificate for IP 127.0.0.1 signed by it, in ``tls/``."""
        directory = self.directory / "tls"
        directory.mkdir(parents=True, exist_ok=True)
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RedisServerNotFound("openssl is not installed (a TLS test cluster needs it)")

        def run(*args: str) -> None:
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [openssl, *args],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise RedisServerError(f"openssl {args[0]} failed: {done.stderr[-1000:]}")

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=celeryredis-test-ca")  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
        (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "server.crt",
            "-extfile", "san.ext")  # fmt: skip
        return directory

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and all slots assigned.

        Raises:
            RedisServerError: Not within ``timeout`` seconds (the last state is named).
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if not node.is_running():
                    continue
                client = self._node_client(node.port)
                try:
                    info = client.cluster("INFO")
                    states.append(
                        info.get("cluster_state") == "ok"
                        and int(info.get("cluster_slots_ok", 0)) == 16384
                    )
                    last = f"{node.port}: {info.get('cluster_state')}"
                except redis.RedisError as exc:
                    states.append(False)
                    last = f"{node.port}: {exc}"
                finally:
                    client.close()
            if states and all(states):
                return
            time.sleep(0.05)
        raise RedisServerError(f"the cluster was not ok within {timeout} s (last: {last})")

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Wait until every running replica's link to its master is up.

        Raises:
            RedisServerError: Not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = []
            for port, flags, _slots in self._cluster_nodes():
                if "slave" not in flags or "fail" in flags:
                    continue
                client = self._node_client(port)
                try:
                    info = client.info("replication")
                    if info.get("master_link_status") != "up":
                        pending.append(port)
                except redis.RedisError:
                    pending.append(port)
                finally:
                    client.close()
            if not pending:
                return
            time.sleep(0.05)
        raise RedisServerError(f"replicas {pending} did not sync within {timeout} s")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (its replica, if any, takes over after the timeout)."""
        self.node(port).kill()

    def stop(self) -> None:
        """Stop every node by PID."""
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        """Stop every node and remove the files if this object created the directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(RedisServerError):
            self.cleanup()

    def __repr__(self) -> str:
        return f"<LocalRedisCluster 127.0.0.1 ports={self.ports}>"
