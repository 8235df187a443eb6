"""The private Celery/kombu API celeryredis uses: where it may be used, and that it exists.

Each test fails with the name at fault and what to do, so a Celery or kombu upgrade that
breaks a shim is found here (``make compat`` runs this file on each edge of the range).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import re
import tokenize
import types
from functools import cache
from pathlib import Path

import celery
import pytest

from celeryredis import _celery_compat, _kombu_compat

SRC = Path(_celery_compat.__file__).parent
#: Modules that hold the private API behind small functions (no further rule applies).
SHIMS = frozenset({"_celery_compat.py", "_kombu_compat.py"})
#: Modules that subclass kombu classes: each private kombu name they use must be an entry
#: of _kombu_compat.PRIVATE_API; their own private names that happen to also occur in
#: Celery's or kombu's source are listed here.
SUBCLASSES: dict[str, frozenset[str]] = {
    "transport/_reliable.py": frozenset({"_key", "_lock", "_leases", "_probe"}),
    "_kombu_batch.py": frozenset({"_collector", "_declared"}),
    "cluster.py": frozenset(),
    "transport/_cluster.py": frozenset(
        {"_client", "_fanout", "_keys", "_lock", "_no_ack", "_pending", "_leases", "_steps"}
        | {"_subscribe"}
    ),
}
_PRIVATE = re.compile(r"_[A-Za-z]\w*")


@cache
def _dependency_private_names() -> frozenset[str]:
    """Every private identifier in the installed Celery's and kombu's source."""
    names: set[str] = set()
    for package in ("celery", "kombu"):
        root = Path(importlib.import_module(package).__file__ or "").parent
        for path in root.rglob("*.py"):
            names.update(re.findall(r"\b_[A-Za-z]\w*", path.read_text(encoding="utf-8")))
    return frozenset(n for n in names if not n.startswith("__"))


def _modules() -> list[tuple[str, str]]:
    return [
        (path.relative_to(SRC).as_posix(), path.read_text(encoding="utf-8"))
        for path in sorted(SRC.rglob("*.py"))
    ]


def _used(text: str) -> set[str]:
    """Private names a module reads, writes, overrides, quotes or imports from Celery/kombu.

    Attribute names after a dot, names after ``def``, identifiers quoted on their own
    (``getattr(x, "_name")``, set members) and names imported from celery or kombu.
    Comments and docstrings are not code and are not read.
    """
    found: set[str] = set()
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    for index, token in enumerate(tokens):
        before = tokens[index - 1] if index else None
        if token.type == tokenize.NAME and _PRIVATE.fullmatch(token.string) and before:
            if before.string in {".", "def"}:
                found.add(token.string)
        elif token.type == tokenize.STRING:
            quoted = re.fullmatch(r"[rbuRBU]*(['\"])(_[A-Za-z]\w*)\1", token.string)
            if quoted:
                found.add(quoted.group(2))
    for module, names in re.findall(
        r"^\s*from\s+((?:celery|kombu)\S*)\s+import\s+([^\n]+)", text, re.M
    ):
        found.update(
            n for n in re.findall(r"\b_[A-Za-z]\w*", names) if not module.startswith("celeryredis")
        )
    return found


def _own(text: str) -> set[str]:
    """Names a module defines itself: functions, classes, assignment targets, arguments."""
    own: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.alias):
            own.add(node.asname or node.name)
    return own


def test_no_private_celery_or_kombu_name_outside_the_shim_modules() -> None:
    dependency = _dependency_private_names()
    modules = _modules()
    plain = [(name, text) for name, text in modules if name not in SHIMS and name not in SUBCLASSES]
    own = set().union(*(_own(text) for _, text in plain))
    offenders = {
        name: sorted((_used(text) - own) & dependency)
        for name, text in plain
        if (_used(text) - own) & dependency
    }
    assert not offenders, (
        f"private Celery/kombu names used outside the shim modules: {offenders}. Move each use "
        "into celeryredis/_celery_compat.py or _kombu_compat.py (a small function, and an "
        "entry of its PRIVATE_API) and call that instead."
    )


def test_no_private_override_outside_the_shim_modules() -> None:
    """A class of ours that overrides a private Celery/kombu method must live in a shim."""
    found = []
    for name, _ in _modules():
        if name in SHIMS or name in SUBCLASSES or name.endswith("__main__.py"):
            continue
        if name == "tasks/django.py" and importlib.util.find_spec("django") is None:
            continue  # needs Django (an example host's dependency), not installed here
        module = importlib.import_module(
            "celeryredis." + name[:-3].replace("/", ".").removesuffix(".__init__")
        )
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            bases = [
                b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in {"celery", "kombu"}
            ]
            for attr in vars(cls):
                if _PRIVATE.fullmatch(attr) and any(hasattr(b, attr) for b in bases):
                    found.append(f"{module.__name__}.{cls.__name__}.{attr}")
    assert not found, f"private Celery/kombu methods overridden outside the shim modules: {found}"


@pytest.mark.parametrize("module", sorted(SUBCLASSES))
def test_subclass_modules_use_only_listed_private_kombu_names(module: str) -> None:
    text = (SRC / module).read_text(encoding="utf-8")
    listed = {entry[2] for entry in _kombu_compat.PRIVATE_API}
    listed |= {entry[0].rsplit(".", 1)[1] for entry in _celery_compat.PRIVATE_API}
    unlisted = sorted((_used(text) & _dependency_private_names()) - listed - SUBCLASSES[module])
    assert not unlisted, (
        f"{module} uses private kombu/Celery names not in _kombu_compat.PRIVATE_API: {unlisted}. "
        "Add an entry for each (module, class, name, how to find it, why) so the installed "
        "kombu is checked for it; a name of the module's own goes into SUBCLASSES in this test."
    )


def test_every_listed_private_celery_name_exists_in_the_installed_celery() -> None:
    assert not _celery_compat.missing(), _celery_compat.missing()
    _celery_compat.check()


def test_every_listed_private_kombu_name_exists_in_the_installed_kombu() -> None:
    assert not _kombu_compat.missing(), _kombu_compat.missing()
    _kombu_compat.check()


def test_the_celery_code_enqueue_many_mirrors_is_unchanged() -> None:
    assert not _celery_compat.mirrored_changes(), (
        f"{_celery_compat.mirrored_changes()}: compare bulk._Sender.send with the new source, "
        "adapt it, then add the version's hash (_celery_compat.source_hash) to MIRRORED."
    )


def test_a_missing_private_name_is_named_with_the_version_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        _kombu_compat,
        "PRIVATE_API",
        (*_kombu_compat.PRIVATE_API, ("kombu.transport.redis", "Channel", "_gone", "class", "why")),
    )
    with pytest.raises(ImportError) as kombu_error:
        _kombu_compat.check()
    message = str(kombu_error.value)
    assert "kombu.transport.redis.Channel._gone (why)" in message
    assert "kombu[redis]>=5.7,<5.8" in message
    assert ".".join(map(str, _kombu_compat.KOMBU_VERSION)) in message

    monkeypatch.setattr(
        _celery_compat,
        "PRIVATE_API",
        (*_celery_compat.PRIVATE_API, ("celery.app.task.Task._gone", "method", "why")),
    )
    with pytest.raises(
        ImportError, match=r"celery\.app\.task\.Task\._gone \(why\).*celery>=5\.7,<6"
    ):
        _celery_compat.check()


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: _celery_compat.require_supported((5, 4, 0)),
            r"Celery >= 5\.7, found 5\.4\.0.*task_retry_on_worker_lost",
        ),
        (lambda: _celery_compat.require_supported((5, 6, 3)), r"Celery >= 5\.7, found 5\.6\.3"),
        (
            lambda: _kombu_compat.require_supported((5, 4, 2)),
            r"kombu >= 5\.7, found 5\.4\.2.*publish-batch",
        ),
        (
            lambda: _kombu_compat.require_supported((5, 7, 0), (5, 0, 1)),
            r"redis-py >= 6\.4, found 5\.0\.1",
        ),
    ],
)
def test_an_older_dependency_is_refused_by_name(call: types.FunctionType, pattern: str) -> None:
    with pytest.raises(ImportError, match=pattern):
        call()


def test_a_newer_dependency_is_checked_for_the_private_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = ("kombu.transport.redis", "Channel", "_gone", "class", "why")
    monkeypatch.setattr(_kombu_compat, "PRIVATE_API", (*_kombu_compat.PRIVATE_API, gone))
    _kombu_compat.require_supported((5, 7, 9))  # inside the tested range: trusted
    with pytest.raises(ImportError, match=r"kombu 5\.\d+\.\d+: it lacks .*Channel\._gone"):
        _kombu_compat.require_supported((5, 8, 0))
    monkeypatch.setattr(
        _celery_compat,
        "PRIVATE_API",
        (*_celery_compat.PRIVATE_API, ("celery.Celery._gone", "", "why")),
    )
    _celery_compat.require_supported((5, 7, 9))
    with pytest.raises(ImportError, match=r"lacks celery\.Celery\._gone"):
        _celery_compat.require_supported((6, 0, 0))


def test_the_key_layout_is_kombus() -> None:
    kombu_redis = importlib.import_module("kombu.transport.redis")
    channel = kombu_redis.Channel
    assert channel.keyprefix_queue % ("",) == _kombu_compat.BINDING_KEY_HEAD
    assert channel.sep == _kombu_compat.DEFAULT_SEP
    assert list(_kombu_compat.DEFAULT_PRIORITY_STEPS) == list(kombu_redis.PRIORITY_STEPS)
    assert channel.keyprefix_queue % ("celery",) == _kombu_compat.BINDING_KEY_HEAD + "celery"
    fake = types.SimpleNamespace(sep=channel.sep, priority_steps=kombu_redis.PRIORITY_STEPS)
    fake.priority = lambda n: channel.priority(fake, n)
    for step in _kombu_compat.DEFAULT_PRIORITY_STEPS:
        assert _kombu_compat.queue_key("p:", "q", step) == "p:" + channel._q_for_pri(
            fake, "q", step
        )


def test_old_setting_names_and_class_keys_come_from_celery() -> None:
    assert _celery_compat.old_setting_names()["CELERY_ACKS_LATE"] == "task_acks_late"
    seen: list[dict[str, object]] = []

    class Recording(celery.Task):  # type: ignore[type-arg]
        def __init_subclass__(cls, **kwargs: object) -> None:
            super().__init_subclass__(**kwargs)
            seen.append(dict(vars(cls)))  # the dict as the decorator built it, before bind()

    app = celery.Celery(set_as_current=False, task_cls=Recording)

    @app.task(shared=False, lazy=False)
    def add(x: int, y: int) -> int:
        return x + y

    assert add(1, 2) == 3
    made = seen[-1]
    assert _celery_compat.made_by_decorator(made)
    assert not _celery_compat.made_by_decorator(vars(celery.Task))
    unknown = set(made) - _celery_compat.decorated_class_keys()
    assert not unknown, f"Celery puts keys into a task class dict the shim does not know: {unknown}"


def test_the_development_docs_list_every_private_name() -> None:
    # From the tree (make compat imports celeryredis from an installed copy).
    text = (Path(__file__).parents[2] / "docs" / "development.md").read_text(encoding="utf-8")
    names = [entry[0].rsplit(".", 1)[1] for entry in _celery_compat.PRIVATE_API]
    names += [entry[2] for entry in _kombu_compat.PRIVATE_API]
    names += [
        dotted.rsplit(".", 2)[1] + "." + dotted.rsplit(".", 1)[1]
        for dotted in _celery_compat.MIRRORED
    ]
    absent = [name for name in names if f"{name}`" not in text and f"{name}," not in text]
    assert not absent, f"docs/development.md does not list these private names: {absent}"


def test_the_result_message_buffer_exists_on_a_real_backend() -> None:
    """``discard_buffered_result`` relies on ``BaseBackend._pending_messages``."""
    from celery import Celery

    app = Celery("buffer_pin", backend="redis://127.0.0.1:1/0", set_as_current=False)
    backend = app.backend  # builds the backend object; opens no connection
    buffered = backend._pending_messages
    buffered.put("t1", {"status": "FAILURE", "task_id": "t1"})
    assert buffered.total == 1
    _celery_compat.discard_buffered_result(backend, "t1")
    assert "t1" not in buffered
    assert buffered.total == 0
    _celery_compat.discard_buffered_result(backend, "t1")  # nothing buffered: no error
