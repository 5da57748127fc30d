#!/usr/bin/env bash
# Builds gate.js into a component with componentize-js. Usage: examples/js-gate/build.sh OUT.wasm
# Needs node and npm; the toolchain comes from the npm registry (package-lock.json).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/../../target/examples/js_gate.wasm}")"
mkdir -p "$(dirname "$out")"
cd "$here"
# `npm install`, not `npm ci`: the lock file leaves out other platforms' optional
# binaries, which `npm ci` rejects; install still follows the locked versions.
[ -x node_modules/.bin/jco ] || npm install --no-audit --no-fund --loglevel=error
node build.mjs "$out"
