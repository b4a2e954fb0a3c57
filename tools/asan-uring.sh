#!/bin/sh
# Run the io_uring tests (backend tests + the contract suite on io_uring) against a copy of the
# C core built with AddressSanitizer.  Not part of the default run: it is slower, and the
# interpreter itself is not instrumented, so only the extension's memory accesses are checked
# (plus every heap access made through malloc, since libasan replaces it).
#
#   tools/asan-uring.sh [extra pytest args]
#
# Exit status: pytest's; ASan aborts the run (non-zero) on the first error it finds.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

PORTIO_URING_CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" \
PORTIO_URING_LDFLAGS="-fsanitize=address" \
    "$PY" -c "
import sys
sys.path.insert(0, 'backends/uring')
import build
build.ffibuilder.compile(tmpdir='$OUT', verbose=False)
" >/dev/null
SO=$(find "$OUT" -name '_uring_cffi*.so' | head -n 1)
echo "asan-uring: built $SO"
nm -D "$SO" | grep -q __asan_init || { echo "asan-uring: not instrumented" >&2; exit 2; }

LIBASAN=$(gcc -print-file-name=libasan.so)
# detect_leaks=0: CPython keeps its arenas and interned objects to the end on purpose.
# log_path: pytest captures fd 2, so reports go to files that are printed below.
LOGS="$OUT/logs"
mkdir -p "$LOGS"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:log_path=$LOGS/asan"
export PORTIO_BACKEND=io_uring
# Python objects (cffi buffers included) through malloc, so ASan sees their bounds.
export PYTHONMALLOC=malloc
status=0
LD_PRELOAD="$LIBASAN" "$PY" -c "
import importlib.util, sys
import portio.backends
spec = importlib.util.spec_from_file_location('portio.backends._uring_cffi', '$SO')
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules['portio.backends._uring_cffi'] = mod
import portio.backends.uring as uring
assert uring._module is mod, 'the ASan build was not the one loaded'
import pytest
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_uring.py', 'tests/contract', 'tests/property', 'tests/reliability/test_hostile_lengths.py'] + sys.argv[1:]))
" "$@" || status=$?
if ls "$LOGS"/asan.* >/dev/null 2>&1; then
    cat "$LOGS"/asan.*
    echo "asan-uring: AddressSanitizer reported errors (pytest exit status $status)"
    exit 1
fi
echo "asan-uring: no AddressSanitizer reports; pytest exit status $status"
exit $status
