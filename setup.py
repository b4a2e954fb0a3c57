# setup.py exists only to carry what pyproject.toml cannot express: the io_uring core
# (`cffi_modules=`) and the mypyc-compiled hot path (`ext_modules=`).  Everything else about the
# package lives in pyproject.toml.
#
# The io_uring core is Linux-only, so it is added only on Linux, and its build is optional: if it
# fails (no compiler, no kernel headers), installing still succeeds and the io_uring backend
# reports why it is unavailable.
#
# The compiled hot path: mypyc compiles the shared port (portio/_port.py, portio/_sockaddr.py)
# and the Linux backends (backends/selector.py, backends/uring.py) together, as native classes,
# from the very modules that are the pure-Python implementation: one contract, written once
# (issue 13: compiling _port.py alone, with the backends interpreted, paid nothing).  The .py
# files are installed too; an extension module wins the import when it exists, so a failed
# compile (no compiler) leaves the pure package, with a warning.  Linux only: that is where CI
# runs every suite against the compiled build; elsewhere the package is pure Python.
# PORTIO_PURE=1 skips the compile.  An editable install stays pure (an edit to a .py file must
# take effect) unless PORTIO_MYPYC=1 asks for the compiled modules there too.
#
# Editable installs default to setuptools' "strict" mode: a tree of links to the checkout, laid
# out as installed (backends/ at portio/backends/), on a plain .pth path.  The default
# "lenient" mode would resolve portio.backends with an import hook, which type checkers cannot
# follow, so mypy would find no portio at all.  The cost: a new module needs a re-install.
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: The modules compiled by mypyc: their path as installed (and staged), and in the checkout.
COMPILED = {
    "portio/_port.py": "portio/_port.py",
    "portio/_sockaddr.py": "portio/_sockaddr.py",
    "portio/backends/selector.py": "backends/selector.py",
    "portio/backends/uring.py": "backends/uring.py",
}


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when an extension will not build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc, ext.name)

    @staticmethod
    def _warn(exc: BaseException, name: str = "") -> None:
        what = ("the io_uring backend will be unavailable" if "uring_cffi" in name else
                "portio runs as pure Python (the same code, slower)")
        print(f"WARNING: portio's extension {name} was not built ({exc}); {what}.",
              file=sys.stderr)


def _clear_weakrefs_on_dealloc(c_file: str) -> None:
    """Make every generated deallocator clear the object's weak references first.

    mypyc (2.4) gives a native class that inherits from a Python class (CompletionPort is an
    ``abc.ABC``) a ``__weakref__`` slot, but its deallocator only drops that slot's list instead
    of calling PyObject_ClearWeakRefs: a live weakref (portio keeps its ports in a WeakSet, and
    operations hold their port weakly) would then point at freed memory.  CPython's own
    subtype_dealloc does the call at this point: after the finalizer, before the fields are
    cleared.  The guard makes it a no-op for classes without the slot.
    """
    text = Path(c_file).read_text()
    patched, count = re.subn(
        r"(\n[ \t]*)CPy_TRASHCAN_BEGIN\(self, (\w+)\)",
        r"\1if (Py_TYPE(self)->tp_weaklistoffset) PyObject_ClearWeakRefs((PyObject *)self);"
        r"\1CPy_TRASHCAN_BEGIN(self, \2)",
        text)
    if count:
        Path(c_file).write_text(patched)


def _remove_compiled_from_checkout() -> None:
    """A pure editable install after a PORTIO_MYPYC=1 one: the extension modules that build left
    next to the sources would win the import and run stale code, so they go."""
    for source in [*COMPILED.values(), "portio__mypyc.py"]:
        stem = Path(source).with_suffix("")
        for stale in stem.parent.glob(f"{stem.name}.*"):
            if stale.suffix in (".so", ".pyd"):
                stale.unlink()


def _mypyc_extensions() -> list[Extension]:
    """The compiled hot path's extensions, or none (pure Python) where it is not wanted."""
    editable = "editable_wheel" in sys.argv
    if (not sys.platform.startswith("linux") or os.environ.get("PORTIO_PURE")
            or (editable and not os.environ.get("PORTIO_MYPYC"))):
        if editable:
            _remove_compiled_from_checkout()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        OptionalBuildExt._warn(exc, "(mypyc)")
        return []
    # mypyc names a module after its path, so it compiles a copy of the package laid out as
    # installed: backends/ as portio/backends/ (the other modules are there for type checking).
    stage = Path("build", "mypyc-src")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree("portio", stage / "portio",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copytree("backends", stage / "portio" / "backends",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "uring"))
    try:
        extensions: list[Extension] = mypycify(
            [str(stage / installed) for installed in COMPILED],
            opt_level="3", group_name="portio", target_dir=str(Path("build", "mypyc-c")))
    except BaseException as exc:  # mypyc reports a type error with SystemExit
        OptionalBuildExt._warn(exc, "(mypyc)")
        return []
    for extension in extensions:
        for source in extension.sources:
            _clear_weakrefs_on_dealloc(source)
    return extensions


cffi_modules = []
if sys.platform.startswith("linux"):
    cffi_modules.append("backends/uring/build.py:ffibuilder")

setup(
    cffi_modules=cffi_modules,
    ext_modules=_mypyc_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    options={"editable_wheel": {"mode": "strict"}},
)
