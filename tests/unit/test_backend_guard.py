"""The stored-arguments shim: Celery's extended result meta gets ``***`` for secrets.

Pins the private Celery API :mod:`celeryredis._backend_guard` relies on for it, and
checks the wrapper on a real Celery Redis backend object (nothing is sent: the meta is
only built).
"""

from __future__ import annotations

import inspect
from typing import Any

from celery.app.task import Context
from celery.backends.base import BaseBackend, KeyValueStoreBackend

from celeryredis import make_app
from celeryredis._backend_guard import redact_stored_arguments

SECRET = "Hunter2-stored-pw"


def test_celery_builds_the_stored_meta_in_one_method_that_reads_the_request() -> None:
    parameters = list(inspect.signature(BaseBackend._get_result_meta).parameters)
    assert parameters[:5] == ["self", "result", "state", "traceback", "request"]
    source = inspect.getsource(BaseBackend._get_result_meta)
    assert "getattr(request, 'args', None)" in source
    assert "getattr(request, 'kwargs', None)" in source
    assert "self._get_result_meta(" in inspect.getsource(KeyValueStoreBackend._store_result)


def _app(**settings: Any) -> Any:
    app = make_app(
        "stored",
        broker_url="redis://127.0.0.1:1/0",
        result_backend="redis://127.0.0.1:1/0",
        preset="testing",
        **settings,
    )

    @app.task(shared=False)
    def login(user: str, password: str, note: str = "") -> str:
        return user

    @app.task(shared=False, sensitive_names=("pin",))
    def card(number: str, pin: str) -> str:
        return number

    return app


def _meta(app: Any, name: str, args: Any, kwargs: Any) -> dict[str, Any]:
    request = Context(task=name, args=args, kwargs=kwargs, delivery_info={"routing_key": "q"})
    meta: dict[str, Any] = app.backend._get_result_meta(
        result=None, state="SUCCESS", traceback=None, request=request
    )
    return meta


def test_sensitive_arguments_are_stored_as_stars_and_the_rest_as_given() -> None:
    app = _app()
    backend = app.backend
    name = f"{__name__}.login"
    assert _meta(app, name, ["ann", SECRET], {"note": "hi"})["args"] == ["ann", SECRET]
    redact_stored_arguments(backend)
    redact_stored_arguments(backend)  # idempotent
    meta = _meta(app, name, ["ann", SECRET], {"note": "hi"})
    assert (meta["args"], meta["kwargs"], meta["name"], meta["queue"]) == (
        ["ann", "***"],
        {"note": "hi"},
        name,
        "q",
    )
    meta = _meta(app, name, ["ann"], {"password": SECRET, "api_key": SECRET})
    assert meta["kwargs"] == {"password": "***", "api_key": "***"}
    # A task's own sensitive_names count; an unknown task gets the default words only.
    assert _meta(app, f"{__name__}.card", ["4111", "1234"], {})["args"] == ["4111", "***"]
    assert _meta(app, "elsewhere.task", [SECRET], {"token": SECRET})["kwargs"] == {"token": "***"}
    # Nothing sensitive: the request is passed on as it is.
    assert _meta(app, name, ["ann"], {"note": "hi"})["args"] == ["ann"]


def test_without_result_extended_nothing_is_stored_or_changed() -> None:
    app = _app(result_extended=False)
    redact_stored_arguments(app.backend)
    meta = _meta(app, f"{__name__}.login", ["ann", SECRET], {})
    assert "args" not in meta
