#!/usr/bin/env bash
# Webhook receiver benchmark: 1,000 members.sync members (5 signed requests of 200) applied per second into the SQLite
# store vs. a baseline of the same rows inserted unsigned in the same run; plus member.created → 202 latency.
#   tests/bench/webhooks.sh [rounds]      (release build; CARGO_TARGET_DIR is honoured)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --quiet --release -p tests --example webhook_bench -- "${1:-7}"
