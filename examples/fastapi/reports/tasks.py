from __future__ import annotations

from celeryredis import UniqueTask

from reports.celery import app


@app.task
def build_report(customer_id: int) -> dict[str, object]:
    """Build a customer's report (celeryredis.Task, the app's default task class)."""
    return {"customer_id": customer_id, "lines": customer_id * 10}


@app.task(base=UniqueTask, unique_on=("customer_id",))
def refresh_dashboard(customer_id: int) -> str:
    """Refresh a customer's dashboard; a second click while one is queued is not queued again."""
    return f"dashboard of customer {customer_id} refreshed"
