#!/usr/bin/env bash
# Builds gate.c into a component: wit-bindgen's C generator for the bindings,
# clang for wasm32 against wasi-libc, and jco (wit-component) to wrap the core
# module as a component. Usage: examples/c-gate/build.sh OUT.wasm
#
# Needs: clang, lld and wasi-libc (Debian: apt-get install clang lld wasi-libc),
# wit-bindgen-cli 0.63 (cargo install), node/npm (for jco). examples/build.sh
# installs what is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(realpath -m "${1:-$root/target/examples/c_gate.wasm}")"
tools="$root/target/tools"
work="$root/target/c-gate"
rm -rf "$work" && mkdir -p "$work" "$(dirname "$out")"

"$tools/bin/wit-bindgen" c "$root/wit" --world plugin --out-dir "$work"
flags=(--target=wasm32-wasi -O2 -Wall -Werror -I"$work")
clang "${flags[@]}" -c "$work/plugin.c" -o "$work/plugin.o"
clang "${flags[@]}" -c "$here/gate.c" -o "$work/gate.o"
# A reactor with a 64 KiB stack: no main, small memory (see guest-sdk/README.md).
clang --target=wasm32-wasi -mexec-model=reactor -Wl,-z,stack-size=65536 \
  "$work/gate.o" "$work/plugin.o" "$work/plugin_component_type.o" -o "$work/core.wasm"
# wasi-libc speaks WASI preview 1; the reactor adapter maps it onto the preview 2
# the host provides (stdio only: no files, network, environment or arguments).
"$root/examples/js-gate/node_modules/.bin/jco" new "$work/core.wasm" --wasi-reactor -o "$out"
echo "$out: $(wc -c < "$out") bytes"
