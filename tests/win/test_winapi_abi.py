"""The cffi declarations in backends/_winapi.py against the real Windows headers.

``abi_check.c`` (built with mingw-w64 against ``<winsock2.h>``, ``<mswsock.h>``,
``<windows.h>``) prints sizes, offsets and constants; this test runs it and compares each line
with what cffi computes under the Windows interpreter. ``tools/wine-tests.sh`` builds the
program and passes its path in ``PORTIO_ABI_CHECK_EXE``; elsewhere a ``gcc`` on PATH (the
windows-latest runner has mingw-w64) builds it into a temporary directory.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

if sys.platform != "win32":  # a module-level skip; mypy skips the rest off Windows too
    pytest.skip("Windows only: cffi must lay the structures out with Windows type sizes",
                allow_module_level=True)

from portio.backends import _winapi as w

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    exe = os.environ.get("PORTIO_ABI_CHECK_EXE")
    if not exe:
        gcc = shutil.which("x86_64-w64-mingw32-gcc") or shutil.which("gcc")
        if gcc is None:
            pytest.skip("no PORTIO_ABI_CHECK_EXE and no mingw-w64 gcc on PATH to build abi_check.c")
        exe = str(tmp_path_factory.mktemp("abi") / "abi_check.exe")
        subprocess.run(
            [gcc, "-O1", "-Wall", "-Werror", "-o", exe, str(HERE / "abi_check.c"), "-lws2_32"],
            check=True,
        )
    out = subprocess.run([exe], check=True, capture_output=True, text=True, timeout=60).stdout
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert len(lines) > 50, out
    return lines


def test_layout_matches_headers(header_facts: list[list[str]]) -> None:
    mismatches = []
    for fields in header_facts:
        if fields[0] == "sizeof":
            ctype, expected = " ".join(fields[1:-1]), int(fields[-1])
            got = w.ffi.sizeof(ctype)
        elif fields[0] == "offsetof":
            ctype, member, expected = " ".join(fields[1:-2]), fields[-2], int(fields[-1])
            got = w.ffi.offsetof(ctype, member)
            ctype = f"{ctype}.{member}"
        else:
            continue
        if got != expected:
            mismatches.append(f"{fields[0]} {ctype}: headers {expected}, cffi {got}")
    assert not mismatches, "\n".join(mismatches)


def test_constants_match_headers(header_facts: list[list[str]]) -> None:
    known: dict[str, int] = {"INFINITE": w.INFINITE, "INVALID_HANDLE_VALUE": w.INVALID_HANDLE_VALUE}
    for enum_cls in (w.Error, w.Access, w.Share, w.Disposition, w.FileFlags, w.FileType,
                     w.CompletionModes, w.SockOpt, w.ServiceFlags):
        known.update({str(m.name): int(m) for m in enum_cls})
    mismatches, checked = [], 0
    for fields in header_facts:
        if fields[0] == "const":
            name, expected = fields[1], int(fields[2])
            checked += 1
            if known.get(name) != expected:
                mismatches.append(f"{name}: headers {expected}, _winapi {known.get(name)}")
        elif fields[0] == "guid":
            data1, data2, data3, *data4 = (int(x) for x in fields[2:])
            checked += 1
            if getattr(w, fields[1]) != (data1, data2, data3, tuple(data4)):
                mismatches.append(f"{fields[1]}: headers differ")
    assert checked > 40
    assert not mismatches, "\n".join(mismatches)


def test_dlls_load_and_export_everything() -> None:
    dlls = w.load()
    for lib, names in ((dlls.kernel32, w.Kernel32), (dlls.ws2_32, w.Ws2_32),
                       (dlls.ntdll, w.Ntdll)):
        for name in vars(names):
            if not name.startswith("_"):
                assert getattr(lib, name) is not None, name
