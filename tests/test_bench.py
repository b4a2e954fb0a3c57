"""The benchmark machinery on a tiny run: structure of the results and that bytes were verified.

Nothing here is timed: the numbers are not checked, only that the pieces fit together, that the
load generator compared what came back, and that the outputs are written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the C load generator uses epoll (Linux only)")

from portio.bench import cli, report, suite  # noqa: E402
from portio.bench.servers import ServerProcess, available_servers  # noqa: E402


@pytest.fixture(scope="module")
def document() -> dict[str, object]:
    settings = cli.Settings(reps=2, warmup=0.05, duration=0.1, micro_seconds=0.05,
                            configs=("1x64B", "10x64KiB"), servers=("asyncio", "selectors"),
                            mode="test")
    return cli.run_benchmark(settings)


def test_every_measurement_verified_its_bytes(document: dict[str, object]) -> None:
    measurements = document["measurements"]
    assert isinstance(measurements, list)
    assert len(measurements) == 2 * 2 * 2  # reps x configs x servers
    for m in measurements:
        assert m["ok"], m["error"]
        assert m["bytes_verified"] == m["bytes_sent"] > 0
        assert m["mismatches"] == m["errors"] == m["lost"] == 0
        assert m["messages"] > 0 and m["msgs_per_s"] > 0
        assert m["server_cpu_util"] >= 0


def test_summary_ratios_and_targets_have_their_shape(document: dict[str, object]) -> None:
    summary = document["summary"]
    assert isinstance(summary, list)
    assert {(r["config"], r["server"]) for r in summary} == {
        (c, s) for c in ("1x64B", "10x64KiB") for s in ("asyncio", "selectors")}
    for row in summary:
        spread = row["msgs_per_s"]
        assert spread["min"] <= spread["median"] <= spread["max"]
    ratios = document["ratios"]
    assert isinstance(ratios, dict)
    for row in ratios["asyncio"]:
        if row["server"] == "asyncio":
            assert row["msgs_per_s"]["median"] == pytest.approx(1.0)
    assert isinstance(document["targets"], list)


def test_micro_rows(document: dict[str, object]) -> None:
    micro = document["micro"]
    assert isinstance(micro, list)
    benches = {(r["backend"], r["bench"]) for r in micro}
    for backend in document["backends"]:  # type: ignore[attr-defined]
        assert {(backend, "post_get"), (backend, "get_many"), (backend, "file_read")} <= benches
    assert all(r["rate"] > 0 for r in micro)


def test_outputs_render_and_serialise(document: dict[str, object], tmp_path: Path) -> None:
    text = cli.render(document)
    assert "1x64B" in text and "asyncio" in text
    assert "| server |" in cli.render(document, markdown=True)
    report.write_json(tmp_path / "run.json", document)
    assert json.loads((tmp_path / "run.json").read_text())["summary"]
    pytest.importorskip("matplotlib")
    report.chart(tmp_path / "run.png", document["summary"], "test")  # type: ignore[arg-type]
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_a_dead_server_is_a_failed_measurement_not_a_crash() -> None:
    specs, _ = available_servers([], 1)
    server = ServerProcess(next(s for s in specs if s.name == "selectors"))
    server.stop()
    m = suite.measure(server, suite.CONFIGS[0], 0, 0.01, 0.01)
    assert not m.ok and m.error
