"""The FastAPI app: async endpoints publish in a thread, never on the event loop.

``task.delay()`` is a blocking network call (and waits out publish retries when Redis is
slow or away); ``await asyncio.to_thread(...)`` keeps the event loop serving requests.
"""

from __future__ import annotations

import asyncio

from celery.result import AsyncResult
from fastapi import FastAPI

from reports.celery import app as celery_app
from reports.tasks import build_report, refresh_dashboard

api = FastAPI(title="reports")


@api.post("/reports/{customer_id}", status_code=202)
async def request_report(customer_id: int) -> dict[str, str]:
    result = await asyncio.to_thread(build_report.delay, customer_id)
    return {"task_id": result.id}


@api.get("/reports/{task_id}")
async def report_status(task_id: str) -> dict[str, object]:
    def read() -> dict[str, object]:
        result = AsyncResult(task_id, app=celery_app)
        state = result.state
        return {"state": state, "report": result.result if state == "SUCCESS" else None}

    return await asyncio.to_thread(read)


@api.post("/dashboards/{customer_id}/refresh", status_code=202)
async def refresh(customer_id: int) -> dict[str, str]:
    result = await asyncio.to_thread(refresh_dashboard.delay, customer_id)
    return {"task_id": result.id}
