#!/usr/bin/env bash
# Benchmark (issue 2): provision 1,000 users through the admin API of a release `wirebot serve` and report users/s and
# the daemon's peak RSS (VmHWM). Baseline in the same run: 1,000 `GET /healthz` over the same keep-alive connection,
# so the ratio isolates the cost of provisioning (registry transaction + state tree + fsyncs) from HTTP overhead.
#
#   tests/bench/provision_1000.sh            # builds the release binary if needed
#   N=5000 tests/bench/provision_1000.sh     # another count
# Targets: >= 500 users/s, <= 20 MB peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-1000}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p supervisor --bin wirebot
WIREBOT="$TARGET_DIR/release/wirebot"

WORK="$(mktemp -d /tmp/wirebot-bench.XXXXXX)"
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cat > "$WORK/wirebot.toml" <<TOML
data_dir = "$WORK/data"
runtime_dir = "$WORK/run"
[proxy]
listen = "127.0.0.1:0"
TOML

WIREBOT_LOG=warn "$WIREBOT" --config "$WORK/wirebot.toml" serve > "$WORK/ready" 2> "$WORK/log" &
PID=$!
for _ in $(seq 200); do grep -q '^wirebot ready' "$WORK/ready" 2>/dev/null && break; sleep 0.05; done
grep -q '^wirebot ready' "$WORK/ready" || { echo "daemon not ready:"; cat "$WORK/log"; exit 1; }
SOCKET="$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$WORK/ready")"
echo "rss after start: $(grep VmRSS /proc/$PID/status | awk '{print $2, $3}')"

python3 - "$SOCKET" "$N" <<'PY'
import http.client, json, socket, sys, time

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("wirebot")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

path, n = sys.argv[1], int(sys.argv[2])
conn = UnixConnection(path)

def call(method, url, body=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    conn.request(method, url, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, data

t0 = time.perf_counter()
for i in range(n):
    status, _ = call("GET", "/healthz")
    assert status == 200, status
base = time.perf_counter() - t0

t0 = time.perf_counter()
for i in range(n):
    tier = "dedicated" if i % 2 == 0 else "shared"
    status, data = call("POST", "/v1/users", {"id": f"user-{i:05d}", "tier": tier})
    assert status == 201, (status, data)
prov = time.perf_counter() - t0

status, data = call("GET", "/v1/status")
assert json.loads(data)["users"]["total"] == n
print(f"baseline  GET /healthz      : {n} in {base:.3f} s = {n/base:9.0f} req/s ({base/n*1e3:.3f} ms each)")
print(f"provision POST /v1/users    : {n} in {prov:.3f} s = {n/prov:9.0f} users/s ({prov/n*1e3:.3f} ms each)")
print(f"ratio provision/healthz time: {prov/base:.1f}x")
PY
echo "daemon peak RSS (VmHWM): $(grep VmHWM /proc/$PID/status | awk '{print $2, $3}')"
echo "users on disk: $(ls "$WORK/data/users" | grep -vc '^\.' )"
