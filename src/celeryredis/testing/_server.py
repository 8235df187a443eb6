"""Throwaway ``redis-server`` processes on free loopback ports.

Used by the pytest plugin and by the demo; it does not import pytest.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis

from celeryredis.exceptions import CeleryRedisError

__all__ = [
    "RedisServer",
    "RedisServerError",
    "RedisServerNotFound",
    "find_redis_server",
    "register_proxy",
    "started_here",
]

# The servers this process started, by each loopback port they listen on (their port and
# any --tls-port), and the FaultProxy instances in front of them (listen port -> upstream
# port). The pytest plugin's workers refuse to start against any other Redis (see
# ``_guard.py``).
_SERVERS: dict[int, RedisServer] = {}
_PROXIES: dict[int, int] = {}


def register_proxy(listen_port: int, upstream_port: int) -> None:
    """Record a proxy this process started in front of one of its servers."""
    _PROXIES[listen_port] = upstream_port


def started_here() -> dict[str, dict[str, Any]]:
    """The servers and proxies this process started, checked now.

    Each running server is asked for its ``run_id`` (``INFO server``, with the
    fixture's own credentials, on its plain port) and compared with the one recorded
    when it was started; a port where another server answers now is listed under
    ``replaced``. A server that is stopped (a test may restart it) stays listed.

    Returns:
        ``{"servers": {port: run_id}, "replaced": {port: run_id}, "proxies":
        {port: upstream_port}}``, JSON-ready (ports as strings), for a worker
        subprocess to check its URLs against without connecting anywhere.
    """
    servers: dict[str, Any] = {}
    replaced: dict[str, Any] = {}
    for port, server in list(_SERVERS.items()):
        found = server.current_run_id() if server.is_running() else None
        if found is not None and server.run_id is not None and found != server.run_id:
            replaced[str(port)] = found
        else:
            servers[str(port)] = server.run_id
    return {
        "servers": servers,
        "replaced": replaced,
        "proxies": {str(port): upstream for port, upstream in _PROXIES.items()},
    }


class RedisServerError(CeleryRedisError):
    """A throwaway redis-server could not be started or stopped."""


class RedisServerNotFound(RedisServerError):  # noqa: N818 - reads better than ...Error
    """No ``redis-server`` binary is available."""


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to use.

    ``$CELERYREDIS_REDIS_SERVER`` wins; otherwise ``redis-server`` on ``PATH``.

    Raises:
        RedisServerNotFound: Neither is available; the message says how to install one.
    """
    explicit = os.environ.get("CELERYREDIS_REDIS_SERVER")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise RedisServerNotFound(
            f"$CELERYREDIS_REDIS_SERVER={explicit!r} is not an executable file"
        )
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerNotFound(
            "redis-server is not installed: run scripts/ensure-redis.sh (as root it installs "
            "Debian's redis-server package) or `apt-get install redis-server`, or set "
            "$CELERYREDIS_REDIS_SERVER to a redis-server binary"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 that this process started and will stop.

    Args:
        extra_args: More ``redis-server`` arguments (``["--requirepass", "pw"]``).
        appendonly: Turn AOF persistence on (for restart scenarios).
        directory: Working directory for its files; a new temporary one by default.
        databases: Number of logical databases.
        start_timeout: Seconds to wait for the first PING.
        password: Start it with ``--requirepass``; :attr:`url` and :meth:`client` then
            carry the password (it never appears in a repr).

    The server is started by :meth:`start` (or on entering a ``with`` block) and
    stopped by :meth:`stop`, by PID. It runs in its own session so that signals
    sent to a test's process group do not reach it.
    """

    def __init__(
        self,
        *,
        extra_args: Sequence[str] = (),
        appendonly: bool = False,
        directory: str | Path | None = None,
        databases: int = 16,
        start_timeout: float = 10.0,
        password: str | None = None,
    ) -> None:
        self.extra_args = tuple(extra_args)
        self.password = password
        self.appendonly = appendonly
        self.databases = databases
        self.start_timeout = start_timeout
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="celeryredis-redis-"))
        self.port = 0
        self._run_id: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The server's process id (0 when not started)."""
        return self._process.pid if self._process is not None else 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return self.url_for(0)

    @property
    def logfile(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    def url_for(self, db: int) -> str:
        """Return the URL of database ``db`` on this server (with its password, if any)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """Return a new redis-py client for database ``db``."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, socket_timeout=10, password=self.password
        )

    def _command(self) -> list[str]:
        return [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.directory),
            "--logfile", str(self.logfile),
            "--databases", str(self.databases),
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.

        Raises:
            RedisServerNotFound: No binary.
            RedisServerError: It did not answer in time (the log tail is in the message).
        """
        if self.is_running():
            return self
        for _attempt in range(5):  # a port picked by bind(0) can be taken before we use it
            self.port = self.port or _free_port()
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ping():
                self._register()
                return self
            self._reap()
            if "Address already in use" not in self._log_tail():
                break
            self.port = _free_port()
        raise RedisServerError(
            f"redis-server on 127.0.0.1:{self.port} did not answer PING within "
            f"{self.start_timeout} s; log tail:\n{self._log_tail()}"
        )

    def _wait_ping(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, password=self.password
        )
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    pass
                time.sleep(0.01)
            return False
        finally:
            client.close()

    def _ports(self) -> list[int]:
        ports = [self.port]
        args = list(self.extra_args)
        for flag, value in itertools.pairwise(args):
            if flag == "--tls-port" and value.isdigit() and int(value):
                ports.append(int(value))
        return ports

    def current_run_id(self) -> str | None:
        """The ``run_id`` of whatever server answers on :attr:`port` now (None: none)."""
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        try:
            return str(client.info("server")["run_id"])
        except (redis.RedisError, OSError, KeyError):
            return None
        finally:
            client.close()

    def _register(self) -> None:
        self._run_id = self.current_run_id()
        for port in self._ports():
            _SERVERS[port] = self

    @property
    def run_id(self) -> str | None:
        """The server's ``run_id`` (``INFO server``), recorded when it last started."""
        return self._run_id

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _reap(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by PID: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._reap(timeout)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no AOF fsync beyond what Redis already did)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port and directory."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop()
        for port in self._ports():
            if _SERVERS.get(port) is self:
                del _SERVERS[port]
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
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
        return f"<RedisServer 127.0.0.1:{self.port} pid={self.pid or '-'}>"
