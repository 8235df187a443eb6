"""The Redis ACL rule an app needs: ``celery -A proj redis acl``.

A Redis 6+ user restricted to one app's keys and channels needs, for the app's key
prefix ``P`` (the broker's ``global_keyprefix`` transport option) and broker database
``N``:

- ``~P*`` — every key kombu writes (queues ``P<queue>``, priority lists, bindings
  ``P_kombu.binding.*``, ``Punacked``, ``Punacked_index``, ``Punacked_mutex``, reply
  queues ``P<uuid>.reply.celery.pidbox``), the results ``Pcelery-task-meta-<id>`` and
  celeryredis's own keys ``Pceleryredis:*`` (dead letters, locks, rate limits);
- ``&P*`` — the channels published and subscribed to by name: result channels
  ``Pcelery-task-meta-<id>``, ``P/N.celery.pidbox`` and ``P/N.celeryev/...``;
- ``&P/N.celery.pidbox`` and ``&P/N.celeryev/worker.#`` — the *patterns* workers
  PSUBSCRIBE to (remote control, gossip). Redis compares a PSUBSCRIBE pattern
  literally with the allowed patterns, so ``&P*`` does not cover them (a worker then
  stops with ``NoPermissionError`` at start);
- ``+@all -@dangerous`` — about 30 list, hash, set, sorted-set, stream, scripting,
  pub/sub and transaction commands are used; none is in ``@dangerous``.

A result backend with its own ``global_keyprefix`` (Celery appends ``_`` unless it
ends in ``:``, ``_``, ``-`` or ``.``) adds ``~B*`` and ``&B*``.

Without a ``global_keyprefix`` the user cannot be restricted (kombu's keys have no
common prefix), so :func:`acl_rule` refuses to build a rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeryredis.exceptions import ConfigurationError
from celeryredis.urls import parse_redis_url, redis_url_of_broker

__all__ = ["AclRule", "acl_rule"]

#: Shown instead of the password in printed commands.
PASSWORD_PLACEHOLDER = "<password>"  # noqa: S105 - a placeholder, not a secret


@dataclass(frozen=True)
class AclRule:
    """The ACL rules one app needs.

    Attributes:
        user: The Redis user name (the broker URL's, else ``celery``).
        rules: The ``ACL SETUSER`` rule tokens after ``reset on >password``.
        explanations: One line per rule token saying what it is for.
    """

    user: str
    rules: tuple[str, ...]
    explanations: tuple[tuple[str, str], ...]

    def setuser_args(self, password: str) -> list[str]:
        """Arguments for ``ACL SETUSER`` (``client.execute_command("ACL", "SETUSER", *args)``).

        ``reset`` first, so the user has exactly these rights and no older ones.
        """
        return [self.user, "reset", "on", f">{password}", *self.rules]

    def command(self, password: str = PASSWORD_PLACEHOLDER) -> str:
        """The ``ACL SETUSER`` command as text (with a placeholder password by default)."""
        return "ACL SETUSER " + " ".join(self.setuser_args(password))


def _backend_prefix(conf: Mapping[str, Any]) -> str:
    options = conf.get("result_backend_transport_options") or {}
    prefix = str(options.get("global_keyprefix") or "")
    if prefix and prefix[-1] not in ":_-.":
        prefix += "_"  # as celery.backends.base.KeyValueStoreBackend does
    return prefix


def acl_rule(conf: Mapping[str, Any], user: str | None = None) -> AclRule:
    """Build the ACL rule for an app's configuration (``app.conf``).

    Args:
        conf: The app's configuration.
        user: The Redis user; default the broker URL's user name, else ``celery``.

    Raises:
        ConfigurationError: The broker has no ``global_keyprefix``; the message says
            how to set one.
    """
    options = conf.get("broker_transport_options") or {}
    prefix = str(options.get("global_keyprefix") or "")
    if not prefix:
        raise ConfigurationError(
            "an ACL user can only be limited to an app with a key prefix: set "
            "broker_transport_options={'global_keyprefix': 'myapp:'} and "
            "result_backend_transport_options={'global_keyprefix': 'myapp:'} "
            "(kombu's own keys have no common prefix otherwise)",
            setting="broker_transport_options",
        )
    url = parse_redis_url(redis_url_of_broker(str(conf.get("broker_url"))), setting="broker_url")
    fanout = f"{prefix}/{url.db}."
    explanations: list[tuple[str, str]] = [
        (f"~{prefix}*", "queues, kombu bindings, unacked records, results, celeryredis keys"),
        (f"&{prefix}*", "result channels and the fanout channels published by name"),
        (f"&{fanout}celery.pidbox", "PSUBSCRIBE of remote control (inspect, control)"),
        (f"&{fanout}celeryev/worker.#", "PSUBSCRIBE of worker gossip and events"),
    ]
    backend = _backend_prefix(conf)
    if backend and not backend.startswith(prefix):
        explanations += [
            (f"~{backend}*", "results under the result backend's own key prefix"),
            (f"&{backend}*", "result channels under the result backend's own key prefix"),
        ]
    explanations.append(("+@all", "the commands Celery, kombu and celeryredis send ..."))
    explanations.append(("-@dangerous", "... none of which is in @dangerous"))
    name = user or url.username or "celery"
    return AclRule(
        user=name,
        rules=tuple(rule for rule, _ in explanations),
        explanations=tuple(explanations),
    )
