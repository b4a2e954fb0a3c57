"""The tests exercise the installed portio, and a source tree alone never imports as half of one.

setuptools maps backends/ to portio.backends only when it installs, so the checkout's portio/
is not a package by itself.  These tests pin down which portio the suite imports (the one
installed: editable, wheel or sdist) and what ``import portio`` does inside a checkout.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import portio.backends
import pytest

CHECKOUT = Path(__file__).resolve().parent.parent


def installed_editable() -> bool:
    """Whether the portio distribution on sys.path is an editable install."""
    direct_url = importlib.metadata.distribution("portio").read_text("direct_url.json")
    return bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


def test_the_suite_imports_the_installed_portio() -> None:
    package = Path(portio.__file__).resolve().parent
    backends = Path(portio.backends.__file__).resolve().parent
    if installed_editable():
        # an editable install links to this checkout: the same files, laid out as installed
        assert package == CHECKOUT / "portio"
        assert backends == CHECKOUT / "backends"
    else:
        assert package != CHECKOUT / "portio", "the checkout's source tree shadows the install"
        assert backends == package / "backends"
    assert "selector" in portio.available_backends(), portio.backend_status()


def import_portio(cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    code = "import json, portio; print(json.dumps(portio.available_backends()))"
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_source_tree_alone_raises_and_names_the_fix(tmp_path: Path) -> None:
    # portio/ without backends/, as in a checkout; -S: no site-packages, so no install to join
    (tmp_path / "portio").mkdir()
    for module in Path(portio.__file__).resolve().parent.glob("*.py"):
        # bytes, not shutil.copy: Windows CPython 3.13 copies with CopyFile2, which Wine 8 lacks
        (tmp_path / "portio" / module.name).write_bytes(module.read_bytes())
    result = import_portio(tmp_path, "-S")
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "pip install -e ." in result.stderr, result.stderr


def test_import_portio_in_the_checkout() -> None:
    """Editable: the checkout's portio/ joins its install and is whole.  Otherwise an import
    there finds the source tree first and must fail loudly, not run without backends."""
    result = import_portio(CHECKOUT)
    if installed_editable():
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == portio.available_backends()
    else:
        assert result.returncode != 0
        assert "has no portio.backends" in result.stderr, result.stderr


#: Compiled by mypyc where ``pip install`` builds on Linux (see setup.py).
HOT_PATH = ["portio._port", "portio._sockaddr", "portio.backends.selector",
            "portio.backends.uring"]


def test_the_hot_path_is_all_compiled_or_all_pure() -> None:
    # (portio.backends.uring imports on Linux only)
    files = [importlib.import_module(name).__file__ or "" for name in HOT_PATH
             if name != "portio.backends.uring" or sys.platform.startswith("linux")]
    compiled = [not name.endswith(".py") for name in files]
    assert all(compiled) or not any(compiled), files
    assert compiled[0] == portio.COMPILED, files


@pytest.mark.skipif("PORTIO_EXPECT_COMPILED" not in os.environ,
                    reason="PORTIO_EXPECT_COMPILED is not set (tox and CI set it to what their "
                           "install should have built)")
def test_the_install_built_what_this_run_expects() -> None:
    expected = os.environ["PORTIO_EXPECT_COMPILED"] == "1"
    assert expected == portio.COMPILED, (
        "compiled" if portio.COMPILED else "pure Python", portio._port.__file__)
