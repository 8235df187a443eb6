"""Fenced code blocks of the Markdown docs, and what the doc-test harness does with each.

A page is a story: its blocks run in order, in one namespace, against a throwaway Redis.
What happens to a block is decided by its language and by an HTML comment on the line(s)
just above it:

- ``python``: executed. A block whose first line is a file comment (``# proj/tasks.py``) is
  written to that file in the page's directory and imported, and its names join the
  page's namespace, as a reader's ``from proj.tasks import *`` would.
- ``pycon``: run as a doctest in the page's namespace (``...`` matches anything).
- ``console`` / ``bash`` / ``shell``: every ``$ `` line is run in the page's directory with
  ``REDIS_URL`` pointing at the throwaway server, and must exit 0; output lines shown
  under it are compared (``...`` matches anything). ``celery ... worker ...`` starts a
  real worker for the rest of the page instead.
- ``json`` / ``yaml``: parsed.
- ``text``: sample output, not code.

``<!-- fragment -->`` (optionally ``<!-- fragment: why -->``) above a block says it does not
run as shown (a synopsis, a sketch, a host project's code): Python and pycon fragments are
still compiled, console fragments still split like a shell would. Nothing is skipped
silently: a block in any other language fails the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CODE", "DATA", "SHELL", "TEXT", "Block", "blocks"]

SHELL = frozenset({"console", "bash", "shell", "sh"})
CODE = frozenset({"python", "pycon"}) | SHELL
DATA = frozenset({"json", "yaml"})
TEXT = frozenset({"text"})

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<word>fragment)\b\s*:?\s*(?P<why>.*?)\s*-->\s*$")
_FILE = re.compile(r"^#\s*(?P<path>[\w./-]+\.py)\b")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str  # the info string's first word; "" when there is none
    text: str
    fragment: bool
    why: str

    @property
    def where(self) -> str:
        """``docs/page.md:LINE``, for messages."""
        return f"{self.path.name}:{self.line}"

    @property
    def directive(self) -> bool:
        """A MyST directive (``{note}``, ``{toctree}``, ``{eval-rst}``), not a code sample."""
        return self.language.startswith("{")

    @property
    def file(self) -> str | None:
        """The file a Python block stands for (its first line ``# pkg/mod.py``), if any."""
        first = self.text.lstrip("\n").split("\n", 1)[0]
        match = _FILE.match(first)
        return match.group("path") if match else None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, in order, with the fragment marker above each."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, indent = match.group("fence"), len(match.group("indent"))
        info = match.group("info").strip()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines):
            closing = lines[index].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        index += 1
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = _MARKER.match(lines[above]) if above >= 0 else None
        found.append(
            Block(
                path=path,
                line=start + 1,
                language=info.split()[0] if info else "",
                text="\n".join(body) + "\n",
                fragment=marker is not None,
                why=marker.group("why") if marker else "",
            )
        )
    return found
