"""The end-to-end tour behind ``make demo`` (``python -m celeryredis.demo``, ``celeryredis demo``).

It builds a host-style app with :func:`celeryredis.make_app`, starts a real
``celery worker`` subprocess and walks through every feature: where the settings
came from, a retried task and its backoff, a dead-lettered task replayed after a
fix, a unique task refusing a duplicate, a rate-limited burst, a bulk publish of
10,000 tasks with a progress bar and the queue inspector, then a summary table and
the output of ``celeryredis check``. Unless ``CELERY_BROKER_URL`` or ``REDIS_URL`` is
set, it starts a throwaway ``redis-server`` on a free loopback port and stops it at
the end: it never writes to a Redis it did not start unless told to.

With ``--json`` (``main(as_json=True)``) the tour goes to stderr and stdout gets one
JSON document: the summary and the ``check`` report.

With ``--cluster`` (``main(cluster=True)``) the tour runs on a Redis Cluster broker and
result backend: unless ``REDIS_URL`` is a ``rediscluster://`` URL it starts a throwaway
3-master cluster on free loopback ports (:class:`celeryredis.testing.LocalRedisCluster`)
and stops it at the end. It shows where each queue lives, a worker draining queues on
three masters, each master's share of the commands, a chord, a group and remote
control (the single-node tour's other steps are in docs/cluster.md).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

from celeryredis.exceptions import CeleryRedisError
from celeryredis.redaction import redact_text

__all__ = ["main"]

#: How many tasks the bulk step publishes.
BULK = 10_000
#: The demo's own bookkeeping keys (deleted at the end).
_KEYS = "celeryredis-demo:"

_HOSTAPP = """
import time

import redis

from celeryredis import RateLimitedTask, RetryTask, UniqueTask, make_app

# A host project's app: production preset, with limits that suit a short demo. Every key
# it writes starts with "celeryredis-demo:" (the tour deletes them all at the end), so a
# Redis of your own keeps nothing of the demo and the demo reads nothing of yours.
app = make_app(
    "demo_app",
    preset="production",
    broker_transport_options={"global_keyprefix": "celeryredis-demo:"},
    result_backend_transport_options={"global_keyprefix": "celeryredis-demo:"},
    task_time_limit=60,
    task_soft_time_limit=50,
    celeryredis_eta_horizon=30,
    celeryredis_retry_backoff_max=30,
    celeryredis_heartbeat_interval=1.0,
)
# The demo's bookkeeping (attempt times), in the same Redis.
store = redis.Redis.from_url(app.conf.broker_url)


@app.task
def add(x, y):
    return x + y


@app.task(base=RetryTask, max_retries=4, retry_backoff=0.25, retry_jitter=False)
def fetch_rates(currency):
    store.rpush("celeryredis-demo:fetch", time.time())
    attempt = store.llen("celeryredis-demo:fetch")
    if attempt < 3:
        raise ConnectionError(f"rates service timed out (attempt {attempt})")
    return f"{currency} rates fetched on attempt {attempt}"


@app.task
def charge(order_id):
    if not store.get("celeryredis-demo:card-fixed"):
        raise ValueError(f"card declined for order {order_id}")
    return f"order {order_id} charged"


@app.task(base=UniqueTask, on_duplicate="raise")
def build_report(report_id):
    time.sleep(0.5)
    return f"report {report_id} built"


@app.task(base=RateLimitedTask, distributed_rate_limit="5/s")
def notify_partner(n):
    store.rpush("celeryredis-demo:notify", time.time())
    return n


@app.task(ignore_result=True, queue="bulk")  # a queue the demo's worker does not consume
def record_click(n):
    return None
"""

_SHOWN = (
    "broker_url",
    "result_backend",
    "task_acks_late",
    "task_time_limit",
    "worker_prefetch_multiplier",
    "broker_transport_options.visibility_timeout",
    "broker_transport_options.socket_timeout",
    "accept_content",
    "celeryredis_heartbeat_interval",
)

_out: TextIO = sys.stdout


def _say(text: str = "") -> None:
    print(text, file=_out, flush=True)


@contextmanager
def _redis_url() -> Iterator[str]:
    for var in ("CELERY_BROKER_URL", "REDIS_URL"):
        url = os.environ.get(var)
        if url:
            _say(f"Using the Redis configured in ${var}: {redact_text(url)}")
            yield url
            return
    from celeryredis.testing import RedisServer  # noqa: PLC0415 - only when needed

    with RedisServer() as server:
        pid = server.pid
        _say(
            f"No Redis URL configured: started a throwaway redis-server on 127.0.0.1:"
            f"{server.port} (pid {server.pid}); it is stopped at the end."
        )
        os.environ["REDIS_URL"] = server.url
        try:
            yield server.url
        finally:
            os.environ.pop("REDIS_URL", None)
    _say(f"Stopped the throwaway redis-server (pid {pid}).")


class _Summary:
    """The rows of the closing table: step, what happened, seconds."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float]] = []

    @contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        _say(f"\n{len(self.rows) + 1}. {title}")
        outcome: list[str] = []
        started = time.monotonic()
        yield outcome
        self.rows.append((title, "; ".join(outcome), time.monotonic() - started))

    def as_json(self) -> list[dict[str, Any]]:
        """The rows for ``--json``."""
        return [
            {"step": title, "outcome": outcome, "seconds": round(seconds, 2)}
            for title, outcome, seconds in self.rows
        ]

    def table(self) -> str:
        header = ("#", "step", "what happened", "s")
        rows = [header] + [
            (str(i), title, outcome, f"{seconds:.1f}")
            for i, (title, outcome, seconds) in enumerate(self.rows, 1)
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        return "\n".join(
            "   " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )


def _progress(done: int, total: int, started: float) -> None:
    """A progress bar: redrawn in place on a terminal, every fifth of the way otherwise."""
    tty = _out.isatty()
    if not tty and done % (total // 5 or 1) and done != total:
        return
    width = 30
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-9)
    bar = f"   [{'#' * filled}{'.' * (width - filled)}] {done:>6,}/{total:,} ({rate:,.0f}/s)"
    print(
        ("\r" if tty else "") + bar,
        end="\n" if done == total or not tty else "",
        file=_out,
        flush=True,
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CeleryRedisError(f"the demo waited {timeout} s for {what}")
        time.sleep(0.05)


def _show_settings(app: Any, out: list[str]) -> None:
    from celeryredis import explain  # noqa: PLC0415

    rows = {r.setting: r for r in explain(app)}
    for name in _SHOWN:
        row = rows[name]
        _say(f"   {name:<46} {row.value!r:<34} {row.source}")
    out.append(f"{len(rows)} settings, each with its source")


def _start_worker(hostapp: Any, url: str, workdir: Path, stack: ExitStack, out: list[str]) -> None:
    from celeryredis.health import check_worker  # noqa: PLC0415
    from celeryredis.testing import WorkerProcess  # noqa: PLC0415

    worker = WorkerProcess(
        "demo_app",
        cwd=workdir,
        env={"REDIS_URL": url},
        pool="prefork",
        concurrency=2,
        hostname="demo@%h",
        loglevel="WARNING",
        log_path=workdir / "worker.log",
        extra_args=["--without-heartbeat"],
    )
    stack.callback(worker.stop)
    _wait_until_consuming(hostapp.app, worker)
    part = check_worker(hostapp.app, "demo")
    _say(f"   worker pid {worker.pid}: {part.name[len('worker:') :]} {part.reason}")
    _say(f"   add.delay(2, 3).get() -> {hostapp.add.delay(2, 3).get(timeout=30)}")
    out.append("consuming (by its heartbeat)")


def _retry(hostapp: Any, out: list[str]) -> None:
    result = hostapp.fetch_rates.delay("EUR").get(timeout=30)
    times = [float(t) for t in hostapp.store.lrange(f"{_KEYS}fetch", 0, -1)]
    for attempt, (before, after) in enumerate(itertools.pairwise(times), 1):
        _say(f"   attempt {attempt}: ConnectionError -> retried after {after - before:.2f} s")
    _say(f"   attempt {len(times)}: {result!r}")
    gaps = ", ".join(f"{b - a:.2f}" for a, b in itertools.pairwise(times))
    out.append(f"{len(times)} attempts, waits {gaps} s")


def _dead_letter(hostapp: Any, out: list[str]) -> None:
    from celeryredis import DeadLetterQueue  # noqa: PLC0415

    dlq = DeadLetterQueue(hostapp.app)
    failed = hostapp.charge.delay(42)
    failed.get(timeout=30, propagate=False)  # the caller sees the failure
    _wait(lambda: len(dlq) > 0, 30, "the failed charge to be dead-lettered")
    (entry,) = dlq.list(1)
    _say(
        f"   charge(42) failed for good: dead-letter entry {entry.id} "
        f"(reason {entry.reason!r}, {entry.exception_type}: {entry.exception_message})"
    )
    hostapp.store.set(f"{_KEYS}card-fixed", 1)
    _say("   ...the card is fixed; dlq.replay([entry.id]) (same task id):")
    (replayed,) = dlq.replay([entry.id])
    _say(
        f"   {replayed.id} (was {failed.id[:8]}...) -> {replayed.get(timeout=30)!r}; "
        f"dead letters left: {len(dlq)}"
    )
    out.append(f"reason {entry.reason}, replayed under the same id, then succeeded")


def _unique(hostapp: Any, out: list[str]) -> None:
    from celeryredis import DuplicateTaskError  # noqa: PLC0415

    first = hostapp.build_report.delay(7)
    try:
        hostapp.build_report.delay(7)
    except DuplicateTaskError as exc:
        _say(f"   build_report.delay(7) again -> DuplicateTaskError: {exc}")
        out.append(f"duplicate refused (held by {exc.task_id[:8]}...)")
    else:
        raise CeleryRedisError("the duplicate build_report(7) was not refused")
    _say(f"   the first one -> {first.get(timeout=30)!r}")


def _rate_limited(hostapp: Any, out: list[str]) -> None:
    started = time.monotonic()
    burst = [hostapp.notify_partner.delay(i) for i in range(10)]
    done = [r.get(timeout=60) for r in burst]
    runs = sorted(float(t) for t in hostapp.store.lrange(f"{_KEYS}notify", 0, -1))
    span = runs[-1] - runs[0]
    _say(
        f"   10 published at once; all {len(done)} ran within "
        f"{time.monotonic() - started:.1f} s, first to last run {span:.2f} s "
        f"(5/s allows 10 in no less than {9 / 5:.1f} s)"
    )
    out.append(f"10 runs spread over {span:.1f} s")


def _bulk(hostapp: Any, out: list[str]) -> None:
    from celeryredis.bulk import enqueue_many  # noqa: PLC0415
    from celeryredis.queues import inspect_queues  # noqa: PLC0415

    started = time.monotonic()
    enqueue_many(
        hostapp.record_click,
        ((i,) for i in range(BULK)),
        progress=lambda done, total: _progress(done, BULK, started),
    )
    took = time.monotonic() - started
    (bulk,) = inspect_queues(hostapp.app, ["bulk"])
    age = "-" if bulk.oldest_age_s is None else f"{bulk.oldest_age_s:.1f} s"
    _say(
        f"   queues: 'bulk' has {bulk.depth:,} waiting, the oldest {age} old, "
        f"{bulk.unknown_age} of unknown age (no worker consumes 'bulk')"
    )
    with hostapp.app.connection_for_write() as conn:
        purged = conn.default_channel.queue_purge("bulk")
    _say(f"   purged {purged:,} messages from 'bulk'")
    out.append(f"{BULK:,} published in {took:.1f} s ({BULK / took:,.0f}/s) with enqueue_many")


def _check(url: str, workdir: Path) -> tuple[int, dict[str, Any]]:
    as_json = _out is sys.stderr
    check = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "celeryredis.cli", "--app", "demo_app", "check"]
        + (["--json"] if as_json else []),
        cwd=workdir,
        env={**os.environ, "REDIS_URL": url, "PYTHONPATH": str(workdir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _say(textwrap.indent(redact_text(check.stdout.rstrip()), "   "))
    if check.returncode == 2 or not check.stdout:
        raise CeleryRedisError(f"check failed:\n{redact_text(check.stderr)}")
    return check.returncode, json.loads(check.stdout) if as_json else {}


def _tour(url: str, workdir: Path, summary: _Summary) -> dict[str, Any]:
    (workdir / "demo_app.py").write_text(textwrap.dedent(_HOSTAPP))
    sys.path.insert(0, str(workdir))
    hostapp: Any = importlib.import_module("demo_app")

    with summary.step("The app: make_app('demo_app', preset='production', ...)") as out:
        _show_settings(hostapp.app, out)
    with ExitStack() as stack:
        with summary.step("A real worker: celery -A demo_app worker -P prefork -c 2") as out:
            _start_worker(hostapp, url, workdir, stack, out)
        with summary.step("A retried task: RetryTask, backoff 0.25 s x 2^n, no jitter") as out:
            _retry(hostapp, out)
        with summary.step("A dead-lettered task, replayed after the fix") as out:
            _dead_letter(hostapp, out)
        with summary.step("A unique task refusing a duplicate: UniqueTask") as out:
            _unique(hostapp, out)
        with summary.step("A rate-limited burst: RateLimitedTask at 5/s across workers") as out:
            _rate_limited(hostapp, out)
        with summary.step(f"A bulk publish of {BULK:,} tasks, then the queue inspector") as out:
            _bulk(hostapp, out)
        _say("\nSummary:")
        _say(summary.table())
        _say("\nceleryredis --app demo_app check:")
        code, report = _check(url, workdir)
    leftovers = list(hostapp.store.scan_iter(match=f"{_KEYS}*"))
    if leftovers:
        hostapp.store.delete(*leftovers)
    _say("\nWorker stopped by process group; nothing is left running.")
    return {
        "summary": summary.as_json(),
        "check_exit_code": code,
        "check": report,
    }


def _wait_until_consuming(app: Any, worker: Any, timeout: float = 60.0) -> None:
    """Wait for the worker's heartbeat to say it consumes (or fail with its log)."""
    from celeryredis.health import check_worker  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.returncode is not None:
            raise CeleryRedisError(f"the worker exited early; its log:\n{worker.log_text()}")
        if check_worker(app, "demo", timeout=2.0).status == "ok":
            return
        time.sleep(0.1)
    raise CeleryRedisError(f"the worker did not answer within {timeout} s:\n{worker.log_text()}")


_CLUSTER_HOSTAPP = """
import os

from celeryredis import make_app
from celeryredis.cluster import cluster_client

URL = os.environ["REDIS_URL"]
app = make_app(
    "demo_cluster",
    broker_url=URL,
    result_backend=URL,
    preset="production",
    task_time_limit=60,
    task_soft_time_limit=50,
    celeryredis_eta_horizon=30,
    celeryredis_retry_backoff_max=30,
    task_default_queue=os.environ.get("DEMO_DEFAULT_QUEUE", "celery"),
)
# The demo's bookkeeping (runs per task), on the same cluster.
store = cluster_client(URL, setting="$REDIS_URL")


@app.task
def add(x, y):
    return x + y


@app.task
def resize(n):
    store.hincrby("{celeryredis-demo}:runs", str(n), 1)
    return n


@app.task
def tally(values):
    return sum(values)
"""

#: Readable queue names the cluster tour picks from (the first one on each master).
_QUEUE_NAMES = (
    "emails", "images", "orders", "reports", "billing", "search", "exports", "imports",
    "alerts", "thumbnails", "invoices", "webhooks", "payments", "feeds", "sync", "audit",
)  # fmt: skip
#: Tasks the cluster tour drains over its three queues.
CLUSTER_TASKS = 600


@contextmanager
def _cluster_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "")
    if url.startswith(("rediscluster://", "redisclusters://")):
        _say(f"Using the Redis Cluster configured in $REDIS_URL: {redact_text(url)}")
        yield url
        return
    from celeryredis.testing import LocalRedisCluster  # noqa: PLC0415 - only when needed

    cluster = LocalRedisCluster(masters=3, replicas=0)
    with cluster:
        pids = ", ".join(str(node.pid) for node in cluster.nodes)
        _say(
            f"Started a throwaway Redis Cluster of 3 masters on 127.0.0.1 ports "
            f"{', '.join(map(str, cluster.ports))} (pids {pids}); it is stopped at the end."
        )
        saved = os.environ.get("REDIS_URL")
        os.environ["REDIS_URL"] = cluster.url
        try:
            yield cluster.url
        finally:
            if saved is None:
                os.environ.pop("REDIS_URL", None)
            else:
                os.environ["REDIS_URL"] = saved
    _say(f"Stopped the throwaway Redis Cluster (pids {pids}).")


def _masters(store: Any) -> dict[str, Any]:
    return {f"{node.host}:{node.port}": node for node in store.get_primaries()}


def _command_calls(store: Any) -> dict[str, int]:
    """Commands each master has served so far (INFO commandstats), by ``host:port``."""
    calls = {}
    for name, node in _masters(store).items():
        stats = node.redis_connection.info("commandstats")
        calls[name] = sum(int(row["calls"]) for row in stats.values())
    return calls


def _queue_key(queue: str) -> str:
    """A queue's list on the cluster broker: its name as the hash tag (docs/cluster.md)."""
    return "{" + queue + "}"


def _pick_queues(store: Any) -> list[str]:
    chosen: dict[str, str] = {}
    for name in _QUEUE_NAMES:
        node = store.get_node_from_key(_queue_key(name))
        chosen.setdefault(f"{node.host}:{node.port}", name)
    return list(chosen.values())


def _cluster_app(hostapp: Any, queues: list[str], out: list[str]) -> None:
    store = hostapp.store
    _say(f"   broker_url     {redact_text(hostapp.app.conf.broker_url)}")
    _say(f"   result backend {type(hostapp.app.backend).__name__}")
    with hostapp.app.connection_for_write() as conn:
        _say(f"   transport      {type(conn.transport).__module__}")
    for queue in queues:
        key = _queue_key(queue)
        node = store.get_node_from_key(key)
        _say(
            f"   queue {queue!r:<14} key {key!r:<14} slot {store.keyslot(key):>5} "
            f"on {node.host}:{node.port}"
        )
    out.append(f"{len(queues)} queues on {len(queues)} different masters")


def _cluster_worker(
    hostapp: Any, url: str, queues: list[str], workdir: Path, *, stack: ExitStack, out: list[str]
) -> None:
    from celeryredis.testing import WorkerProcess  # noqa: PLC0415

    worker = WorkerProcess(
        "demo_cluster",
        cwd=workdir,
        env={"REDIS_URL": url, "DEMO_DEFAULT_QUEUE": queues[0]},
        # solo: on the cluster broker's poll loop a prefork worker takes at most its
        # prefetch window per polling interval (docs/cluster.md, capacity model).
        pool="solo",
        hostname="demo@%h",
        queues=queues,
        log_path=workdir / "worker.log",
    )
    stack.callback(worker.stop)
    worker.wait_ready(timeout=60)
    _say(f"   worker pid {worker.pid} ready")
    _say(f"   add.delay(2, 3).get() -> {hostapp.add.delay(2, 3).get(timeout=30)}")
    out.append("consuming 3 queues on 3 masters")


def _cluster_drain(hostapp: Any, queues: list[str], out: list[str]) -> list[Any]:
    from celery.result import ResultSet  # noqa: PLC0415

    store = hostapp.store
    before = _command_calls(store)
    started = time.monotonic()
    results = [
        hostapp.resize.apply_async((n,), queue=queues[n % len(queues)])
        for n in range(CLUSTER_TASKS)
    ]
    published = time.monotonic() - started
    done = ResultSet(results).get(timeout=120)  # one MGET per slot per round
    took = time.monotonic() - started
    runs = store.hgetall("{celeryredis-demo}:runs")
    once = len(runs) == CLUSTER_TASKS and set(runs.values()) == {b"1"}
    if done != list(range(CLUSTER_TASKS)) or not once:
        raise CeleryRedisError(f"the {CLUSTER_TASKS} tasks did not each run once")
    after = _command_calls(store)
    _say(
        f"   {CLUSTER_TASKS} published in {published:.1f} s, their results read "
        f"{took:.1f} s after the first publish; each ran exactly once (counted with HINCRBY)"
    )
    for name in sorted(after):
        _say(f"   master {name}: {after[name] - before.get(name, 0):>6,} commands")
    out.append(f"each ran once, {took:.1f} s, commands on all 3 masters")
    return results


def _cluster_canvas(hostapp: Any, queues: list[str], results: list[Any], out: list[str]) -> None:
    from celery import chord, group  # noqa: PLC0415

    header = [hostapp.resize.s(n).set(queue=queues[n % len(queues)]) for n in range(20)]
    total = chord(header)(hostapp.tally.s()).get(timeout=60)
    sums = group(hostapp.add.s(i, i) for i in range(10)).apply_async().get(timeout=60)
    _say(f"   chord(resize(0..19)) | tally -> {total}; group(add(i, i)) -> {sums}")
    key = hostapp.app.backend.get_key_for_task(results[0].id)
    _say(f"   a result key carries its task id as hash tag: {key.decode()}")
    replies = hostapp.app.control.ping(timeout=2.0)
    _say(f"   app.control.ping() -> {replies}")
    out.append(f"chord {total}, group of {len(sums)}, {len(replies)} ping reply")


def _cluster_tour(url: str, workdir: Path, summary: _Summary) -> dict[str, Any]:
    from celeryredis.cluster import cluster_client  # noqa: PLC0415

    lookup = cluster_client(url, setting="$REDIS_URL")
    try:
        queues = _pick_queues(lookup)
    finally:
        lookup.close()
    # The host app's default queue: one the worker consumes (publisher and worker alike).
    os.environ["DEMO_DEFAULT_QUEUE"] = queues[0]
    (workdir / "demo_cluster.py").write_text(textwrap.dedent(_CLUSTER_HOSTAPP))
    sys.path.insert(0, str(workdir))
    hostapp: Any = importlib.import_module("demo_cluster")
    with summary.step("The app: make_app('demo_cluster', broker_url=<cluster>, ...)") as out:
        _cluster_app(hostapp, queues, out)
    with ExitStack() as stack:
        title = "A real worker: celery worker -P solo -Q " + ",".join(queues)
        with summary.step(title) as out:
            _cluster_worker(hostapp, url, queues, workdir, stack=stack, out=out)
        with summary.step(f"{CLUSTER_TASKS} tasks over the three queues") as out:
            results = _cluster_drain(hostapp, queues, out)
        with summary.step("A chord of 20, a group of 10, remote control") as out:
            _cluster_canvas(hostapp, queues, results, out)
        _say("\nSummary:")
        _say(summary.table())
        _say(
            "\nDead letters, unique locks, rate limits, enqueue_many, partitioned queues and "
            "`celeryredis check` on a cluster: docs/cluster.md."
        )
    hostapp.store.delete("{celeryredis-demo}:runs")
    hostapp.store.close()
    os.environ.pop("DEMO_DEFAULT_QUEUE", None)
    _say("\nWorker stopped by process group; nothing is left running.")
    return {
        "summary": summary.as_json(),
        "queues": queues,
    }


def main(*, as_json: bool = False, cluster: bool = False) -> int:
    """Run the tour; return the process exit code.

    Args:
        as_json: Write the tour to stderr and one JSON document (the summary and the
            ``check`` report) to stdout.
        cluster: Run the tour on a Redis Cluster (a throwaway one unless ``REDIS_URL``
            is a ``rediscluster://`` URL).
    """
    global _out  # noqa: PLW0603 - one switch for every line the tour prints
    _out = sys.stderr if as_json else sys.stdout
    # SIGTERM unwinds like Ctrl-C, so the redis-server and worker we started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summary = _Summary()
    try:
        with tempfile.TemporaryDirectory(prefix="celeryredis-demo-") as tmp:
            if cluster:
                with _cluster_url() as url:
                    result = _cluster_tour(url, Path(tmp), summary)
            else:
                with _redis_url() as url:
                    result = _tour(url, Path(tmp), summary)
    except KeyboardInterrupt:
        _say("\nInterrupted; everything the demo started has been stopped.")
        return 130
    except Exception as exc:  # the demo reports any failure plainly, with secrets redacted
        print(f"\ndemo failed: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    _say("\nDone.")
    if as_json:
        print(redact_text(json.dumps(result, indent=2, sort_keys=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main(as_json="--json" in sys.argv[1:], cluster="--cluster" in sys.argv[1:]))
