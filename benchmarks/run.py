"""Benchmark spoc_sockets' servers against the ``websockets`` asyncio server.

::

    python benchmarks/run.py [--repeat 5] [--quick] [--json results.json]
                             [--servers spoc-asyncio,websockets-asyncio,...]
                             [--scenarios echo,bulk,...] [--profile DIR] [--no-pin]

Each sample starts a fresh server process (``benchmarks/servers.py``), pinned to one CPU,
and drives it from this process with the ``websockets`` asyncio client on one event loop
(pinned to another CPU). The table gives the median of the repeats for every server and
the ratio of each spoc_sockets variant to ``websockets-asyncio``: above 1 spoc_sockets is
faster; for memory (KiB per idle connection) below 1 it uses less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import websockets.version
from scenarios import SCENARIOS, Counts, Probe, Sample
from servers import VARIANTS, raise_fd_limit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER = "websockets-asyncio"
DEFAULT_SERVERS = ("spoc-asyncio", PEER, "spoc-threads", "spoc-trio")
POLL_SECONDS = 10.0
START_TIMEOUT = 30.0

Results = dict[str, dict[str, list[Sample | None]]]  # scenario -> server -> samples


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_conformance_run() -> float:
    """Wait while a ``wstest`` process runs (it would compete for the CPUs); seconds waited."""
    started = time.perf_counter()
    announced = False
    while subprocess.run(["pgrep", "-f", "wstest"], capture_output=True).returncode == 0:
        if not announced:
            log(
                f"a wstest process is running: waiting for it to end (polling every "
                f"{POLL_SECONDS:.0f} s)"
            )
            announced = True
        time.sleep(POLL_SECONDS)
    if announced:
        log("no wstest process any more: measuring")
    return time.perf_counter() - started


class ServerProcess:
    """One benchmark server in its own process; the port comes on its first stdout line."""

    def __init__(self, variant: str, cpu: int | None, profile: Path | None) -> None:
        command = [sys.executable, str(HERE / "servers.py"), variant]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        if profile is not None:
            command += ["--profile", str(profile)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.variant = variant
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, env=env, text=True
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], START_TIMEOUT)
        line = stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{self.variant} did not start (printed {line!r})")
        return int(line)

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown, which also writes a profile), then kill if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                log(f"{self.variant} did not stop within 30 s: killed")
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


async def measure(
    scenario: str,
    variant: str,
    counts: Counts,
    cpu: int | None,
    profile: Path | None,
) -> Sample | None:
    run, _, _ = SCENARIOS[scenario]
    try:
        server = ServerProcess(variant, cpu, profile)
    except (OSError, RuntimeError) as exc:
        log(f"  {variant} did not start: {exc!r}")
        return None
    try:
        return await run(server.uri, Probe(server.process.pid), counts)
    except Exception as exc:
        log(f"  {scenario} on {variant} failed: {exc!r}")
        return None
    finally:
        server.stop()


async def measure_all(args: argparse.Namespace, counts: Counts) -> tuple[Results, float]:
    """Every sample, and the seconds spent waiting for conformance runs."""
    servers: list[str] = args.servers
    results: Results = {s: {v: [] for v in servers} for s in args.scenarios}
    waited = 0.0
    for repeat in range(args.repeat):
        waited += wait_for_conformance_run()
        log(f"repeat {repeat + 1}/{args.repeat}")
        shift = repeat % len(servers)
        order = servers[shift:] + servers[:shift]  # nobody always goes first
        for scenario in args.scenarios:
            unit = SCENARIOS[scenario][1]
            for variant in order:
                profile = None
                if args.profile is not None:
                    profile = args.profile / f"{variant}-{scenario}-{repeat + 1}.prof"
                sample = await measure(scenario, variant, counts, args.server_cpu, profile)
                results[scenario][variant].append(sample)
                if sample is not None:
                    log(
                        f"  {scenario:<10} {variant:<19} {fmt(sample.value):>10} {unit:<13}"
                        f"({sample.elapsed:.2f} s, server CPU {sample.server_cpu:.2f} s)"
                    )
    return results, waited


# -- report -----------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def median(samples: Sequence[Sample | None], key: str = "value") -> float | None:
    values = [
        getattr(s, key) if key in ("value", "elapsed", "server_cpu") else s.extra[key]
        for s in samples
        if s is not None
    ]
    return statistics.median(values) if values else None


def busy(samples: Sequence[Sample | None]) -> float | None:
    """Median share of one CPU the server used during the measured window (percent)."""
    values = [100 * s.server_cpu / s.elapsed for s in samples if s is not None and s.elapsed]
    return statistics.median(values) if values else None


#: server CPU time per unit of work: scenario -> (unit, seconds to that unit)
COSTS: dict[str, tuple[str, float]] = {
    "echo": ("µs/msg", 1e6),
    "bulk": ("ms/MiB", 1e3),
    "handshake": ("µs/handshake", 1e6),
    "broadcast": ("µs/delivery", 1e6),
}


def cost(samples: Sequence[Sample | None], scale: float) -> float | None:
    """Median server CPU time per unit of work (the work is throughput x window)."""
    values = [
        scale * s.server_cpu / (s.value * s.elapsed)
        for s in samples
        if s is not None and s.value and s.elapsed
    ]
    return statistics.median(values) if values else None


def short(variant: str) -> str:
    return variant.removeprefix("spoc-")


class Table:
    """Rows of medians per server, then the ratio of each spoc_sockets variant to the peer."""

    def __init__(self, servers: Sequence[str]) -> None:
        self.servers = list(servers)
        self.spoc = [v for v in servers if v.startswith("spoc-")] if PEER in servers else []
        self.header = ["scenario", "unit", *servers, *(f"{short(v)}/ws" for v in self.spoc)]
        self.rows: list[list[str]] = []

    def add(self, name: str, unit: str, values: dict[str, float | None]) -> None:
        row = [name, unit, *(fmt(values[v]) for v in self.servers)]
        peer = values.get(PEER)
        for v in self.spoc:
            mine = values[v]
            row.append(f"{mine / peer:.2f}" if mine is not None and peer else "n/a")
        self.rows.append(row)

    def __str__(self) -> str:
        return markdown(self.header, self.rows)


def tables(results: Results, servers: Sequence[str]) -> tuple[Table, Table]:
    """The results and the server's CPU cost, as Markdown tables of medians."""
    main = Table(servers)
    for scenario, by_server in results.items():
        unit = SCENARIOS[scenario][1]
        main.add(scenario, unit, {v: median(by_server[v]) for v in servers})
        if scenario == "memory":
            idle = {v: median(by_server[v], "rss_idle_kib") for v in servers}
            main.add(
                "memory, no client",
                "MiB RSS",
                {v: None if x is None else x / 1024 for v, x in idle.items()},
            )
    cpu = Table(servers)
    for scenario, by_server in results.items():
        if scenario in COSTS:
            unit, scale = COSTS[scenario]
            cpu.add(f"{scenario}: CPU cost", unit, {v: cost(by_server[v], scale) for v in servers})
    for scenario, by_server in results.items():
        if scenario in COSTS:
            cpu.add(
                f"{scenario}: CPU busy", "% of a core", {v: busy(by_server[v]) for v in servers}
            )
    return main, cpu


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i < 2 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(header), line(rule), *(line(r) for r in rows)])


def write_json(
    path: Path,
    args: argparse.Namespace,
    counts: Counts,
    results: Results,
    seconds: float,
    waited: float,
) -> None:
    document: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": sys.version.split()[0],
        "websockets": websockets.version.version,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "repeat": args.repeat,
        "counts": asdict(counts),
        "runtime_seconds": round(seconds, 1),
        "waited_seconds": round(waited, 1),
        "pinned": args.server_cpu is not None,
        "units": {name: unit for name, (_, unit, _) in SCENARIOS.items()},
        "medians": {
            scenario: {v: median(samples) for v, samples in by_server.items()}
            for scenario, by_server in results.items()
        },
        "server_cpu_cost": {
            scenario: {
                "unit": COSTS[scenario][0],
                **{v: cost(samples, COSTS[scenario][1]) for v, samples in by_server.items()},
            }
            for scenario, by_server in results.items()
            if scenario in COSTS
        },
        "samples": {
            scenario: {
                v: [None if s is None else asdict(s) for s in samples]
                for v, samples in by_server.items()
            }
            for scenario, by_server in results.items()
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- command line -----------------------------------------------------------------------


def names(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose among {', '.join(choices)}")
        return chosen

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="samples per scenario (5)")
    parser.add_argument("--quick", action="store_true", help="small counts, 1 repeat")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--servers",
        type=names(list(VARIANTS)),
        default=list(DEFAULT_SERVERS),
        help=f"comma-separated, among {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--scenarios",
        type=names(list(SCENARIOS)),
        default=list(SCENARIOS),
        help=f"comma-separated, among {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run the servers under cProfile, one .prof file per sample here",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the load generator and the server to separate CPUs",
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.repeat < 1:
        parser.error("--repeat is at least 1")
    return args


def pin(args: argparse.Namespace) -> None:
    """The load generator on CPU 0, every server on the last CPU (when there are two+)."""
    args.server_cpu = None
    if args.no_pin or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})
        args.server_cpu = cpus[-1]


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    counts = Counts.quick() if args.quick else Counts()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    raise_fd_limit()
    pin(args)
    started = time.perf_counter()
    results, waited = asyncio.run(measure_all(args, counts))
    seconds = time.perf_counter() - started
    main_table, cpu_table = tables(results, args.servers)
    print(main_table, file=out)
    print(
        f"\nServer CPU time in the measured window (lower cost is better):\n\n{cpu_table}", file=out
    )
    print(
        f"\n{args.repeat} repeat(s), medians; total {seconds:.0f} s"
        f" (of which {waited:.0f} s waiting for wstest)",
        file=out,
    )
    if args.json is not None:
        write_json(args.json, args, counts, results, seconds, waited)
        log(f"results written to {args.json}")
    failed = any(s is None for by in results.values() for ss in by.values() for s in ss)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
