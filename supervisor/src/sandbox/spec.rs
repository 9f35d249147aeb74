//! What a worker's sandbox is: identity, argv/env allow-list, paths, ports, limits, handed-over fds; and its validation.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Error;
use super::cgroup::CgroupSet;
use super::rules::ConnectGuard;

/// The tenant's numeric identity; the worker runs with exactly these ids and no supplementary groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// An inclusive TCP port range, e.g. the worker port range from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `first..=last`; `None` when empty.
    pub fn new(first: u16, last: u16) -> Option<PortRange> {
        (first <= last).then_some(PortRange { first, last })
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Per-process rlimits. `RLIMIT_CORE` is always 0: a core dump would write the tenant's memory (keys) to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE` (soft = hard).
    pub nofile: u64,
    /// `RLIMIT_NPROC`: counted per real uid system-wide, so it bounds a tenant across all its processes.
    pub nproc: u64,
}

/// Everything the pre-exec sequence needs to start one sandboxed process. Consumed by [`super::spawn`].
#[derive(Debug)]
pub struct SandboxSpec {
    /// Absolute path of the executable (no `PATH` search).
    pub program: PathBuf,
    /// `argv[1..]`; never secrets (they go in the env file).
    pub args: Vec<OsString>,
    /// The complete environment (allow-list); everything else is cleared. `LISTEN_FDS`/`LISTEN_PID` are added
    /// when a socket is handed over, `WIREBOT_ENV_FILE` when `env_file` is set.
    pub env: Vec<(String, OsString)>,
    /// The tenant's `gateway.env`, exported to the child as `WIREBOT_ENV_FILE=<path>`.
    pub env_file: Option<PathBuf>,
    pub identity: Identity,
    /// Working directory, entered after the identity switch (so the tenant's own permissions apply).
    pub cwd: PathBuf,
    /// Read-write for the tenant (its user dir and runtime dir). Landlock grants nothing else writable.
    pub rw_paths: Vec<PathBuf>,
    /// Read-only (and executable) in addition to the system paths and the program's own directory.
    pub ro_paths: Vec<PathBuf>,
    /// The one TCP port the worker may `bind` (Landlock `BindTcp`); `None` = no bind at all.
    pub bind_port: Option<u16>,
    /// A prebuilt Landlock layer that refuses TCP connect to the worker port range (shared by all workers).
    pub connect_guard: Option<Arc<ConnectGuard>>,
    /// A bound, listening socket handed over as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID=<child pid>`.
    pub listen_socket: Option<OwnedFd>,
    /// Where fd 1 and fd 2 point (the supervisor-owned log file, opened `O_APPEND`).
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Already created, limits written; the child joins it before exec.
    pub cgroup: Option<CgroupSet>,
    pub rlimits: Rlimits,
    /// Size of the private tmpfs mounted on `/tmp` in the worker's own mount namespace; `None` = no private `/tmp`.
    pub private_tmp_bytes: Option<u64>,
}

/// Env keys that look like credentials are refused: secrets travel in the 0600 env file, never in env or argv.
const SECRET_MARKERS: [&str; 5] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"];

/// System paths the worker may read and execute (missing ones are skipped).
pub(super) const SYSTEM_RO_PATHS: [&str; 10] = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc",
    "/proc",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
];

/// Device files the worker may read and write.
pub(super) const DEVICE_RW_PATHS: [&str; 2] = ["/dev/null", "/dev/zero"];

impl SandboxSpec {
    /// Checks what the kernel would only report as a late, vague errno.
    pub(super) fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: String| Err(Error::InvalidSpec { field, reason });
        if !self.program.is_absolute() {
            return invalid(
                "program",
                format!("{} is not an absolute path", self.program.display()),
            );
        }
        if self.identity.uid == 0 || self.identity.gid == 0 {
            return invalid("identity", "a worker never runs as uid or gid 0".to_owned());
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return invalid("env", format!("{key:?} is not a valid variable name"));
            }
            if value.as_encoded_bytes().contains(&0) {
                return invalid("env", format!("{key} contains a NUL byte"));
            }
            let upper = key.to_ascii_uppercase();
            if SECRET_MARKERS.iter().any(|m| upper.contains(m)) {
                return invalid(
                    "env",
                    format!(
                        "{key} looks like a secret: put it in the env file, not the environment"
                    ),
                );
            }
            if matches!(
                key.as_str(),
                "LISTEN_FDS" | "LISTEN_PID" | "WIREBOT_ENV_FILE"
            ) {
                return invalid("env", format!("{key} is set by the sandbox itself"));
            }
        }
        if self.args.iter().any(|a| a.as_encoded_bytes().contains(&0)) {
            return invalid("args", "an argument contains a NUL byte".to_owned());
        }
        for path in self
            .rw_paths
            .iter()
            .chain(&self.ro_paths)
            .chain([&self.cwd])
        {
            if !path.is_absolute() {
                return invalid("paths", format!("{} is not absolute", path.display()));
            }
            // The private tmpfs hides the real /tmp: a path below it would silently vanish for the worker.
            if self.private_tmp_bytes.is_some() && path.starts_with("/tmp") {
                return invalid(
                    "paths",
                    format!(
                        "{} is under /tmp, which the worker's private /tmp hides; use a data dir elsewhere",
                        path.display()
                    ),
                );
            }
        }
        if let Some(bytes) = self.private_tmp_bytes
            && bytes < 4096
        {
            return invalid(
                "private_tmp_bytes",
                format!("{bytes} is smaller than one page"),
            );
        }
        Ok(())
    }

    /// The program's directory: read-only + executable for the worker (shared libraries, assets next to it).
    pub(super) fn program_dir(&self) -> Option<&Path> {
        self.program.parent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_is_inclusive() {
        let r = PortRange::new(20000, 20010).unwrap();
        assert!(r.contains(20000) && r.contains(20010) && !r.contains(20011) && !r.contains(19999));
        assert!(PortRange::new(2, 1).is_none());
    }
}
