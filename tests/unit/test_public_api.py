"""The public API is what docs/api.md documents: every top-level name is there."""

from __future__ import annotations

import re
from pathlib import Path

import celeryredis

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_top_level_name_is_documented() -> None:
    text = API.read_text()
    undocumented = [
        name
        for name in celeryredis.__all__
        if not name.startswith("__") and not re.search(rf"\b{re.escape(name)}\b", text)
    ]
    assert not undocumented, f"docs/api.md does not document {undocumented}"
