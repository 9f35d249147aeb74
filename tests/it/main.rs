//! The end-to-end suite: one test binary, one module per feature, each driving the real binaries on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_api; // admin HTTP API over the unix socket: endpoints, problem+json errors, OpenAPI document
mod clawdbot_compat; // the real Clawdbot CLI and gateway against our worker and state layout
mod cli; // the `wirebot` CLI: user add/list/show/remove, exit codes, hostile ids
mod config; // wirebot.toml parsing: every mistake reported at once
mod cron; // worker cron engine end to end
mod deploy; // deploy/ files: systemd unit verified, cloudflared ingress
mod e2e_lifecycle; // the real daemon: dedicated worker isolated, re-adopted after kill -9, woken, removed
mod e2e_proxy; // the real daemon's edge proxy: routes from the registry, cross-tenant, metrics, README tour
mod e2e_webhooks; // the real daemon's webhook receiver + reconciler: created, suspended, deleted
mod e2e_wordpress; // real WordPress drives the real daemon
mod gateway; // worker WS control plane, HTTP surface, sessions, failover against the fake provider
mod isolation; // tenant A cannot read, signal, ptrace or reach tenant B
mod lifecycle; // spawn, crash restart, quarantine, graceful stop, re-adoption
mod member_defaults; // provisioned skills and default cron jobs
mod memory; // worker memory indexing and hybrid search quality
mod provisioning; // per-user tree modes and owners, idempotence, rollback, archive-before-delete
mod proxy; // routing by binding, WebSocket and SSE pass-through, cross-tenant matrix
mod shared_tier; // the daemon's shared tier: shard workers, live agent changes, shared routes
mod skills; // SKILL.md discovery and gating in the prompt
mod tidy; // every .rs opens with //!, ARCHITECTURE.md names every crate
mod webchat; // headless Chromium drives the WebChat page
mod webhooks; // signed WordPress webhooks: contract status codes, rotation, replay, dedup, seq
mod worker_features; // memory, cron, skills and the tool loop through the real worker binary
mod worker_reload; // the worker hot-reloads its agent list on SIGHUP
