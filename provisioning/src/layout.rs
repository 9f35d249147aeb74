//! `Layout`: the only place that knows where per-user state lives under the data and runtime dirs.

use std::path::{Path, PathBuf};

use crate::UserId;

/// The two roots: persistent state (`data_dir`) and runtime secrets on a tmpfs (`runtime_dir`, `/run/wirebot` in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Persistent root: `users/<id>/` trees and `archive/`.
    pub data_dir: PathBuf,
    /// Runtime root: `users/<id>/gateway.env` with provider keys.
    pub runtime_dir: PathBuf,
}

impl Layout {
    /// A layout over the given roots (nothing is created).
    pub fn new(data_dir: impl Into<PathBuf>, runtime_dir: impl Into<PathBuf>) -> Layout {
        Layout {
            data_dir: data_dir.into(),
            runtime_dir: runtime_dir.into(),
        }
    }

    /// `<data_dir>/users`: holds one directory per provisioned user.
    pub fn users_dir(&self) -> PathBuf {
        self.data_dir.join("users")
    }

    /// `<data_dir>/users/<id>`: the user's state dir (Clawdbot's `CLAWDBOT_STATE_DIR`).
    pub fn user_dir(&self, user: &UserId) -> PathBuf {
        self.users_dir().join(user.as_str())
    }

    /// `<runtime_dir>/users`.
    pub fn runtime_users_dir(&self) -> PathBuf {
        self.runtime_dir.join("users")
    }

    /// `<runtime_dir>/users/<id>`: runtime secrets of one user.
    pub fn runtime_user_dir(&self, user: &UserId) -> PathBuf {
        self.runtime_users_dir().join(user.as_str())
    }

    /// `<runtime_dir>/users/<id>/gateway.env`: `KEY=value` lines with provider API keys (0600).
    pub fn gateway_env(&self, user: &UserId) -> PathBuf {
        self.runtime_user_dir(user).join("gateway.env")
    }

    /// `<data_dir>/users/<id>/clawdbot.json`.
    pub fn clawdbot_json(&self, user: &UserId) -> PathBuf {
        self.user_dir(user).join("clawdbot.json")
    }

    /// `<data_dir>/users/<id>/workspace`: the agent's default cwd (`agents.defaults.workspace`).
    pub fn workspace_dir(&self, user: &UserId) -> PathBuf {
        self.user_dir(user).join("workspace")
    }

    /// `<data_dir>/archive`: `<id>-<utc>.tar.zst` archives of removed users.
    pub fn archive_dir(&self) -> PathBuf {
        self.data_dir.join("archive")
    }

    /// `<data_dir>/users/.staging-<id>`: where a first provision builds the tree before renaming it into place.
    /// A valid id never starts with `.`, so this can never be a user dir.
    pub(crate) fn staging_dir(&self, user: &UserId) -> PathBuf {
        self.users_dir().join(format!(".staging-{}", user.as_str()))
    }
}

/// `true` when `path` is a directory itself (not a symlink to one).
pub(crate) fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}
