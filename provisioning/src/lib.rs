//! Per-user state directories: typed ids, the on-disk layout, modes and owners, the `clawdbot.json` template,
//! the Wirebot skills and default cron jobs, atomic writes, and archives of removed users. Sync std code (no async
//! runtime); depends on nothing of ours.

mod archive;
pub mod atomic;
mod dir;
mod error;
mod layout;
mod perms;
mod provision;
pub mod schedule;
mod secret;
pub mod skills;
mod template;
mod user_id;

pub use archive::{deprovision, restore_archive};
pub use error::Error;
pub use layout::Layout;
pub use perms::Owner;
pub use provision::{ProvisionSpec, Provisioned, gateway_token, provision, rotate_gateway_token};
pub use schedule::MemberSchedule;
pub use secret::Secret;
pub use user_id::{InvalidTier, InvalidUserId, Tier, UserId};
