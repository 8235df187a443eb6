"""Scenario 7: a Redis user restricted by the rule `celery -A app redis acl` prints."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryredis.testing import RedisServer, WorkerProcess
from tests._util import FAST_PRODUCTION, import_host_module, wait_for
from tests.faults._harness import FAULT_PASSWORD, Outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

ACL_PASSWORD = "Acl-Us3r-pw"

APP = """
import json
import os

from celeryredis import UniqueTask, make_app

app = make_app(
    "aclapp",
    broker_url=os.environ["ACL_BROKER"],
    result_backend=os.environ["ACL_BACKEND"],
    broker_transport_options={"global_keyprefix": "myapp:"},
    result_backend_transport_options={"global_keyprefix": "myapp:"},
    **json.loads(os.environ["ACL_SETTINGS"]),
)


@app.task(name="acl.add", shared=False)
def add(x, y):
    return x + y


@app.task(name="acl.fail", shared=False)
def fail():
    raise ValueError("fails for good, so it is dead-lettered")


@app.task(name="acl.unique", base=UniqueTask, shared=False)
def unique(x):
    return x
"""


def test_acl_rule_is_enough_for_tasks_results_control_dlq_and_locks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
    secret_scan: Any,
    fault_report: Any,
) -> None:
    server = redis_server_factory(password=FAULT_PASSWORD)
    admin = server.client()
    base = f"redis://app:{ACL_PASSWORD}@127.0.0.1:{server.port}"
    env = {
        "ACL_BROKER": f"{base}/0",
        "ACL_BACKEND": f"{base}/1",
        "ACL_SETTINGS": json.dumps(FAST_PRODUCTION),
    }
    (tmp_path / "aclapp.py").write_text(textwrap.dedent(APP))

    # The rule comes from the CLI, exactly as an operator would get it.
    cli = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "aclapp", "redis", "acl", "--json"],
        cwd=tmp_path,
        env={**_env_with_path(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    secret_scan.add("acl cli stdout", cli.stdout)
    secret_scan.add("acl cli stderr", cli.stderr)
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    assert printed["user"] == "app"
    assert "<password>" in printed["command"]
    admin.execute_command(
        "ACL", "SETUSER", "app", "reset", "on", f">{ACL_PASSWORD}", *printed["rules"]
    )
    admin.execute_command("ACL", "LOG", "RESET")

    worker = celery_worker_process(
        "aclapp", cwd=tmp_path, env=env, concurrency=1, hostname="acl@127.0.0.1"
    )
    worker.wait_ready()
    host = import_host_module(monkeypatch, tmp_path, "aclapp", env)
    started = time.monotonic()
    assert host.add.delay(2, 3).get(timeout=30) == 5
    replies = host.app.control.inspect(timeout=5).ping()
    assert replies
    assert "acl@127.0.0.1" in replies

    failed = host.fail.delay()
    with pytest.raises(ValueError, match="dead-lettered"):
        failed.get(timeout=30)
    from celeryredis import DeadLetterQueue

    wait_for(lambda: len(DeadLetterQueue(host.app)) == 1, 30, "the dead letter")
    assert admin.xlen("myapp:celeryredis:dlq") == 1

    assert host.unique.delay(7).get(timeout=30) == 7
    elapsed = time.monotonic() - started

    denials = admin.execute_command("ACL", "LOG")
    assert denials == [], denials
    # ... and nothing wider: keys and channels outside the prefix are refused.
    user = redis.Redis(host="127.0.0.1", port=server.port, username="app", password=ACL_PASSWORD)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.set("someone-else:key", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.execute_command("FLUSHALL")
    secret_scan.add("worker log", worker.log_text())
    fault_report.add(
        Outcome(
            "7. ACL user limited by `redis acl`",
            "production",
            lost=0,
            recover_s=None,
            note=f"task, result, inspect ping, DLQ and lock in {elapsed:.1f} s; ACL LOG: 0 denials",
        )
    )


def _env_with_path(directory: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(directory), env.get("PYTHONPATH")) if p)
    return env
