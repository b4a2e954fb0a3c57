"""The benchmark machinery on a tiny run: structure of the results and that bytes were verified.

Nothing here is timed: the numbers are not checked, only that the pieces fit together, that the
load generator compared what came back, and that the outputs are written.  The C reference
server (peer ``c-epoll``) gets its own echo tests, since no Python code checks what it does.
"""

from __future__ import annotations

import io
import json
import random
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the C load generator uses epoll (Linux only)")

from portio.bench import cli, loadgen, peers, report, suite  # noqa: E402
from portio.bench.servers import ServerProcess, available_servers  # noqa: E402

SERVERS = ("asyncio", "selectors", "c-epoll")


@pytest.fixture(scope="module")
def document() -> dict[str, object]:
    settings = cli.Settings(reps=2, warmup=0.05, duration=0.1, micro_seconds=0.05,
                            configs=("1x64B", "10x64KiB"), servers=SERVERS,
                            idle_connections=100, mode="test")
    return cli.run_benchmark(settings)


def test_every_measurement_verified_its_bytes(document: dict[str, object]) -> None:
    measurements = document["measurements"]
    assert isinstance(measurements, list)
    assert len(measurements) == 2 * 2 * len(SERVERS)  # reps x configs x servers
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
        (c, s) for c in ("1x64B", "10x64KiB") for s in SERVERS}
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
    assert {("(no port, no I/O)", "echo_handler"),
            ("(no port, no I/O)", "echo_api_objects")} <= benches
    assert all(r["rate"] > 0 for r in micro)



def test_outputs_render_and_serialise(document: dict[str, object], tmp_path: Path) -> None:
    text = cli.render(document)
    assert "1x64B" in text and "asyncio" in text
    assert f"c-epoll: {peers.NOTES['c-epoll']}" in text
    markdown = cli.render(document, markdown=True)
    assert "| server |" in markdown and "| c-epoll |" in markdown
    report.write_json(tmp_path / "run.json", document)
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["summary"]
    assert written["legend"] == document["legend"]
    assert f"c-epoll: {peers.NOTES['c-epoll']}" in written["legend"]
    pytest.importorskip("matplotlib")
    report.chart(tmp_path / "run.png", document["summary"], "test",  # type: ignore[arg-type]
                 document["legend"])  # type: ignore[arg-type]
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


# An issue-tracker reference ("issue 6", "#6") has no place in what a user reads.
ISSUE_REFERENCE = re.compile(r"\bissues?\b|#\d", re.IGNORECASE)


def test_output_speaks_of_the_project_only(document: dict[str, object]) -> None:
    for text in (cli.render(document), cli.render(document, markdown=True)):
        found = ISSUE_REFERENCE.search(text)
        assert found is None, text[max(0, found.start() - 60):found.end() + 60]


def test_legend_says_what_config_and_server_names_mean(document: dict[str, object]) -> None:
    text = cli.render(document)
    for config in suite.CONFIGS:
        if config.name in ("1x64B", "10x64KiB"):  # the fixture's configurations
            assert f"{config.name}: {config.what}" in text
    specs, _ = available_servers(["selector"], 2)
    lines = suite.legend(suite.CONFIGS[:1], specs)
    assert lines[0] == f"1x64B: {suite.CONFIGS[0].what}"
    assert any(line.startswith("BACKEND/portxN (portx1, portx2): ") and "worker threads" in line
               for line in lines), lines
    assert any(line.startswith("BACKEND/routine: ") for line in lines), lines


def test_a_run_too_short_prints_no_verdicts(document: dict[str, object]) -> None:
    for text in (cli.render(document), cli.render(document, markdown=True)):
        assert "No verdicts: this run is too short for verdicts" in text
        assert not re.search(r"\b(MET|MISSED)\b", text)
    assert document["targets"] == []
    quick = cli.quick_settings()
    assert suite.too_short_for_verdicts(quick.reps, quick.duration) is not None
    full = cli.Settings()
    assert suite.too_short_for_verdicts(full.reps, full.duration) is None
    judged = dict(document, verdicts_withheld=None,
                  targets=[{"target": "a target", "met": True, "detail": "x1.10"}])
    assert "MET: a target: x1.10" in cli.render(judged)


def test_progress_names_each_server_it_measures() -> None:
    stream = io.StringIO()  # not a terminal: a log line per measurement
    settings = cli.Settings(reps=1, warmup=0.02, duration=0.05, configs=("1x64B",),
                            servers=("asyncio", "selectors"), micro=False, mode="test")
    cli.run_benchmark(settings, cli.ProgressLine(stream))
    log = stream.getvalue()
    assert "1x64B: measuring asyncio" in log and "1x64B: measuring selectors" in log, log
    assert ISSUE_REFERENCE.search(log) is None, log


def test_a_dead_server_is_a_failed_measurement_not_a_crash() -> None:
    specs, _ = available_servers([], 1)
    server = ServerProcess(next(s for s in specs if s.name == "selectors"))
    server.stop()
    m = suite.measure(server, suite.CONFIGS[0], 0, 0.01, 0.01)
    assert not m.ok and m.error


# --- the C reference server, peer "c-epoll" ---

@pytest.fixture(scope="module")
def c_epoll() -> Iterator[ServerProcess]:
    specs, notes = available_servers([], 1)
    spec = next((s for s in specs if s.name == "c-epoll"), None)
    assert spec is not None, notes  # the load generator builds here, so the server must too
    server = ServerProcess(spec)
    yield server
    server.stop()


def _echo_each(host: str, port: int, payloads: list[bytes]) -> None:
    """Send each payload (from a thread, so a large one cannot deadlock) and read it back."""
    with socket.create_connection((host, port), timeout=20) as sock:
        for payload in payloads:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = sock.recv(1 << 20)
                assert chunk, "the server closed the connection"
                got += chunk
            sender.join(20)
            assert bytes(got) == payload


def test_c_epoll_is_listed_as_the_floor_and_prints_its_ready_line(
        c_epoll: ServerProcess) -> None:
    assert c_epoll.spec.note == peers.NOTES["c-epoll"]
    assert c_epoll.host == "127.0.0.1" and c_epoll.port > 0 and c_epoll.alive()


def test_c_epoll_unavailable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(loadgen, "build", no_compiler)
    specs, notes = available_servers([], 1)
    assert "c-epoll" not in {s.name for s in specs}
    assert any("c-epoll" in n and "no C compiler" in n for n in notes), notes


def test_c_epoll_echoes_1_byte_to_1_mib_to_several_clients_at_once(
        c_epoll: ServerProcess) -> None:
    rng = random.Random(1)
    edges = [1, 2, 63, 64, 65535, 65536, 65537, 1 << 20]
    clients = [[rng.randbytes(n) for n in edges + [rng.randint(1, 1 << 20) for _ in range(4)]]
               for _ in range(4)]
    for payloads in clients:
        rng.shuffle(payloads)
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(_echo_each, c_epoll.host, c_epoll.port, p) for p in clients]
        for future in futures:
            future.result(timeout=60)
    assert c_epoll.alive()


def test_c_epoll_waits_for_a_client_that_does_not_read(c_epoll: ServerProcess) -> None:
    total = 8 << 20
    payload = memoryview(random.Random(8).randbytes(total))
    with socket.socket() as hog:
        # Small buffers on the client's side, so 8 MiB cannot all fit in the kernel's buffers
        # and the server has to wait with an unsent rest.
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        hog.settimeout(10)
        hog.connect((c_epoll.host, c_epoll.port))
        hog.setblocking(False)
        sent = 0
        while sent < total and select.select([], [hog], [], 0.3)[1]:  # until 0.3 s of no room
            sent += hog.send(payload[sent:sent + (1 << 20)])
        assert sent < total, "the socket buffers took 8 MiB: the server never had to wait"
        # Stalled on this client, the server neither spins nor stops serving others.
        cpu = c_epoll.cpu_seconds()
        _echo_each(c_epoll.host, c_epoll.port, [b"still here"])
        time.sleep(0.5)
        assert c_epoll.cpu_seconds() - cpu < 0.2
        got = bytearray()
        deadline = time.monotonic() + 30
        while len(got) < total:
            assert time.monotonic() < deadline, f"{len(got)} of {total} bytes echoed in 30 s"
            readable, writable, _ = select.select([hog], [hog] if sent < total else [], [], 1)
            if readable:
                chunk = hog.recv(1 << 20)
                assert chunk, "the server closed the connection"
                got += chunk
            if writable:  # select said there is room: send takes something
                sent += hog.send(payload[sent:sent + (1 << 20)])
        assert got == payload
    assert c_epoll.alive()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_c_epoll_stops_on_sigterm_and_sigint(signum: signal.Signals) -> None:
    specs, _ = available_servers([], 1)
    server = ServerProcess(next(s for s in specs if s.name == "c-epoll"))
    try:
        _echo_each(server.host, server.port, [b"x"])
        server.process.send_signal(signum)
        assert server.process.wait(5) == -signum
    finally:
        server.stop()


def test_the_idle_row_measures_every_backend_and_the_peers(document: dict[str, object]) -> None:
    rows = document["idle"]
    assert isinstance(rows, list)
    backends = document["backends"]
    assert isinstance(backends, list)
    names = [row["server"] for row in rows]
    assert names[:len(backends)] == [f"{b}/port" for b in backends]
    assert "asyncio" in names
    for row in rows:
        assert "error" not in row, row
        assert row["connections"] == 100
        assert row["bytes_verified"] == 100 * 64  # one verified round trip per connection
        assert row["kib_per_connection"] == pytest.approx(
            (row["rss_idle_mib"] - row["rss_before_mib"]) * 1024 / 100, abs=1.1)
    text = cli.render(document)
    assert "Idle connections:" in text and "KiB per idle connection" in text
    assert "| asyncio | 100 |" in cli.render(document, markdown=True)
