"""The performance goals of issue 16, judged from the per-run ratios of one run.

Each goal names a section (by title) and a key of that section's ``ratios``: the per-run
ratios of two rows measured in the same repetition. A goal is met when the median of
those ratios reaches its target, or, for a goal "in every run", when the smallest does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from _harness import Section, median, spread

TRANSPORT = "reliable / stock, {pool}, production, {base}"
SOLO = "Celery + celeryredis production, `-P solo`"
PREFORK = "Celery + celeryredis production, `-P prefork -c 2`"
DRAMATIQ = "Dramatiq `-p 1 -t 8`"
HUEY = "Huey `-w 2 -k process`"


@dataclass(frozen=True)
class Goal:
    measure: str
    section: str
    key: str
    target: float
    every_run: bool = False
    above: bool = False  # strictly above the target, not "at least"

    def wanted(self) -> str:
        text = f"> {self.target:g}×" if self.above else f"≥ {self.target:g}×"
        return f"{text} in every run" if self.every_run else f"{text} (median)"

    def met(self, values: Sequence[float]) -> bool:
        figure = min(values) if self.every_run else median(values)
        return figure > self.target if self.above else figure >= self.target


def _goals() -> list[Goal]:
    goals: list[Goal] = []
    for base in ("celeryredis.Task", "plain celery.Task"):
        goals.append(
            Goal(
                f"drain, `production` reliable / stock transport, prefork -c 2, {base}",
                "Transport",
                TRANSPORT.format(pool="prefork -c 2", base=base),
                2.0,
                every_run=True,
            )
        )
        goals.append(
            Goal(
                f"drain, `production` reliable / stock transport, solo, {base}",
                "Transport",
                TRANSPORT.format(pool="solo", base=base),
                2.5,
            )
        )
    goals.append(Goal("`enqueue_many` / `.delay()` loop", "Publish", "enqueue_many / delay", 8.0))
    goals.append(
        Goal(
            "`enqueue_many` / RQ `enqueue_many`, same run",
            "Peers",
            "enqueue_many / RQ enqueue_many",
            1.2,
        )
    )
    for level in ("WARNING", "INFO"):
        for base, target in (
            ("celeryredis.Task", 0.95),
            ("celeryredis.RetryTask", 0.95),
            ("celeryredis.UniqueTask", 0.80),
            ("celeryredis.RateLimitedTask", 0.85),
        ):
            goals.append(
                Goal(
                    f"drain, `{base.split('.')[1]}` / plain `celery.Task`, worker at {level}",
                    "Task base overhead",
                    f"{base} / plain at {level}",
                    target,
                )
            )
    goals.append(
        Goal("drain, Celery solo / Dramatiq (8 threads)", "Peers", f"{SOLO} / {DRAMATIQ}", 1.5)
    )
    goals.append(
        Goal(
            "drain, Celery solo / Huey (2 processes)", "Peers", f"{SOLO} / {HUEY}", 1.0, above=True
        )
    )
    goals.append(
        Goal(
            "drain, Celery prefork -c 2 / Huey (2 processes)",
            "Peers",
            f"{PREFORK} / {HUEY}",
            1.0,
            above=True,
        )
    )
    return goals


GOALS = _goals()


def goal_section(sections: Sequence[Section], *, smoke: bool) -> Section:
    """The goal table for the sections of one run."""
    found = {s.title: s for s in sections}
    section = Section(
        "Goals (issue 16)",
        "Each goal's ratio is the median (min–max) of per-run ratios, both sides measured "
        "in the same repetition of this run; a goal is met when the median reaches its "
        "target, or, where it says so, when every run does. Task classes are named: "
        "`celeryredis.Task` is the one `make_app()` gives by default."
        + (
            " **Smoke run (`--quick`)**: one small run, so met / not met here says the "
            "harness works, not whether the goal is."
            if smoke
            else ""
        ),
        ["goal", "target", "measured ×", "runs", "result"],
    )
    for goal in GOALS:
        source = found.get(goal.section)
        values = source.ratios.get(goal.key) if source is not None else None
        if not values:
            section.rows.append([goal.measure, goal.wanted(), "–", "0", "not measured"])
            section.data.append({"goal": goal.measure, "target": goal.wanted(), "met": None})
            continue
        met = goal.met(values)
        section.rows.append(
            [
                goal.measure,
                goal.wanted(),
                spread(values, "{:.2f}"),
                str(len(values)),
                "met" if met else "**not met**",
            ]
        )
        section.data.append(
            {"goal": goal.measure, "target": goal.wanted(), "ratios": values, "met": met}
        )
    return section
