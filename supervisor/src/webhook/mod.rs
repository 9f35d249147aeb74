//! Signed WordPress webhooks (contracts/webhooks.md §1–§4): verify, validate, de-duplicate, order by `seq`, persist the
//! desired state and hand it to the reconciler. Reconciling (directories, workers, bindings) is not done here.
//!
//! Layout: `signature` (Standard Webhooks v1 sign/verify), `secrets` (the 0600 secrets file), `payload` (typed body and
//! validation with JSON pointers), `store` (durable SQLite tables), `receiver` (the axum router and the 8-step
//! algorithm), `error` (the one error enum and its problem+json mapping).

pub mod error;
pub mod payload;
pub mod receiver;
pub mod secrets;
pub mod signature;
pub mod store;

pub use error::Error;
pub use payload::{DesiredState, Status, Tier};
pub use receiver::{ReconcileRequest, WebhookState, router};
pub use secrets::{Secret, SiteSecrets, load_secrets};
pub use store::{MIGRATION, Operation, OperationId, PendingOperation, Store};
