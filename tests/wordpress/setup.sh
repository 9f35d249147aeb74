#!/usr/bin/env bash
# Prepares an offline WordPress 6.1.9 for the webhook tests (contract §8, option A) and prints WORDPRESS=<dir> and
# SQLITE_PLUGIN=<dir>. Idempotent; everything is cached under $WIREBOT_CACHE/wordpress (default <repo>/.cache).
#   PHP 8.2:        apt-get install --no-install-recommends php-cli php-sqlite3 php-curl php-mbstring php-xml
#   WordPress:      apt-get download wordpress + dpkg-deb -x (the Debian 12 package is 6.1.9; no Apache)
#   SQLite driver:  the sqlite-database-integration v2.1.11 zip inside npm @wp-playground/wordpress-builds@0.9.19
#                   (only the 84 KB zip is kept; v3 needs WordPress >= 6.4)
# Exits non-zero with a one-line reason on stderr when a piece cannot be had (the tests then skip with it).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${WIREBOT_CACHE:-$root/.cache}/wordpress"
mkdir -p "$cache"
cd "$cache"

fail() { echo "wordpress setup: $*" >&2; exit 1; }

php_ok() {
  command -v php >/dev/null 2>&1 && php -r 'exit(PHP_VERSION_ID >= 80200 && extension_loaded("pdo_sqlite") && extension_loaded("curl") && extension_loaded("mbstring") ? 0 : 1);'
}
if ! php_ok; then
  [ "$(id -u)" = 0 ] || fail "PHP 8.2 with pdo_sqlite, curl, mbstring is missing and we are not root to install it"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends php-cli php-sqlite3 php-curl php-mbstring php-xml >/dev/null 2>&1 \
    || fail "apt-get install php-cli php-sqlite3 php-curl php-mbstring php-xml failed"
  php_ok || fail "PHP installed but an extension is missing"
fi

wp="$cache/tree/usr/share/wordpress"
if [ ! -f "$wp/wp-includes/version.php" ]; then
  rm -rf tree ./wordpress_*.deb
  apt-get download wordpress >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 || true; apt-get download wordpress >/dev/null 2>&1; } \
    || fail "apt-get download wordpress failed"
  dpkg-deb -x wordpress_*.deb tree || fail "dpkg-deb -x failed"
  rm -f ./wordpress_*.deb
fi
grep -q "wp_version = '6.1.9'" "$wp/wp-includes/version.php" || fail "the Debian wordpress package is not 6.1.9"

plugin="$cache/sqlite/sqlite-database-integration-main"
if [ ! -f "$plugin/load.php" ]; then
  zip=package/src/sqlite-database-integration/sqlite-database-integration.zip
  if [ ! -f "$zip" ]; then
    [ -f wp-playground-wordpress-builds-0.9.19.tgz ] || npm pack --silent @wp-playground/wordpress-builds@0.9.19 >/dev/null 2>&1 \
      || fail "npm pack @wp-playground/wordpress-builds@0.9.19 failed"
    tar xzf wp-playground-wordpress-builds-0.9.19.tgz "$zip" || fail "the npm tarball has no $zip"
    rm -f wp-playground-wordpress-builds-0.9.19.tgz # 158 MB; only the 84 KB zip is needed
  fi
  rm -rf sqlite
  python3 -m zipfile -e "$zip" sqlite || fail "unzipping the SQLite integration plugin failed"
fi
grep -q "Version: 2.1.11" "$plugin/load.php" || fail "the SQLite integration plugin is not v2.1.11"

echo "WORDPRESS=$wp"
echo "SQLITE_PLUGIN=$plugin"
