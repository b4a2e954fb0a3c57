#!/usr/bin/env bash
# tools/wine-tests.sh [PYTEST ARGS...]
#
# Runs portio's test suite under a genuine Windows CPython 3.13 (Wine) once per Windows backend,
# PORTIO_BACKEND=iocp and then PORTIO_BACKEND=selector (PORTIO_WINE_BACKENDS="iocp" picks), so
# both are exercised for real on Linux.  Default argument: tests (the whole suite).  Exits
# non-zero if any backend's run failed; always stops the wineserver at the end.
#
# How portio gets onto the Windows path: the checkout cannot simply be put on PYTHONPATH,
# because setuptools maps the import name portio.backends to the folder backends/ only when it
# installs.  So the host pip builds a wheel of the checkout (pure Python: the iocp backend is
# cffi ABI mode; PORTIO_PURE=1 skips the Linux-only mypyc compile, which Windows could not load
# anyway) and unpacks it into a fresh TARGET/portio-site, which goes on PYTHONPATH.
# pytest runs from TARGET/run, which holds only symlinks to the checkout's tests/ and
# pyproject.toml: the tests still import each other as tests.contract.support (the current
# directory is on sys.path), but the checkout's portio/ is not there to shadow the wheel.
# The suite therefore tests exactly what a Windows user installs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS=0
say() { printf '[wine-tests %4ss] %s\n' "$SECONDS" "$*" >&2; }

WINPY=$("$ROOT/tools/wine-python.sh" | tail -n 1)
TARGET=$(cd "$(dirname "$WINPY")/.." && pwd)
# One run at a time per Wine prefix: a second run would delete this one's folders and stop
# its wineserver.
exec 9>"$TARGET/.wine-tests.lock"
flock 9
trap '"$WINPY" --stop' EXIT
winpath() { printf 'Z:%s' "${1//\//\\}"; }    # Wine maps / to drive Z:

say "build the portio wheel and unpack it into $TARGET/portio-site"
rm -rf "$TARGET/portio-site" "$TARGET/wheel"
HOSTPY=python3
[ -x "$ROOT/.venv/bin/python" ] && HOSTPY="$ROOT/.venv/bin/python"
export PORTIO_PURE=1
"$HOSTPY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$TARGET/wheel" "$ROOT" >/dev/null 2>&1 ||
    "$HOSTPY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$TARGET/wheel" "$ROOT"
"$HOSTPY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
    --no-compile --target "$TARGET/portio-site" "$TARGET"/wheel/portio-*.whl

say "build tests/win/abi_check.c with mingw-w64"
x86_64-w64-mingw32-gcc -O1 -Wall -Werror -o "$TARGET/abi_check.exe" "$ROOT/tests/win/abi_check.c" -lws2_32

# PORTIO_TESTS_DIR: run another tests/ tree (e.g. a colleague's uncommitted one) instead
rm -rf "$TARGET/run" && mkdir -p "$TARGET/run"
ln -s "${PORTIO_TESTS_DIR:-$ROOT/tests}" "$TARGET/run/tests"
ln -s "$ROOT/pyproject.toml" "$TARGET/run/pyproject.toml"

# CPython's own asyncio tests (tests/aio runs them on portio's event loop): the embedded Windows
# CPython ships without its test package, so it borrows the host's copy of the same minor
# version when there is one (a pyenv 3.13 here, or $PORTIO_WINE_CPYTHON_LIB); without one,
# those tests skip and say which package is missing.
pythonpath=$(winpath "$TARGET/portio-site")
rm -rf "$TARGET/cpython-tests"
for lib in ${PORTIO_WINE_CPYTHON_LIB:-} "$HOME"/.pyenv/versions/3.13.*/lib/python3.13; do
    if [ -d "$lib/test/test_asyncio" ]; then
        mkdir -p "$TARGET/cpython-tests/test"
        cp -r "$lib/test/__init__.py" "$lib/test/support" "$lib/test/test_asyncio" \
            "$TARGET/cpython-tests/test/"
        [ -d "$lib/test/certdata" ] && cp -r "$lib/test/certdata" "$TARGET/cpython-tests/test/"
        pythonpath="$pythonpath;$(winpath "$TARGET/cpython-tests")"
        say "CPython's asyncio tests from $lib"
        break
    fi
done

[ $# -gt 0 ] || set -- tests
cd "$TARGET/run"

run_pytest() {  # run_pytest BACKEND JUNIT PYTEST-ARGS...: sets $status; JUNIT is written afresh
    local backend=$1 junit=$2
    shift 2
    rm -f "$junit"
    set +e
    PORTIO_BACKEND=$backend \
    PORTIO_ABI_CHECK_EXE=$(winpath "$TARGET/abi_check.exe") \
    WINPY_PYTHONPATH=$pythonpath \
        timeout "${PORTIO_WINE_TIMEOUT:-900}" "$WINPY" -m pytest -p no:cacheprovider -rs \
        --junitxml="$(winpath "$junit")" "$@"
    status=$?
    set -e
    say "pytest exit status $status (PORTIO_BACKEND=$backend)"
}

# Wine's CreateProcess now and then fails with ERROR_INTERNAL_ERROR (WinError 1359) under load:
# a Wine fault, not portio's (seen once in ~6 runs, in a test that only spawns a client).  If
# that is the only reason any test failed, the failed tests' ids are printed so that exactly
# those run once more, and that run decides.  Any other failure is reported as it is.
wine_spawn_faults_only() {  # wine_spawn_faults_only JUNIT
    python3 - "$1" "$TARGET/run/tests" <<'PY'
import os
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
failed = [case for case in root.iter("testcase")
          if case.find("failure") is not None or case.find("error") is not None]
def wine_spawn_fault(case):
    return any("WinError 1359" in (el.get("message", "") + (el.text or ""))
               for el in case if el.tag in ("failure", "error"))
if not failed or not all(wine_spawn_fault(case) for case in failed):
    sys.exit(0)
for case in failed:  # classname "tests.test_echo" (or "...test_x.TestClass"), name "test_y[param]"
    parts = case.get("classname", "").split(".")
    for cut in range(len(parts), 0, -1):
        if os.path.isfile(os.path.join(os.path.dirname(sys.argv[2]), *parts[:cut]) + ".py"):
            print("::".join(["/".join(parts[:cut]) + ".py", *parts[cut:], case.get("name", "")]))
            break
PY
}

# A Wine process killed under us (a wineserver stopped by another run, say) can exit 0 without
# a verdict: trust only a report that pytest finished writing, with tests and no failures.
verdict() {  # verdict BACKEND JUNIT
    python3 - "$2" "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as exc:
    sys.exit(f"[wine-tests] no complete test report ({exc}): the Windows interpreter died")
suites = [root] if root.tag == "testsuite" else list(root)
counts = {k: sum(int(s.get(k, 0)) for s in suites)
          for k in ("tests", "failures", "errors", "skipped")}
print(f"[wine-tests] report for PORTIO_BACKEND={sys.argv[2]}: {counts}", file=sys.stderr)
sys.exit(counts["tests"] == 0 or counts["failures"] > 0 or counts["errors"] > 0)
PY
}

overall=0
for backend in ${PORTIO_WINE_BACKENDS:-iocp selector}; do
    junit="$TARGET/junit-$backend.xml"
    say "pytest $* (PORTIO_BACKEND=$backend, Windows CPython under Wine)"
    run_pytest "$backend" "$junit" "$@"
    if [ $status -ne 0 ] && [ -f "$junit" ]; then
        rerun=$(wine_spawn_faults_only "$junit") || rerun=""  # unreadable: the verdict says why
        if [ -n "$rerun" ]; then
            verdict "$backend, the run before the re-run" "$junit" || true  # its counts, for the log
            mapfile -t rerun_ids <<< "$rerun"
            say "only Wine's CreateProcess failed (WinError 1359); running those tests again:"
            printf '    %s\n' "${rerun_ids[@]}" >&2
            run_pytest "$backend" "$junit" "${rerun_ids[@]}"
        fi
    fi
    if [ $status -eq 0 ]; then
        verdict "$backend" "$junit" || status=1
    fi
    [ $status -eq 0 ] || overall=1
done
exit $overall
