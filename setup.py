# setup.py exists only to carry `cffi_modules=` (pyproject.toml cannot express
# it). Everything else about the package lives in pyproject.toml.
#
# The io_uring core is Linux-only, so it is added only on Linux, and its build
# is optional: if it fails (no compiler, no kernel headers), installing still
# succeeds and the io_uring backend reports why it is unavailable.
#
# Editable installs default to setuptools' "strict" mode: a tree of links to the checkout, laid
# out as installed (backends/ at portio/backends/), on a plain .pth path.  The default
# "lenient" mode would resolve portio.backends with an import hook, which type checkers cannot
# follow, so mypy would find no portio at all.  The cost: a new module needs a re-install.
from __future__ import annotations

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when an extension will not build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._warn(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            f"WARNING: portio's io_uring extension was not built ({exc}); "
            "the io_uring backend will be unavailable.",
            file=sys.stderr,
        )


cffi_modules = []
if sys.platform.startswith("linux"):
    cffi_modules.append("backends/uring/build.py:ffibuilder")

setup(
    cffi_modules=cffi_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    options={"editable_wheel": {"mode": "strict"}},
)
