//! The Wirebot supervisor library: config, registry, admin API, CLI client, worker lifecycle, isolation, proxy.

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod drift;
pub mod error;
pub mod lifecycle;
pub mod openapi;
pub mod proxy;
pub mod reconcile;
pub mod registry;
pub mod routes;
pub mod sandbox;
pub mod shared;
pub mod tier_move;
pub mod users;
pub mod webhook;
pub mod workers;
