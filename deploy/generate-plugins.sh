#!/usr/bin/env bash
# Regenerates deploy/plugins/*.yaml (the default plugins as ConfigMaps) from plugins/.
# CI runs it and fails when the committed copies differ.
set -euo pipefail
cd "$(dirname "$0")/.."
plugins=(role-profile ratio-scaler rollout-gate slo-gate load-scaler)
args=()
for p in "${plugins[@]}"; do args+=(-p "$p"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"
cargo build --quiet -p disagg
for p in "${plugins[@]}"; do
  target/debug/disagg plugin configmap --name "$p" "target/wasm32-wasip2/plugin/${p//-/_}.wasm" \
    > "deploy/plugins/$p.yaml"
done
echo "deploy/plugins: ${plugins[*]}"
