//! Harness for the end-to-end suite: finds the built binaries, makes temp roots, and says when a test must skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// Path of a workspace binary built by `cargo build --workspace --bins`, found next to the test executable
/// (`<target>/<profile>/deps/it-*` → `<target>/<profile>/<name>`), so any `CARGO_TARGET_DIR` works.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// True when the suite runs as root (uid 0); isolation tests need it.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Skips the current test with a printed reason unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!(
                "SKIP {}: needs root (uid/gid switching, cgroups, capabilities)",
                module_path!()
            );
            return;
        }
    };
}

pub mod fake_embeddings;
pub mod fake_provider;
pub mod supervisor;
pub mod wordpress;
pub mod worker;
