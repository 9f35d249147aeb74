//! The edge proxy: every member request enters here and reaches its own worker (dedicated) or its own agent in the
//! shared worker, and nothing else. Owns bindings and the route table, upstream pools, WebSocket relay, wake on
//! request, idle stop, listener hygiene and proxy metrics. Does not own worker processes (lifecycle does) nor the
//! registry (the daemon builds [`RouteSpec`]s from it and calls [`RouteTableHandle::replace`]).
//!
//! Browser access: a page opened as `/u/<id>/?token=<member token>` (or on the member's host) is authenticated by
//! the query token and answered with an HttpOnly `wirebot_token` cookie scoped to that prefix, so the page's
//! assets and WebSocket carry the token without it appearing in every URL. API clients send
//! `Authorization: Bearer <member token>`.

mod body;
mod config;
mod error;
mod fast;
mod fault;
mod forward;
mod h1;
mod listener;
mod member;
mod metrics;
mod pool;
mod rewind;
mod route;
mod wake;
mod websocket;

pub use config::ProxyConfig;
pub use error::Error;
pub use fault::{Culprit, Fault};
pub use forward::TOKEN_COOKIE;
pub use listener::run;
pub use metrics::ProxyMetrics;
pub use pool::PoolConfig;
pub use route::{
    Binding, RouteAuth, RouteSpec, RouteTable, RouteTableHandle, TokenHash, UpstreamState,
};
pub use wake::{
    StopReason, StopRequest, WakeError, WakeRequest, next_cron_run_ms, run_idle_stopper,
};
