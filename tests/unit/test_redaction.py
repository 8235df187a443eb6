"""Redaction (one vocabulary, decisions with their values) and the CLI's pure parts."""

from __future__ import annotations

import io
import logging
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from celeryredis import urls
from celeryredis.cli import EXIT_CODES, CliError, Duration, _json_calls
from celeryredis.deadletter import _publisher_hidden, iso_utc
from celeryredis.log import RedactingFilter, bind_task_secrets, configure_logging, redact_exc_info
from celeryredis.redaction import (
    REDACTED,
    call_secrets,
    redact_call,
    redact_setting,
    redact_text,
    sensitive_words,
    summarize_call,
)

SECRET = "s3cr3t-Pa55"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_urls_and_redaction_share_one_redact_text() -> None:
    assert urls.redact_text is redact_text
    assert urls.REDACTED == REDACTED == "***"


def test_redact_text_hides_url_passwords_and_given_values() -> None:
    text = f"redis://u:{SECRET}@h:1/0 and rediss://:{SECRET}@x:2 saw {SECRET} and 'abc'"
    out = redact_text(text, secrets=[SECRET, "abc"])
    assert SECRET not in out
    assert out.startswith("redis://u:***@h:1/0 and rediss://:***@x:2 saw ***")
    assert "'abc'" in out  # shorter than MIN_SECRET_CHARS: not searched for


def test_one_word_list_for_arguments_settings_and_keys() -> None:
    words = sensitive_words({"celeryredis_sensitive_names": ["iban"]}, ["pin"])
    assert words[-2:] == ("iban", "pin")
    assert {"password", "secret", "token", "credential", "api_key"} <= set(words)
    assert redact_setting("redis_backend_credential_provider", "mod.Cls") == REDACTED
    assert redact_setting("broker_url", f"redis://:{SECRET}@h/0") == "redis://:***@h/0"
    assert redact_setting("broker_transport_options", {"password": SECRET, "db": 1}) == {
        "password": REDACTED,
        "db": 1,
    }


def test_redact_call_returns_the_view_the_positions_and_the_values() -> None:
    def connect(host: str, db_password: str, *, options: dict[str, Any]) -> None: ...

    call = redact_call(
        ("db1", SECRET, "extra"),
        {"options": {"Token": "tok-123456", "n": 1}},
        func=connect,
        positions=[2],
    )
    assert call.args == ("db1", REDACTED, REDACTED)
    assert call.kwargs == {"options": {"Token": REDACTED, "n": 1}}
    assert call.positions == (1, 2)
    assert set(call.secrets) == {SECRET, "extra", "tok-123456"}
    assert call.changed
    assert SECRET not in repr(call)
    assert SECRET not in summarize_call(("db1", SECRET), {}, func=connect)


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self, password: str) -> None: ...


def _connect(host: str, db_password: str, pin: int = 0, *rest: Any, **options: Any) -> None: ...


@pytest.mark.parametrize(
    ("args", "kwargs", "func", "words"),
    [
        ((1, 2.5, None, True), {}, _connect, None),
        (("db1", SECRET), {}, _connect, None),
        (("db1", 12345678), {}, _connect, None),
        (("db1", "x", 4321), {}, _connect, ("pin",)),
        (("db1", "x", 0, {"api_key": "k-123456"}, ["a", {"Secret": 99999}]), {}, _connect, None),
        ((), {"password": SECRET, "n": 5, "opts": {"token": ("t-1234", "t-5678")}}, None, None),
        (("u", "p-123456"), {}, _Unhashable(), None),
        ((b"bytes", SECRET), {"credential": b"raw-bytes"}, _connect, None),
        (None, None, _connect, None),
    ],
)
def test_call_secrets_are_the_secrets_of_redact_call(
    args: Any, kwargs: Any, func: Any, words: tuple[str, ...] | None
) -> None:
    """The log filter's cheaper path finds exactly what redact_call's view hides."""
    vocabulary = sensitive_words({}, words or ())
    expected = redact_call(args, kwargs, words=vocabulary, func=func).secrets
    assert call_secrets(args, kwargs, words=vocabulary, func=func) == expected


def test_the_publishers_redacted_reprs_say_what_to_hide() -> None:
    headers = {"argsrepr": "('ann', '***')", "kwargsrepr": "{'pin': '***', 'n': 2}"}
    positions, names = _publisher_hidden(headers, ["ann", SECRET], {"pin": "1234", "n": 2})
    assert positions == [1]
    assert names == ["pin"]
    assert _publisher_hidden({"argsrepr": "(<object at 0x1>,"}, [1], {}) == ([], [])


def _record(msg: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> Any:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("celery.app.trace", logging.ERROR, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_redacting_filter_covers_message_extras_and_traceback() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:9/0"
    try:
        raise RuntimeError(f"cannot reach {url}")
    except RuntimeError as exc:
        caught = exc
    record = _record("Task %s raised: %r", "t", caught, exc=caught, data={"exc": caught})
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text
    assert "redis://:***@127.0.0.1:9/0" in text
    assert "Traceback" in text
    assert record.exc_info is None
    assert SECRET not in str(record.data)


def test_redacting_filter_covers_string_extras_by_url_and_by_bound_secret() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:9/0"
    record = _record("m", broker=url, note="pin hunter2-Secret", queue="celery", n=3)
    assert RedactingFilter().filter(record)
    assert (record.broker, record.note) == ("redis://:***@127.0.0.1:9/0", "pin hunter2-Secret")
    bind_task_secrets(["hunter2-Secret"])
    try:
        record = _record("m", note="pin hunter2-Secret", queue="celery", n=3)
        assert RedactingFilter().filter(record)
    finally:
        bind_task_secrets(())
    assert (record.note, record.queue, record.n) == ("pin ***", "celery", 3)


def test_bound_task_secrets_are_hidden_in_any_record_of_the_thread() -> None:
    stream = io.StringIO()
    handler = configure_logging(stream=stream, logger="trust.test")
    try:
        bind_task_secrets(["hunter2-Secret"])
        logging.getLogger("trust.test").error("login with %s failed", "hunter2-Secret")
    finally:
        bind_task_secrets(())
        logging.getLogger("trust.test").removeHandler(handler)
    assert "hunter2-Secret" not in stream.getvalue()
    assert "login with *** failed" in stream.getvalue()


def test_lazily_bound_secrets_are_computed_once_and_only_for_a_record() -> None:
    stream = io.StringIO()
    handler = configure_logging(stream=stream, logger="trust.lazy")
    calls: list[int] = []

    def secrets() -> list[str]:
        calls.append(1)
        return ["hunter2-Secret"]

    try:
        bind_task_secrets(secrets)
        assert calls == []  # nothing logged yet: nothing computed
        logging.getLogger("trust.lazy").error("login with %s failed", "hunter2-Secret")
        logging.getLogger("trust.lazy").error("again with %s", "hunter2-Secret")
    finally:
        bind_task_secrets(())
        logging.getLogger("trust.lazy").removeHandler(handler)
    assert calls == [1]
    assert "hunter2-Secret" not in stream.getvalue()
    assert stream.getvalue().count("***") == 2


def test_lazily_bound_secrets_that_fail_leave_url_passwords_redacted() -> None:
    stream = io.StringIO()
    handler = configure_logging(stream=stream, logger="trust.broken")

    def broken() -> list[str]:
        raise ValueError("odd arguments")

    try:
        bind_task_secrets(broken)
        logging.getLogger("trust.broken").error("to redis://:pw-Secret1@127.0.0.1:9/0")
    finally:
        bind_task_secrets(())
        logging.getLogger("trust.broken").removeHandler(handler)
    assert "pw-Secret1" not in stream.getvalue()
    assert "redis://:***@127.0.0.1:9/0" in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45)],
)
def test_durations(text: str, seconds: float) -> None:
    assert Duration().convert(text, None, None) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["10x", "", "h", "1h-2m", "-"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(click.BadParameter, match="not a duration"):
        Duration().convert(text, None, None)


def test_enqueue_input_counts_lines_from_one_blank_lines_included() -> None:
    lines = ["[1]\n", "\n", '{"args": [2], "kwargs": {"x": 1}}\n', '{"args": 3}\n']
    calls = _json_calls(lines)
    assert next(calls) == (1, (1,))
    assert next(calls) == (3, ((2,), {"x": 1}))
    with pytest.raises(ValueError, match=r"^line 4: expected"):
        next(calls)
    with pytest.raises(ValueError, match=r"^line 2, column 1: not JSON"):
        list(_json_calls(["[1]", "nope"]))


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_cli_errors_are_one_redacted_line(capsys: pytest.CaptureFixture[str]) -> None:
    error = CliError(f"Redis at redis://:{SECRET}@h/0\nis down", 69)
    error.show()
    err = capsys.readouterr().err
    assert err == "Error: Redis at redis://:***@h/0 is down\n"
    assert error.exit_code == 69


def test_the_exit_code_table_in_the_docs_is_the_cli_table() -> None:
    text = (DOCS / "operations.md").read_text()
    section = text[text.index("## Exit codes") :]
    rows = dict(re.findall(r"^\| `(\d+)` \| ([^|]+?) \|", section, flags=re.MULTILINE))
    assert {int(code) for code in rows} == set(EXIT_CODES)
    for code, meaning in EXIT_CODES.items():
        assert rows[str(code)] == meaning, code


def test_every_command_has_version_and_debug() -> None:
    from celeryredis.cli import main, redis_command

    for group in (main, redis_command):
        names = {p.name for p in group.params}
        assert {"version", "debug"} <= names, group.name
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("celeryredis ")
    assert ".".join(str(n) for n in sys.version_info[:3]) in result.output


def test_a_prefork_childs_wrapped_exception_is_shown_once_as_the_task_raised_it() -> None:
    from billiard.einfo import ExceptionWithTraceback

    try:
        raise ValueError("boom redis://:Hunter2-wrapped@h/0")
    except ValueError as exc:
        wrapped = ExceptionWithTraceback(exc, "Traceback (most recent call last):\n...")
        text = redact_exc_info((type(wrapped), wrapped, exc.__traceback__))
    assert text.endswith("ValueError: boom redis://:***@h/0")
    assert "ExceptionWithTraceback" not in text
    assert text.count("Traceback (most recent call last)") == 1
