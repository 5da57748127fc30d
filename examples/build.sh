#!/usr/bin/env bash
# Builds the C and JavaScript example gates into target/examples/, installing
# their toolchains when missing: clang, lld, wasi-libc and compiler-rt for wasm32
# (Debian packages), wit-bindgen-cli (crates.io, into target/tools), and
# componentize-js + jco (npm, into examples/js-gate/node_modules).
# The Rust example is built by the tests themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! { command -v clang && command -v wasm-ld && [ -f /usr/lib/wasm32-wasi/libc.a ] \
       && ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a; } >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends clang lld wasi-libc libclang-rt-14-dev-wasm32 >/dev/null
fi
if ! [ -x target/tools/bin/wit-bindgen ] || ! target/tools/bin/wit-bindgen --version | grep -q ' 0.63.0'; then
  cargo install --quiet --locked --root target/tools --no-default-features --features c wit-bindgen-cli@0.63.0
fi

examples/js-gate/build.sh target/examples/js_gate.wasm   # also installs jco, which the C build uses
examples/c-gate/build.sh target/examples/c_gate.wasm
