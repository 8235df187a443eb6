"""Lua scripts, each headed by its KEYS/ARGV/return contract, loaded per client."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["source"]


@cache
def source(name: str) -> str:
    """The text of ``_scripts/<name>.lua``."""
    return files(__package__).joinpath(f"{name}.lua").read_text()
