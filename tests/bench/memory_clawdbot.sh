#!/usr/bin/env bash
# Worker memory vs Clawdbot's memory search on the same corpus in the same run (issue 7): the benchmark corpus
# (worker/benches/corpus, written by `examples/memory_corpus`), one loopback OpenAI-compatible /v1/embeddings
# (hashed bag of words, 256 dims) for both, 64-token chunks without overlap; full index, then hybrid searches.
# Clawdbot 2026.1.24-3 runs in-process through its own MemoryIndexManager (dist/memory/manager.js, what
# `clawdbot memory index|search` call), timed around `sync({force})` and `search()`; one `clawdbot memory search`
# CLI call is timed too (includes Node start). Needs tests/install-clawdbot.sh for the Clawdbot side.
# Usage: tests/bench/memory_clawdbot.sh   (env: FILES=1000 BYTES=25000 files of that size, QUERIES=200,
#        BUILD=0 to reuse an already built examples/memory_corpus)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
cb="${WIREBOT_CLAWDBOT_DIR:-$here/.cache/clawdbot}"
FILES="${FILES:-1000}"; BYTES="${BYTES:-25000}"; QUERIES="${QUERIES:-200}"
[ "${BUILD:-1}" = 0 ] || cargo build --release -q -p worker --example memory_corpus --manifest-path "$here/Cargo.toml"
bin="$target/release/examples/memory_corpus"
work="$(mktemp -d)"; server=""
cleanup() { exec 4>&- 2>/dev/null || true; [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
echo "load average: $(cat /proc/loadavg)"

mb=$("$bin" write "$work/ws" "$FILES" "$BYTES" 11)
echo "corpus: $FILES files, $(awk -v b="$mb" 'BEGIN{printf "%.1f", b/1e6}') MB"
"$bin" queries "$QUERIES" > "$work/queries.txt"
mkfifo "$work/serve.in"
"$bin" serve < "$work/serve.in" > "$work/url" & server=$!
exec 4> "$work/serve.in"
for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.05; done
url=$(head -1 "$work/url")
echo "embeddings endpoint: $url"

echo "== wirebot-worker MemoryIndex (release)"
"$bin" wirebot "$work/wb" "$work/ws" "$url" "$QUERIES" | tee "$work/wirebot.json"

node="$cb/venv/bin/node"; dist="$cb/node_modules/clawdbot/dist"
if [ ! -x "$node" ] || [ ! -f "$dist/entry.js" ]; then
  echo "== Clawdbot: SKIP, not installed under $cb (run tests/install-clawdbot.sh)"; exit 0
fi
echo "== Clawdbot 2026.1.24-3 MemoryIndexManager (Node $("$node" --version))"
mkdir -p "$work/cb/home" "$work/cb/state"
python3 - "$work" "$url" <<'PY'
import json, sys
work, url = sys.argv[1], sys.argv[2]
cfg = {"update": {"checkOnStart": False},
       "agents": {"defaults": {"workspace": work + "/ws", "memorySearch": {
           "provider": "openai", "model": "bench-hash-256", "fallback": "none",
           "remote": {"baseUrl": url, "apiKey": "bench-key", "batch": {"enabled": False}},
           "chunking": {"tokens": 64, "overlap": 0},
           "sync": {"watch": False, "onSearch": False, "onSessionStart": False}}},
           "list": [{"id": "main", "default": True}]}}
open(work + "/cb/state/clawdbot.json", "w").write(json.dumps(cfg))
PY
cat > "$work/cb/bench.mjs" <<'JS'
const [dist, queriesPath, url] = process.argv.slice(2);
const { readFileSync } = await import("node:fs");
const { loadConfig } = await import(`${dist}/config/config.js`);
const { getMemorySearchManager } = await import(`${dist}/memory/index.js`);
const queries = readFileSync(queriesPath, "utf8").trim().split("\n");
const cfg = loadConfig();
const { manager, error } = await getMemorySearchManager({ cfg, agentId: "main" });
if (!manager) { console.log(JSON.stringify({ error })); process.exit(1); }
const now = () => performance.now();
let t = now();
await manager.sync({ reason: "cli", force: true });
const index_s = (now() - t) / 1000;
const status = manager.status();
t = now(); await manager.search(queries[0]); const first_search_ms = now() - t;
const embed = async (q) => {
  const r = await fetch(`${url}/embeddings`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "bench-hash-256", input: [q] }) });
  return (await r.json()).data[0].embedding;
};
const e2e = [], hybrid = [];
let hits = 0;
for (const q of queries) {
  t = now(); hits += (await manager.search(q)).length; e2e.push(now() - t);
  // The same legs and merge as search(), with the query embedding fetched beforehand (what our hybrid figure times).
  const qv = await embed(q);
  t = now();
  const kw = await manager.searchKeyword(q, 24).catch(() => []);
  const vec = await manager.searchVector(qv, 24).catch(() => []);
  manager.mergeHybridResults({ vector: vec, keyword: kw, vectorWeight: 0.7, textWeight: 0.3 })
    .filter((e) => e.score >= 0.35).slice(0, 6);
  hybrid.push(now() - t);
}
const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor((s.length - 1) * p)]; };
console.log(JSON.stringify({ chunks: status.chunks, vector: status.vector, fts: status.fts, index_s, first_search_ms,
  search_http_p50_ms: pct(e2e, 0.5), search_http_p95_ms: pct(e2e, 0.95),
  hybrid_p50_ms: pct(hybrid, 0.5), hybrid_p95_ms: pct(hybrid, 0.95), hits, rss_mb: process.memoryUsage().rss / 1e6 }));
await manager.close?.();
process.exit(0);
JS
cbenv=(env HOME="$work/cb/home" CLAWDBOT_STATE_DIR="$work/cb/state" CLAWDBOT_CONFIG_PATH="$work/cb/state/clawdbot.json"
  CLAWDBOT_DISABLE_BONJOUR=1 CLAWDBOT_NO_RESPAWN=1)
"${cbenv[@]}" "$node" "$work/cb/bench.mjs" "$dist" "$work/queries.txt" "$url" 2> "$work/cb/stderr" | tee "$work/clawdbot.json" \
  || { echo "Clawdbot failed:"; tail -20 "$work/cb/stderr"; exit 1; }
q=$(head -1 "$work/queries.txt")
t0=$(date +%s%N)
"${cbenv[@]}" "$node" "$dist/entry.js" memory search --json "$q" > "$work/cb/cli.json" 2>> "$work/cb/stderr"
t1=$(date +%s%N)
echo "clawdbot memory search CLI, one call (Node start + open + search): $(( (t1 - t0) / 1000000 )) ms, $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["results"]))' "$work/cb/cli.json") results"
python3 - "$work/wirebot.json" "$work/clawdbot.json" <<'PY'
import json, sys
w, c = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
print("== same corpus, same endpoint: Clawdbot / wirebot")
for k in ["chunks", "index_s", "first_search_ms", "hybrid_p50_ms", "hybrid_p95_ms", "search_http_p50_ms", "search_http_p95_ms", "hits"]:
    a, b = c.get(k), w.get(k)
    ratio = f"{a / b:.1f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"
    print(f"{k:22} clawdbot {a!s:>12}  wirebot {b!s:>12}  {ratio}")
PY
echo "load average after: $(cat /proc/loadavg)"
