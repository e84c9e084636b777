"""Benchmark spoc_sockets' adapters against the WebSocket servers a user would pick instead.

::

    python benchmarks/run.py                  # every server, every scenario, 3 rounds
    python benchmarks/run.py --smoke          # seconds: does every server honour the contract?

The load comes from ``loadgen.c`` (one thread, epoll), compiled here with ``cc -O2`` and
pinned to one CPU while the server under test is pinned to another; its own CPU time is
recorded for every figure, and a figure taken while it used 90 % of its core or more is
flagged. Outside ``--smoke``, the run installs the peers from the package index into its
own virtual environment (``.venv-bench``, created on first use, then reused) and re-runs
itself there; Node's ``ws`` is installed with ``npm`` when ``node`` is present.

Servers are interleaved: every round runs every server once, in a rotated order; a figure
is the median of the rounds. Results go to ``--out`` (``docs/performance`` by default):
``results.json`` (every sample), ``results.inc`` (the reStructuredText tables that
``docs/performance.rst`` includes) and the plots, and the tables to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = ROOT / ".venv-bench"
REFERENCE = "websockets-asyncio"
#: the pairs the tables compare besides the reference: (spoc variant, its natural peer)
PAIRS = (
    ("spoc-asyncio", "websockets-asyncio"),
    ("spoc-threads", "websockets-sync"),
    ("spoc-trio", "websockets-trio"),
    ("spoc-asgi", "starlette"),
)
SPOC = ("spoc-asyncio", "spoc-threads", "spoc-trio", "spoc-asgi")
PEERS = (
    "websockets-asyncio",
    "websockets-sync",
    "websockets-trio",
    "aiohttp",
    "picows",
    "starlette",
    "node-ws",
)
LOADGEN_LIMIT = 0.90  # share of its core past which a figure is flagged
START_TIMEOUT = 30.0  # seconds a server may take to print its port
SETUP_TIMEOUT = 180.0  # seconds the load generator may take to connect and synchronise
SETTLE = 0.6  # seconds for a server to settle: before memory readings; half between scenarios
MIB = 2**20
SWEEP = (32, 512, 8 * 1024, 128 * 1024, MIB)  # bytes: the message-size sweep
STREAM_RATE = 50  # messages/s of the stream publisher ...
STREAM_SIZE = 10_000  # ... of this many bytes: 4 Mbit/s
CHAT_POST = ('{"type":"post","room":"bench","text":"', '"}')


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One measured thing: the load generator's arguments and which figure to keep."""

    name: str
    title: str
    unit: str
    args: tuple[str, ...]
    figure: str  # "rate", "mib", "deliveries", "memory", "stream"
    only: tuple[str, ...] = ()  # servers it runs on (empty: every one)
    fresh: bool = False  # in a server process of its own (its memory is measured)
    memory_over: int = 0  # also KiB per connection over this many idle connections

    def runs_on(self, server: str) -> bool:
        return not self.only or server in self.only


def scenarios(seconds: float, smoke: bool) -> list[Scenario]:
    """Every scenario; ``smoke`` keeps each tiny (a contract check, not a measure)."""
    d = ("--duration", str(seconds))
    if smoke:  # however loaded the machine, some work is checked
        d = (*d, "--min-count", "10")
    idle = 50 if smoke else 1000
    small = "5" if smoke else "50"  # the "50 connections" of echo and handshakes
    spoc = ("spoc-asyncio",) if smoke else SPOC
    members, viewers = (20, 20) if smoke else (1000, 200)

    def echo(conns: str, size: int, *more: str) -> tuple[str, ...]:
        return ("--mode", "echo", *d, "--conns", conns, "--size", str(size), *more)

    def fanout(conns: int, path: str, *more: str) -> tuple[str, ...]:
        return ("--mode", "fanout", *d, "--conns", str(conns), "--path", path, *more)

    out = [
        Scenario(f"memory-{idle}", f"memory per idle connection, {idle:,} connections",
                 "KiB/conn", ("--mode", "idle", "--conns", str(idle)), "memory",
                 memory_over=idle),
        Scenario("echo-1", "echo, 1 connection, 32 B text", "round trips/s",
                 echo("1", 32, "--text"), "rate"),
        Scenario("echo-50", f"echo, {small} connections, 32 B text", "round trips/s",
                 echo(small, 32, "--text"), "rate"),
    ]  # fmt: skip
    for size in SWEEP[-1:] if smoke else SWEEP:
        name = "bulk" if size == MIB else f"size-{label(size)}"
        title = f"echo, 1 connection, {label(size)} binary"
        out.append(Scenario(name, title, "MiB/s", echo("1", size), "mib"))
    out.append(Scenario("handshake-seq", "handshakes, sequential", "handshakes/s",
                        ("--mode", "handshake", *d, "--conns", "1"), "rate"))  # fmt: skip
    if not smoke:
        out.append(Scenario("handshake-50", "handshakes, 50 in parallel", "handshakes/s",
                            ("--mode", "handshake", *d, "--conns", small), "rate"))  # fmt: skip
    # messages in flight (not yet delivered to all): a backlog of 800 to 10,000 deliveries
    window = {10: 8, 100: 8, 1000: 2, 10_000: 1}
    for n in (10,) if smoke else (100, 1000, 10_000):
        out.append(Scenario(f"broadcast-{n}", f"broadcast to {n:,} clients", "deliveries/s",
                            fanout(n, "/broadcast", "--size", "32", "--window", str(window[n])),
                            "deliveries",
                            # a server of its own: its memory per connection is measured too
                            fresh=n >= 10_000, memory_over=n if n >= 10_000 else 0))  # fmt: skip
    stream = fanout(viewers, "/stream/bench", "--sender-path", "/stream/bench?role=publish",
                    "--rate", str(STREAM_RATE), "--size", str(STREAM_SIZE),
                    "--key-every", str(STREAM_RATE), "--idle-fraction", "0.1")  # fmt: skip
    stream = (*stream, "--duration", str(2 * seconds))  # the last --duration counts
    chat = fanout(members, "/chat", "--text", "--on-open", '{"type":"join","room":"bench"}',
                  "--before", CHAT_POST[0], "--after", CHAT_POST[1], "--size", "16",
                  "--window", "4")  # fmt: skip
    out += [
        Scenario("stream", f"stream: 4 Mbit/s to {viewers} viewers, 10 % never reading",
                 "MiB/s delivered", stream, "stream", only=spoc),
        Scenario("chat", f"chat room of {members:,} members", "posts delivered/s", chat,
                 "deliveries", only=spoc),
    ]  # fmt: skip
    return out


def label(size: int) -> str:
    if size >= MIB:
        return f"{size // MIB} MiB"
    if size >= 1024:
        return f"{size // 1024} KiB"
    return f"{size} B"


# -- processes ----------------------------------------------------------------------------


def pinned(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Probe:
    """CPU time and resident memory of a process (and its threads), from ``/proc``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        total = 0.0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/sched") as f:
                    for line in f:
                        if line.startswith("se.sum_exec_runtime"):
                            total += float(line.split(":")[1]) / 1000  # ms
                            break
            except OSError:  # a thread that just ended
                continue
        return total

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for process {self.pid}")


class Server:
    """One server under test in its own process; the port comes on its first stdout line."""

    def __init__(
        self, variant: str, cpu: int | None, node_modules: Path | None, stderr: Any
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if variant == "node-ws":
            if node_modules is None:
                raise RuntimeError("node-ws needs node and npm")
            env["NODE_PATH"] = str(node_modules)
            command = ["node", str(HERE / "node_ws.js")]
        else:
            command = [sys.executable, str(HERE / "servers.py"), variant]
        self.variant = variant
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            env=env,
            text=True,
            preexec_fn=pinned(cpu),
        )
        self.probe = Probe(self.process.pid)
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], START_TIMEOUT)
        line = stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{variant} did not start (printed {line!r})")
        self.port = int(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class LoadError(RuntimeError):
    pass


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    stdout = process.stdout
    assert stdout is not None
    ready, _, _ = select.select([stdout], [], [], timeout)
    if not ready:
        raise LoadError(f"no answer from the load generator within {timeout:.0f} s")
    line = stdout.readline()
    if not line:
        process.wait(5)
        stderr = process.stderr.read().strip() if process.stderr else ""
        raise LoadError(stderr or f"the load generator exited ({process.returncode})")
    return line


def drive(
    loadgen: Path, server: Server, args: Sequence[str], cpu: int | None, settle: float
) -> dict[str, Any]:
    """Run the load generator once: connect, measure, close. Its result, plus the server's
    CPU time over the window and its memory before, once connected and at the end.

    ``settle``: seconds to wait before reading the memory (before and once connected)."""
    time.sleep(settle)
    rss_before = server.probe.rss_kib()
    process = subprocess.Popen(
        [str(loadgen), "--port", str(server.port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(cpu),
    )
    assert process.stdin is not None
    try:
        line = read_line(process, SETUP_TIMEOUT)
        if line.strip() != "ready":
            raise LoadError(f"unexpected line from the load generator: {line!r}")
        time.sleep(settle)
        rss_loaded = server.probe.rss_kib()
        cpu_start, wall_start = server.probe.cpu_seconds(), time.perf_counter()
        process.stdin.write("go\n")
        process.stdin.flush()
        durations = [float(b) for a, b in itertools.pairwise(args) if a == "--duration"]
        seconds = durations[-1] if durations else 1.0
        line = read_line(process, 60 + 4 * seconds)
        server_cpu = server.probe.cpu_seconds() - cpu_start
        wall = time.perf_counter() - wall_start
        rss_end = server.probe.rss_kib()
        if not line.startswith("result "):
            raise LoadError(f"unexpected line from the load generator: {line!r}")
        result: dict[str, Any] = json.loads(line[len("result ") :])
        process.stdin.write("bye\n")
        process.stdin.flush()
        process.wait(15)
        if process.returncode:
            stderr = process.stderr.read().strip() if process.stderr else ""
            raise LoadError(stderr or f"the load generator failed ({process.returncode})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                with suppress(BrokenPipeError):
                    pipe.close()
    result.update(
        server_cpu=server_cpu,
        server_busy=server_cpu / wall if wall else 0.0,
        rss_before_kib=rss_before,
        rss_loaded_kib=rss_loaded,
        rss_end_kib=rss_end,
    )
    return result


def figure(scenario: Scenario, result: dict[str, Any]) -> float:
    """The scenario's headline figure from one load-generator result."""
    if scenario.figure == "memory":
        return (result["rss_loaded_kib"] - result["rss_before_kib"]) / scenario.memory_over
    if scenario.figure in ("mib", "stream"):
        return float(result["bytes_per_s"]) / MIB
    return float(result["rate"])


def check(scenario: Scenario, result: dict[str, Any]) -> None:
    """The contract: every connection opened, work done, every broadcast reached all."""
    if result["opened"] < result["connections"]:
        raise LoadError(f"{result['opened']} of {result['connections']} connections opened")
    if scenario.figure != "memory" and not result["count"]:
        raise LoadError("nothing was measured")
    if result.get("incomplete"):
        raise LoadError(f"{result['incomplete']} messages did not reach every receiver")


# -- the run ------------------------------------------------------------------------------

Samples = dict[str, dict[str, list[dict[str, Any] | None]]]  # scenario -> server -> rounds


@dataclass
class Plan:
    servers: list[str]
    scenarios: list[Scenario]
    rounds: int
    warmup: float
    loadgen: Path
    loadgen_cpu: int | None
    server_cpu: int | None
    node_modules: Path | None
    settle: float  # seconds for a server to settle (memory readings, between scenarios)
    server_log: Any  # the servers' stderr goes here
    samples: Samples = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # failures, unclean closes


def run_group(plan: Plan, variant: str, group: list[Scenario], round_: int) -> None:
    """Run ``group`` against one fresh server process of ``variant``."""
    try:
        server = Server(variant, plan.server_cpu, plan.node_modules, plan.server_log)
    except (OSError, RuntimeError) as exc:
        log(f"  {variant}: {exc}")
        plan.notes.append(f"{variant}, round {round_ + 1}: did not start: {exc}")
        for s in group:
            plan.samples[s.name][variant].append(None)
        return
    try:
        warm = ("--mode", "echo", "--conns", "1", "--duration", "0.1", "--warmup", "0")
        try:  # a warm-up: lazy imports, first buffers; not measured
            drive(plan.loadgen, server, warm, plan.loadgen_cpu, 0)
        except LoadError as exc:
            log(f"  {variant}: the warm-up failed: {exc}")
        for s in group:
            sample: dict[str, Any] | None = None
            began = time.perf_counter()
            try:
                if not server.alive():
                    raise LoadError("the server is gone")
                args = (*s.args, "--warmup", str(plan.warmup))
                settle = plan.settle if s.memory_over else 0
                result = drive(plan.loadgen, server, args, plan.loadgen_cpu, settle)
                check(s, result)
                result["value"] = figure(s, result)
                if s.memory_over and s.figure != "memory":
                    result["memory"] = (
                        result["rss_loaded_kib"] - result["rss_before_kib"]
                    ) / s.memory_over
                sample = result
                flag = " (load generator busy!)" if result["loadgen_busy"] >= LOADGEN_LIMIT else ""
                if result.get("unclean_closes"):
                    unclean = f"{result['unclean_closes']} of {result['count']} closed"
                    flag += f" ({unclean} without a close frame)"
                    plan.notes.append(
                        f"{s.name}, {variant}, round {round_ + 1}: {unclean} by the server"
                        " without answering the client's close frame (counted all the same)"
                    )
                log(
                    f"  {s.name:<15} {variant:<19} {fmt(result['value']):>10} {s.unit:<17}"
                    f"server {100 * result['server_busy']:3.0f} %  "
                    f"load generator {100 * result['loadgen_busy']:3.0f} %"
                    f" ({time.perf_counter() - began:.0f} s){flag}"
                )
            except (LoadError, OSError, subprocess.TimeoutExpired) as exc:
                log(f"  {s.name:<15} {variant:<19} failed: {exc}")
                reason = " ".join(str(exc).split())[:300]
                plan.notes.append(f"{s.name}, {variant}, round {round_ + 1}: failed: {reason}")
            plan.samples[s.name][variant].append(sample)
            time.sleep(plan.settle / 2)
    finally:
        server.stop()


def run(plan: Plan, after_round: Callable[[int], None]) -> None:
    """Every round; ``after_round(rounds done)`` after each."""
    plan.samples = {s.name: {v: [] for v in plan.servers} for s in plan.scenarios}
    for r in range(plan.rounds):
        log(f"round {r + 1}/{plan.rounds}")
        shift = r % len(plan.servers)
        for variant in plan.servers[shift:] + plan.servers[:shift]:  # nobody always first
            mine = [s for s in plan.scenarios if s.runs_on(variant)]
            shared = [s for s in mine if not s.fresh]
            groups = [shared] + [[s] for s in mine if s.fresh]
            for group in groups:
                if group:
                    run_group(plan, variant, group, r)
        after_round(r + 1)


# -- medians and tables -------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def median(samples: Sequence[dict[str, Any] | None], key: Callable[[dict[str, Any]], Any]) -> Any:
    values = [key(s) for s in samples if s is not None]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def p99(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda s: s[name]["p99"] / 1000 if s.get(name) and s[name]["n"] else None


def loadgen_max(samples: Sequence[dict[str, Any] | None]) -> float | None:
    values = [s["loadgen_busy"] for s in samples if s is not None]
    return max(values) if values else None


@dataclass
class Cell:
    value: float | None
    loadgen: float | None  # the load generator's busiest round, share of a core

    def text(self) -> str:
        if self.value is None:
            return "n/a"
        flag = " †" if self.loadgen is not None and self.loadgen >= LOADGEN_LIMIT else ""
        return fmt(self.value) + flag


def summary(plan: Plan) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> server -> medians (value, latencies, CPU, memory) and the busiest load."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in plan.scenarios:
        out[s.name] = {}
        for v in plan.servers:
            samples = plan.samples[s.name][v]
            if not s.runs_on(v):
                continue
            out[s.name][v] = {
                "value": median(samples, lambda x: x["value"]),
                "p50_ms": median(
                    samples, lambda x: x["latency_us"]["p50"] / 1000 if "latency_us" in x else None
                ),
                "p99_ms": median(samples, p99("latency_us")),
                "reach_p99_ms": median(samples, p99("reach_all_us")),
                "memory": median(samples, lambda x: x.get("memory")),
                "server_busy": median(samples, lambda x: x["server_busy"]),
                # the work done per second of the server's CPU, whatever share of its core
                # it got: the figure that a busy machine disturbs least
                "per_cpu": None if s.figure == "memory" else median(samples, per_cpu),
                "rss_end_mib": median(samples, lambda x: x["rss_end_kib"] / 1024),
                "loadgen_busy_max": loadgen_max(samples),
                "loadgen_busy_median": median(samples, lambda x: x["loadgen_busy"]),
                "rounds": sum(1 for x in samples if x is not None),
            }
    return out


def per_cpu(sample: dict[str, Any]) -> float | None:
    """The figure per second of the server's CPU time (None if it used none)."""
    return sample["value"] / sample["server_busy"] if sample["server_busy"] > 0 else None


def ratio(mine: float | None, theirs: float | None) -> str:
    return f"{mine / theirs:.2f}" if mine is not None and theirs else "n/a"


def main_rows(plan: Plan, medians: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per server: the headline figures, then their ratio to the reference."""
    cols = [s for s in plan.scenarios if not s.only]
    header = ["server", *(short_title(s) for s in cols)]
    rows = []
    for v in plan.servers:
        cells = []
        for s in cols:
            m = medians[s.name].get(v)
            cells.append(Cell(m and m["value"], m and m["loadgen_busy_max"]).text())
        rows.append([v, *cells])
    return header, rows


def short_title(s: Scenario) -> str:
    return f"{s.name} ({s.unit})"


def ratio_rows(
    plan: Plan, medians: dict[str, Any], pairs: Sequence[tuple[str, str]], key: str = "value"
) -> tuple[list[str], list[list[str]]]:
    """The ratios of ``key`` (the figure, or the work per CPU-second) for each pair."""
    cols = [s for s in plan.scenarios if not s.only and (key == "value" or s.figure != "memory")]
    extra = [s for s in cols if s.memory_over and s.figure != "memory" and key == "value"]
    header = ["server / peer", *(s.name for s in cols), *(f"memory-{s.memory_over}" for s in extra)]
    rows = []
    for mine, theirs in pairs:
        if mine not in plan.servers or theirs not in plan.servers or mine == theirs:
            continue
        cells = []
        for s in cols:
            a, b = medians[s.name].get(mine), medians[s.name].get(theirs)
            cells.append(ratio(a and a[key], b and b[key]))
        for s in extra:
            a, b = medians[s.name].get(mine), medians[s.name].get(theirs)
            cells.append(ratio(a and a["memory"], b and b["memory"]))
        rows.append([f"{mine} / {theirs}", *cells])
    return header, rows


def detail_rows(plan: Plan, medians: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per scenario and server: figure, latencies, server and load-generator CPU."""
    header = [
        "scenario",
        "server",
        "figure",
        "p50 ms",
        "p99 ms",
        "p99 to all ms",
        "server CPU",
        "figure per server CPU-s",
        "load gen. CPU (max)",
        "rounds",
    ]
    rows = []
    for s in plan.scenarios:
        for v in plan.servers:
            m = medians[s.name].get(v)
            if m is None:
                continue
            figure_text = Cell(m["value"], m["loadgen_busy_max"]).text()
            if s.memory_over and s.figure != "memory" and m["memory"] is not None:
                figure_text += f" ({fmt(m['memory'])} KiB/conn)"
            if s.figure == "stream" and m["rss_end_mib"] is not None:
                figure_text += f" (RSS {fmt(m['rss_end_mib'])} MiB)"
            rows.append(
                [
                    s.name,
                    v,
                    f"{figure_text} {s.unit}",
                    fmt(m["p50_ms"]) if m["p50_ms"] is not None else "",
                    fmt(m["p99_ms"]) if m["p99_ms"] is not None else "",
                    fmt(m["reach_p99_ms"]) if m["reach_p99_ms"] is not None else "",
                    pct(m["server_busy"]),
                    fmt(m["per_cpu"]) if m["per_cpu"] is not None else "",
                    pct(m["loadgen_busy_max"]),
                    str(m["rounds"]),
                ]
            )
    return header, rows


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def rst_text(text: str) -> str:
    """``text`` as plain reStructuredText (no markup from what a peer printed)."""
    for c in "\\*`|_[]<>":
        text = text.replace(c, "\\" + c)
    return text


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def rst_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A reStructuredText list-table."""
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        out.append("   * - " + (row[0] or "\\"))
        out += [f"     - {cell or chr(92)}" for cell in row[1:]]
    return "\n".join(out) + "\n"


# -- plots --------------------------------------------------------------------------------


def plots(plan: Plan, medians: dict[str, Any], out: Path) -> list[str]:
    """The PNG files: latency distributions, fan-out scaling, throughput against size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colours = [*(f"C{i}" for i in range(10)), "black"]
    styles = {
        v: ("-" if v.startswith("spoc") else "--", colours[i % len(colours)])
        for i, v in enumerate(plan.servers)
    }

    def style(v: str) -> dict[str, str]:
        return {"linestyle": styles[v][0], "color": styles[v][1], "label": v}

    def median_sample(name: str, v: str) -> dict[str, Any] | None:
        samples = [x for x in plan.samples.get(name, {}).get(v, []) if x is not None]
        if not samples:
            return None
        samples.sort(key=lambda x: x["latency_us"]["p99"] if "latency_us" in x else 0)
        return samples[len(samples) // 2]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("echo-1", "echo-50"), strict=True):
        for v in plan.servers:
            sample = median_sample(name, v)
            if sample is None or "latency_us" not in sample:
                continue
            cdf = sample["latency_us"]["cdf"]
            ax.plot([x / 1000 for _, x in cdf], [100 * q for q, _ in cdf], **style(v))
        ax.set_xscale("log")
        ax.set_xlabel("round-trip time (ms, log)")
        ax.set_ylabel("percentile")
        ax.set_title(f"{name}: latency distribution (median round)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    written.append(save(fig, out / "latency.png"))

    fans = [s for s in plan.scenarios if s.name.startswith("broadcast-")]
    counts = [int(s.name.split("-")[1]) for s in fans]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in plan.servers:
        for ax, key in zip(axes, ("value", "reach_p99_ms"), strict=True):
            points = [
                (n, medians[s.name][v][key])
                for n, s in zip(counts, fans, strict=True)
                if v in medians[s.name] and medians[s.name][v][key] is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", **style(v))
    axes[0].set_ylabel("deliveries/s")
    axes[1].set_ylabel("p99 time for a message to reach every client (ms)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients (log)")
        ax.grid(True, alpha=0.3)
    axes[0].set_title("fan-out: deliveries/s")
    axes[1].set_title("fan-out: p99 time to reach all")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    written.append(save(fig, out / "fanout.png"))

    sizes = [s for s in plan.scenarios if s.figure == "mib"]
    byte_sizes = [parse_size(s.title) for s in sizes]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for v in plan.servers:
        points = [
            (b, medians[s.name][v]["value"])
            for b, s in zip(byte_sizes, sizes, strict=True)
            if v in medians[s.name] and medians[s.name][v]["value"] is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", **style(v))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes, log)")
    ax.set_ylabel("MiB/s echoed (one way, log)")
    ax.set_title("echo throughput against message size, 1 connection")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(save(fig, out / "sizes.png"))
    return written


def parse_size(title: str) -> int:
    words = title.split(", ")[2].split()
    return int(words[0]) * {"B": 1, "KiB": 1024, "MiB": MIB}[words[1]]


def save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


# -- the machine and the environment ------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in (
        "websockets",
        "wsproto",
        "h11",
        "trio",
        "uvicorn",
        "aiohttp",
        "picows",
        "starlette",
    ):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    node = shutil.which("node")
    if node:
        versions["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True
        ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "versions": versions,
    }


def build_loadgen(directory: Path) -> Path:
    """Compile ``loadgen.c`` (again when the source is newer than the binary)."""
    source = HERE / "loadgen.c"
    binary = directory / "loadgen"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        directory.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-o", str(binary), str(source), "-lm"], check=True)
    return binary


def node_modules(directory: Path) -> Path | None:
    """Node's ``ws``, installed with npm into ``directory`` (None without node and npm)."""
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    modules = directory / "node_modules"
    if not (modules / "ws").exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(directory),
                "ws",
            ],
            check=True,
        )
    return modules


def in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def enter_bench_venv(argv: Sequence[str]) -> None:
    """Create ``.venv-bench`` with the ``bench`` extra if needed, then re-run there."""
    python = VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {VENV} (the peers come from the package index)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[bench]"], check=True
        )
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """One full run at a time on this machine."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"another benchmark run holds {lock}: not running alongside it"
            raise SystemExit(message) from None
        yield


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpus(no_pin: bool) -> tuple[int | None, int | None]:
    """(load generator's CPU, server's CPU): the first and the last we may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if no_pin or len(allowed) < 2:
        return None, None
    return allowed[0], allowed[-1]


# -- command line -------------------------------------------------------------------------


def names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'nothing'}: choose among {', '.join(choices)}"
            )
        return chosen

    return parse


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a contract check in seconds: spoc's adapters and websockets, "
        "tiny loads, 1 round, no plots, this interpreter",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; 1 with --smoke)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured window of each scenario (1.0; 0.2 with --smoke)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured echo/handshake load before each window, seconds (0.3)",
    )
    parser.add_argument(
        "--servers",
        type=names((*SPOC, *PEERS)),
        default=None,
        help="comma-separated (default: all; node-ws when node is present)",
    )
    parser.add_argument(
        "--scenarios", type=str, default=None, help="comma-separated scenario names (default: all)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results.json, results.inc and plots go here "
        "(docs/performance; none by default with --smoke)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every sample here")
    parser.add_argument(
        "--no-venv",
        action="store_true",
        help="run in this interpreter (the peers must be importable)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin to separate CPUs")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: write the tables and plots of this results.json again",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 3
    if args.seconds is None:
        args.seconds = 0.2 if args.smoke else 1.0
    if args.warmup is None:
        args.warmup = 0.05 if args.smoke else 0.3
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--rounds is at least 1, --seconds above 0, --warmup at least 0")
    if args.out is None and not args.smoke:
        args.out = ROOT / "docs" / "performance"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_json is not None:
        return render(args)
    if not (args.smoke or args.no_venv or in_bench_venv()):
        enter_bench_venv(argv)  # does not return
    raise_fd_limit()
    all_scenarios = scenarios(args.seconds, args.smoke)
    if args.scenarios:
        chosen = names([s.name for s in all_scenarios])(args.scenarios)
        all_scenarios = [s for s in all_scenarios if s.name in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) if args.smoke else VENV
        server_log = Path(tmp) / "servers.log" if args.smoke else VENV / "servers.log"
        modules = None
        servers = args.servers
        if servers is None:
            servers = [*SPOC, REFERENCE] if args.smoke else [*SPOC, *PEERS]
        if "node-ws" in servers:
            modules = node_modules(VENV / "node")
            if modules is None:
                log("node or npm is missing: no node-ws")
                servers = [v for v in servers if v != "node-ws"]
        loadgen_cpu, server_cpu = cpus(args.no_pin)
        plan = Plan(
            servers=servers,
            scenarios=all_scenarios,
            rounds=args.rounds,
            warmup=args.warmup,
            loadgen=build_loadgen(build),
            loadgen_cpu=loadgen_cpu,
            server_cpu=server_cpu,
            node_modules=modules,
            settle=0.05 if args.smoke else SETTLE,
            server_log=None,
        )
        lock = Path(tmp) / "lock" if args.smoke else VENV / "run.lock"
        with exclusive(lock), open(server_log, "w") as plan.server_log:
            started = time.time()
            about = machine()
            about["load_averages"] = []

            def after_round(done: int) -> None:
                about["load_average_end"] = os.getloadavg()
                about["load_averages"].append(about["load_average_end"])
                about["runtime_seconds"] = round(time.time() - started)
                if done < plan.rounds:  # what is done so far, should the run be cut short
                    report(plan, args, argv, about, done, final=False)

            run(plan, after_round)
        if args.smoke and any(
            x is None for by in plan.samples.values() for xs in by.values() for x in xs
        ):
            log(server_log.read_text()[-4000:])  # what the servers said
    report(plan, args, argv, about, plan.rounds, final=True)
    failed = any(x is None for by in plan.samples.values() for xs in by.values() for x in xs)
    return 1 if failed else 0


def render(args: argparse.Namespace) -> int:
    """The tables and plots of an earlier run, from its results.json."""
    document = json.loads(args.from_json.read_text())
    samples = document["samples"]
    known = {s.name: s for s in scenarios(document["seconds"], smoke=False)}
    plan = Plan(
        servers=list(next(iter(samples.values()))),
        scenarios=[known[name] for name in samples if name in known],
        rounds=document["rounds"],
        warmup=0,
        loadgen=Path(),
        loadgen_cpu=None,
        server_cpu=None,
        node_modules=None,
        settle=0,
        server_log=None,
        samples=samples,
        notes=document.get("notes", []),
    )
    args.seconds = document["seconds"]
    argv = document["command"].split()[2:]
    about = dict(document["machine"], measured=document["date"])
    report(plan, args, argv, about, document["rounds"], final=True)
    return 0


def report(
    plan: Plan,
    args: argparse.Namespace,
    argv: Sequence[str],
    about: dict[str, Any],
    rounds: int,
    final: bool,
) -> None:
    """Write the results (and print the tables, if ``final``)."""
    about = dict(about)
    measured = about.pop("measured", None)  # --from-json: when the samples were taken
    medians = summary(plan)
    pairs = [(v, REFERENCE) for v in plan.servers if v != REFERENCE]
    pairs += [p for p in PAIRS if p[1] != REFERENCE]
    tables = {
        "figures": main_rows(plan, medians),
        "ratios": ratio_rows(plan, medians, pairs),
        "efficiency": ratio_rows(plan, medians, pairs, "per_cpu"),
        "details": detail_rows(plan, medians),
    }
    command = "python benchmarks/run.py" + "".join(f" {a}" for a in argv)
    if final:
        print(f"{command}\n", flush=True)
        for name, (header, rows) in tables.items():
            print(f"{name}:\n\n{markdown(header, rows)}\n")
    document = {
        "date": measured or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": about,
        "rounds": rounds,
        "seconds": args.seconds,
        "pinned": plan.server_cpu is not None,
        "scenarios": {
            s.name: {"title": s.title, "unit": s.unit, "loadgen": list(s.args)}
            for s in plan.scenarios
        },
        "medians": medians,
        "notes": plan.notes,
        "samples": plan.samples,
    }
    targets = [args.json] if args.json else []
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        targets.append(args.out / "results.json")
        inc = [
            f".. Written by ``{command}`` on {document['date']}; do not edit.\n",
            f"Command: ``{command}`` ({rounds} rounds of {args.seconds:g} s windows, "
            f"{about['runtime_seconds']} s in all), {document['date']}.\n",
            f"Machine: {about['cpus']} CPUs ({about['cpu_model']}), {about['platform']}, "
            f"Python {about['python']}; load average "
            f"{about['load_average'][0]:.1f} at the start, "
            + ", ".join(f"{x[0]:.1f}" for x in about.get("load_averages", []))
            + " after each round. Versions: "
            + ", ".join(f"{k} {v}" for k, v in about["versions"].items() if v)
            + ".\n",
        ]
        if measured:  # --from-json: the same samples, the tables written again
            inc.insert(
                2,
                "The tables and plots were written again from that run's "
                "``results.json`` with ``--from-json``.\n",
            )
        titles = {
            "figures": "Medians (``†``: the load generator used 90 % of its core or more "
            "in at least one round)",
            "ratios": "Ratios of the medians (above 1: faster; for memory, below 1: less)",
            "efficiency": "Ratios of the work done per second of the server's own CPU time "
            "(above 1: less CPU for the same work)",
            "details": "Every figure: latencies, CPU of the server and of the load generator",
        }
        for name, (header, rows) in tables.items():
            if rows:
                inc.append(f"{titles[name]}:\n\n{rst_table(header, rows)}")
        if plan.notes:
            inc.append("Failures and oddities in this run:\n")
            inc += [f"* {rst_text(note)}" for note in plan.notes]
            inc.append("")
        (args.out / "results.inc").write_text("\n".join(inc))
        for png in plots(plan, medians, args.out):
            log(f"wrote {args.out / png}")
    for path in targets:
        path.write_text(json.dumps(document, indent=1) + "\n")
        log(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
