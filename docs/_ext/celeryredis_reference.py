"""Generate the reference pages that must not drift from the code.

On ``builder-inited`` it writes ``reference/presets.md`` and ``reference/checks.md``
from :data:`celeryredis.presets.PRESETS`, :data:`celeryredis.presets.LIBRARY_SETTINGS`
and :data:`celeryredis.validation.CHECKS`. The generated files are gitignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celeryredis.presets import DERIVED, LIBRARY_SETTINGS, PRESETS
from celeryredis.validation import CHECKS


def _cell(value: Any) -> str:
    text = "derived" if value is DERIVED else f"`{value!r}`"
    return text.replace("|", "\\|")


def presets_page() -> str:
    lines = [
        "# Presets",
        "",
        "Generated from `celeryredis.presets` at build time. A preset maps setting names to",
        "values, each with a one-line reason; `<dict setting>.<key>` is one key of a dict",
        'setting that is merged key by key. Pass a preset by name (`preset="production"`),',
        "as an object (`PRODUCTION.with_(worker_prefetch_multiplier=4)`), or as a list of",
        "presets and dicts applied in order.",
        "",
    ]
    for preset in PRESETS.values():
        lines += [f"## `{preset.name}`", "", preset.description, ""]
        lines += ["| setting | value | reason |", "|---|---|---|"]
        for name, setting in sorted(preset.settings.items()):
            lines.append(f"| `{name}` | {_cell(setting.value)} | {setting.reason} |")
        lines.append("")
    lines += [
        "## Library settings (`celeryredis_*`)",
        "",
        "| setting | default | meaning |",
        "|---|---|---|",
    ]
    for name, (default, meaning) in LIBRARY_SETTINGS.items():
        lines.append(f"| `{name}` | {_cell(default)} | {meaning} |")
    lines.append("")
    return "\n".join(lines)


def checks_page() -> str:
    lines = [
        "# Validation checks",
        "",
        "Generated from `celeryredis.validation.CHECKS` at build time. The checks run when",
        "`make_app()` / `configure()` build the app and again when a worker starts (a",
        "bootstep that stops the worker with the findings' message).",
        "",
        'Modes: `validate="error"` (the default) raises one `ConfigurationError` listing',
        'every error-severity finding and logs warnings; `"warn"` logs everything;',
        '`"ignore"` drops everything. Per check: `validate={"*": "error",',
        '"restore-sweep-slow": "ignore"}`, or the setting',
        '`celeryredis_validate_checks={check_id: mode}`. A check set to `"error"`',
        "explicitly raises even when its severity is `warning`.",
        "",
        "| id | severity | refuses | because |",
        "|---|---|---|---|",
    ]
    for check in CHECKS.values():
        lines.append(f"| `{check.id}` | {check.severity} | {check.title} | {check.why} |")
    lines.append("")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:  # keep mtimes stable for incremental builds
        path.write_text(text)


def generate(app: Any) -> None:
    out = Path(app.srcdir) / "reference"
    out.mkdir(exist_ok=True)
    _write(out / "presets.md", presets_page())
    _write(out / "checks.md", checks_page())


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
