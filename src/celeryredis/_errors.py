"""One classification of Redis failures: permanent (fail at once) or transient (retry).

Every place that talks to Redis for the app — publishing (:class:`celeryredis.Task`,
kombu's publish retry, the result backend's subscribe retry), ``enqueue_many``, the
health checks and the CLI — asks :func:`classify` what an error means, so that an
error retrying cannot fix (a wrong password, ``NOPERM``, a database index out of
range, a TLS certificate that fails verification, an unknown command) is reported at
once with its own cause and fix, and only transient ones (connection refused,
timeouts, ``LOADING``, a failover) use the retry budget.

The classification looks at the whole chain of an error (``__cause__`` and
``__context__``), because kombu and Celery wrap redis-py's errors
(``OperationalError``, ``RuntimeError("Retry limit exceeded ...")``) and redis-py
wraps ``ssl``'s.
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from kombu.exceptions import OperationalError
from redis import exceptions as rx
from redis.sentinel import MasterNotFoundError

from celeryredis.exceptions import RedisRefusedError
from celeryredis.urls import parse_redis_url, redact_text

__all__ = [
    "PERMANENT_KINDS",
    "Diagnosis",
    "classify",
    "describe",
    "fails_fast",
    "is_redis_failure",
    "permanent_errback",
    "refusal",
    "refused_by",
]


_PIPELINE_PREFIX: Final = re.compile(r"Command # \d+ \(.*?\) of pipeline caused error: ", re.S)


@dataclass(frozen=True)
class Diagnosis:
    """What a Redis failure means.

    Attributes:
        permanent: True when retrying cannot fix it.
        kind: Short name of the cause (see :data:`PERMANENT_KINDS`; transient kinds
            are ``unreachable``, ``timeout``, ``loading``, ``failover``, ``read_only``,
            ``out_of_memory``; ``other`` for anything not recognised).
        cause: One sentence: what is wrong.
        fix: One sentence: how to fix it (empty for transient kinds).
        error: The error in the chain the diagnosis is based on.
    """

    permanent: bool
    kind: str
    cause: str
    fix: str
    error: BaseException

    @property
    def detail(self) -> str:
        """``Type: message`` of :attr:`error`, redacted.

        redis-py prefixes a pipeline's error with the command and its arguments
        (``Command # 1 (LPUSH celery {"body": ...) of pipeline caused error:``); the
        arguments may hold task arguments, so that prefix is left out.
        """
        message = _PIPELINE_PREFIX.sub("", str(self.error))
        return redact_text(f"{type(self.error).__name__}: {message}")


#: kind -> (cause, fix) of every error that retrying cannot fix. ``{setting}`` is
#: replaced by the setting the URL came from (``broker_url``, ``result_backend``).
PERMANENT_KINDS: Final[dict[str, tuple[str, str]]] = {
    "wrong_password": (
        "the server refused the user name or password",
        "correct the password (and user, for an ACL user) in {setting}: "
        "redis://user:PASSWORD@host:port/db",
    ),
    "no_password": (
        "the server requires a password and {setting} gives none",
        "put the password in {setting}: redis://:PASSWORD@host:port/db "
        "(redis://user:PASSWORD@... for an ACL user)",
    ),
    "unexpected_password": (
        "{setting} gives a password but the server has none configured for that user",
        "remove the password from {setting}, or set one on the server (requirepass / ACL)",
    ),
    "no_permission": (
        "the server's ACL does not let this user run a command or use a key or channel "
        "the app needs (NOPERM)",
        "grant the user what the app needs (`celery -A proj redis acl` prints the rules) "
        "or use another user in {setting}",
    ),
    "db_out_of_range": (
        "the database number in {setting} is higher than the server has",
        "use a database below the server's `databases` setting (default 16: 0-15) in "
        "{setting}, or raise `databases` in redis.conf",
    ),
    "tls_verify": (
        "the server's TLS certificate failed verification",
        "point ssl_ca_certs in {setting} at the CA that signed the server's certificate "
        "(and check that the host name is in the certificate)",
    ),
    "tls_client_certificate": (
        "the server requires a TLS client certificate that was not given or not accepted",
        "give ssl_certfile and ssl_keyfile in {setting} (a certificate the server's CA signed)",
    ),
    "tls_handshake": (
        "the TLS handshake failed (a rediss:// URL against a plain port, or a TLS "
        "version or cipher the server does not accept)",
        "check the port and scheme in {setting}: rediss:// needs the server's tls-port",
    ),
    "unknown_command": (
        "the server does not know a command the app uses",
        "use Redis >= 6.2 (check `redis-server --version`) without rename-command for "
        "the commands the app needs",
    ),
}

_TRANSIENT_CAUSES: Final[dict[str, str]] = {
    "unreachable": "Redis did not answer",
    "timeout": "Redis did not answer in time",
    "loading": "Redis is loading its data set",
    "failover": "a failover is in progress",
    "read_only": "the server is a read-only replica (a failover in progress?)",
    "out_of_memory": "Redis is out of memory (maxmemory)",
    "other": "Redis failed",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _permanent_kind(exc: BaseException) -> str | None:  # noqa: PLR0911 - a table of rules
    if isinstance(exc, RedisRefusedError):  # ours: judge the error it wraps
        return None
    upper = str(exc).upper()
    if isinstance(exc, rx.NoPermissionError) or upper.startswith("NOPERM"):
        return "no_permission"
    if "CERTIFICATE_VERIFY_FAILED" in upper or isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_verify"
    if "CERTIFICATE_REQUIRED" in upper or "CERTIFICATE REQUIRED" in upper:
        return "tls_client_certificate"
    if isinstance(
        exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError
    ) or upper.startswith(("WRONGPASS", "NOAUTH")):
        if "WITHOUT ANY PASSWORD CONFIGURED" in upper or "NO PASSWORD IS SET" in upper:
            return "unexpected_password"
        if any(s in upper for s in ("NOAUTH", "AUTHENTICATION REQUIRED", "HELLO MUST BE CALLED")):
            return "no_password"
        return "wrong_password"
    if isinstance(exc, rx.ResponseError):
        if "DB INDEX IS OUT OF RANGE" in upper or "INVALID DB INDEX" in upper:
            return "db_out_of_range"
        if upper.startswith(("UNKNOWN COMMAND", "ERR UNKNOWN COMMAND")):
            return "unknown_command"
    if isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLZeroReturnError | ssl.SSLEOFError
    ):
        return "tls_handshake"
    if "WRONG_VERSION_NUMBER" in upper or "UNSUPPORTED_PROTOCOL" in upper:
        return "tls_handshake"
    return None


def _transient_kind(exc: BaseException) -> str | None:  # noqa: PLR0911 - a table of rules
    if isinstance(exc, RedisRefusedError):
        return None
    upper = str(exc).upper()
    if isinstance(exc, rx.BusyLoadingError) or upper.startswith("LOADING"):
        return "loading"
    if isinstance(exc, rx.ReadOnlyError) or upper.startswith("READONLY"):
        return "read_only"
    if upper.startswith("OOM"):
        return "out_of_memory"
    if isinstance(exc, MasterNotFoundError) or upper.startswith(
        ("MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
    ):
        return "failover"
    if isinstance(exc, rx.TimeoutError | socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, rx.ConnectionError | OSError | OperationalError | EOFError):
        return "unreachable"
    return None


def classify(exc: BaseException) -> Diagnosis:
    """Say whether ``exc`` (or an error in its chain) is permanent or transient.

    A permanent cause anywhere in the chain wins (redis-py reports a TLS failure as a
    ``ConnectionError`` whose cause is an ``ssl`` error); otherwise the innermost
    recognised transient cause; otherwise ``other`` (transient).
    """
    chain = list(_chain(exc))
    for error in chain:
        kind = _permanent_kind(error)
        if kind is not None:
            cause, fix = PERMANENT_KINDS[kind]
            return Diagnosis(True, kind, cause, fix, error)
    for error in reversed(chain):
        kind = _transient_kind(error)
        if kind is not None:
            return Diagnosis(False, kind, _TRANSIENT_CAUSES[kind], "", error)
    return Diagnosis(False, "other", _TRANSIENT_CAUSES["other"], "", chain[-1])


def is_redis_failure(exc: BaseException) -> bool:
    """True if ``exc`` is a failure of Redis or of the way we reach it (not of our input).

    kombu raises ``OperationalError`` when the publish retries are used up; Celery's
    Redis result backend raises a bare ``RuntimeError`` (with the connection error as
    its cause) when re-subscribing to the result channel runs out of retries.
    redis-py's cluster client raises ``RedisClusterException`` (not a ``RedisError``)
    when no startup node can be reached, with the node's error in its message.
    """
    if isinstance(
        exc, RedisRefusedError | OperationalError | rx.RedisError | rx.RedisClusterException
    ):
        return True
    if isinstance(exc, RuntimeError):
        return any(isinstance(e, rx.RedisError | OperationalError | OSError) for e in _chain(exc))
    return isinstance(exc, OSError) and _permanent_kind(exc) is not None


def describe(diagnosis: Diagnosis, setting: str = "the Redis URL") -> str:
    """``cause (Type: message)``, plus ``: fix`` for a permanent error; secrets redacted."""
    text = f"{diagnosis.cause.format(setting=setting)} ({diagnosis.detail})"
    if diagnosis.permanent:
        text += f"; retrying will not help: {diagnosis.fix.format(setting=setting)}"
    return text


def refused_by(exc: BaseException) -> str | None:
    """``where`` of the first :class:`RedisRefusedError` in the chain of ``exc``, if any."""
    for error in _chain(exc):
        if isinstance(error, RedisRefusedError):
            return error.where
    return None


def refusal(exc: BaseException, *, where: str, setting: str) -> RedisRefusedError | None:
    """A :class:`RedisRefusedError` for ``exc`` if it is permanent, else None."""
    diagnosis = classify(exc)
    if not diagnosis.permanent:
        return None
    return RedisRefusedError(
        f"the {where}'s Redis refused the app: {describe(diagnosis, setting)}",
        kind=diagnosis.kind,
        where=where,
    )


@functools.lru_cache(maxsize=64)
def fails_fast(url: Any) -> bool:
    """Whether a permanent error from ``url`` may end the retries at once.

    Not for a URL with several hosts (``sentinel://a;sentinel://b`` or other failover
    alternates): kombu moves to the next host on each retry, and another host may
    accept what this one refused (its own password, say), so the retry budget stays.
    """
    if not isinstance(url, str) or not url:
        return False
    return _single_host(url)


@functools.lru_cache(maxsize=64)
def _single_host(url: str) -> bool:
    """Parsed once per URL: :func:`fails_fast` runs on every publish."""
    try:
        return len(parse_redis_url(url).hosts) <= 1
    except ValueError:
        return False


def permanent_errback(
    chained: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """An ``errback`` for kombu's ``Connection.ensure`` (``retry_policy["errback"]``).

    kombu calls it with ``(exc, interval)`` before each retry; for a permanent error
    it raises :class:`RedisRefusedError` (from the error), which ends the retries at
    once. Otherwise it calls ``chained`` (a caller's own errback), if any.
    """

    def errback(exc: BaseException, interval: float) -> Any:
        refused = refusal(exc, where="broker", setting="broker_url")
        if refused is not None:
            raise refused from exc
        return chained(exc, interval) if chained is not None else None

    errback.celeryredis_errback = True  # type: ignore[attr-defined]
    return errback
