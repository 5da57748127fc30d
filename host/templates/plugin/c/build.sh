#!/usr/bin/env bash
# Builds gate.c into the component build/{{name}}.wasm: wit-bindgen's C
# generator for the bindings, clang for wasm32 against wasi-libc, and jco to
# wrap the core module as a component.
#
# Needs clang, lld and wasi-libc (Debian: apt-get install clang lld wasi-libc
# libclang-rt-dev-wasm32), wit-bindgen-cli 0.63 (cargo install wit-bindgen-cli)
# and jco (npm install @bytecodealliance/jco). Set WIT_BINDGEN, JCO or CC to
# use ones that are not on PATH.
set -euo pipefail
cd "$(dirname "$0")"
out=build/{{name}}.wasm
rm -rf build/gen && mkdir -p build/gen

"${WIT_BINDGEN:-wit-bindgen}" c wit --world plugin --out-dir build/gen
cc="${CC:-clang}"
flags=(--target=wasm32-wasi -O2 -Wall -Werror -Ibuild/gen)
"$cc" "${flags[@]}" -c build/gen/plugin.c -o build/gen/plugin.o
"$cc" "${flags[@]}" -c gate.c -o build/gen/gate.o
# A reactor (no main) with a 64 KiB stack: every call starts a fresh instance,
# so a small memory is most of what makes a call cheap.
"$cc" --target=wasm32-wasi -mexec-model=reactor -Wl,-z,stack-size=65536 \
  build/gen/gate.o build/gen/plugin.o build/gen/plugin_component_type.o -o build/gen/core.wasm
# wasi-libc speaks WASI preview 1; the reactor adapter maps it onto preview 2.
"${JCO:-jco}" new build/gen/core.wasm --wasi-reactor -o "$out"
echo "$out: $(wc -c < "$out") bytes"
