"""A loopback TCP fault proxy: put it between a client and ``redis-server`` and break things.

toxiproxy is not available everywhere, so celeryredis ships this small one. It runs
in threads of the calling process and listens on ``127.0.0.1`` only. Faults:

``pause()`` / ``resume()``
    A partition: nothing is forwarded in either direction, sockets stay open (and new
    connections are accepted but stay silent) until :meth:`FaultProxy.resume`.
``zombie()``
    Half-open connections: every connection open *now* stays open but never answers
    again (what the client sends is dropped; what Redis sends back is dropped, so a
    reply to a blocking command is lost on the wire). New connections work normally.
``cut()``
    Reset every open connection (RST); new connections work.

Example:
    >>> from celeryredis.testing import FaultProxy, RedisServer
    >>> with RedisServer() as server, FaultProxy(server.port) as proxy:  # doctest: +SKIP
    ...     url = f"redis://127.0.0.1:{proxy.port}/0"
    ...     proxy.pause(); proxy.resume(); proxy.zombie(); proxy.cut()
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType
from typing import cast

from celeryredis.exceptions import CeleryRedisError
from celeryredis.testing._server import register_proxy

__all__ = ["FaultProxy", "FaultProxyError"]

_POLL = 0.05
_CHUNK = 65536


class FaultProxyError(CeleryRedisError):
    """The fault proxy could not start (for example, the upstream is unreachable)."""


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.zombie = False
        self.cut = False
        self.closed = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="celeryredis-fault-proxy", daemon=True
        )

    def _run(self) -> None:
        peers = {self.client: self.upstream, self.upstream: self.client}
        selector = selectors.DefaultSelector()
        try:
            for sock in peers:
                sock.settimeout(10)  # recv only after select says readable; sendall bounded
                selector.register(sock, selectors.EVENT_READ)
            while not self.cut:
                if self.proxy.paused and not self.zombie:
                    self.proxy.resumed.wait(_POLL)
                    continue
                for key, _ in selector.select(_POLL):
                    ready = cast("socket.socket", key.fileobj)
                    data = ready.recv(_CHUNK)
                    if not data:
                        return
                    if self.zombie or self.cut:
                        continue  # a half-open link: the bytes vanish
                    peers[ready].sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            if self.cut:
                _reset(self.client)
                _reset(self.upstream)
            else:
                for sock in peers:
                    with contextlib.suppress(OSError):
                        sock.close()
            self.closed.set()
            self.proxy.forget(self)


class FaultProxy:
    """A TCP proxy on ``127.0.0.1`` in front of ``upstream_host:upstream_port``.

    Args:
        upstream_port: The port of the server to forward to (a ``redis-server``).
        upstream_host: Its host; loopback by default.
        listen_port: The port to listen on; 0 picks a free one (then read ``proxy.port``).

    The proxy starts on :meth:`start` (or entering a ``with`` block) and stops,
    closing every connection, on :meth:`stop`. Fault methods return at once; the
    effect on open connections is immediate (within a few milliseconds).
    """

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", *, listen_port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = listen_port
        self.paused = False
        self.resumed = threading.Event()
        self.resumed.set()
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.accepted = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen and start forwarding.

        Raises:
            FaultProxyError: The listening port is taken.
        """
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError as exc:
            listener.close()
            raise FaultProxyError(
                f"fault proxy cannot listen on 127.0.0.1:{self.port}: {exc}"
            ) from exc
        listener.listen(128)
        listener.settimeout(_POLL)
        self.port = listener.getsockname()[1]
        self._listener = listener
        register_proxy(self.port, self.upstream[1])
        self._stopping.clear()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="celeryredis-fault-proxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)  # the server is down: the client sees a reset, as it would
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
                self.accepted += 1
            link.thread.start()

    def forget(self, link: _Link) -> None:
        """Drop a closed link from the book-keeping (called by the link's thread)."""
        with self._lock:
            self._links.discard(link)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and reset every connection."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        if self._acceptor is not None:
            self._acceptor.join(timeout)
            self._acceptor = None
        self.resume()
        self.cut(timeout)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ---------------------------------------------------------------------------

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def pause(self) -> None:
        """Stop forwarding in both directions; connections stay open (a partition)."""
        self.paused = True
        self.resumed.clear()

    def resume(self) -> None:
        """Forward again (heals :meth:`pause`; zombie links stay dead)."""
        self.paused = False
        self.resumed.set()

    def zombie(self) -> int:
        """Make every open connection half-open: open, but silent forever.

        Returns:
            How many connections were turned into zombies.
        """
        links = self._snapshot()
        for link in links:
            link.zombie = True
        return len(links)

    def cut(self, timeout: float = 5.0) -> int:
        """Reset every open connection (including zombies) and wait until they are closed.

        Returns:
            How many connections were reset.
        """
        links = self._snapshot()
        for link in links:
            link.cut = True
        for link in links:
            link.closed.wait(timeout)
        return len(links)

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return len(self._links)

    def status(self) -> dict[str, int | bool]:
        """``{"paused", "connections", "zombies", "accepted"}``."""
        links = self._snapshot()
        return {
            "paused": self.paused,
            "connections": len(links),
            "zombies": sum(link.zombie for link in links),
            "accepted": self.accepted,
        }

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"<FaultProxy 127.0.0.1:{self.port} -> {host}:{port} {self.status()}>"
