"""The echo benchmark: every server against every configuration, interleaved, repeated.

The machine is shared and noisy, so no server is measured in one block: each repetition starts
every server, then for each configuration measures them one after the other (A B C A B C ...),
and stops them.  A drift in the machine's load then hits every server alike, and ratios are
computed pair by pair (server X against asyncio in the *same* configuration and repetition)
before their median is taken.  Medians come with their min-max over the repetitions.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from portio.bench.loadgen import LoadGenerator
from portio.bench.servers import ServerProcess, ServerSpec, allowed_cpus, pin_to

__all__ = ["CONFIGS", "MIN_VERDICT_DURATION", "MIN_VERDICT_REPS", "EchoConfig", "Measurement",
           "legend", "pin_plan", "ratios", "run_echo", "summarise", "targets",
           "too_short_for_verdicts"]


@dataclasses.dataclass(frozen=True)
class EchoConfig:
    """``connections`` x ``size``-byte messages, ``window`` in flight per connection."""

    name: str
    connections: int
    size: int
    window: int
    what: str


CONFIGS = (
    EchoConfig("1x64B", 1, 64, 1, "1 connection, 64 B ping-pong (latency)"),
    EchoConfig("100x64B", 100, 64, 1, "100 connections, 64 B ping-pong (per-message cost)"),
    EchoConfig("100x4KiB", 100, 4096, 1, "100 connections, 4 KiB ping-pong"),
    EchoConfig("10x64KiB", 10, 65536, 4, "10 connections, 64 KiB streaming (4 in flight)"),
)


@dataclasses.dataclass
class Measurement:
    """One server, one configuration, one repetition."""

    server: str
    config: str
    rep: int
    ok: bool
    error: str | None = None
    msgs_per_s: float = 0.0
    mb_per_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    server_cpu_us_per_msg: float = 0.0
    server_cpu_util: float = 0.0
    client_cpu_util: float = 0.0
    peak_rss_mib: float | None = None
    messages: int = 0
    bytes_sent: int = 0
    bytes_verified: int = 0
    mismatches: int = 0
    errors: int = 0
    lost: int = 0


#: The shortest run whose targets are judged: on a shared 2-core machine, fewer or shorter
#: windows give ratio medians that swing by more than the margins the targets are about.
MIN_VERDICT_REPS = 5
MIN_VERDICT_DURATION = 1.0


def too_short_for_verdicts(reps: int, duration: float) -> str | None:
    """Why a run of ``reps`` repetitions of ``duration`` seconds supports no verdict on the
    targets, or None when it does."""
    if reps >= MIN_VERDICT_REPS and duration >= MIN_VERDICT_DURATION:
        return None
    return (f"this run is too short for verdicts ({reps} repetitions of {duration:g} s; verdicts "
            f"need at least {MIN_VERDICT_REPS} of {MIN_VERDICT_DURATION:g} s, e.g. the full "
            "mode): read its ratios as a rough sketch")


def legend(configs: Sequence[EchoConfig], specs: Sequence[ServerSpec]) -> list[str]:
    """"NAME: what it means" for the configuration and server names of a run's tables."""
    lines = [f"{c.name}: {c.what}" for c in configs]
    threads = sorted({s.threads for s in specs if s.model == "port" and s.threads})
    if threads:
        lines.append("BACKEND/portxN (" + ", ".join(f"portx{n}" for n in threads) + "): "
                     "portio's echo server on that backend, the completion-port model "
                     "(portio-echo serve --model port) with N worker threads on get_many")
    if any(s.model == "routine" for s in specs):
        lines.append("BACKEND/routine: portio's echo server, the completion-routine model "
                     "(portio-echo serve --model routine): one thread, callbacks run by dispatch")
    lines += [f"{s.name}: {s.note}" for s in specs if s.note]
    return lines


def pin_plan(enabled: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): the first allowed CPU for the server, the rest for the load
    generator; ``(None, None)`` when pinning is off or impossible (fewer than 2 CPUs)."""
    allowed = allowed_cpus()
    if not enabled or allowed is None:
        return None, None
    cpus = sorted(allowed)
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def measure(server: ServerProcess, config: EchoConfig, rep: int, warmup: float,
            duration: float) -> Measurement:
    """Drive ``server`` with ``config``: connect, warm up, measure ``duration``, drain, verify."""
    name = server.spec.name
    try:
        server.reset_peak_rss()
        generator = LoadGenerator(server.host, server.port, config.connections, config.size,
                                  config.window)
        try:
            generator.run_for(warmup)
            cpu0 = server.cpu_seconds()
            window = generator.run_for(duration)
            cpu1 = server.cpu_seconds()
            rss = server.peak_rss_mib()
        finally:
            totals = generator.close()
    except (OSError, ValueError) as exc:
        alive = "" if server.alive() else f" (server exited: {server.stderr_tail(500)!r})"
        return Measurement(name, config.name, rep, False, f"{type(exc).__name__}: {exc}{alive}")
    cpu = cpu1 - cpu0
    m = Measurement(
        name, config.name, rep, ok=True,
        msgs_per_s=window.messages / window.elapsed,
        mb_per_s=window.bytes / window.elapsed / 1e6,
        p50_us=window.p50_us, p99_us=window.p99_us,
        server_cpu_us_per_msg=cpu / window.messages * 1e6 if window.messages else 0.0,
        server_cpu_util=cpu / window.elapsed,
        client_cpu_util=window.client_cpu / window.elapsed,
        peak_rss_mib=rss, messages=window.messages,
        bytes_sent=totals.bytes_sent, bytes_verified=totals.bytes_verified,
        mismatches=totals.mismatches, errors=totals.errors, lost=totals.lost)
    problems = []
    if totals.mismatches:
        problems.append(f"{totals.mismatches} connections got bytes that were not sent")
    if totals.errors:
        problems.append(f"{totals.errors} connections failed")
    if totals.lost:
        problems.append(f"{totals.lost} bytes never came back")
    if not window.messages:
        problems.append("no message came back in the window")
    if problems:
        m.ok = False
        m.error = "; ".join(problems)
    return m


Progress = Callable[[int, int, str], None]


def run_echo(specs: Sequence[ServerSpec], configs: Sequence[EchoConfig], reps: int,
             warmup: float, duration: float, pin: bool = True,
             progress: Progress | None = None) -> list[Measurement]:
    """Measure every server in every configuration ``reps`` times, interleaved."""
    server_cpus, client_cpus = pin_plan(pin)
    previous = allowed_cpus() if client_cpus else None
    total = reps * len(configs) * len(specs)
    done = 0
    results: list[Measurement] = []
    try:
        for rep in range(reps):
            running: list[ServerProcess | Measurement] = []
            for spec in specs:  # servers start before the client pins itself (they inherit)
                try:
                    running.append(ServerProcess(spec, server_cpus))
                except (OSError, RuntimeError) as exc:
                    running.append(Measurement(spec.name, "", rep, False, str(exc)))
            if client_cpus:
                pin_to(client_cpus)
            try:
                for config in configs:
                    for server in running:
                        if progress is not None:
                            label = server.server if isinstance(server, Measurement) \
                                else server.spec.name
                            progress(done, total,
                                     f"rep {rep + 1}/{reps} {config.name}: measuring {label}")
                        if isinstance(server, Measurement):
                            results.append(dataclasses.replace(server, config=config.name))
                        else:
                            results.append(measure(server, config, rep, warmup, duration))
                        done += 1
            finally:
                if previous is not None:
                    pin_to(previous)
                for server in running:
                    if isinstance(server, ServerProcess):
                        server.stop()
    finally:
        if previous is not None:
            pin_to(previous)
    if progress is not None:
        progress(done, total, "done")
    return results


_METRICS = ("msgs_per_s", "mb_per_s", "server_cpu_us_per_msg", "server_cpu_util", "p50_us",
            "p99_us", "peak_rss_mib", "client_cpu_util")


def _spread(values: Iterable[float]) -> dict[str, float] | None:
    got = sorted(values)
    if not got:
        return None
    return {"median": statistics.median(got), "min": got[0], "max": got[-1]}


def summarise(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Per (config, server): median/min/max of every metric over the good repetitions."""
    rows: list[dict[str, Any]] = []
    keys: dict[tuple[str, str], None] = {}
    for m in results:
        keys[(m.config, m.server)] = None
    for config, server in keys:
        mine = [m for m in results if m.config == config and m.server == server]
        good = [m for m in mine if m.ok]
        row: dict[str, Any] = {"config": config, "server": server, "reps": len(mine),
                               "good": len(good),
                               "errors": sorted({m.error for m in mine if m.error}),
                               "bytes_verified": sum(m.bytes_verified for m in mine)}
        for metric in _METRICS:
            row[metric] = _spread(getattr(m, metric) for m in good
                                  if getattr(m, metric) is not None)
        rows.append(row)
    return rows


def ratios(results: Sequence[Measurement], baseline: str) -> list[dict[str, Any]]:
    """Per (config, server): messages/s and server CPU/message divided by ``baseline``'s in the
    same configuration and repetition, then median/min/max over the repetitions."""
    index = {(m.config, m.rep, m.server): m for m in results if m.ok}
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (config, rep, server), m in index.items():
        base = index.get((config, rep, baseline))
        if base is None or not base.msgs_per_s or not base.server_cpu_us_per_msg:
            continue
        slot = out.setdefault((config, server), {"msgs": [], "cpu": []})
        slot["msgs"].append(m.msgs_per_s / base.msgs_per_s)
        slot["cpu"].append(m.server_cpu_us_per_msg / base.server_cpu_us_per_msg)
    return [{"config": c, "server": s, "baseline": baseline,
             "msgs_per_s": _spread(v["msgs"]), "server_cpu_per_msg": _spread(v["cpu"])}
            for (c, s), v in out.items()]


def _ratio(rows: Sequence[dict[str, Any]], config: str, server: str,
           metric: str) -> dict[str, float] | None:
    for row in rows:
        if row["config"] == config and row["server"] == server:
            value: dict[str, float] | None = row[metric]
            return value
    return None


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.0f}%"


def targets(results: Sequence[Measurement], specs: Sequence[ServerSpec],
            noise_band: float = 0.05) -> list[dict[str, Any]]:
    """The benchmark's three targets, judged on pairwise ratio medians (min-max shown).

    "No worse" allows ``noise_band`` (5 %): a median inside it is reported as met within noise.
    """
    verdicts: list[dict[str, Any]] = []

    def add(target: str, met: bool | None, detail: str) -> None:
        verdicts.append({"target": target, "met": met, "detail": detail})

    def fmt(r: dict[str, float]) -> str:
        return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"

    names = {s.name for s in specs}
    vs_uvloop = ratios(results, "uvloop")
    target = "io_uring 100x64B: less server CPU/msg and more msgs/s than uvloop"
    uring = [s.name for s in specs if s.backend == "io_uring" and s.model == "port"]
    if not uring or "uvloop" not in names:
        add(target, None, "not measured: " + ("no io_uring port-model server in this run"
                                              if not uring else "uvloop not in this run"))
    for name in uring:
        msgs = _ratio(vs_uvloop, "100x64B", name, "msgs_per_s")
        cpu = _ratio(vs_uvloop, "100x64B", name, "server_cpu_per_msg")
        if msgs is None or cpu is None:
            add(f"{target} [{name}]", None, "no valid pairs")
            continue
        met = msgs["median"] > 1 and cpu["median"] < 1
        add(f"{target} [{name}]", met,
            f"msgs/s x{fmt(msgs)} of uvloop ({_pct(msgs['median'])}); "
            f"CPU/msg x{fmt(cpu)} ({_pct(cpu['median'])})")
    vs_asyncio = ratios(results, "asyncio")
    configs = sorted({m.config for m in results})
    for spec in specs:
        if spec.backend != "selector":
            continue
        parts, met_all = [], True
        for config in configs:
            msgs = _ratio(vs_asyncio, config, spec.name, "msgs_per_s")
            if msgs is None:
                met_all = False
                parts.append(f"{config}: no valid pairs")
                continue
            met_all = met_all and msgs["median"] >= 1
            parts.append(f"{config} x{fmt(msgs)}")
        add(f"selector >= asyncio msgs/s in every config [{spec.name}]", met_all,
            "; ".join(parts))
    for backend in sorted({s.backend for s in specs if s.backend}):
        one = f"{backend}/portx1"
        many = [s.name for s in specs if s.backend == backend and s.model == "port"
                and s.name != one]
        for name in many:
            pairs = [r for r in ratios(results, one) if r["server"] == name]
            parts, met_all = [], True
            for row in sorted(pairs, key=lambda r: str(r["config"])):
                msgs = row["msgs_per_s"]
                met_all = met_all and msgs["median"] >= 1 - noise_band
                parts.append(f"{row['config']} x{fmt(msgs)}")
            add(f"{name} no worse than {one} (msgs/s, 5% noise band)", met_all if pairs else None,
                "; ".join(parts) or "no valid pairs")
    return verdicts
