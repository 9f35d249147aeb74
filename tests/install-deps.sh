#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for the full test suite. Idempotent: skips what is present.
#   Debian: chromium (WebChat test), zstd, systemd (systemd-analyze verify), PHP 8.2 (WordPress webhook tests)
#   Node 24 + clawdbot@2026.1.24-3 (compatibility tests), offline WordPress 6.1.9 (webhook end-to-end tests)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v php >/dev/null 2>&1 || need+=(php-cli php-sqlite3 php-curl php-mbstring php-xml)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "install-deps: not root, cannot apt-get install ${need[*]}; tests needing them will skip with a reason" >&2
  fi
fi
# Both are cached under <repo>/.cache; a failure here only makes the tests that need them skip with a reason.
"$here/install-clawdbot.sh" || echo "install-deps: clawdbot install failed; its tests will skip" >&2
"$here/wordpress/setup.sh" >/dev/null || echo "install-deps: WordPress setup failed; its tests will skip" >&2
