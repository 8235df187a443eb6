"""Sphinx configuration: offline, warnings are errors (``sphinx-build -n -W``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from celeryredis_reference import substitutions  # found through the path above

import celeryredis

project = "celeryredis"
author = "celeryredis developers"
copyright = "2026, celeryredis developers"
# The installed package's version, shown on every page (furo's sidebar title).
release = celeryredis.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "celeryredis_reference",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["substitution"]
# Numbers the prose quotes (``{{ production_vt }}``), computed from the presets.
myst_substitutions = {**substitutions(), "version": release}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# furo: a responsive layout whose tables scroll sideways instead of being cut off.
html_theme = "furo"
html_title = f"celeryredis {release}"
html_static_path = ["_static"]
html_css_files = ["celeryredis.css"]

# Names autodoc cannot resolve without intersphinx (there is no network at build time).
# Only names that are not ours: every public celeryredis name must resolve.
nitpick_ignore_regex = [
    # Third-party: Celery, kombu, redis-py (annotations such as ``Celery`` or ``redis.Redis``).
    (r"py:.*", r"(celery|kombu|redis|prometheus_client)(\..*)?"),
    (r"py:.*", r"Celery"),
    # The standard library.
    (r"py:.*", r"(collections\.abc|typing|types|pathlib|re|logging|contextvars|datetime)\..*"),
    (r"py:.*", r"Path"),
    # Private helpers of ours that appear in signatures (e.g. the ``_Unset`` sentinel).
    (r"py:.*", r"celeryredis(\.\w+)*\._\w+"),
]
