#!/usr/bin/env bash
# Lifecycle benchmark through the real daemon (issue 4; needs root: tenant uids, cgroups, sandbox).
#  1. `wirebot user add bench --tier dedicated` until its worker is Ready, timed by hyperfine; each run's --prepare removes
#     the member again (untimed). Baselines in the same run: `wirebot status` (one admin round trip) and
#     `user add bench --tier shared` (provisioning + live placement on a running shard, no process spawned).
#  2. Idle capacity: IDLE_N dedicated members (default 1000) added 8 at a time, then 3 rounds of GET /healthz to every
#     worker's own port: p50/p99 per round, failures, and the daemon's RSS at that count.
# Usage: tests/bench/user_add.sh [runs=100] [idle_n=1000]   (release build; WIREBOT_CLAWDBOT_DIR set = also time the
# Clawdbot runtime, 3 runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${1:-100}"
IDLE_N="${2:-1000}"
WORK_NAME=bench-user-add
. tests/bench/daemon_work.sh
command -v hyperfine >/dev/null || apt-get install -y hyperfine >/dev/null || { apt-get update >/dev/null && apt-get install -y hyperfine >/dev/null; }

start_daemon() { # $1 = extra TOML
    cat > "$WORK/wirebot.toml" <<TOML
data_dir = "$WORK/data"
runtime_dir = "$WORK/run"
[proxy]
listen = "127.0.0.1:0"
idle_stop_s = 0
[ports]
first = 30000
last = 39999
spacing = 4
[lifecycle]
health_interval_ms = 30000
$1
TOML
    WIREBOT_LOG=warn "$WIREBOT" --config "$WORK/wirebot.toml" serve --stop-workers-on-exit > "$WORK/ready" 2> "$WORK/log" &
    PID=$!
    for _ in $(seq 400); do grep -q '^wirebot ready' "$WORK/ready" 2>/dev/null && break; sleep 0.05; done
    grep -q '^wirebot ready' "$WORK/ready" || { echo "daemon not ready:"; cat "$WORK/log"; exit 1; }
}
stop_daemon() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; rm -rf "$WORK/data" "$WORK/run"; }
W="$WIREBOT --config $WORK/wirebot.toml"

echo "== 1. user add until Ready ($RUNS runs each; load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores)"
start_daemon ""
$W user add warm --tier shared > /dev/null # the first shard is running before the shared baseline is timed
RM="$W user remove bench > /dev/null 2>&1 || true"
hyperfine --runs "$RUNS" --warmup 3 --export-json "$WORK/add.json" \
    --prepare "true" "$W status" \
    --prepare "$RM" "$W user add bench --tier shared" \
    --prepare "$RM" "$W user add bench --tier dedicated" > "$WORK/hyperfine.txt" 2>&1 \
    || { cat "$WORK/hyperfine.txt"; exit 1; }
python3 - "$WORK/add.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
rows = []
for r in res:
    t = [x * 1000 for x in r["times"]]
    rows.append((r["command"].split("--config")[1].split(" ", 2)[2], pct(t, .5), pct(t, .95)))
base = rows[0][1]
for name, p50, p95 in rows:
    print(f"{name:40s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  ({p50 / base:5.1f}x status)")
PY
stop_daemon

echo "== 2. idle capacity: $IDLE_N dedicated workers"
start_daemon ""
t0=$(date +%s.%N)
seq "$IDLE_N" | xargs -P 8 -I{} sh -c "$W user add idle{} --tier dedicated > /dev/null || echo 'add idle{} failed'"
t1=$(date +%s.%N)
echo "added $IDLE_N in $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s; daemon RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$PID/status) (peak $(awk '/VmHWM/ {print $2, $3}' /proc/$PID/status))"
$W worker list --json > "$WORK/workers.json"
python3 - "$WORK/workers.json" <<'PY'
import json, socket, sys, time
ws = [w for w in json.load(open(sys.argv[1])) if w["state"] in ("ready", "running") and not w["user_id"].startswith("wb-shard-")]
print(f"{len(ws)} workers ready or running")
req = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
for rnd in range(3):
    lat, fail = [], 0
    for w in ws:
        t = time.perf_counter()
        try:
            s = socket.create_connection(("127.0.0.1", w["port"]), timeout=2)
            s.sendall(req)
            head = s.recv(64)
            s.close()
            if not head.startswith(b"HTTP/1.1 200"):
                fail += 1
        except OSError:
            fail += 1
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    print(f"round {rnd + 1}: p50 {lat[len(lat) // 2]:.2f} ms  p99 {lat[int(len(lat) * .99)]:.2f} ms  max {lat[-1]:.2f} ms  failures {fail}")
PY
echo "daemon RSS after the rounds: $(awk '/VmRSS/ {print $2, $3}' /proc/$PID/status); memory used: $(free -m | awk '/Mem:/ {print $3}') MiB"
stop_daemon

if [ -n "${WIREBOT_CLAWDBOT_DIR:-}" ]; then
    echo "== 3. user add until Ready with runtime = \"clawdbot\" (3 runs)"
    start_daemon "[tiers.dedicated]
runtime = \"clawdbot\"
memory_max = \"3G\"
pids_max = 512
cpu_quota_percent = 200
[clawdbot]
install_dir = \"$WIREBOT_CLAWDBOT_DIR\""
    for i in 1 2 3; do
        t0=$(date +%s%N); $W user add claw$i --tier dedicated > /dev/null; t1=$(date +%s%N)
        echo "claw$i: $(( (t1 - t0) / 1000000 )) ms"
    done
    stop_daemon
fi
