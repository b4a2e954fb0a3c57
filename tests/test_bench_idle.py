"""The idle-connection tool's own logic: finding a launcher's child in /proc, the KiB
arithmetic and the summary of repeated runs (what tools/wine-idle.sh relies on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from portio.bench import idle

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc (Linux only)")


def test_parent_of_reads_past_a_command_name_with_spaces_and_parentheses() -> None:
    stat = "4242 (py (x) 1) S 17 4242 4242 0 -1 4194560 1 0 0 0"
    assert idle.parent_of(stat) == 17


def test_kib_per_connection_spreads_the_growth() -> None:
    assert idle.kib_per_connection(3 * 1024 * 1000, 1000) == 3.0
    assert idle.kib_per_connection(-512 * 4, 4) == -0.5


@linux_only
def test_descendant_finds_the_grandchild_that_matches() -> None:
    # "; :" keeps sh from exec'ing sleep, so sleep is sh's child, not sh itself
    proc = subprocess.Popen(["sh", "-c", "sleep 37.5; :"])
    try:
        pid = idle.descendant(proc.pid, r"^sleep 37\.5$", timeout=10)
        assert pid != proc.pid
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0037.5\x00"
        with pytest.raises(RuntimeError, match="no descendant"):
            idle.descendant(proc.pid, r"^no such command$", timeout=0.2)
    finally:
        proc.kill()
        proc.wait()


def _row(server: str, kib: float, wineserver: float | None = None) -> dict[str, object]:
    row: dict[str, object] = {"server": server, "connections": 100, "kib_per_connection": kib}
    if wineserver is not None:
        row["kib_per_connection_wineserver"] = wineserver
    return row


def test_summarize_gives_median_and_spread_per_server_and_counts_errors() -> None:
    rows = [_row("a", 3.0, 1.0), _row("b", 10.0), _row("a", 1.0, 0.5), _row("a", 2.5, 0.75),
            {"server": "b", "connections": 100, "error": "RuntimeError: gone"}]
    a, b = idle.summarize(rows)
    assert a == {"server": "a", "connections": 100, "runs": 3, "errors": 0,
                 "kib_per_connection": {"median": 2.5, "min": 1.0, "max": 3.0},
                 "kib_per_connection_wineserver": {"median": 0.75, "min": 0.5, "max": 1.0}}
    assert b == {"server": "b", "connections": 100, "runs": 1, "errors": 1,
                 "kib_per_connection": {"median": 10.0, "min": 10.0, "max": 10.0}}


def test_main_summarizes_a_file_of_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "rows.jsonl"
    saved.write_text("".join(json.dumps(_row("a", kib)) + "\n" for kib in (4.0, 2.0)))
    assert idle.main(["--summarize", str(saved)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["summary"]["kib_per_connection"] == {"median": 3.0, "min": 2.0,
                                                                  "max": 4.0}


@pytest.mark.parametrize("args", [["--server", "no-equals-sign"], ["--also", "x=", "10"],
                                  ["--repeat", "0", "10"], ["0"]])
def test_main_rejects_bad_arguments(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        idle.main(args)
    assert exc.value.code == 2
