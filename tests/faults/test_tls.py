"""Scenario 6: TLS with certificate verification, a wrong CA, and TLS without verification."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from celeryredis import ConfigurationError, PublishError, make_app
from celeryredis.testing import RedisServer, WorkerProcess
from celeryredis.testing._server import _free_port
from tests._util import FAST_PRODUCTION, import_host_module
from tests.faults._harness import FAULT_PASSWORD, Outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

# A certificate that fails verification is an error retrying cannot fix: it fails at once
# (docs/configuration.md), not after the preset's ~11 s retry budget.
FAIL_BOUND = 2.0

APP = """
import json
import os

from celeryredis import make_app

app = make_app(
    "tlsapp",
    broker_url=os.environ["TLS_BROKER"],
    result_backend=os.environ["TLS_BACKEND"],
    **json.loads(os.environ["TLS_SETTINGS"]),
)


@app.task(name="tls.add", shared=False)
def add(x, y):
    return x + y
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(directory: Path) -> Path:
    """A CA, a server certificate for IP 127.0.0.1 signed by it, and an unrelated CA."""
    directory.mkdir()
    for ca in ("ca", "wrong-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN={ca}",
                 cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "san.ext",
             cwd=directory)  # fmt: skip
    return directory


def _url(port: int, db: int, ca: Path) -> str:
    query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca))}"
    return f"rediss://:{FAULT_PASSWORD}@127.0.0.1:{port}/{db}?{query}"


def test_tls_verified_works_wrong_ca_fails_fast_unverified_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
    secret_scan: Any,
    fault_report: Any,
) -> None:
    certs = _certificates(tmp_path / "tls")
    tls_port = _free_port()
    redis_server_factory(
        password=FAULT_PASSWORD,
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    (tmp_path / "tlsapp.py").write_text(APP)
    env = {
        "TLS_BROKER": _url(tls_port, 0, certs / "ca.crt"),
        "TLS_BACKEND": _url(tls_port, 1, certs / "ca.crt"),
        "TLS_SETTINGS": json.dumps(FAST_PRODUCTION),
    }

    # 1. Verified TLS end to end: a worker and a publisher over rediss://.
    worker = celery_worker_process("tlsapp", cwd=tmp_path, env=env, hostname="tls@127.0.0.1")
    worker.wait_ready()
    host = import_host_module(monkeypatch, tmp_path, "tlsapp", env)
    assert host.add.delay(20, 22).get(timeout=30) == 42

    # 2. A wrong CA: one clear error of ours, in bounded time, no endless retry.
    wrong = make_app(
        "tls-wrong-ca",
        broker_url=_url(tls_port, 0, certs / "wrong-ca.crt"),
        result_backend=_url(tls_port, 1, certs / "wrong-ca.crt"),
        **FAST_PRODUCTION,
    )

    @wrong.task(name="tls.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with pytest.raises(PublishError, match="CERTIFICATE_VERIFY_FAILED") as excinfo:
        add.delay(1, 2)
    elapsed = time.monotonic() - started
    assert elapsed <= FAIL_BOUND
    assert excinfo.value.permanent
    assert "ssl_ca_certs" in str(excinfo.value)
    secret_scan.add("wrong-ca error", str(excinfo.value))
    secret_scan.add("wrong-ca traceback", excinfo.getrepr(style="long"))

    # 3. rediss:// without verification is refused before anything connects.
    for query in ("", "?ssl_cert_reqs=none"):
        with pytest.raises(ConfigurationError, match="certificate verification") as refused:
            make_app(
                "tls-unverified",
                broker_url=f"rediss://:{FAULT_PASSWORD}@127.0.0.1:{tls_port}/0{query}",
            )
        secret_scan.add("unverified error", str(refused.value))
    secret_scan.add("worker log", worker.log_text())
    fault_report.add(
        Outcome(
            "6. TLS (rediss://, CA verified)",
            "production",
            lost=0,
            recover_s=elapsed,
            note=f"task over TLS OK; wrong CA: PublishError (CERTIFICATE_VERIFY_FAILED) after "
            f"{elapsed:.1f} s (time column); unverified rediss:// refused by validation",
        )
    )
