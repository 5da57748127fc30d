#!/usr/bin/env bash
# Builds the component, then calls it the way the operator does
# (`disagg plugin run`) with the requests in test/. Set DISAGG to use a
# disagg that is not on PATH.
set -euo pipefail
cd "$(dirname "$0")"
./build.sh
expect() { # REQUEST ANSWER: the answer's kind, "proceed" or "hold"
  local got
  got="$("${DISAGG:-disagg}" plugin run build/{{name}}.wasm --hook gate-step --request "test/$1.json")"
  local want='"answer": "proceed"'
  [ "$2" = hold ] && want='"hold": {'
  if ! grep -qF "$want" <<<"$got"; then
    echo "FAIL test/$1.json: want $2, got $got" >&2
    exit 1
  fi
  echo "ok test/$1.json: $2"
}
expect held hold
expect approved proceed
