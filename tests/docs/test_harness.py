"""The doc-test harness itself: it finds blocks and markers, and fails on a broken block."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from celeryredis.testing import WorkerProcess
from tests.docs._blocks import blocks
from tests.docs.test_docs import Page, run_page

pytestmark = pytest.mark.integration

PAGE = """# A page

```python
x = 1
```

<!-- fragment: a sketch -->

```python
host_project.call(x)
```

```pycon
>>> x + 1
2
>>> y = 5
```

```python
z = y * 2
```

```console
$ echo "$REDIS_URL" | cut -c1-8
redis://
```

```text
not code
```
"""


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_blocks_carry_language_line_and_fragment_marker(tmp_path: Path) -> None:
    found = blocks(_page(tmp_path, PAGE))
    assert [(b.language, b.line, b.fragment) for b in found] == [
        ("python", 3, False),
        ("python", 9, True),
        ("pycon", 13, False),
        ("python", 19, False),
        ("console", 23, False),
        ("text", 28, False),
    ]
    assert found[1].why == "a sketch"
    assert found[0].text == "x = 1\n"


def test_a_page_runs_in_order_in_one_namespace(
    tmp_path: Path, redis_url: str, celery_worker_process: Callable[..., WorkerProcess]
) -> None:
    page = Page(tmp_path, redis_url, celery_worker_process)
    counts = run_page(_page(tmp_path, PAGE), page)
    assert counts == {"executed": 4, "compiled": 1, "text": 1}
    assert page.namespace["x"] == 1
    assert page.namespace["z"] == 10  # a name a pycon block set reaches the next block


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("```python\nundefined_name\n```\n", "page.md:1: python block raised"),
        ("```pycon\n>>> 1 + 1\n3\n```\n", "page.md:1: pycon block failed"),
        ("```console\n$ false\n```\n", "`false` exited 1"),
        ("```console\n$ echo one\ntwo\n```\n", "but the page shows"),
        ("<!-- fragment -->\n```python\ndef f(:\n```\n", "fragment does not compile"),
        ("```ruby\nputs 1\n```\n", "a block in 'ruby'"),
        ("```\nbare\n```\n", "a block in 'no language'"),
        ('```python\nurl = "redis://localhost:6379/0"\n```\n', "names the default Redis"),
    ],
)
def test_a_broken_block_fails_the_page_and_names_its_line(
    tmp_path: Path,
    redis_url: str,
    celery_worker_process: Callable[..., WorkerProcess],
    broken: str,
    message: str,
) -> None:
    page = Page(tmp_path, redis_url, celery_worker_process)
    with pytest.raises(pytest.fail.Exception, match=message.replace("(", r"\(")) as failure:
        run_page(_page(tmp_path, broken), page)
    assert "page.md:" in str(failure.value)
