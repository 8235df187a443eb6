from __future__ import annotations

from celery.result import AsyncResult
from flask import Blueprint, request

from shop import tasks

bp = Blueprint("tasks", __name__, url_prefix="/tasks")


@bp.get("/result/<id>")
def result(id: str) -> dict[str, object]:
    result = AsyncResult(id)
    ready = result.ready()
    return {
        "ready": ready,
        "successful": result.successful() if ready else None,
        "value": result.result if ready else None,
    }


@bp.post("/add")
def add() -> dict[str, object]:
    a = request.form.get("a", type=int)
    b = request.form.get("b", type=int)
    result = tasks.add.delay(a, b)
    return {"result_id": result.id}


@bp.post("/thank")
def thank() -> dict[str, object]:
    result = tasks.thank.delay(request.form["name"])
    return {"result_id": result.id}


@bp.post("/ship/<int:order_id>")
def ship(order_id: int) -> dict[str, object]:
    result = tasks.ship.delay(order_id, request.form.get("carrier_timeouts", 0, type=int))
    return {"result_id": result.id}
