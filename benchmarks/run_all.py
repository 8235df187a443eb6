"""Run every benchmark against one throwaway redis-server; write the results.

``make bench`` runs this. It writes ``benchmarks/results/summary.md`` and
``summary.json`` and the docs page ``docs/benchmarks.md``, each with the machine and
versions the figures were measured on. Not part of ``make test``: figures are
measured here, never asserted by tests.

A partial run (``--only`` some sections) writes ``benchmarks/results/<sections>.md`` and
``.json`` instead, and leaves the full run's summary and docs page alone.

Usage: python benchmarks/run_all.py [--only publish,drain,overhead,peers,latency,transport]
       [--quick]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from celeryredis.testing import RedisServer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import bench_drain  # noqa: E402
import bench_latency  # noqa: E402
import bench_peers  # noqa: E402
import bench_publish  # noqa: E402
import bench_task_overhead  # noqa: E402
import bench_transport  # noqa: E402
from _harness import Section, machine  # noqa: E402

SECTIONS = ("publish", "drain", "overhead", "peers", "latency", "transport")


def main() -> int:
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the redis-server and workers we
    # started are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="Small N, one run (a smoke run).")
    opts = parser.parse_args()
    chosen = [s.strip() for s in opts.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    q = opts.quick
    started = time.monotonic()
    sections: list[Section] = []
    info = machine()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url_for(0)
        for name in chosen:
            workdir = Path(tmp) / name
            workdir.mkdir()
            print(f"== {name}", flush=True)
            if name == "publish":
                sections.append(
                    bench_publish.run(url, workdir, 2000 if q else 20_000, 1 if q else 5)
                )
            elif name == "drain":
                sections.append(bench_drain.run(url, workdir, 1000 if q else 5000, 1 if q else 3))
            elif name == "overhead":
                sections.append(
                    bench_task_overhead.run(url, workdir, 1000 if q else 3000, 1 if q else 3)
                )
            elif name == "peers":
                sections.append(bench_peers.run(url, workdir, 1000 if q else 5000, 1 if q else 3))
            elif name == "latency":
                sections.append(bench_latency.run(url, workdir, 50 if q else 300, 1 if q else 3))
            elif name == "transport":
                sections.append(
                    bench_transport.run(
                        url, workdir, 1000 if q else 5000, 1 if q else 3, 50 if q else 300
                    )
                )
    minutes = (time.monotonic() - started) / 60
    partial = set(chosen) != set(SECTIONS)
    run_name = f"`run_all.py --only {','.join(chosen)}`" if partial else "`make bench`"
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in {"date", "cpu"})
    header = (
        f"Measured {info['date']} on {info['cpu']}; {versions}. "
        f"Every figure is from one {run_name} run ({minutes:.0f} min"
        f"{', --quick' if q else ''}) against a throwaway redis-server on loopback "
        "(`--save '' --appendonly no`); the machine's two cores are shared, so absolute "
        "figures move by ±20 % between runs while the ratios, measured side by side in "
        "the same repetition, move less."
    )
    body = "\n".join(section.markdown() for section in sections)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    if partial:
        stem = results / "-".join(chosen)
        stem.with_suffix(".md").write_text(
            f"# Benchmarks: {', '.join(chosen)}\n\n{header}\n\n{body}"
        )
        stem.with_suffix(".json").write_text(
            json.dumps(
                {"machine": info, "quick": q, "sections": {s.title: s.data for s in sections}},
                indent=2,
            )
        )
        print(f"\n{body}")
        print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')} (a partial run)")
        return 0
    (results / "summary.md").write_text(f"# Benchmarks\n\n{header}\n\n{body}")
    (results / "summary.json").write_text(
        json.dumps(
            {"machine": info, "quick": q, "sections": {s.title: s.data for s in sections}},
            indent=2,
        )
    )
    docs = HERE.parent / "docs" / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\n"
        "<!-- Generated by `make bench` (benchmarks/run_all.py); do not edit. -->\n\n"
        f"{header}\n\n"
        "Run them yourself with `make bench` (about 15 minutes; it installs RQ and "
        "Dramatiq from the `bench` dependency group). Each section's method is in the "
        "docstring of its script in `benchmarks/`.\n\n"
        f"{body}"
    )
    print(f"\n# Benchmarks\n\n{header}\n\n{body}")
    print(f"wrote {results / 'summary.md'}, {results / 'summary.json'} and {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
