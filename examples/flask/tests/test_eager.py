"""The Flask app with Celery in eager mode, through Flask's test client."""

from __future__ import annotations

from celeryredis import RetryTask, Task, explain
from flask import Flask
from flask.testing import FlaskClient


def test_the_factory_builds_a_celeryredis_app(app: Flask) -> None:
    celery_app = app.extensions["celery"]
    assert issubclass(celery_app.Task, Task)
    rows = {row.setting: row for row in explain(celery_app)}
    assert rows["task_acks_late"].source == "preset:production"
    assert rows["task_always_eager"].value is True
    assert rows["task_always_eager"].source == "app config"


def test_add_through_the_test_client(client: FlaskClient) -> None:
    response = client.post("/tasks/add", data={"a": 2, "b": 3})
    result_id = response.get_json()["result_id"]
    result = client.get(f"/tasks/result/{result_id}").get_json()
    assert result == {"ready": True, "successful": True, "value": 5}


def test_a_task_sees_the_flask_app_context(client: FlaskClient) -> None:
    result_id = client.post("/tasks/thank", data={"name": "Ada"}).get_json()["result_id"]
    result = client.get(f"/tasks/result/{result_id}").get_json()
    assert result["value"] == "Thanks for your order, Ada!"


def test_a_retry_task_runs_in_the_app_context_too(client: FlaskClient) -> None:
    from shop.tasks import ship

    assert isinstance(ship, RetryTask)
    result_id = client.post("/tasks/ship/7", data={"carrier_timeouts": 2}).get_json()["result_id"]
    result = client.get(f"/tasks/result/{result_id}").get_json()
    assert result["value"] == "order 7 shipped from shop after 2 retries"


def test_tasks_called_outside_a_request_get_the_app_context(app: Flask) -> None:
    # No request, no app context pushed by Flask: FlaskTask pushes it.
    from shop.tasks import ship, thank

    assert thank.delay("Alan").get(timeout=5) == "Thanks for your order, Alan!"
    assert ship.delay(9).get(timeout=5) == "order 9 shipped from shop after 0 retries"
