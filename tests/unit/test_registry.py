"""The settings registry is the one home of the ``celeryredis_*`` settings."""

from __future__ import annotations

import re
from pathlib import Path

from celeryredis.presets import LIBRARY_SETTINGS, PRESETS
from celeryredis.registry import SETTINGS, default, setting

SRC = Path(__file__).resolve().parents[2] / "src" / "celeryredis"
# A read of a setting: conf.get("celeryredis_x"), conf["celeryredis_x"], setting(conf, "...").
READ = re.compile(
    r"""(?:conf\.get\(|conf\[|setting\([^,()]+,\s*)\s*["'](celeryredis_[a-z_]+)["']"""
)


def test_every_celeryredis_setting_read_in_the_package_is_registered() -> None:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        names.update(match.group(1) for match in READ.finditer(path.read_text()))
    assert names, "the scan found nothing: its pattern is wrong"
    assert names <= set(SETTINGS), sorted(names - set(SETTINGS))


def test_presets_and_the_library_table_read_the_registry() -> None:
    assert {n: d for n, (d, _) in LIBRARY_SETTINGS.items()} == {
        n: s.default for n, s in SETTINGS.items()
    }
    for preset in PRESETS.values():
        for name in preset:
            if name.startswith("celeryredis_"):
                assert name in SETTINGS, (preset.name, name)


def test_setting_falls_back_to_the_default_for_unset_and_none() -> None:
    assert setting({}, "celeryredis_lease_seconds") == default("celeryredis_lease_seconds")
    assert setting({"celeryredis_lease_seconds": None}, "celeryredis_lease_seconds") == 30.0
    assert setting({"celeryredis_lease_seconds": 7}, "celeryredis_lease_seconds") == 7
    for entry in SETTINGS.values():
        assert entry.reason.strip()
        assert entry.name.startswith("celeryredis_")
        if entry.choices:
            assert entry.default in entry.choices
