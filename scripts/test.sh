#!/usr/bin/env bash
# Runs every test sluice has, on a fresh machine too: installs what the
# tests need first (idempotently), then builds and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

# need COMMAND PACKAGE: install a Debian package unless its command exists.
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 (for $1)"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
  fi
}

need curl curl
need prometheus prometheus   # Prometheus gates are tested against a real server
need chromium chromium       # the dashboard is tested in a real headless browser

cargo test --locked --all-targets "$@"
