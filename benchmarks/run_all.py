"""Run every benchmark against one throwaway redis-server; write the results.

``make bench`` runs this. It writes ``benchmarks/results/summary.md`` and
``summary.json`` and the docs page ``docs/benchmarks.md``, each with the machine and
versions the figures were measured on. Not part of ``make test``: figures are
measured here, never asserted by tests.

The first table judges the goals of issue 16 from the ratios measured in this run
(``_goals.py``). A full run takes about 15–20 minutes on 2 cores.

A partial run (``--only`` some sections) writes ``benchmarks/results/<sections>.md`` and
``.json`` instead, and leaves the full run's summary and docs page alone. ``--quick`` is a
smoke run for developers (small N, one repetition, under 3 minutes): it is labelled so in
its output, writes ``benchmarks/results/quick.{md,json}`` (or ``quick-<sections>``) and
never the summary or ``docs/benchmarks.md``.

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
from _goals import goal_section  # noqa: E402
from _harness import Section, machine  # noqa: E402

SECTIONS = ("publish", "drain", "overhead", "peers", "latency", "transport")
SMOKE = "**SMOKE RUN (`--quick`)**: not a measurement"


def main() -> int:
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the redis-server and workers we
    # started are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A smoke run: small N, one repetition, under 3 minutes; never written to the docs.",
    )
    opts = parser.parse_args()
    chosen = [s.strip() for s in opts.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    q = opts.quick
    started = time.monotonic()
    if q:
        print(f"{SMOKE}: small N, one repetition; writes benchmarks/results/quick.*", flush=True)
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
                    bench_publish.run(url, workdir, 1000 if q else 20_000, 1 if q else 5)
                )
            elif name == "drain":
                sections.append(bench_drain.run(url, workdir, 500 if q else 5000, 1 if q else 3))
            elif name == "overhead":
                sections.append(
                    bench_task_overhead.run(url, workdir, 500 if q else 3000, 1 if q else 3)
                )
            elif name == "peers":
                sections.append(bench_peers.run(url, workdir, 500 if q else 5000, 1 if q else 3))
            elif name == "latency":
                sections.append(bench_latency.run(url, workdir, 30 if q else 300, 1 if q else 3))
            elif name == "transport":
                sections.append(
                    bench_transport.run(
                        # 5 runs: issue 16 asks the prefork row's min-max over at least 5.
                        url,
                        workdir,
                        500 if q else 5000,
                        1 if q else 5,
                        30 if q else 300,
                    )
                )
    _report(info, sections, chosen, q, time.monotonic() - started)
    return 0


def _report(
    info: dict[str, str], sections: list[Section], chosen: list[str], q: bool, elapsed: float
) -> None:
    """Write (and print) the results: summary and docs for a full run, else results/<stem>."""
    partial = set(chosen) != set(SECTIONS)
    run_name = f"`run_all.py --only {','.join(chosen)}`" if partial else "`make bench`"
    if q:
        run_name = f"`run_all.py --quick{' --only ' + ','.join(chosen) if partial else ''}`"
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in {"date", "cpu"})
    header = (
        f"Measured {info['date']} on {info['cpu']}; {versions}. "
        f"Every figure is from one {run_name} run ({elapsed / 60:.1f} min) against a "
        "throwaway redis-server on loopback (`--save '' --appendonly no`); the machine's "
        "two cores are shared, so absolute figures move by ±20 % between runs while the "
        "ratios, measured side by side in the same repetition, move less."
    )
    if q:
        header = (
            f"{SMOKE}\n\n{header} Small N and one repetition: the figures check that the "
            "harness runs end to end and are not to be quoted."
        )
    goals = goal_section(sections, smoke=q)
    body = "\n".join(section.markdown() for section in [goals, *sections])
    payload = json.dumps(
        {
            "machine": info,
            "quick": q,
            "seconds": round(elapsed, 1),
            "goals": goals.data,
            "sections": {s.title: {"rows": s.data, "ratios": s.ratios} for s in sections},
        },
        indent=2,
    )
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    if partial or q:
        stem = results / "-".join((["quick"] if q else []) + (chosen if partial else []))
        title = "Benchmarks: smoke run" if q else f"Benchmarks: {', '.join(chosen)}"
        stem.with_suffix(".md").write_text(f"# {title}\n\n{header}\n\n{body}")
        stem.with_suffix(".json").write_text(payload)
        print(f"\n{header}\n\n{body}")
        kind = "a smoke run" if q else "a partial run"
        print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')} ({kind})")
        print(f"{SMOKE if q else 'partial run'}: {elapsed:.0f} s in all")
        return
    (results / "summary.md").write_text(f"# Benchmarks\n\n{header}\n\n{body}")
    (results / "summary.json").write_text(payload)
    docs = HERE.parent / "docs" / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\n"
        "<!-- Generated by `make bench` (benchmarks/run_all.py); do not edit. -->\n\n"
        f"{header}\n\n"
        "Run them yourself with `make bench` (about 15–20 minutes on 2 cores; it installs "
        "RQ, Dramatiq and Huey from the `bench` dependency group), or `make bench-quick` "
        "for a smoke run of a few minutes that writes `benchmarks/results/quick.md` only. "
        "Each section's method is in the docstring of its script in `benchmarks/`; "
        "why a goal is missed, with its profile: {ref}`performance-goals` (hand-written, "
        "for the run it names).\n\n"
        f"{body}"
    )
    print(f"\n# Benchmarks\n\n{header}\n\n{body}")
    print(f"wrote {results / 'summary.md'}, {results / 'summary.json'} and {docs}")
    print(f"full run: {elapsed:.0f} s in all")


if __name__ == "__main__":
    sys.exit(main())
