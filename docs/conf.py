"""Sphinx configuration: offline, warnings are errors (``sphinx-build -n -W``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "celeryredis"
author = "celeryredis developers"
copyright = "2026, celeryredis developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "celeryredis_reference",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
html_static_path: list[str] = []

# Third-party names that autodoc cannot resolve without intersphinx (no network at build time).
nitpick_ignore_regex = [
    (r"py:.*", r"(celery|kombu|redis)(\..*)?"),
    (r"py:.*", r"(Celery|Any|Final|Mode|Severity|PresetSpec|_Unset|Path|TracebackType)"),
    (r"py:.*", r"(collections\.abc|typing|types|pathlib|re|logging|contextvars)\..*"),
    (r"py:.*", r"celeryredis\.(app|presets|validation)\._.*"),
    (r"py:.*", r"(Setting|Preset|Finding|Check|RedisURL|ExplainRow|RedisServer|WorkerProcess)"),
]
