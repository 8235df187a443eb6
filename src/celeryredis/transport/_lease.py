"""The lease-renewal thread both consuming transports run (single node and cluster).

A channel that holds leased messages renews them every third of a lease from a daemon
thread, so a message stays held while its worker lives and returns to its queue one
lease after the worker dies.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

__all__ = ["LeaseRenewer"]

logger = logging.getLogger(__name__)


class _Leasing(Protocol):
    lease_seconds: Any

    def renew(self) -> int: ...


class LeaseRenewer:
    """Calls ``channel.renew()`` every ``lease_seconds / 3`` from a daemon thread.

    Args:
        channel: The channel whose held leases are renewed.
        name: The thread's name.
    """

    def __init__(self, channel: _Leasing, name: str) -> None:
        self._channel = channel
        self._name = name
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (it ends at its next wake-up)."""
        self._stopping.set()

    def join(self, timeout: float = 2.0) -> None:
        """Wait for the thread to end, unless it is the caller."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    def _run(self) -> None:
        interval = max(float(self._channel.lease_seconds) / 3.0, 0.05)
        while not self._stopping.wait(interval):
            try:
                self._channel.renew()
            except Exception:
                logger.warning("celeryredis: lease renewal failed; retrying", exc_info=True)
