"""The documentation's example programs (docs/examples/) run as written on every backend."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import backends_under_test
from tests.test_readme import example_source

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"

# What each example prints, whichever backend runs it.
EXPECTED = {
    "udp.py": "server got b'ping'\nclient got b'PING'\n",
    "files.py": ("wrote 6 bytes: first half\nwrote 5 bytes: second half\n"
                 "read b'hello world'\npast the end: b''\n"),
    "routine.py": "send completed: 26 bytes\nreceived b'hello, completion routines'\n",
}


def test_every_example_is_run_here() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {*EXPECTED, "echo_server.py"}


def test_the_echo_server_example_is_the_readmes() -> None:
    # tests/test_readme.py runs the README's copy on every backend; the docs include this file
    assert (EXAMPLES / "echo_server.py").read_text(encoding="utf-8") == example_source()


@pytest.mark.parametrize("example", sorted(EXPECTED))
@pytest.mark.parametrize("backend", backends_under_test())
def test_example_runs(backend: str, example: str, tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)], cwd=tmp_path, capture_output=True,
        env={**os.environ, "PORTIO_BACKEND": backend}, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().replace("\r\n", "\n") == EXPECTED[example]
