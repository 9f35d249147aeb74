#!/usr/bin/env bash
# Benchmark (issue 2): provision 1,000 users through the admin API of a release `wirebot serve` and report users/s and
# the daemon's peak RSS (VmHWM). Baseline in the same run: 1,000 `GET /healthz` over the same keep-alive connection,
# so the ratio isolates the cost of provisioning (registry transaction + state tree + fsyncs) from HTTP overhead.
#
#   tests/bench/provision_1000.sh            # builds the release binary if needed
#   N=5000 C=32 tests/bench/provision_1000.sh     # another count / concurrency
# Targets: >= 500 users/s, <= 20 MB peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-1000}"
C="${C:-16}"   # concurrent clients for the second round (the first round uses 1)
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
[ports]
# Two rounds of N users, half dedicated: the default spacing (20) only fits 500 dedicated workers.
spacing = 2
TOML

WIREBOT_LOG=warn "$WIREBOT" --config "$WORK/wirebot.toml" serve > "$WORK/ready" 2> "$WORK/log" &
PID=$!
for _ in $(seq 200); do grep -q '^wirebot ready' "$WORK/ready" 2>/dev/null && break; sleep 0.05; done
grep -q '^wirebot ready' "$WORK/ready" || { echo "daemon not ready:"; cat "$WORK/log"; exit 1; }
SOCKET="$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$WORK/ready")"
echo "rss after start: $(grep VmRSS /proc/$PID/status | awk '{print $2, $3}')"

python3 - "$SOCKET" "$N" "$C" <<'PY'
import http.client, json, socket, sys, time
from concurrent.futures import ThreadPoolExecutor

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("wirebot")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

path, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def call(conn, method, url, body=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    conn.request(method, url, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()

def run(make_request, clients):
    """n requests spread over `clients` keep-alive connections; returns elapsed seconds."""
    def worker(k):
        conn = UnixConnection(path)
        for i in range(k, n, clients):
            status, data = make_request(conn, i)
            assert status in (200, 201), (status, data)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return time.perf_counter() - t0

def healthz(conn, i):
    return call(conn, "GET", "/healthz")

def create(prefix):
    def make(conn, i):
        tier = "dedicated" if i % 2 == 0 else "shared"
        return call(conn, "POST", "/v1/users", {"id": f"{prefix}-{i:05d}", "tier": tier})
    return make

rows = []
for clients in (1, c):
    base = run(healthz, clients)
    prov = run(create(f"c{clients}"), clients)
    rows.append((clients, base, prov))
status, data = call(UnixConnection(path), "GET", "/v1/status")
assert json.loads(data)["users"]["total"] == 2 * n, data
for clients, base, prov in rows:
    print(f"clients={clients:<3} baseline GET /healthz: {n/base:8.0f} req/s ({base/n*1e3:.3f} ms each)   "
          f"POST /v1/users: {n/prov:7.0f} users/s ({prov/n*1e3:.3f} ms each)   ratio {prov/base:.1f}x")
PY
echo "daemon peak RSS (VmHWM): $(grep VmHWM /proc/$PID/status | awk '{print $2, $3}')"
echo "users on disk: $(find "$WORK/data/users" -mindepth 1 -maxdepth 1 -not -name '.*' | wc -l)"
