#!/usr/bin/env bash
# tools/wine-idle.sh [COUNT...]
#
# Issue 14 under Wine: the memory each idle connection costs an echo server running in the
# Windows CPython 3.13 of tools/wine-python.sh, for portio's iocp and selector backends and
# asyncio's Protocol server (portio.bench.peers, the peer python -m portio.bench.idle uses; on
# Windows asyncio runs its IOCP proactor loop).  Default COUNT: 3000.  Each server is measured
# PORTIO_WINE_IDLE_REPEAT (default 3) times, interleaved, by python -m portio.bench.idle from
# the Linux side: the same client (COUNT connections, one verified 64-byte round trip each,
# then idle) and the same figure, VmRSS growth from /proc, as on Linux.  One JSON line per run,
# then a summary line per server with the median and spread (min, max).
#
# What is measured: a Windows process under Wine is a Linux process (python.exe in the
# wine64-preloader), so its VmRSS is the memory the machine pays for it, Wine's in-process
# share (ntdll, ws2_32 socket emulation) included; GetProcessMemoryInfo would report Wine's own
# accounting of the same pages.  Wine's per-socket cost that a real Windows would not have thus
# sits in every server's figure alike, which is why the figure to read is the ratio against
# asyncio in the same run.  The wineserver (a separate process holding a handle object and a
# Linux descriptor per socket) grows too: its growth is reported as kib_per_connection_wineserver.
# Other Wine processes (services.exe, ...) do not serve sockets and are not counted.
#
# The selector backend on Windows waits in select(), which CPython's Windows build caps at 512
# sockets (FD_SETSIZE): above ~500 connections its rows report the error it fails with.
#
# Holds the lock of tools/wine-tests.sh (one Wine run per prefix at a time).  Before each
# measurement it restarts the prefix's wineserver, with a descriptor limit that fits COUNT:
# a wineserver keeps the memory an earlier server's sockets freed and would grow no more.
# Stops it at the end.  Rows go to TARGET/idle-rows.jsonl too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WINPY=$("$ROOT/tools/wine-python.sh" | tail -n 1)
TARGET=$(cd "$(dirname "$WINPY")/.." && pwd)
exec 9>"$TARGET/.wine-tests.lock"
flock 9
[ $# -gt 0 ] || set -- 3000
HOSTPY=python3
[ -x "$ROOT/.venv/bin/python" ] && HOSTPY="$ROOT/.venv/bin/python"

wineserver_pid() {  # this prefix's wineserver (other prefixes may have theirs running)
    local pid
    for pid in $(pgrep -x wineserver64); do
        if tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qxF "WINEPREFIX=$TARGET/prefix"; then
            echo "$pid"
            return 0
        fi
    done
    echo "wine-idle: no wineserver for $TARGET/prefix" >&2
    return 1
}

# portio as a Windows user installs it (see tools/wine-tests.sh), in a folder of its own
rm -rf "$TARGET/idle-site" "$TARGET/idle-wheel"
export PORTIO_PURE=1  # (the mypyc compile is Linux-only: see tools/wine-tests.sh)
"$HOSTPY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$TARGET/idle-wheel" "$ROOT" >/dev/null 2>&1 ||
    "$HOSTPY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$TARGET/idle-wheel" "$ROOT"
"$HOSTPY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
    --no-compile --target "$TARGET/idle-site" "$TARGET"/idle-wheel/portio-*.whl
export WINPY_PYTHONPATH   # where the Windows servers import portio from
WINPY_PYTHONPATH=$(printf 'Z:%s' "${TARGET//\//\\}\\idle-site")

# every connection is a descriptor in the wineserver and in python.exe: both inherit this limit
max=$(printf '%s\n' "$@" | sort -n | tail -n 1)
ulimit -n "$(( max * 2 + 1024 ))"
trap '"$WINPY" --stop' EXIT
cd "$TARGET"    # not the checkout: its portio/ has no portio.backends
idle() { PYTHONPATH="$TARGET/idle-site" "$HOSTPY" -m portio.bench.idle "$@"; }
declare -A servers=(
    [iocp/port]="$WINPY -m portio.echo serve --host 127.0.0.1 --port 0 --backend iocp"
    [selector/port]="$WINPY -m portio.echo serve --host 127.0.0.1 --port 0 --backend selector"
    [asyncio]="$WINPY -m portio.bench.peers asyncio"
)
rows="$TARGET/idle-rows.jsonl"
: > "$rows"
for count in "$@"; do
    for _ in $(seq "${PORTIO_WINE_IDLE_REPEAT:-3}"); do
        for name in iocp/port selector/port asyncio; do
            # A fresh wineserver per measurement: it keeps the memory a previous server's
            # sockets freed, so only a fresh one shows what this server's sockets cost.
            "$WINPY" --stop
            while pgrep -x wineserver64 >/dev/null && wineserver_pid >/dev/null 2>&1; do sleep 0.2; done
            WINPY_PERSIST=600 "$WINPY" -c pass    # this prefix's wineserver, up between runs
            idle --pid-of '(^|[\\/])python\.exe ' --also "wineserver=$(wineserver_pid)" \
                --server "$name=${servers[$name]}" "$count" | tee -a "$rows"
        done
    done
done
idle --summarize "$rows"
