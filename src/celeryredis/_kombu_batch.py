"""The one place :func:`celeryredis.enqueue_many` reaches into kombu's Redis transport.

Celery builds each message and calls ``producer.publish()`` exactly as for
``apply_async`` (:meth:`celery.app.amqp.AMQP.send_task_message`). The producer below
is an ordinary :class:`kombu.Producer` — serialisation, compression, delivery mode and
expiration are kombu's own — except for its last step: instead of sending, it hands the
prepared message to the channel's ``basic_publish`` with kombu 5.7's publish-batch
hook (``_publish_batch``), so the Redis channel routes it (exchange bindings, priority
sub-queue, queue expiry) and gives back the final Redis commands (``LPUSH`` of the
envelope, ``PEXPIRE``, ``PUBLISH``) instead of running them. The caller runs them in one
``MULTI``/``EXEC`` per chunk.

Private kombu API used here, pinned by ``kombu>=5.7,<5.8`` in ``pyproject.toml``, by
the test that compares a message from each path field by field, and listed in
:data:`celeryredis._kombu_compat.PRIVATE_API` (checked by ``tests/unit/test_compat.py``):

- :meth:`kombu.Producer._publish` is overridden (its signature is kombu 5.7's);
- ``Channel.basic_publish(..., _publish_batch=collector)``, where the collector has
  ``add(command_name, *args)`` like kombu's own ``PublishBatch``.
"""

from __future__ import annotations

from typing import Any

from kombu import Producer, Queue

__all__ = ["BatchProducer", "Command"]

#: A Redis command as kombu's channel hands it over: (method name, arguments).
Command = tuple[str, tuple[Any, ...]]


class _Collector:
    """Receives the Redis commands of each routed message (kombu calls ``add``)."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


class BatchProducer(Producer):
    """A kombu producer whose publishes become Redis commands, not network traffic.

    Each entity a message must be declared with (Celery passes the target queue) is
    declared once per producer, for real, when first seen.
    """

    def __init__(self, channel: Any) -> None:
        super().__init__(channel, auto_declare=False)
        self._collector = _Collector()
        self._declared: set[tuple[str, str]] = set()

    def take_commands(self) -> list[Command]:
        """The commands collected since the last call, in publish order."""
        commands, self._collector.commands = self._collector.commands, []
        return commands

    def _publish(  # noqa: PLR0917 - kombu 5.7's signature
        self,
        body: Any,
        priority: Any,
        content_type: Any,
        content_encoding: Any,
        headers: Any,
        properties: Any,
        routing_key: Any,
        mandatory: Any,
        immediate: Any,
        exchange: Any,
        declare: Any,
        timeout: Any = None,
        confirm_timeout: Any = None,
        retry: bool = False,
        retry_policy: Any = None,
    ) -> None:
        channel: Any = self.channel
        message = channel.prepare_message(
            body, priority, content_type, content_encoding, headers, properties
        )
        for entity in declare or ():
            ident = (type(entity).__name__, str(getattr(entity, "name", entity)))
            if ident not in self._declared:
                self.maybe_declare(entity)
                self._declared.add(ident)
        reply_to = properties.get("reply_to")
        if isinstance(reply_to, Queue):
            properties["reply_to"] = reply_to.name
        channel.basic_publish(
            message,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            immediate=immediate,
            timeout=timeout,
            confirm_timeout=confirm_timeout,
            _publish_batch=self._collector,
        )
