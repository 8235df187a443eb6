"""docs/troubleshooting.md covers every exception class of celeryredis."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_CLASS = re.compile(r"^class (\w+)\((?:[\w.]+, )*[\w.]*(?:Error|Exception)\b", re.MULTILINE)


def test_every_exception_class_has_a_section() -> None:
    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    headings = "\n".join(line for line in page.splitlines() if line.startswith("## "))
    classes = {
        name
        for source in (ROOT / "src" / "celeryredis").rglob("*.py")
        for name in _CLASS.findall(source.read_text(encoding="utf-8"))
    }
    assert len(classes) >= 13, sorted(classes)
    missing = sorted(name for name in classes - {"CeleryRedisError"} if name not in headings)
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"
    table_rows = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `")}
    assert classes - {"CeleryRedisError"} <= table_rows, sorted(classes - table_rows)
