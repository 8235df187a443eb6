"""Trust: no password in any view, and one documented error line per CLI failure.

A password-protected redis-server, a real worker, and a task module (``trusttasks``)
that the app module (``trustapp``) lists in ``include=`` but does not import, so the CLI,
which imports only the app module, never knows the tasks' signatures.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from celeryredis import RetryTask, make_app
from celeryredis.cli import (
    EXIT_FAIL,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    main,
)
from celeryredis.deadletter import DeadLetterNotFound, DeadLetterQueue
from celeryredis.testing import RedisServer
from tests._util import import_host_module, wait_for

pytestmark = pytest.mark.integration

SECRET = "Hunter2-integration-pw"

APP = """
import os

from celeryredis import make_app

URL = os.environ["TRUST_URL"]
app = make_app("trustapp", broker_url=URL, preset="testing", include=["trusttasks"])
"""

TASKS = """
import os

import redis

from celeryredis import RetryTask
from trustapp import URL, app

client = redis.Redis.from_url(URL)


@app.task(shared=False)
def connect(host, password, note=""):
    client.set("seen:connect", "real" if password == os.environ["TRUST_SECRET"] else "other")
    if client.get("fixed"):
        client.incr("connect:done")
        return host
    raise RuntimeError(f"cannot reach {URL} as {host} with {password}")


@app.task(base=RetryTask, shared=False, max_retries=1, retry_backoff=0.1, retry_jitter=False)
def flaky(user, db_password):
    raise ConnectionError(f"down: {URL}")


@app.task(shared=False)
def keyed(n, *, api_key):
    raise ValueError(f"key {api_key} refused for {n}")


@app.task(shared=False)
def noop(n):
    return n
"""


def _write_host(directory: Path) -> None:
    (directory / "trustapp.py").write_text(textwrap.dedent(APP))
    (directory / "trusttasks.py").write_text(textwrap.dedent(TASKS))


@pytest.fixture
def trust_env(
    redis_server_factory: Callable[..., RedisServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker_process: Any,
) -> Iterator[dict[str, Any]]:
    server = redis_server_factory(password=SECRET)
    _write_host(tmp_path)
    env = {"TRUST_URL": server.url, "TRUST_SECRET": SECRET}
    tasks = import_host_module(monkeypatch, tmp_path, "trusttasks", env)
    worker = celery_worker_process("trusttasks", cwd=tmp_path, env=env, loglevel="DEBUG")
    worker.wait_ready(timeout=30)
    yield {"server": server, "tasks": tasks, "worker": worker, "env": env, "dir": tmp_path}
    sys.modules.pop("trustapp", None)
    sys.modules.pop("trusttasks", None)


def _run(directory: Path, env: dict[str, str], argv: list[str], stdin: str = "") -> Any:
    return subprocess.run(
        [sys.executable, *argv],
        env={**os.environ, **env, "PYTHONPATH": str(directory)},
        cwd=directory,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _entries_of(dlq: DeadLetterQueue, name: str) -> list[Any]:
    return [e for e in dlq.list(100) if e.task_name == name]


def _fail_all(tasks: Any, dlq: DeadLetterQueue) -> None:
    tasks.connect.delay("db1", SECRET)
    tasks.flaky.delay("ann", SECRET)
    tasks.keyed.delay(7, api_key=SECRET)
    wait_for(lambda: len(dlq) >= 3, 30, "three dead letters")


def test_no_view_of_any_cli_command_shows_the_password(trust_env: dict[str, Any]) -> None:
    tasks, worker, env, directory = (
        trust_env["tasks"],
        trust_env["worker"],
        trust_env["env"],
        trust_env["dir"],
    )
    dlq = DeadLetterQueue(tasks.app)
    _fail_all(tasks, dlq)
    assert trust_env["server"].client().get("seen:connect") == b"real"
    connect = _entries_of(dlq, "trusttasks.connect")[0]
    entry_id = connect.id

    # The Python API of a process that knows the tasks shows the stored decision.
    assert connect.args == ("db1", "***")
    assert connect.original_args == ("db1", SECRET)
    assert SECRET not in repr(connect) + json.dumps(connect.to_dict())
    keyed = _entries_of(dlq, "trusttasks.keyed")[0]
    assert keyed.kwargs == {"api_key": "***"}
    assert keyed.exception_message == "key *** refused for 7"

    commands: list[list[str]] = [
        ["config"],
        ["check"],
        ["queues"],
        ["dlq", "list"],
        ["dlq", "show", entry_id],
        ["dlq", "replay", "--dry-run", entry_id],
        ["locks", "list"],
        ["acl"],
    ]
    outputs = []
    for prefix in (
        ["-m", "celery", "-A", "trustapp", "redis"],
        ["-m", "celeryredis.cli", "--app", "trustapp"],
    ):
        for command in commands:
            for extra in ([], ["--json"]):
                proc = _run(directory, env, [*prefix, *command, *extra])
                outputs.append((command + extra, proc))
                assert SECRET not in proc.stdout + proc.stderr, (command, extra)
                assert "Traceback" not in proc.stderr, (command, extra, proc.stderr)
    by_name = {" ".join(argv): proc for argv, proc in outputs[: len(commands) * 2]}
    listed = json.loads(by_name["dlq list --json"].stdout)
    shown = {e["task_name"]: e for e in listed["entries"]}
    assert shown["trusttasks.connect"]["args"] == ["db1", "***"]
    assert shown["trusttasks.flaky"]["args"] == ["ann", "***"]
    assert shown["trusttasks.keyed"]["kwargs"] == {"api_key": "***"}
    assert shown["trusttasks.connect"]["failed_at"].endswith("Z")
    text = by_name[f"dlq show {entry_id}"].stdout
    assert '["db1", "***"]' in text
    assert "redis://:***@127.0.0.1" in text
    assert datetime.fromisoformat(
        json.loads(by_name[f"dlq show {entry_id} --json"].stdout)["failed_at"]
    )

    # No record of the worker's run shows it. A failure is one record, ours (`failed`,
    # with the redacted traceback); Celery's own "raised unexpected" line is not written.
    wait_for(lambda: "trusttasks.keyed" in worker.log_text(), 10, "the worker's log")
    log = worker.log_text()
    assert "] failed: " in log
    assert "raised unexpected" not in log
    assert "cannot reach redis://:***@127.0.0.1" in log
    assert SECRET not in log


def test_replay_from_a_process_without_the_tasks_sends_the_real_arguments(
    trust_env: dict[str, Any],
) -> None:
    tasks, env, directory = trust_env["tasks"], trust_env["env"], trust_env["dir"]
    client = trust_env["server"].client()
    dlq = DeadLetterQueue(tasks.app)
    tasks.connect.delay("db2", SECRET)
    wait_for(lambda: len(_entries_of(dlq, "trusttasks.connect")) == 1, 30, "a dead letter")
    entry = _entries_of(dlq, "trusttasks.connect")[0]
    client.delete("seen:connect")
    client.set("fixed", 1)
    replayed = _run(
        directory, env, ["-m", "celery", "-A", "trustapp", "redis", "dlq", "replay", entry.id]
    )
    assert replayed.returncode == 0, replayed.stderr
    assert SECRET not in replayed.stdout + replayed.stderr
    wait_for(lambda: client.get("connect:done") == b"1", 30, "the replay to run")
    assert client.get("seen:connect") == b"real"
    assert len(dlq) == 0


def test_retry_records_carry_the_task_id_and_no_secret(
    redis_url: str, inprocess_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app("retrylog", broker_url=redis_url, preset="testing")
    url = f"redis://:{SECRET}@127.0.0.1:1/0"

    @app.task(base=RetryTask, shared=False, max_retries=1, retry_backoff=0.1, retry_jitter=False)
    def down(token: str) -> None:
        raise ConnectionError(f"down: {url} with {token}")

    inprocess_worker(app, pool="solo")
    caplog.set_level(logging.INFO)  # after the worker's own logging set-up
    result = down.delay("tok-" + SECRET)
    wait_for(lambda: len(DeadLetterQueue(app)) == 1, 30, "the dead letter")
    records = [r for r in caplog.records if r.name == "celeryredis.tasks.retry"]
    assert len(records) == 2, [r.getMessage() for r in records]
    for record in records:
        assert record.task_id == result.id
        assert record.task_name == down.name
        assert SECRET not in record.getMessage()
        assert "redis://:***@127.0.0.1:1/0 with ***" in record.getMessage()
    failed = [r for r in caplog.records if getattr(r, "event", None) == "failed"]
    assert len(failed) == 1
    assert failed[0].exc_message == "down: redis://:***@127.0.0.1:1/0 with ***"
    assert SECRET not in (failed[0].exc_text or "")
    assert "Traceback" in failed[0].exc_text
    entry = DeadLetterQueue(app).list(1)[0]
    assert SECRET not in entry.exception_message + entry.traceback


def test_stored_results_show_sensitive_arguments_as_stars_and_retries_keep_them(
    redis_url: str, inprocess_worker: Any
) -> None:
    app = make_app("storedargs", broker_url=redis_url, result_backend=redis_url, preset="testing")
    client = app.backend.client

    @app.task(base=RetryTask, shared=False, max_retries=2, retry_backoff=0.1, retry_jitter=False)
    def login(user: str, password: str, *, api_key: str = "") -> str:
        client.rpush("seen", f"{password}|{api_key}")
        if client.llen("seen") == 1:
            raise ConnectionError("first attempt")
        return user

    @app.task(shared=False)
    def refuse(user: str, password: str) -> None:
        raise ValueError("refused")

    inprocess_worker(app, pool="solo")
    ok = login.delay("ann", SECRET, api_key=SECRET)
    assert ok.get(timeout=30) == "ann"
    # The task and its retry ran with the real values; the stored states hold none.
    assert client.lrange("seen", 0, -1) == [f"{SECRET}|{SECRET}".encode()] * 2
    assert (ok.args, ok.kwargs, ok.name) == (["ann", "***"], {"api_key": "***"}, login.name)
    failed = refuse.delay("bob", SECRET)
    wait_for(lambda: failed.state == "FAILURE", 30, "the stored failure")
    assert failed.args == ["bob", "***"]
    for result in (ok, failed):
        stored = client.get(app.backend.get_key_for_task(result.id))
        assert stored is not None
        assert b'"***"' in stored
        assert SECRET.encode() not in stored


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: (arguments, exit code with Redis down) of every command that needs Redis.
NEEDS_REDIS = [
    (["dlq", "list"], EXIT_UNAVAILABLE),
    (["dlq", "list", "--json"], EXIT_UNAVAILABLE),
    (["dlq", "show", "1-0"], EXIT_UNAVAILABLE),
    (["dlq", "show", "1-0", "--json"], EXIT_UNAVAILABLE),
    (["dlq", "replay", "1-0"], EXIT_UNAVAILABLE),
    (["dlq", "purge", "--yes"], EXIT_UNAVAILABLE),
    (["locks", "list"], EXIT_UNAVAILABLE),
    (["locks", "list", "--json"], EXIT_UNAVAILABLE),
    (["locks", "clear", "--yes"], EXIT_UNAVAILABLE),
    (["queues"], EXIT_UNAVAILABLE),
    (["queues", "--json"], EXIT_UNAVAILABLE),
    (["check", "--timeout", "1"], EXIT_FAIL),
    (["check", "--worker", "w1", "--timeout", "1"], EXIT_FAIL),
    (["enqueue", "trusttasks.noop"], EXIT_UNAVAILABLE),
]


def _one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    assert SECRET not in result.output + result.stderr
    return str(lines[0])


def test_every_command_with_redis_down_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_host(tmp_path)
    url = f"redis://:{SECRET}@127.0.0.1:{_free_port()}/0"
    import_host_module(monkeypatch, tmp_path, "trustapp", {"TRUST_URL": url})
    runner = CliRunner()
    try:
        for args, code in NEEDS_REDIS:
            result = runner.invoke(main, ["--app", "trustapp", *args], input="[1]\n")
            assert result.exit_code == code, (args, result.output, result.stderr)
            assert SECRET not in result.output + result.stderr
            if code == EXIT_UNAVAILABLE:
                line = _one_error_line(result)
                if args[0] == "enqueue":  # says where to resume
                    assert "stopped at line 1 of the input" in line, line
                    assert "Connection refused" in line, line
                else:
                    assert "could not be reached" in line, line
                    assert "celeryredis --app trustapp config" in line
    finally:
        sys.modules.pop("trustapp", None)
        sys.modules.pop("trusttasks", None)


def test_missing_ids_bad_apps_and_typos_have_their_own_codes(
    trust_env: dict[str, Any],
) -> None:
    tasks = trust_env["tasks"]
    dlq = DeadLetterQueue(tasks.app)
    runner = CliRunner()
    for args in (
        ["dlq", "show", "bogus"],
        ["dlq", "show", "1-0", "--json"],
        ["dlq", "replay", "1-0"],
        ["dlq", "replay", "bogus", "--json"],
        ["enqueue", "trusttasks.nosuch"],
    ):
        result = runner.invoke(main, ["--app", "trustapp", *args])
        assert result.exit_code == EXIT_NOT_FOUND, (args, result.output)
        line = _one_error_line(result)
        assert "bogus" in line or "1-0" in line or "nosuch" in line
    shown = runner.invoke(main, ["--app", "trustapp", "dlq", "show", "1-0"]).stderr
    assert "`celeryredis --app trustapp dlq list` shows them" in shown
    for app_arg, says in (
        ("trustapp:nosuch", "module 'trustapp' has no attribute 'nosuch'"),
        ("nosuchmodule", "there is no module 'nosuchmodule'"),
    ):
        for args in (["check"], ["check", "--worker", "w1"], ["dlq", "list"], ["locks", "list"]):
            result = runner.invoke(main, ["--app", app_arg, *args])
            assert result.exit_code == EXIT_USAGE, (app_arg, args, result.output)
            assert says in _one_error_line(result)
    for args in (
        ["chek"],
        ["check", "--bogus"],
        ["dlq", "list", "--since", "10x"],
        ["dlq", "list", "--limit", "0"],
        ["dlq", "list", "--limit", "-1"],
        ["dlq"],
    ):
        result = runner.invoke(main, ["--app", "trustapp", *args])
        if args == ["dlq"]:  # a group alone prints its help, as click does
            continue
        assert result.exit_code == EXIT_USAGE, (args, result.output)
        _one_error_line(result)
    bad_input = runner.invoke(
        main, ["--app", "trustapp", "enqueue", "trusttasks.noop"], input="[1]\n\n{nope\n"
    )
    assert bad_input.exit_code == 65
    assert "line 3, column 2: not JSON" in _one_error_line(bad_input)
    assert "nothing was published" in bad_input.stderr

    # The Python API agrees: not-found is None or DeadLetterNotFound, never ResponseError.
    assert dlq.get("bogus") is None
    assert dlq.get("99999999999999999999999-0") is None
    with pytest.raises(DeadLetterNotFound, match="'1-0'"):
        dlq.replay(["1-0"], missing_ok=False)
    assert dlq.replay(["1-0"]) == []


def test_since_takes_durations_and_aware_datetimes(trust_env: dict[str, Any]) -> None:
    tasks = trust_env["tasks"]
    dlq = DeadLetterQueue(tasks.app)
    tasks.keyed.delay(1, api_key=SECRET)
    wait_for(lambda: len(dlq) == 1, 30, "a dead letter")
    now = datetime.now(timezone.utc)
    assert len(dlq.list(since=timedelta(minutes=5))) == 1
    assert len(dlq.list(since=now - timedelta(minutes=5))) == 1
    assert dlq.list(since=now + timedelta(minutes=5)) == []
    assert len(dlq.list(since=now.timestamp() - 300)) == 1
    with pytest.raises(ValueError, match="naive datetime"):
        dlq.list(since=datetime.now())
    runner = CliRunner()
    recent = runner.invoke(main, ["--app", "trustapp", "dlq", "list", "--since", "5m", "--json"])
    assert recent.exit_code == 0, recent.stderr
    assert json.loads(recent.stdout)["entries"][0]["kwargs"] == {"api_key": "***"}


def test_check_suggests_the_form_it_was_invoked_with(trust_env: dict[str, Any]) -> None:
    tasks, env, directory = trust_env["tasks"], trust_env["env"], trust_env["dir"]
    dlq = DeadLetterQueue(tasks.app)
    tasks.keyed.delay(2, api_key=SECRET)
    wait_for(lambda: len(dlq) == 1, 30, "a dead letter")
    via_celery = _run(directory, env, ["-m", "celery", "-A", "trustapp", "redis", "check"])
    assert "`celery -A trustapp redis dlq list`" in via_celery.stdout
    assert "`celeryredis dlq list`" not in via_celery.stdout
    standalone = CliRunner().invoke(main, ["--app", "trustapp", "check", "--json"])
    parts = {p["name"]: p for p in json.loads(standalone.stdout)["parts"]}
    assert "`celeryredis --app trustapp dlq list`" in parts["dead_letters"]["reason"]
    for proc_out in (via_celery.stdout, standalone.stdout):
        assert SECRET not in proc_out


def test_entries_keep_their_decision_when_put_back_and_old_entries_are_redacted(
    redis_url: str,
) -> None:
    app = make_app("putback", broker_url=redis_url, preset="testing")
    dlq = DeadLetterQueue(app)

    def body(user: str, pin: str) -> None: ...

    dlq.add(
        reason="failed",
        task_name="putback.body",
        task_id="t1",
        args=("ann", "9876-sec"),
        headers={"Authorization": "Bearer abcdef"},
        func=body,
        sensitive_names=("pin",),
        exception=ValueError("pin 9876-sec is wrong"),
    )
    entry = dlq.list(1)[0]
    assert entry.args == ("ann", "***")
    assert entry.headers == {"Authorization": "***"}
    assert entry.exception_message == "pin *** is wrong"
    assert entry.original_args == ("ann", "9876-sec")
    assert entry.original_headers == {"Authorization": "Bearer abcdef"}
    assert dlq.delete(entry.id)
    dlq._put_back(entry)  # what a failed replay does
    again = dlq.list(1)[0]
    assert (again.args, again.original_args) == (("ann", "***"), ("ann", "9876-sec"))
    assert again.original_headers == {"Authorization": "Bearer abcdef"}
    assert again.failed_at == entry.failed_at

    # An entry stored before decisions were stored: redacted when read, by names and URLs.
    dlq.client.xadd(
        dlq.key,
        {
            "reason": "failed",
            "task_name": "gone.task",
            "args": json.dumps([f"redis://:{SECRET}@h:1/0"]),
            "kwargs": json.dumps({"password": SECRET}),
            "exception_message": f"login {SECRET} refused",
        },
    )
    old = dlq.list(1)[0]
    assert old.args == ("redis://:***@h:1/0",)
    assert old.kwargs == {"password": "***"}
    assert old.exception_message == "login *** refused"
    assert SECRET not in repr(old) + json.dumps(old.to_dict())
