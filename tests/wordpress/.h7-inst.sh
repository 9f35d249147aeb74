#!/usr/bin/env bash
# Installs one throw-away WordPress site for a test:
#   install-site.sh <wordpress-tree> <sqlite-plugin-dir> <site-root> <wirebot-plugin-dir> <url>
# The tree is copied (PHP resolves symlinks in __DIR__, so a symlinked wp-load.php would load the package's own
# wp-config.php); wp-content, wp-config.php and the SQLite database are the site's own. Writes wp-config.php (SQLite via the db.php drop-in, DISABLE_WP_CRON: the test calls wp-cron.php), a
# test mu-plugin that makes retries due at once, runs wp_install() and activates the Wirebot plugin.
set -euo pipefail
wp="$1"; sqlite="$2"; site="$3"; plugin="$4"; url="$5"
mkdir -p "$site/wp-content/plugins" "$site/wp-content/themes" "$site/wp-content/mu-plugins" "$site/wp-content/database"
for entry in "$wp"/*; do
  name="$(basename "$entry")"
  case "$name" in
    wp-content|wp-config.php) ;;
    *) cp -a "$entry" "$site/$name" ;;
  esac
done
ln -s "$sqlite" "$site/wp-content/plugins/sqlite-database-integration"
ln -s "$plugin" "$site/wp-content/plugins/wirebot"
sed -e "s#{SQLITE_IMPLEMENTATION_FOLDER_PATH}#$site/wp-content/plugins/sqlite-database-integration#" \
    -e "s#{SQLITE_PLUGIN}#sqlite-database-integration/load.php#" "$sqlite/db.copy" > "$site/wp-content/db.php"
cp "$(dirname "$0")/test-mu-plugin.php" "$site/wp-content/mu-plugins/wirebot-test.php"
salt="$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
cat > "$site/wp-config.php" <<PHP
<?php
define('DB_NAME', 'wordpress');
define('DB_USER', '');
define('DB_PASSWORD', '');
define('DB_HOST', '');
define('DB_CHARSET', 'utf8');
define('DB_COLLATE', '');
define('DB_DIR', '$site/wp-content/database/');
define('DB_FILE', '.ht.sqlite');
define('WP_HOME', '$url');
define('WP_SITEURL', '$url');
define('DISABLE_WP_CRON', true);
define('WP_DEBUG', false);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('WP_ACCESSIBLE_HOSTS', '127.0.0.1');
foreach (['AUTH_KEY','SECURE_AUTH_KEY','LOGGED_IN_KEY','NONCE_KEY','AUTH_SALT','SECURE_AUTH_SALT','LOGGED_IN_SALT','NONCE_SALT'] as \$k) { define(\$k, '$salt' . \$k); }
\$table_prefix = 'wp_';
if (!defined('ABSPATH')) { define('ABSPATH', __DIR__ . '/'); }
require_once ABSPATH . 'wp-settings.php';
PHP
host="${url#http://}"
strace -f -tt -e trace=connect,clock_nanosleep,nanosleep,fsync,fdatasync,poll -o /tmp/h7-strace.$RANDOM php -d display_errors=stderr -d error_reporting=8191 -r "
define('WP_INSTALLING', true);
\$_SERVER['HTTP_HOST'] = '$host';
\$_SERVER['REQUEST_URI'] = '/';
require '$site/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
require_once ABSPATH . 'wp-admin/includes/plugin.php';
\$r = wp_install('Wirebot test', 'admin', 'admin@example.com', true, '', 'admin-password');
if (empty(\$r['user_id'])) { fwrite(STDERR, 'wp_install failed'); exit(1); }
" 2> >(grep -v -i "deprecated" >&2)
strace -f -tt -e trace=connect,clock_nanosleep,nanosleep,fsync,fdatasync,poll -o /tmp/h7-strace.$RANDOM php -d display_errors=stderr -d error_reporting=8191 -r "
\$_SERVER['HTTP_HOST'] = '$host';
\$_SERVER['REQUEST_URI'] = '/';
require '$site/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/plugin.php';
\$r = activate_plugin('wirebot/wirebot.php');
if (is_wp_error(\$r)) { fwrite(STDERR, 'activating wirebot: ' . \$r->get_error_message()); exit(1); }
if (!get_option('wirebot_secret')) { fwrite(STDERR, 'activation generated no secret'); exit(1); }
echo 'installed ', home_url(), PHP_EOL;
" 2> >(grep -v -i "deprecated" >&2)
