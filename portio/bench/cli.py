"""``python -m portio.bench``: run the echo benchmark and the micro-benchmarks, write the results.

``--quick`` (under two minutes on a 2-core machine) and the default full mode differ only in
repetitions and window lengths; both measure the same servers and configurations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import portio
from portio.bench import idle, micro, report, suite
from portio.bench.servers import allowed_cpus, available_servers, why_unavailable

__all__ = ["Settings", "main", "run_benchmark"]


@dataclasses.dataclass
class Settings:
    """What one run measures and how long."""

    reps: int = 5
    warmup: float = 0.3
    duration: float = 1.5
    micro_seconds: float = 1.0
    configs: tuple[str, ...] = tuple(c.name for c in suite.CONFIGS)
    servers: tuple[str, ...] = ()          # names to keep; empty: all
    backends: tuple[str, ...] = ()         # empty: portio.available_backends()
    threads: int = 0                       # the port model's N; 0: one per CPU (the default)
    pin: bool = True
    echo: bool = True
    micro: bool = True
    #: The idle row: KiB of server memory per idle connection (Linux: RSS from /proc).
    idle: bool = True
    idle_connections: int = 5000
    mode: str = "full"


def quick_settings() -> Settings:
    """``--quick``: 3 repetitions of short windows, under two minutes on a 2-core machine."""
    return Settings(reps=3, warmup=0.15, duration=0.3, micro_seconds=0.3,
                    idle_connections=1000, mode="quick")


class ProgressLine:
    """A one-line progress display on a terminal (a plain line per step elsewhere)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.start = time.monotonic()

    def step(self, done: int, total: int, label: str) -> None:
        """Show that ``done`` of ``total`` measurements are finished; ``label`` is the next."""
        elapsed = time.monotonic() - self.start
        eta = f" eta {elapsed / done * (total - done):4.0f}s" if done else ""
        text = f"[{done:3d}/{total}] {elapsed:5.0f}s{eta}  {label}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text[:150])
            if label == "done":
                self.stream.write("\n")
        else:  # a log: one line per measurement, naming the server it measures
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, label: str) -> None:
        """Show a step that is not counted."""
        self.step(0, 0, label) if self.tty else self.stream.write(label + "\n")


def machine() -> dict[str, Any]:
    """What the results were measured on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "implementation": platform.python_implementation(), "cpu": cpu,
            "cpus": os.cpu_count(),
            "affinity": sorted(allowed_cpus() or ()), "portio": portio.__version__,
            "build": "compiled (mypyc)" if portio.COMPILED else "pure Python"}


def run_benchmark(settings: Settings, progress: ProgressLine | None = None) -> dict[str, Any]:
    """Run what ``settings`` asks for; the whole result as one JSON-able document."""
    backends = list(settings.backends) or portio.available_backends()
    threads = settings.threads or os.cpu_count() or 1
    specs, notes = available_servers(backends, threads)
    if settings.servers:
        specs = [s for s in specs if s.name in settings.servers]
    configs = [c for c in suite.CONFIGS if c.name in settings.configs]
    server_cpus, client_cpus = suite.pin_plan(settings.pin)
    if settings.pin and server_cpus is None:
        notes.append("fewer than 2 CPUs allowed: server and client not pinned")
    document: dict[str, Any] = {
        "settings": dataclasses.asdict(settings), "machine": machine(),
        "backends": backends, "backend_status": portio.backend_status(), "notes": notes,
        "pinning": {"server": sorted(server_cpus or ()), "client": sorted(client_cpus or ())},
        "configs": [dataclasses.asdict(c) for c in configs],
        "servers": [dataclasses.asdict(s) for s in specs],
        # "NAME: what it means" for the configuration and server names in the tables
        "legend": suite.legend(configs, specs),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if settings.echo:
        results = suite.run_echo(specs, configs, settings.reps, settings.warmup,
                                 settings.duration, settings.pin,
                                 progress.step if progress else None)
        document["measurements"] = [dataclasses.asdict(m) for m in results]
        document["summary"] = suite.summarise(results)
        document["ratios"] = {base: suite.ratios(results, base) for base in ("asyncio", "uvloop")}
        withheld = suite.too_short_for_verdicts(settings.reps, settings.duration)
        document["targets"] = [] if withheld else suite.targets(results, specs)
        document["verdicts_withheld"] = withheld
        document["bytes_verified"] = sum(m.bytes_verified for m in results)
    if settings.idle:
        if sys.platform.startswith("linux"):
            peers_here = [kind for kind in ("asyncio", "uvloop") if why_unavailable(kind) is None]
            document["idle"] = idle.run_idle(
                idle.idle_servers(backends, peers_here), settings.idle_connections,
                progress.note if progress else None)
        else:
            notes.append(f"idle connections not measured: server RSS comes from /proc "
                         f"(Linux), this is {sys.platform}")
    if settings.micro:
        document["micro"] = micro.run_micro(backends, settings.micro_seconds,
                                            progress=progress.note if progress else None)
    document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return document


def render(document: dict[str, Any], markdown: bool = False) -> str:
    """The human-readable result: echo tables, targets, micro-benchmarks, notes."""
    parts = []
    m = document["machine"]
    parts.append(f"portio {m['portio']} ({m.get('build', 'pure Python')}) benchmark, "
                 f"{document['settings']['mode']} mode: "
                 f"{m['cpu']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; "
                 f"server on CPU {document['pinning']['server'] or 'any'}, load generator "
                 f"on CPU {document['pinning']['client'] or 'any'}; "
                 f"{document['settings']['reps']} interleaved repetitions of "
                 f"{document['settings']['duration']} s; median (min-max).\n")
    if "summary" in document:
        ratios = document["ratios"]
        parts.append(report.echo_table(document["summary"], ratios["asyncio"],
                                       ratios["uvloop"], markdown, document.get("legend", ())))
        withheld = document.get("verdicts_withheld")
        parts.append(("**Targets**\n\n" if markdown else "Targets:\n")
                     + (f"{'- ' if markdown else '  '}No verdicts: {withheld}.\n" if withheld
                        else report.targets_text(document["targets"], markdown)))
        parts.append(f"{document['bytes_verified']:,} echoed bytes verified.\n")
    if "idle" in document:
        parts.append(("**Idle connections**\n\n" if markdown else "Idle connections:\n")
                     + report.idle_table(document["idle"], markdown))
    if "micro" in document:
        parts.append(("**Micro-benchmarks**\n\n" if markdown else "Micro-benchmarks:\n")
                     + report.micro_table(document["micro"], markdown))
    if document["notes"]:
        parts.append("Notes: " + "; ".join(document["notes"]) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns 0, or 1 when a measurement failed (e.g. a byte mismatch)."""
    parser = argparse.ArgumentParser(
        prog="python -m portio.bench",
        description="portio's echo server against asyncio, uvloop, trio, a selectors loop and "
                    "a C epoll server (the floor), plus micro-benchmarks of every backend")
    parser.add_argument("--quick", action="store_true",
                        help="3 repetitions of 0.3 s (under two minutes on 2 cores)")
    parser.add_argument("--reps", type=int, help="repetitions (interleaved); full mode: 5")
    parser.add_argument("--duration", type=float, help="measured seconds per run; full: 1.5")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each; full: 0.3")
    parser.add_argument("--configs", nargs="+", choices=[c.name for c in suite.CONFIGS])
    parser.add_argument("--servers", nargs="+", metavar="NAME",
                        help="only these servers, e.g. asyncio selector/portx1")
    parser.add_argument("--backends", nargs="+", metavar="BACKEND",
                        help="portio backends to measure (default: all available)")
    parser.add_argument("--threads", type=int, default=0,
                        help="N for the port model's N-thread server (default: CPU count)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo benchmark")
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    parser.add_argument("--no-idle", action="store_true",
                        help="skip the idle-connections row (server KiB per idle connection)")
    parser.add_argument("--idle-connections", type=int, metavar="N",
                        help="idle connections per server; full: 5000, quick: 1000")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="directory for the JSON, Markdown and PNG (default: %(default)s)")
    args = parser.parse_args(argv)
    settings = quick_settings() if args.quick else Settings()
    for name in ("reps", "duration", "warmup"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.configs:
        settings.configs = tuple(args.configs)
    settings.servers = tuple(args.servers or ())
    settings.backends = tuple(args.backends or ())
    settings.threads = args.threads
    settings.pin = not args.no_pin
    settings.echo = not args.no_echo
    settings.micro = not args.no_micro
    settings.idle = not args.no_idle
    if args.idle_connections is not None:
        settings.idle_connections = args.idle_connections
    document = run_benchmark(settings, ProgressLine(sys.stderr))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{settings.mode}"
    report.write_json(stem.with_suffix(".json"), document)
    stem.with_suffix(".md").write_text(render(document, markdown=True))
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    if "summary" in document and not args.no_chart:
        try:
            report.chart(stem.with_suffix(".png"), document["summary"],
                         f"portio echo benchmark ({settings.mode}): median, whiskers min-max",
                         document.get("legend", ()))
            written.append(stem.with_suffix(".png"))
        except ImportError:
            document["notes"].append("matplotlib not installed: no chart")
    print(render(document))
    print("Wrote " + ", ".join(str(p) for p in written))
    failed = [m for m in document.get("measurements", []) if not m["ok"]]
    return 1 if failed else 0
