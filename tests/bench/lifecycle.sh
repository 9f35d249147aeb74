#!/usr/bin/env bash
# Lifecycle benchmark (issue 4): spawn-until-Ready p50/p95 over 100 sandboxed workers vs a plain fork/exec baseline of the
# same binary, then idle capacity (all workers answering /healthz, p99 ≤ 50 ms) at 200/500/1000 with the supervisor RSS.
# Needs root (uid switching, cgroups). Usage: tests/bench/lifecycle.sh [spawn_n] [levels]   e.g. 100 200,500,1000
# PROFILE=release for release binaries (default: debug); WORKER=<path> to bench another worker binary.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
profile="${PROFILE:-debug}"
flag=""; [ "$profile" = release ] && flag="--release"
cargo build $flag -p worker --bin wirebot-worker -p tests --bin isolation-probe --manifest-path "$here/Cargo.toml"
worker="${WORKER:-$target/$profile/wirebot-worker}"
root="$(mktemp -d "$target/bench-lifecycle-XXXXXX")"
trap 'rm -rf "$root"' EXIT
echo "worker: $worker ($profile); root: $root; $(nproc) cores"
"$target/$profile/isolation-probe" --bench-lifecycle --root "$root" --worker "$worker" --spawn "${1:-100}" --levels "${2:-200,500,1000}"
