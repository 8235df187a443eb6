"""The FastAPI endpoints with Celery in eager mode, through FastAPI's TestClient."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.usefixtures("eager")


def test_request_a_report_and_read_it(client: TestClient) -> None:
    response = client.post("/reports/3")
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    status = client.get(f"/reports/{task_id}").json()
    assert status == {"state": "SUCCESS", "report": {"customer_id": 3, "lines": 30}}


def test_refresh_a_dashboard(client: TestClient) -> None:
    task_id = client.post("/dashboards/4/refresh").json()["task_id"]
    status = client.get(f"/reports/{task_id}").json()
    assert status == {"state": "SUCCESS", "report": "dashboard of customer 4 refreshed"}
