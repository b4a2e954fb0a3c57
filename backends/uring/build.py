"""cffi build script for portio's io_uring core (API mode, out-of-line).

``setup.py`` names this file in ``cffi_modules``; running it by hand
(``python backends/uring/build.py``) builds the module into ``build/``.
The produced module is ``portio.backends._uring_cffi``.
"""

from __future__ import annotations

import os
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = cffi.FFI()
ffibuilder.cdef((HERE / "uring.cdef.h").read_text())
ffibuilder.set_source(
    "portio.backends._uring_cffi",
    (HERE / "uring.c").read_text(),
    # PORTIO_URING_CFLAGS lets tools/asan-uring.sh add -fsanitize=address.
    extra_compile_args=[
        "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
        *os.environ.get("PORTIO_URING_CFLAGS", "").split(),
    ],
    extra_link_args=os.environ.get("PORTIO_URING_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent.parent / "build" / "cffi"), verbose=True)
