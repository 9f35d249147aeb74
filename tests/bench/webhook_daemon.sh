# Sourced by the webhook benchmarks: starts the real release daemon as root with a signed-webhook receiver on its own
# loopback listener and cleans up on exit. In: EXTRA_PROXY_TOML (lines for [proxy]). Out: WORK, WIREBOT, SECRET, SITE,
# PID, and "$WORK/ready" holding the daemon's ready line (proxy= and webhooks= addresses).
WORK_NAME=bench-webhook
. tests/bench/daemon_work.sh
SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SITE="https://network.example"
printf '[[sites]]\nurl = "%s"\nsecrets = ["%s"]\n' "$SITE" "$SECRET" > "$WORK/secrets.toml"
chmod 600 "$WORK/secrets.toml"
cat > "$WORK/wirebot.toml" <<TOML
data_dir = "$WORK/data"
runtime_dir = "$WORK/run"
[proxy]
listen = "127.0.0.1:0"
${EXTRA_PROXY_TOML:-}
[ports]
first = 40000
last = 49999
spacing = 4
[webhooks]
listen = "127.0.0.1:0"
secrets_file = "$WORK/secrets.toml"
TOML
WIREBOT_LOG=warn "$WIREBOT" --config "$WORK/wirebot.toml" serve --stop-workers-on-exit > "$WORK/ready" 2> "$WORK/log" &
PID=$!
for _ in $(seq 400); do grep -q '^wirebot ready' "$WORK/ready" 2>/dev/null && break; sleep 0.05; done
grep -q '^wirebot ready' "$WORK/ready" || { echo "daemon not ready:"; cat "$WORK/log"; exit 1; }
