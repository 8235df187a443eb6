"""Counts of what the doc-test harness did with the docs' code blocks, printed at the end."""

from __future__ import annotations

from collections import Counter

import pytest

#: ``executed``, ``compiled`` (fragments), ``parsed`` (data), ``text``, ``directive``, ``pages``.
DOC_COUNTS: Counter[str] = Counter()


@pytest.fixture
def doc_counts() -> Counter[str]:
    """The session's counts, which each page test adds to."""
    return DOC_COUNTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: how many blocks of how many pages ran, were compiled or parsed."""
    if DOC_COUNTS["pages"]:
        c = DOC_COUNTS
        terminalreporter.write_line(
            f"docs: {c['executed']} code blocks executed, {c['compiled']} fragments compiled, "
            f"{c['parsed']} data blocks parsed, {c['text']} text blocks, over {c['pages']} pages"
        )
