#!/usr/bin/env bash
# members.sync burst until converged (issue 6), through the real release daemon as root: N members (default 1,000;
# 2 in 3 shared, 1 in 3 dedicated as the receiver bench) arrive in signed `members.sync` requests of 200; the clock runs
# from the first POST until every member's reconcile operation is `done` (directory, config, binding, and a shard
# placement or a Ready worker), read from the daemon's own SQLite file. Baseline in the same run: the receiver alone
# (all requests answered), so the ratio shows what converging costs on top of accepting.
# Usage: tests/bench/sync_converge.sh [n=1000] [dedicated_every=3]   (0 = all shared)
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-1000}"
EVERY="${2:-3}"
. tests/bench/webhook_daemon.sh
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $N members, every ${EVERY}th dedicated (0 = none)"
python3 - "$WORK" "$SECRET" "$SITE" "$N" "$EVERY" "$PID" <<'PY'
import base64, hashlib, hmac, http.client, json, re, sqlite3, sys, time
work, secret, site, n, every, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
hooks = re.search(r"webhooks=(\S+)", open(f"{work}/ready").read()).group(1)
key = base64.b64decode(secret.removeprefix("whsec_"))

def post(i, members):
    body = json.dumps({"type": "members.sync", "timestamp": "2026-12-07T08:00:00Z",
                       "data": {"site": site, "members": members}}).encode()
    mid, ts = f"evt_sync{i:024d}", str(int(time.time()))
    sig = base64.b64encode(hmac.new(key, f"{mid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    host, port = hooks.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("POST", "/v1/webhooks/wordpress", body=body, headers={"content-type": "application/json",
        "webhook-id": mid, "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}"})
    r = c.getresponse(); r.read(); c.close()
    assert r.status in (200, 202), r.status

tier = lambda wp: "dedicated" if every and wp % every == 0 else "shared"
members = [{"user": {"wp_user_id": 1000 + i, "email": f"m{i}@example.com"}, "seq": 1,
            "state": {"status": "active", "tier": tier(1000 + i)}} for i in range(n)]
db = sqlite3.connect(f"file:{work}/data/wirebot.db?mode=ro", uri=True, timeout=30)
def counts():
    rows = dict(db.execute("SELECT state, COUNT(*) FROM webhook_operations GROUP BY state").fetchall())
    return rows.get("done", 0), rows.get("failed", 0)

t0 = time.perf_counter()
for i in range(0, n, 200):
    post(i, members[i:i + 200])
accepted = time.perf_counter() - t0
while True:
    done, failed = counts()
    if done + failed >= n:
        break
    time.sleep(0.01)
converged = time.perf_counter() - t0
rss = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
print(f"{'what':52s} {'seconds':>8s} {'members/s':>10s}")
print(f"{'receiver: every request answered (baseline)':52s} {accepted:8.2f} {n / accepted:10.0f}")
print(f"{'converged: every operation done':52s} {converged:8.2f} {n / converged:10.0f}   ratio {accepted / converged:.2f}x")
print(f"operations failed: {failed}; daemon peak RSS {int(rss) / 1024:.1f} MiB")
for (error,) in db.execute("SELECT DISTINCT last_error FROM webhook_operations WHERE state = 'failed' LIMIT 3"):
    print(f"  failed: {error}")
PY
