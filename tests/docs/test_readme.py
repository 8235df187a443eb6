"""README.md is PyPI's project page: it must render there and lead a reader to the docs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_links_are_absolute_and_it_has_no_myst_syntax() -> None:
    relative = [t for t in re.findall(r"\]\(([^)]+)\)", README) if not t.startswith("https://")]
    assert not relative, f"relative links do not work on PyPI: {relative}"
    roles = re.findall(r"\{[a-z:]+\}`[^`]*`", README)
    assert not roles, f"MyST roles show as raw text on PyPI: {roles}"
    assert "```{" not in README, "a MyST directive shows as raw text on PyPI"


def test_readme_leads_with_install_and_demo_and_keeps_the_test_command() -> None:
    first_block = README.split("```console\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines() == ["$ pip install celeryredis", "$ celeryredis demo"]
    assert "$ make test" in README


def test_project_urls_point_where_the_readme_does() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.urls]\n", 1)[1].split("\n\n", 1)[0]  # 3.10: no tomllib
    urls = dict(re.findall(r'^(\w+) = "([^"]+)"$', section, re.MULTILINE))
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    assert urls["Documentation"] in README
    assert urls["Homepage"] in README
