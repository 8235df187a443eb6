"""Suite-wide guard: no test's captured output or failure report may contain a test secret.

Tests that put passwords into URLs or task arguments use one of ``SECRETS``; this hook
fails any test whose captured stdout, stderr, log records or failure report shows one.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import settings

# CI explores the same examples every run (a found bug then fails every run, not one in
# ten); local runs keep hypothesis's random exploration.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

#: Every password the suite puts into a URL or a task argument.
SECRETS = (
    "hunter2-Secret",
    "s3cr3t-Pa55",
    "Hunter2-integration-pw",
    "Fault-Pa55-w0rd",
    "Acl-Us3r-pw",
)


@pytest.fixture(scope="session", autouse=True)
def _kombu_knows_our_schemes() -> None:
    """Tests open kombu connections of their own (``celeryredis://`` ...), outside any app.

    An app registers the schemes when its configuration loads; worker processes (which
    have no conftest) show that path. ``tests/unit/test_app.py`` checks that importing
    celeryredis alone registers nothing.
    """
    from celeryredis.transport import register_aliases

    register_aliases()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    texts = [report.capstdout, report.capstderr, report.caplog, report.longreprtext]
    leaked = [s for s in SECRETS if any(s in text for text in texts)]
    if leaked:
        report.outcome = "failed"
        report.longrepr = f"a test secret appeared in captured output: {leaked!r}"
    return report
