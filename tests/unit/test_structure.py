"""The package's structure rules that import-linter's layers cannot express (issue 15).

- Only :mod:`celeryredis.app` imports :mod:`celeryredis.transport` (the transport is
  selected by the settings layer; nothing else reaches into it), except that
  :mod:`celeryredis.queues` asks the package for a cluster queue's key names
  (``cluster_queue_keys``), so that queue inspection follows the cluster transport.
- :mod:`celeryredis.keys` is the only module that spells a Redis key name of ours
  (``celeryredis:...``); every other module asks it.
- Every module declares ``__all__``, and every name in it exists.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import celeryredis

SRC = Path(celeryredis.__file__).resolve().parent
#: Modules that import an optional dependency: {module: the dependency}.
OPTIONAL = {"celeryredis.tasks.django": "django", "celeryredis.metrics": "prometheus_client"}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        found.append((name, path))
    return found


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


#: Modules that may import names from the transport package itself: {module: names}.
TRANSPORT_NAMES = {
    "celeryredis.queues": {
        "celeryredis.transport.cluster_queue_keys",
        "celeryredis.transport.configured_partitions",
        "celeryredis.transport.recorded_partitions",
    },
    "celeryredis.worker": {
        "celeryredis.transport.cluster_queue_keys",
        "celeryredis.transport.configured_partitions",
        "celeryredis.transport.is_cluster_broker",
        "celeryredis.transport.recorded_partitions",
    },
}


def test_only_app_imports_the_transport() -> None:
    offenders = []
    for name, path in _modules():
        if name == "celeryredis.app" or name.startswith("celeryredis.transport"):
            continue
        imported = _imported(ast.parse(path.read_text()))
        allowed = TRANSPORT_NAMES.get(name, set())
        if allowed:
            imported -= {*allowed, "celeryredis.transport"}
        if any(
            i == "celeryredis.transport" or i.startswith("celeryredis.transport.") for i in imported
        ):
            offenders.append(name)
    assert not offenders, f"only celeryredis.app may import celeryredis.transport: {offenders}"


def _key_literals(tree: ast.AST) -> list[str]:
    """String constants that look like one of our Redis key names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith("celeryredis:") and not text.startswith("celeryredis://"):
                head = text.split(" ", 1)[0]
                if head == text or head.endswith(":"):  # a key or key prefix, not a log line
                    found.append(text)
    return found


def test_key_names_are_spelt_only_in_keys() -> None:
    offenders = {
        name: literals
        for name, path in _modules()
        if name != "celeryredis.keys"
        and (literals := [t for t in _key_literals(ast.parse(path.read_text())) if " " not in t])
    }
    assert not offenders, f"key names belong in celeryredis.keys: {offenders}"


def test_every_module_declares_all_and_its_names_exist() -> None:
    missing = []
    for info in pkgutil.walk_packages(celeryredis.__path__, "celeryredis."):
        if info.name in OPTIONAL and importlib.util.find_spec(OPTIONAL[info.name]) is None:
            continue  # needs an optional dependency that is not installed
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            missing.append(f"{info.name}: no __all__")
            continue
        missing += [f"{info.name}.{n}" for n in exported if not hasattr(module, n)]
    assert not missing, missing
