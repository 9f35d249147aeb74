//! Isolation of one worker process: the typed [`SandboxSpec`], cgroups, Landlock, seccomp, and the one pre-exec module.
//!
//! Layout:
//! - `spec.rs`     what a sandbox is (identity, paths, ports, limits, env allow-list) and its validation;
//! - `cgroup.rs`   one interface over cgroup v1 and v2 (layout from `/proc/self/mountinfo`, nested under our own cgroup);
//! - `rules.rs`    the Landlock rulesets (filesystem, bind, connect) and the seccomp deny filter, built in the parent;
//! - `procfs.rs`   reading `/proc/<pid>/{stat,status,cgroup}` (start time, credentials, membership);
//! - `spawn.rs`    turns a spec into prepared, allocation-free pieces and calls the pre-exec module;
//! - `exec.rs`     the ONLY `unsafe` in the supervisor: fork, the ordered privilege drop, execve; pidfd syscalls.
//!
//! Invariant: everything the child needs after `fork` (C strings, env block, BPF program, Landlock ruleset fds, open
//! cgroup paths) is allocated before `fork`; the child only makes async-signal-safe system calls.

pub mod cgroup;
mod exec;
pub mod procfs;
mod rules;
mod spawn;
mod spec;

use std::io;
use std::path::PathBuf;

pub use cgroup::{CgroupLayout, CgroupSet, ResourceLimits};
pub use exec::{ChildFailure, PidFd, PreExecStep};
pub use rules::ConnectGuard;
pub use spawn::{Spawned, spawn};
pub use spec::{Identity, PortRange, Rlimits, SandboxSpec};

/// Everything that can go wrong while preparing, placing or starting a sandboxed process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on a path failed.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A system call that is not about one path failed.
    #[error("{op}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The spec is unusable as written.
    #[error("invalid sandbox spec: {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    /// No cgroup hierarchy offers a controller the limits need.
    #[error(
        "no cgroup hierarchy with the {controller} controller is mounted (see /proc/self/mountinfo)"
    )]
    NoController { controller: &'static str },
    /// `/proc/self/cgroup` or `/proc/self/mountinfo` did not say what we need.
    #[error("cannot parse {}: {reason}", path.display())]
    ProcParse { path: PathBuf, reason: String },
    /// Building a Landlock ruleset failed.
    #[error("landlock: {op}")]
    Landlock {
        op: &'static str,
        #[source]
        source: landlock::RulesetError,
    },
    /// Compiling the seccomp filter failed.
    #[error("seccomp: compiling the deny filter")]
    Seccomp(#[source] seccompiler::BackendError),
    /// The child failed a pre-exec step (or execve itself); nothing of the worker ran.
    #[error("worker {program} failed before exec at step {}", failure.step)]
    Child {
        program: PathBuf,
        #[source]
        failure: ChildFailure,
    },
}
