//! `wirebot-worker`: a Clawdbot-compatible gateway (protocol v3, sessions, model router, memory, skills, cron).

pub mod cron;
pub mod memory;
pub mod skills;
