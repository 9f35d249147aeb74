#!/usr/bin/env bash
# Edge proxy benchmark, all in one run on loopback: wrk direct to a tiny backend, through the Wirebot proxy and
# through nginx (platform.md §5 config); then WebSocket relay rate (direct / Wirebot / nginx) and wake latency.
# Usage: tests/bench/proxy.sh   (env: DURATION=10s CONNECTIONS=64 THREADS=2 ROUNDS=1 CARGO_TARGET_DIR=...)
# ROUNDS > 1 repeats direct / Wirebot / nginx in turn and reports each round and the medians: on a shared 2-core VM
# one round's ratio swings by ±10 %.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}
TOKEN=bench-member-token

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    apt-get install -y wrk nginx >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk nginx >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p supervisor --example proxy_bench
BIN=${CARGO_TARGET_DIR:-target}/release/examples/proxy_bench

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # nginx's master (daemon off) stops gracefully on QUIT.
    [ -n "${NGINX_PID:-}" ] && kill -QUIT "$NGINX_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background and waits for its "ready port=<p>" line; sets PORT.
# (Not called in $(...): the pid must be recorded in this shell for the cleanup.)
start() {
    local name=$1; shift
    "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    for _ in $(seq 1 200); do
        if grep -q 'ready port=' "$work/$name.out" 2>/dev/null; then
            PORT=$(sed -n 's/.*ready port=\([0-9]*\).*/\1/p' "$work/$name.out" | head -1)
            return
        fi
        sleep 0.05
    done
    echo "$name did not start: $(cat "$work/$name.err")" >&2
    exit 1
}

start backend "$BIN" backend; BACKEND=$PORT
start proxy "$BIN" proxy "127.0.0.1:$BACKEND"; PROXY=$PORT
NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/logs"
cat >"$work/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fcgi;
    uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
    upstream be { server 127.0.0.1:$BACKEND; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /ws { proxy_pass http://be; proxy_http_version 1.1;
                       proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection "upgrade"; }
    }
}
CONF
"$NGINX" -p "$work" -c "$work/nginx.conf" 2>"$work/nginx.err" &
NGINX_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$NGINX_PORT/" >/dev/null 2>&1 && break; sleep 0.05; done

# bench NAME URL [wrk args...]: prints "NAME req/s p50_ms p99_ms"
bench() {
    local name=$1 url=$2; shift 2
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$@" "$url" >/dev/null   # warm-up (pools, caches)
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$work/$name.wrk"
    python3 - "$name" "$work/$name.wrk" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{name} {rps:.0f} {ms('50'):.3f} {ms('99'):.3f} {errors.group(1) if errors else 0}")
PY
}

echo "# wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (loopback, 2 cores shared by client, proxy and backend), $ROUNDS round(s)"
for round in $(seq 1 "$ROUNDS"); do
    bench direct "http://127.0.0.1:$BACKEND/"
    bench wirebot "http://127.0.0.1:$PROXY/" -H "Authorization: Bearer $TOKEN"
    bench nginx "http://127.0.0.1:$NGINX_PORT/"
done | tee "$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *vals = line.split()
    rows.setdefault(name, []).append([float(x) for x in vals])
rounds = len(rows["wirebot"])
if rounds > 1:
    for i in range(rounds):
        w, n = rows["wirebot"][i], rows["nginx"][i]
        print(f"round {i + 1}: wirebot/nginx req/s = {w[0] / n[0]:.2f}x, p99 {w[2]:.3f} vs {n[2]:.3f} ms")
med = {k: [statistics.median(r[j] for r in v) for j in range(4)] for k, v in rows.items()}
d, w, n = med["direct"], med["wirebot"], med["nginx"]
ratios = sorted(a[0] / b[0] for a, b in zip(rows["wirebot"], rows["nginx"]))
print(f"{'target':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}" + ("   (medians)" if rounds > 1 else ""))
for k in ("direct", "wirebot", "nginx"):
    r = med[k]; print(f"{k:<10}{r[0]:>10.0f}{r[1]:>10.3f}{r[2]:>10.3f}{r[3]:>10.0f}")
print(f"wirebot/nginx req/s = {statistics.median(ratios):.2f}x median of rounds (range {ratios[0]:.2f}-{ratios[-1]:.2f}; target >= 1.15x); "
      f"wirebot/direct = {w[0]/d[0]:.2f}x; nginx/direct = {n[0]/d[0]:.2f}x")
print(f"p99 wirebot {w[2]:.3f} ms vs nginx {n[2]:.3f} ms ({'no worse' if w[2] <= n[2] else 'WORSE'})")
PY

echo "# WebSocket relay: 20000 x 64-byte text messages echoed, 1 connection"
echo "direct  $("$BIN" ws-rate "127.0.0.1:$BACKEND" - 20000)"
echo "wirebot $("$BIN" ws-rate "127.0.0.1:$PROXY" "$TOKEN" 20000)"
echo "nginx   $("$BIN" ws-rate "127.0.0.1:$NGINX_PORT" - 20000)"

echo "# Wake: first request to a stopped route (lifecycle answers at once) vs a warm request, 50 rounds"
"$BIN" wake 50
