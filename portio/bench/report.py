"""Turning a benchmark run into what people read: a text table, Markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["chart", "echo_table", "micro_table", "targets_text", "write_json"]

# (column title, summary metric, format of one number)
_COLUMNS = (
    ("msgs/s", "msgs_per_s", "{:,.0f}"),
    ("MB/s", "mb_per_s", "{:,.1f}"),
    ("srv CPU us/msg", "server_cpu_us_per_msg", "{:.1f}"),
    ("srv CPU", "server_cpu_util", "{:.0%}"),
    ("p50 us", "p50_us", "{:,.0f}"),
    ("p99 us", "p99_us", "{:,.0f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.1f}"),
    ("client CPU", "client_cpu_util", "{:.0%}"),
)


def _cell(spread: dict[str, float] | None, fmt: str, with_range: bool) -> str:
    if spread is None:
        return "-"
    text = fmt.format(spread["median"])
    if with_range:
        text += f" ({fmt.format(spread['min'])}-{fmt.format(spread['max'])})"
    return text


def _ratio_cell(rows: Sequence[dict[str, Any]], config: str, server: str) -> str:
    for row in rows:
        if row["config"] == config and row["server"] == server and row["msgs_per_s"]:
            r = row["msgs_per_s"]
            return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
    return "-"


def echo_table(summary: Sequence[dict[str, Any]], vs_asyncio: Sequence[dict[str, Any]],
               vs_uvloop: Sequence[dict[str, Any]], markdown: bool = False,
               legend: Sequence[str] = (),
               ranges: tuple[str, ...] = ("msgs_per_s", "server_cpu_us_per_msg")) -> str:
    """One table per configuration: medians, with (min-max) for the metrics in ``ranges``, and
    messages/s ratios against asyncio and uvloop (pairwise, median (min-max)); then the
    ``legend`` lines ("NAME: what it is") for the servers a reader must be told about."""
    titles = ["server", *(c[0] for c in _COLUMNS), "vs asyncio", "vs uvloop"]
    out: list[str] = []
    configs = list(dict.fromkeys(row["config"] for row in summary))
    for config in configs:
        body = []
        for row in summary:
            if row["config"] != config:
                continue
            if not row["good"]:
                body.append([row["server"], f"FAILED: {'; '.join(row['errors'])[:90]}"]
                            + [""] * (len(titles) - 2))
                continue
            cells = [row["server"] + ("" if row["good"] == row["reps"]
                                      else f" ({row['reps'] - row['good']} failed)")]
            cells += [_cell(row[metric], fmt, metric in ranges) for _, metric, fmt in _COLUMNS]
            cells += [_ratio_cell(vs_asyncio, config, row["server"]),
                      _ratio_cell(vs_uvloop, config, row["server"])]
            body.append(cells)
        if markdown:
            out.append(f"**{config}**\n")
            out.append("| " + " | ".join(titles) + " |")
            out.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(titles)))
                       + "|")
            out += ["| " + " | ".join(cells) + " |" for cells in body]
        else:
            widths = [max(len(r[i]) for r in [titles, *body]) for i in range(len(titles))]
            out.append(f"== {config} ==")
            for cells in [titles, *body]:
                padded = (c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
                out.append("  ".join(padded).rstrip())
        out.append("")
    if legend:
        out += [f"- {line}" if markdown else f"  {line}" for line in legend] + [""]
    return "\n".join(out)


def micro_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The micro-benchmarks, one row per (backend, benchmark)."""
    body = [[r["backend"], r["bench"], f"{r['rate']:,.0f}", r["unit"]] for r in rows]
    titles = ["backend", "benchmark", "rate", "unit"]
    if markdown:
        lines = ["| " + " | ".join(titles) + " |", "|---|---|--:|---|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    widths = [max(len(r[i]) for r in [titles, *body]) for i in range(4)]
    return "\n".join("  ".join(c.rjust(w) if i == 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
                     for cells in [titles, *body]) + "\n"


def idle_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Server memory per idle connection (RSS growth / connections), each server measured
    in the same run, with its ratio to uvloop's and asyncio's."""
    kib = {r["server"]: r["kib_per_connection"] for r in rows if "error" not in r}
    titles = ["server", "connections", "KiB per idle connection", "vs uvloop", "vs asyncio"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["server"], str(r["connections"]), f"failed: {r['error']}", "", ""])
            continue
        own = r["kib_per_connection"]
        ratio = [f"{own / kib[peer]:.2f}x" if kib.get(peer) else "-"
                 for peer in ("uvloop", "asyncio")]
        body.append([r["server"], f"{r['connections']:,}", f"{own:.2f}", *ratio])
    if markdown:
        lines = ["| " + " | ".join(titles) + " |", "|---|--:|--:|--:|--:|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    widths = [max(len(row[i]) for row in [titles, *body]) for i in range(len(titles))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
                     for cells in [titles, *body]) + "\n"


def targets_text(verdicts: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One line per target: MET / MISSED / NOT MEASURED, and the numbers."""
    word = {True: "MET", False: "MISSED", None: "NOT MEASURED"}
    bullet = "- " if markdown else "  "
    return "\n".join(f"{bullet}{word[v['met']]}: {v['target']}: {v['detail']}"
                     for v in verdicts) + "\n"


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the whole run (settings, machine, raw measurements, summaries) as JSON."""
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")


def _colour(server: str) -> str:
    palette = {"asyncio": "#7f7f7f", "uvloop": "#ff7f0e", "trio": "#9467bd",
               "selectors": "#8c564b", "c-epoll": "#222222"}
    if server in palette:
        return palette[server]
    if server.startswith("io_uring"):
        return "#1f77b4"
    return "#2ca02c"


def chart(path: Path, summary: Sequence[dict[str, Any]], title: str,
          legend: Sequence[str] = ()) -> None:
    """A PNG: per configuration, messages/s (top) and server CPU per message (bottom) for every
    server, bars at the median, whiskers at min and max; the ``legend`` lines under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(row["config"] for row in summary))
    servers = list(dict.fromkeys(row["server"] for row in summary))
    metrics = (("msgs_per_s", 1e-3, "k messages/s (higher is better)"),
               ("server_cpu_us_per_msg", 1.0, "server CPU us per message (lower is better)"))
    fig, axes = plt.subplots(len(metrics), len(configs), squeeze=False,
                             figsize=(4.2 * len(configs), 0.42 * len(servers) * 2 + 2.2))
    for col, config in enumerate(configs):
        by_server = {row["server"]: row for row in summary if row["config"] == config}
        for row_i, (metric, scale, unit) in enumerate(metrics):
            ax = axes[row_i][col]
            ys = list(range(len(servers)))
            med, lo, hi = [], [], []
            for server in servers:
                spread = by_server.get(server, {}).get(metric)
                m = spread["median"] * scale if spread else 0.0
                med.append(m)
                lo.append(m - spread["min"] * scale if spread else 0.0)
                hi.append(spread["max"] * scale - m if spread else 0.0)
            ax.barh(ys, med, xerr=[lo, hi], color=[_colour(s) for s in servers],
                    error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})
            for y, m, h in zip(ys, med, hi, strict=True):
                ax.text(m + h, y, f" {m:,.0f}" if m >= 10 else f" {m:.1f}", va="center", fontsize=7)
            ax.set_yticks(ys)
            ax.set_yticklabels(servers if col == 0 else [""] * len(servers), fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(unit, fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
            ax.set_xlim(0, max([m + h for m, h in zip(med, hi, strict=True)] + [1]) * 1.25)
            if row_i == 0:
                ax.set_title(config, fontsize=10, fontweight="bold")
    fig.suptitle(title, fontsize=10)
    footer = 0.1 * len(legend) / fig.get_figheight()  # figure fraction for 0.1 in per line
    if legend:
        fig.text(0.01, 0.01, "\n".join(legend), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, footer, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
