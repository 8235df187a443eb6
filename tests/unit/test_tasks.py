"""Task bases: options checked at class creation, backoff, redaction (no server needed)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery

from celeryredis import ConfigurationError, RetryTask, Task, make_app
from celeryredis.log import task_context
from celeryredis.redaction import is_sensitive, redact_call, summarize_call
from celeryredis.tasks import TRANSIENT_ERRORS

URL = "redis://127.0.0.1:16379/0"


@pytest.fixture
def app() -> Celery:
    return make_app("unit", broker_url=URL, preset="testing")


def test_make_app_makes_task_the_default_base(app: Celery) -> None:
    @app.task(shared=False)
    def plain() -> None: ...

    assert isinstance(plain, Task)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"retry_fro": (ValueError,)}, "unknown option 'retry_fro'; did you mean 'retry_for'"),
        ({"max_retries": "3"}, "max_retries='3' is not valid"),
        ({"max_retries": -1}, "integer >= 0"),
        ({"retry_for": ValueError}, r"e.g. \(ValueError,\)"),
        ({"retry_for": ("x",)}, "tuple of exception classes"),
        ({"retry_backoff": float("inf")}, "finite"),
        ({"retry_jitter": "yes"}, "True or False"),
        ({"sensitive_names": "pin"}, "tuple of strings"),
        ({"autoretry_for": (ValueError,)}, "use retry_for"),
        ({"retry_backoff_max": 6.0}, "task-retry-backoff"),  # testing budget is 5 s
    ],
)
def test_bad_options_fail_when_the_class_is_created(
    app: Celery, options: dict[str, Any], fragment: str
) -> None:
    @app.task(base=RetryTask, shared=False, **options)
    def job() -> None: ...

    # @app.task is lazy until the app is finalized; the error comes then, not at run time.
    with pytest.raises(ConfigurationError, match=fragment):
        app.finalize(auto=True)


def test_celerys_publish_options_are_accepted_in_the_decorator(app: Celery) -> None:
    @app.task(shared=False, queue="bulk", routing_key="bulk", exchange="bulk", compression="gzip")
    def routed() -> None: ...

    app.finalize(auto=True)
    assert routed.queue == "bulk"


def test_subclass_options_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="retry_backoff"):

        class Bad(RetryTask):
            retry_backoff = "fast"  # type: ignore[assignment]


def test_host_mixin_attributes_are_accepted(app: Celery) -> None:
    class Mixin:
        tenant_field = "customer_id"

    class Base(RetryTask, Mixin):
        pass

    @app.task(base=Base, shared=False, tenant_field="account_id", max_retries=2)
    def job() -> None: ...

    app.finalize(auto=True)
    assert job.tenant_field == "account_id"
    assert job.max_retries == 2


def test_celery_autoretry_still_works_on_plain_task(app: Celery) -> None:
    @app.task(shared=False, autoretry_for=(ValueError,), retry_backoff=True)
    def job() -> None: ...

    app.finalize(auto=True)
    assert isinstance(job, Task)


def test_backoff_is_exponential_capped_and_floored() -> None:
    class T(RetryTask):
        retry_backoff = 0.5
        retry_backoff_max = 3.0
        retry_jitter = False
        retry_backoff_min = 0.2

    task = T()
    assert [task.retry_delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]

    class J(T):
        retry_jitter = True

    jittered = [J().retry_delay(n) for n in range(5) for _ in range(200)]
    assert min(jittered) >= 0.2  # never zero, unlike Celery's own jitter
    assert max(jittered) <= 3.0
    assert len({round(d, 3) for d in jittered}) > 50


def test_dont_retry_for_wins_and_predicate_is_consulted() -> None:
    class T(RetryTask):
        retry_for = (OSError,)
        dont_retry_for = (ConnectionRefusedError,)

        def should_retry(self, exc: BaseException, attempt: int) -> bool:
            return attempt < 3

    task = T()
    assert task._retryable(OSError("x"), 1)
    assert not task._retryable(ConnectionRefusedError("x"), 1)
    assert not task._retryable(ValueError("x"), 1)
    assert not task._retryable(OSError("x"), 3)


def test_default_retry_for_is_the_transient_family() -> None:

    import kombu.exceptions
    import redis

    task = RetryTask()
    for exc in (
        ConnectionResetError(),
        TimeoutError(),
        TimeoutError(),
        redis.ConnectionError(),
        redis.TimeoutError(),
        kombu.exceptions.OperationalError(),
    ):
        assert task._retryable(exc, 1), exc
    assert not task._retryable(KeyError("x"), 1)
    assert RetryTask.retry_for == TRANSIENT_ERRORS


def test_redaction_of_calls() -> None:
    def body(user: str, password: str, *, api_key: str, data: dict[str, Any]) -> None: ...

    call = redact_call(
        ("ann", "hunter2-Secret"),
        {"api_key": "k", "data": {"Authorization": "Bearer x", "n": 1}},
        func=body,
    )
    assert call.changed
    assert call.args == ("ann", "***")
    assert call.kwargs == {"api_key": "***", "data": {"Authorization": "***", "n": 1}}
    assert is_sensitive("X_Auth_TOKEN")
    summary = summarize_call(("x" * 1000,), {"pin": "1234"}, words=("pin",), max_chars=100)
    assert len(summary) <= 100
    assert "1234" not in summary


def test_task_context_reaches_third_party_records_and_does_not_leak() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    third_party = logging.getLogger("some.third.party")
    handler = Keep()
    third_party.addHandler(handler)
    third_party.setLevel(logging.INFO)
    try:
        with task_context("id-1", "proj.job"):
            third_party.info("inside")
        third_party.info("after")
    finally:
        third_party.removeHandler(handler)
    inside, after = records
    assert (inside.task_id, inside.task_name) == ("id-1", "proj.job")  # type: ignore[attr-defined]
    assert not getattr(after, "task_id", None)  # absent (or blanked by a formatter's filter)


def test_default_retry_delay_stays_within_the_retry_budget() -> None:
    # Celery uses default_retry_delay (180 s) as the countdown of retry() without one and
    # of task_retry_on_worker_lost: it must fit the budget the visibility timeout covers.
    testing = make_app("t1", broker_url=URL, preset="testing")
    production = make_app("t2", broker_url=URL)

    @testing.task(shared=False)
    def a() -> None: ...

    @production.task(shared=False)
    def b() -> None: ...

    assert a.default_retry_delay == 5.0
    assert b.default_retry_delay == 180.0


def test_rate_limit_key_gives_each_key_its_own_limiter(app: Celery) -> None:
    from celeryredis import RateLimitedTask

    class PerCustomer(RateLimitedTask):
        distributed_rate_limit = "10/s"

        def rate_limit_key(self, args: Any, kwargs: Any) -> str | None:
            return str(kwargs["customer"])

    @app.task(base=PerCustomer, shared=False)
    def call(customer: str) -> None: ...

    app.finalize(auto=True)
    a = call._limiter((), {"customer": "c1"})
    b = call._limiter((), {"customer": "c2"})
    assert a.key.endswith("celeryredis:rl:tests.unit.test_tasks.call:c1")
    assert b.key.endswith(":c2")
    assert a.rate == 10.0


def test_celery_logging_setup_gets_the_redacting_filter() -> None:
    """A prefork main process runs no task: its handlers are covered when Celery sets them up."""
    import logging

    from celery import Celery
    from celery import signals as celery_signals

    from celeryredis import signals
    from celeryredis.log import RedactingFilter

    signals.install(Celery("logging_setup", set_as_current=False))
    logger = logging.getLogger("celeryredis.tests.setup")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        celery_signals.after_setup_logger.send(sender=None, logger=logger)
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        logger.removeHandler(handler)


def test_received_routing_is_kept_only_for_pools_that_run_tasks_elsewhere(app: Celery) -> None:
    from types import SimpleNamespace

    from celery.concurrency.prefork import TaskPool as PreforkPool
    from celery.concurrency.solo import TaskPool as SoloPool

    from celeryredis import signals
    from celeryredis.tasks import base

    @app.task(shared=False)
    def job() -> None: ...

    request = SimpleNamespace(
        id="unit-received-1",
        task=job,
        name=job.name,
        delivery_info={"routing_key": "q1"},
        request_dict={},
        hostname="w@h",
    )
    # Solo: the task fails (if it does) in this process, with its request: nothing kept.
    signals._on_received(sender=SimpleNamespace(pool=SoloPool()), request=request)
    assert request.id not in base._ROUTING
    # Prefork: a hard time limit's on_failure runs here without the request.
    signals._on_received(sender=SimpleNamespace(pool=PreforkPool()), request=request)
    kept = base._ROUTING.pop(request.id)
    assert kept["queue"] == "q1"
    assert kept["worker"] == "w@h"
    assert isinstance(kept["receipt"], int)


def test_a_traced_attempt_runs_under_the_tracers_request_only(app: Celery) -> None:
    """Celery's tracer pushed the request: the body runs under it, no second copy pushed.

    A direct call of the task from its own body still gets a request of its own (with the
    nested call's arguments), as Celery's ``Task.__call__`` gives it.
    """
    seen: list[tuple[int, int, tuple[Any, ...], str | None]] = []

    @app.task(shared=False, bind=True)
    def job(self: Task, depth: int) -> None:
        seen.append(
            (depth, len(self.request_stack.stack), tuple(self.request.args), self.request.id)
        )
        if depth:
            job(depth - 1)

    job.apply(args=(1,), task_id="t-1")
    assert seen == [(1, 1, (1,), "t-1"), (0, 2, (0,), "t-1")]


def test_a_success_is_one_line_and_started_is_a_debug_record(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """At INFO a success is our ``succeeded`` record alone: Celery's own line is dropped.

    ``started`` (with the redacted argument summary) is a DEBUG record; failures carry
    the summary themselves. Celery's line stays for tasks not of our bases.
    """
    import celery

    @app.task(shared=False)
    def pay(invoice: int, api_key: str) -> dict[str, int]:
        if invoice < 0:
            raise ValueError(f"bad invoice {invoice} for {api_key}")
        return {"invoice": invoice}

    @app.task(shared=False, base=celery.Task)
    def plain(invoice: int) -> int:
        return invoice

    caplog.set_level(logging.INFO)
    pay.apply(args=(7, "sk-live-123"), task_id="t-pay")
    plain.apply(args=(7,), task_id="t-plain")
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    ours = [(name, text) for name, text in lines if "t-pay" in text]
    assert len(ours) == 1, lines
    name, text = ours[0]
    assert name == "celeryredis.task"
    assert text.startswith(f"task {pay.name}[t-pay] succeeded in ")
    assert text.endswith("s: {'invoice': 7}")
    assert [n for n, t in lines if "t-plain" in t] == ["celery.app.trace"]

    pay.apply(args=(-1, "sk-live-123"), task_id="t-fail")
    (failed,) = [r for r in caplog.records if getattr(r, "event", None) == "failed"]
    assert failed.args_summary == "(-1, '***')"  # type: ignore[attr-defined]
    assert "sk-live-123" not in failed.exc_message  # type: ignore[attr-defined]
    # A failure is one record too: Celery's "raised unexpected" line is dropped for it,
    # and kept for a task not of our bases.
    # (eager: ours are `failed` and `dead_letter_skipped`)
    assert {r.name for r in caplog.records if "t-fail" in r.getMessage()} == {"celeryredis.task"}
    plain.apply(args=("x",), task_id="t-plain-fail", kwargs={"bogus": 1})
    assert [r.name for r in caplog.records if "t-plain-fail" in r.getMessage()] == [
        "celery.app.trace"
    ]

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="celeryredis.task")
    pay.apply(args=(8, "sk-live-123"), task_id="t-debug")
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "celeryredis.task"]
    assert events == ["started", "succeeded"]
    assert caplog.records[0].args_summary == "(8, '***')"  # type: ignore[attr-defined]


def test_a_success_makes_one_record_from_celerys_line(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery's success line is turned into our ``succeeded`` record: one record made.

    The record is ``celeryredis.task``'s, with our fields and message and without
    Celery's ``data`` extra. When Celery's line does not come (its logger off at INFO),
    ``after_return`` writes the record itself.
    """
    made: list[str] = []
    previous = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        made.append(record.name)
        return record

    @app.task(shared=False)
    def greet(name: str, token: str) -> str:
        return f"hello {name}, {token}"

    caplog.set_level(logging.INFO)
    logging.setLogRecordFactory(counting)
    try:
        greet.apply(args=("ann", "tok-secret-1"), task_id="t-one")
    finally:
        logging.setLogRecordFactory(previous)
    assert made == ["celery.app.trace"], made  # Celery's record, made once, and no other
    (record,) = [r for r in caplog.records if "t-one" in r.getMessage()]
    assert record.name == "celeryredis.task"
    assert record.event == "succeeded"  # type: ignore[attr-defined]
    assert record.task_id == "t-one"  # type: ignore[attr-defined]
    assert record.return_value == "'hello ann, ***'"  # type: ignore[attr-defined]
    assert not hasattr(record, "data")
    assert record.filename == "base.py"
    assert record.getMessage().endswith("s: 'hello ann, ***'")

    caplog.clear()
    trace_logger = logging.getLogger("celery.app.trace")
    level = trace_logger.level
    trace_logger.setLevel(logging.WARNING)  # not caplog.set_level: it sets its handler's too
    try:
        greet.apply(args=("bob", "tok-secret-2"), task_id="t-alone")
    finally:
        trace_logger.setLevel(level)
    lines = [(r.name, r.getMessage()) for r in caplog.records if "t-alone" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0][0] == "celeryredis.task"
    assert lines[0][1].endswith("s: 'hello bob, ***'")


def test_named_tuple_arguments_are_redacted_and_summarized(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """A named tuple (as an eager call passes it) keeps its type through redaction."""
    from collections import namedtuple

    login = namedtuple("login", "user password")
    call = redact_call((login("ann", "hunter22"),), {})
    assert call.args == (login("ann", "hunter22"),)  # a field name is not an argument name
    assert type(call.args[0]) is login

    @app.task(shared=False)
    def sign_in(who: Any) -> None:
        raise ValueError("refused")

    caplog.set_level(logging.INFO)
    sign_in.apply(args=(login("ann", "x"),), task_id="t-nt")
    (failed,) = [r for r in caplog.records if getattr(r, "event", None) == "failed"]
    assert failed.args_summary == "(login(user='ann', password='x'))"  # type: ignore[attr-defined]
