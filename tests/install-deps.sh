#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for the full test suite. Idempotent: skips what is present.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "install-deps: not root, cannot apt-get install ${need[*]}; tests needing them will skip with a reason" >&2
  fi
fi
