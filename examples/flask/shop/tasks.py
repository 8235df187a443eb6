from __future__ import annotations

from celery import shared_task
from flask import current_app

from shop import FlaskRetryTask


@shared_task(ignore_result=False)
def add(a: int, b: int) -> int:
    return a + b


@shared_task(ignore_result=False)
def thank(name: str) -> str:
    """Uses the Flask app's configuration: needs the app context FlaskTask pushes."""
    return f"{current_app.config['GREETING']}, {name}!"


@shared_task(
    bind=True,
    ignore_result=False,
    base=FlaskRetryTask,
    retry_for=(TimeoutError,),
    retry_backoff=0.2,
)
def ship(self: FlaskRetryTask, order_id: int, carrier_timeouts: int = 0) -> str:
    """Retries the carrier's timeouts; every attempt runs inside the app context."""
    if self.request.retries < carrier_timeouts:
        raise TimeoutError(f"carrier timed out shipping order {order_id}")
    return f"order {order_id} shipped from {current_app.name} after {self.request.retries} retries"
