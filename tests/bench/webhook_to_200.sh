#!/usr/bin/env bash
# Webhook → first 200 (issue 6), through the real release daemon as root: a signed `member.created` (Standard Webhooks,
# signed here independently of the receiver) is POSTed to `[webhooks] listen`; the clock stops at the member's first
# HTTP 200 from `GET /u/<id>/healthz` through the edge proxy, with the member's own token (read as root from its
# clawdbot.json, since a webhook never carries one). Baseline in the same run: `wirebot user add` from the CLI, then the
# first 200 with the token it printed. N members of each tier per path (default 50).
# Usage: tests/bench/webhook_to_200.sh [n=50]
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-50}"
EXTRA_PROXY_TOML="per_member_rps = 0"
. tests/bench/webhook_daemon.sh
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $N members per tier and path"
python3 - "$WORK" "$WIREBOT" "$SECRET" "$SITE" "$N" <<'PY'
import base64, hashlib, hmac, http.client, json, re, subprocess, sys, time
work, wirebot, secret, site, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ready = open(f"{work}/ready").read()
proxy = re.search(r"proxy=(\S+)", ready).group(1)
hooks = re.search(r"webhooks=(\S+)", ready).group(1)
key = base64.b64decode(secret.removeprefix("whsec_"))

def get(addr, path, headers):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", path, headers=headers)
    r = c.getresponse(); r.read(); c.close()
    return r.status

def first_200(uid, token):
    while get(proxy, f"/u/{uid}/healthz", {"authorization": f"Bearer {token}"}) != 200:
        time.sleep(0.0005)

def token_on_disk(uid):
    while True:
        try:
            return json.load(open(f"{work}/data/users/{uid}/clawdbot.json"))["gateway"]["auth"]["token"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.0005)

def webhook(wp_id, tier):
    body = json.dumps({"type": "member.created", "timestamp": "2026-11-25T08:00:00Z",
        "data": {"site": site, "user": {"wp_user_id": wp_id, "email": f"m{wp_id}@example.com"},
                 "seq": 1, "state": {"status": "active", "tier": tier}}}).encode()
    mid, ts = f"evt_01JDQ{wp_id:021d}", str(int(time.time()))
    sig = base64.b64encode(hmac.new(key, f"{mid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    host, port = hooks.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("POST", "/v1/webhooks/wordpress", body=body, headers={"content-type": "application/json",
        "webhook-id": mid, "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}"})
    r = c.getresponse(); r.read(); c.close()
    assert r.status == 202, r.status

def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]

rows = {}
for tier in ("shared", "dedicated"):
    cli, hook = [], []
    for i in range(n):
        uid = f"cli-{tier[0]}{i}"
        t = time.perf_counter()
        out = subprocess.run([wirebot, "--config", f"{work}/wirebot.toml", "user", "add", uid, "--tier", tier],
                             capture_output=True, text=True, check=True).stdout
        token = re.search(r"gateway token \(shown once\): (\S+)", out).group(1)
        first_200(uid, token)
        cli.append((time.perf_counter() - t) * 1000)
        wp_id = (1 if tier == "shared" else 2) * 100000 + i
        t = time.perf_counter()
        webhook(wp_id, tier)
        first_200(f"wp{wp_id}", token_on_disk(f"wp{wp_id}"))
        hook.append((time.perf_counter() - t) * 1000)
    rows[tier] = (cli, hook)
print(f"{'path':44s} {'p50':>9s} {'p95':>9s}  ratio (p50)")
for tier, (cli, hook) in rows.items():
    print(f"{'CLI user add → first 200, ' + tier:44s} {pct(cli, .5):7.2f}ms {pct(cli, .95):7.2f}ms  1.00x")
    print(f"{'signed member.created → first 200, ' + tier:44s} {pct(hook, .5):7.2f}ms {pct(hook, .95):7.2f}ms  {pct(hook, .5) / pct(cli, .5):.2f}x")
PY
