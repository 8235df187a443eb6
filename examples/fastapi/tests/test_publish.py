"""Publishing from async endpoints to the throwaway Redis, with no worker running."""

from __future__ import annotations

import asyncio
import threading
from types import ModuleType
from typing import Any

from celery.signals import before_task_publish
from fastapi.testclient import TestClient


def test_endpoints_publish_off_the_event_loop(reports: ModuleType, client: TestClient) -> None:
    seen: list[tuple[str, bool]] = []

    def record(sender: str, **_: Any) -> None:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((threading.current_thread().name, on_loop))

    before_task_publish.connect(record, weak=False)
    try:
        response = client.post("/reports/5")
    finally:
        before_task_publish.disconnect(record)
    assert response.status_code == 202
    assert len(seen) == 1
    thread, on_loop = seen[0]
    assert on_loop is False, f"published on the event loop, in thread {thread}"


def test_a_second_refresh_while_one_is_queued_returns_the_first(client: TestClient) -> None:
    first = client.post("/dashboards/6/refresh").json()["task_id"]
    second = client.post("/dashboards/6/refresh").json()["task_id"]
    assert second == first
    assert client.get(f"/reports/{first}").json()["state"] == "PENDING"
