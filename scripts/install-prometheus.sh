#!/usr/bin/env bash
# Installs Prometheus (the Debian package) for the signal tests and
# `disagg dev --prometheus`, when it is missing. CI runs this.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service on some hosts; the tests run their own servers.
$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
command -v prometheus
