"""Every fenced code block of README.md and docs/*.md runs as shown (see ``_blocks``).

One test per page. Its blocks run in order in one namespace, in a directory of the page's
own, with ``REDIS_URL`` set to a database of the session's throwaway ``redis-server``;
``celery ... worker`` lines start real workers. A block that raises, prints something
else than it shows, or exits non-zero fails the page, naming the block's line.
"""

from __future__ import annotations

import doctest
import gc
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import _state as celery_state

from celeryredis.testing import WorkerProcess
from tests.docs._blocks import CODE, DATA, TEXT, Block, blocks

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_DEFAULT_REDIS = re.compile(r"(localhost|127\.0\.0\.1):6379\b")
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_RUN_TIMEOUT = 90.0

pytestmark = pytest.mark.integration


class Page:
    """The state of one page's story: its directory, environment and namespace."""

    def __init__(
        self, directory: Path, redis_url: str, start_worker: Callable[..., WorkerProcess]
    ) -> None:
        self.directory = directory
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.start_worker = start_worker
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
        self.env.update(
            REDIS_URL=redis_url,
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            PYTHONPATH=str(directory),
            PYTHONUNBUFFERED="1",
        )

    def python(self, block: Block) -> None:
        if block.file:
            target = self.directory / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
            importlib.invalidate_caches()
            module = importlib.import_module(block.file.removesuffix(".py").replace("/", "."))
            self.namespace.update(
                (name, value) for name, value in vars(module).items() if not name.startswith("_")
            )
            return
        exec(compile(block.text, block.where, "exec"), self.namespace)

    def pycon(self, block: Block) -> None:
        test = doctest.DocTestParser().get_doctest(
            block.text, self.namespace, block.where, str(block.path), block.line
        )
        test.globs = self.namespace  # doctest runs on a copy; a page is one namespace
        report: list[str] = []
        runner = doctest.DocTestRunner(optionflags=_FLAGS)
        runner.run(test, out=report.append, clear_globs=False)
        if runner.failures:
            pytest.fail(f"{block.where}: pycon block failed:\n{''.join(report)}", pytrace=False)

    def console(self, block: Block) -> None:
        for command, want in _commands(block.text):
            words = shlex.split(command, comments=True)
            if words[:1] == ["celery"] and "worker" in words:
                self._worker(block, words)
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=self.directory,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=_RUN_TIMEOUT,
                check=False,
            )
            got = done.stdout + done.stderr
            if done.returncode != 0:
                pytest.fail(
                    f"{block.where}: `{command}` exited {done.returncode}:\n{got}", pytrace=False
                )
            if want.strip() and not doctest.OutputChecker().check_output(want, got, _FLAGS):
                pytest.fail(
                    f"{block.where}: `{command}` printed\n{got}\nbut the page shows\n{want}",
                    pytrace=False,
                )

    def _worker(self, block: Block, words: list[str]) -> None:
        app, extra, rest = "", [], words[1:]
        while rest:
            word = rest.pop(0)
            if word in {"-A", "--app"}:
                app = rest.pop(0)
            elif word in {"-l", "--loglevel"}:
                rest.pop(0)
            elif word != "worker":
                extra.append(word)
        if not app:
            pytest.fail(f"{block.where}: a worker command without -A APP", pytrace=False)
        self.start_worker(app, cwd=self.directory, env=self.env, extra_args=extra).wait_ready(60)


def _commands(text: str) -> Iterator[tuple[str, str]]:
    """``(command, output shown under it)`` for every ``$ `` line of a console block."""
    command: str | None = None
    output: list[str] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, "\n".join(output)
            command, output = line[2:], []
        elif command is not None and command.endswith("\\"):
            command = command[:-1] + line
        else:
            output.append(line)
    if command is not None:
        yield command, "\n".join(output)


def _compile(block: Block) -> None:
    """Compile a fragment: Python source, pycon examples, or shell words."""
    if block.language == "python":
        compile(block.text, block.where, "exec")
    elif block.language == "pycon":
        for example in doctest.DocTestParser().get_examples(block.text):
            compile(example.source, block.where, "single")
    else:
        commands = list(_commands(block.text))
        assert commands, f"{block.where}: a console block with no `$ ` line"
        for command, _ in commands:
            shlex.split(command, comments=True)


def _parse(block: Block) -> None:
    if block.language == "json":
        json.loads(block.text)
    else:
        yaml.safe_load(block.text)


@pytest.fixture
def page_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's working directory, on sys.path; its modules are forgotten afterwards.

    So are its shared tasks: ``@app.task`` registers each task with every app finalized
    later in the process (Celery's private ``celery._state._on_app_finalizers``), and two
    pages' ``billing.tasks.charge`` would otherwise meet in a third page's app.
    """
    finalizers = celery_state._on_app_finalizers
    assert isinstance(finalizers, set), "celery._state._on_app_finalizers is no longer a set"
    before = set(finalizers)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield tmp_path
    finally:
        finalizers.intersection_update(before)
        for name, module in list(sys.modules.items()):
            where = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
            if any(str(p).startswith(str(tmp_path)) for p in where):
                del sys.modules[name]


def run_page(path: Path, page: Page) -> Counter[str]:
    """Run, compile or parse every block of ``path`` in order; fail at the first broken one."""
    counts: Counter[str] = Counter()
    for block in blocks(path):
        if block.directive:
            counts["directive"] += 1
        elif block.language in TEXT:
            counts["text"] += 1
        elif block.language in DATA:
            _parse(block)
            counts["parsed"] += 1
        elif block.language not in CODE:
            pytest.fail(
                f"{block.where}: a block in {block.language or 'no language'!r}; say what it "
                f"is (python, pycon, console, json, yaml, text) so the harness can check it",
                pytrace=False,
            )
        elif block.fragment:
            try:
                _compile(block)
            except (SyntaxError, ValueError) as exc:
                pytest.fail(f"{block.where}: fragment does not compile: {exc}", pytrace=False)
            counts["compiled"] += 1
        else:
            if _DEFAULT_REDIS.search(block.text):
                pytest.fail(
                    f"{block.where}: names the default Redis on port 6379, which the harness "
                    f"never uses; let the code read $REDIS_URL (make_app() does)",
                    pytrace=False,
                )
            _run(block, page)
            counts["executed"] += 1
    return counts


def _run(block: Block, page: Page) -> None:
    error = ""
    try:
        if block.language == "python":
            page.python(block)
        elif block.language == "pycon":
            page.pycon(block)
        else:
            page.console(block)
    except pytest.fail.Exception:
        raise
    except Exception:
        error = traceback.format_exc()
    if error:
        pytest.fail(f"{block.where}: {block.language} block raised\n{error}", pytrace=False)


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_page_runs_as_shown(
    path: Path,
    page_directory: Path,
    redis_url: str,
    celery_worker_process: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    doc_counts: Counter[str],
) -> None:
    for name in [k for k in os.environ if k.startswith("CELERY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", redis_url)
    page = Page(page_directory, redis_url, celery_worker_process)
    try:
        counts = run_page(path, page)
    finally:
        # Signal receivers a page connects (tasks.md's setup_logging) are weak references:
        # drop the page's names so they go now, not in a later test.
        page.namespace.clear()
        gc.collect()
    doc_counts.update(counts)
    doc_counts["pages"] += 1
    print(f"{path.name}: {dict(counts)}")
