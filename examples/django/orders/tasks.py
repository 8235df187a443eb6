"""Tasks of the orders app: ``@shared_task``, with celeryredis's task bases where they help."""

from celery import shared_task
from celeryredis import RetryTask, UniqueTask


class PaymentGatewayTimeout(Exception):
    """The payment gateway did not answer in time (transient: worth a retry)."""


class OrderNotFound(Exception):
    """No such order (permanent: never retried)."""


@shared_task
def send_confirmation(order_id: int) -> str:
    """Send the order's confirmation e-mail (the default task class: celeryredis.Task)."""
    return f"confirmation sent for order {order_id}"


@shared_task(
    bind=True,
    base=RetryTask,
    retry_for=(PaymentGatewayTimeout,),
    max_retries=3,
    retry_backoff=0.2,
)
def charge(self: RetryTask, order_id: int, gateway_timeouts: int = 0) -> str:
    """Charge the order; the gateway times out ``gateway_timeouts`` times first."""
    if self.request.retries < gateway_timeouts:
        raise PaymentGatewayTimeout(f"gateway timed out charging order {order_id}")
    return f"order {order_id} charged after {self.request.retries} retries"


@shared_task(base=UniqueTask, unique_on=("order_id",))
def rebuild_invoice(order_id: int) -> str:
    """Rebuild the order's invoice PDF; one at a time per order."""
    return f"invoice of order {order_id} rebuilt"


@shared_task
def cancel(order_id: int) -> str:
    """Cancel an order; fails for good when there is no such order."""
    raise OrderNotFound(f"order {order_id} does not exist")
