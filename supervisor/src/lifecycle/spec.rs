//! What the daemon tells the lifecycle about one worker ([`WorkerSpec`], [`Runtime`]) and how that becomes a
//! [`SandboxSpec`].
//!
//! The Clawdbot runtime runs under the same layers with these differences, all forced by how Node/Clawdbot work:
//! no socket hand-over (the gateway binds its own `--port`; Landlock still allows binding only that port), readiness
//! by TCP connect instead of a ready line, and the node install dir is read-only-visible. Seccomp is the same list:
//! none of the denied syscalls is used by V8 (we do not deny `mprotect(PROT_EXEC)`, i.e. no MemoryDenyWriteExecute,
//! which would break the JIT); tiers running Clawdbot need a pids limit ≥ 64 (V8 and libuv threads count as tasks).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use provisioning::UserId;

use crate::sandbox::{CgroupSet, ConnectGuard, Identity, ResourceLimits, Rlimits, SandboxSpec};

/// Which program serves a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// `wirebot-worker --state-dir <user dir> [extra_args…]`, socket on fd 3, ready line on stdout.
    Wirebot {
        program: PathBuf,
        extra_args: Vec<String>,
    },
    /// `node <entry> gateway --port <port>`: the real Clawdbot gateway.
    Clawdbot {
        node: PathBuf,
        /// The clawdbot CLI entry script (e.g. `<install>/node_modules/clawdbot/dist/entry.js`).
        entry: PathBuf,
        /// Read-only for the worker (node_modules, the node runtime).
        install_dirs: Vec<PathBuf>,
    },
}

/// How readiness is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    ReadyLine,
    TcpConnect,
}

/// Everything about one worker that comes from config + registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    pub user_id: UserId,
    pub runtime: Runtime,
    pub identity: Identity,
    /// `<data_dir>/users/<id>` (read-write).
    pub user_dir: PathBuf,
    /// `<runtime_dir>/users/<id>` (read-write), holding `gateway.env`.
    pub runtime_dir: PathBuf,
    pub env_file: PathBuf,
    /// The user's persisted port (inside the worker port range).
    pub port: u16,
    pub limits: ResourceLimits,
    pub rlimits: Rlimits,
    /// Read-write beyond `user_dir` and `runtime_dir`: a shard worker gets `<data_dir>/users`, because Landlock rules
    /// cannot be added to a running process and shared members join live (their 0700 dirs owned by the shared uid are
    /// what it may actually open; every other member's dir is another uid's 0700 dir).
    pub extra_rw_paths: Vec<PathBuf>,
    /// Overrides the manager's start timeout (the Clawdbot runtime needs minutes, not seconds).
    pub start_timeout: Option<std::time::Duration>,
}

impl WorkerSpec {
    pub(super) fn readiness(&self) -> Readiness {
        match self.runtime {
            Runtime::Wirebot { .. } => Readiness::ReadyLine,
            Runtime::Clawdbot { .. } => Readiness::TcpConnect,
        }
    }

    pub(super) fn hands_over_socket(&self) -> bool {
        matches!(self.runtime, Runtime::Wirebot { .. })
    }

    /// The sandbox for one instance of this worker.
    pub(super) fn sandbox(
        &self,
        log: OwnedFd,
        log_dup: OwnedFd,
        listen: Option<OwnedFd>,
        cgroup: CgroupSet,
        guard: Option<Arc<ConnectGuard>>,
        private_tmp_bytes: Option<u64>,
    ) -> SandboxSpec {
        let path = (
            "PATH".to_owned(),
            OsString::from("/usr/local/bin:/usr/bin:/bin"),
        );
        let lang = ("LANG".to_owned(), OsString::from("C.UTF-8"));
        let (program, args, mut env, ro_paths) = match &self.runtime {
            Runtime::Wirebot {
                program,
                extra_args,
            } => {
                let mut args = vec![
                    OsString::from("--state-dir"),
                    self.user_dir.clone().into_os_string(),
                ];
                args.extend(extra_args.iter().map(OsString::from));
                let env = vec![
                    path,
                    lang,
                    ("HOME".to_owned(), self.user_dir.clone().into_os_string()),
                ];
                (program.clone(), args, env, Vec::new())
            }
            Runtime::Clawdbot {
                node,
                entry,
                install_dirs,
            } => {
                let args = vec![
                    entry.clone().into_os_string(),
                    OsString::from("gateway"),
                    OsString::from("--port"),
                    OsString::from(self.port.to_string()),
                ];
                let env = vec![
                    path,
                    lang,
                    (
                        "HOME".to_owned(),
                        self.user_dir.join("home").into_os_string(),
                    ),
                    (
                        "CLAWDBOT_STATE_DIR".to_owned(),
                        self.user_dir.clone().into_os_string(),
                    ),
                    (
                        "CLAWDBOT_CONFIG_PATH".to_owned(),
                        self.user_dir.join("clawdbot.json").into_os_string(),
                    ),
                    ("CLAWDBOT_DISABLE_BONJOUR".to_owned(), OsString::from("1")),
                    ("CLAWDBOT_NO_RESPAWN".to_owned(), OsString::from("1")),
                ];
                let mut ro = install_dirs.clone();
                ro.extend(node.parent().map(|d| d.to_owned()));
                (node.clone(), args, env, ro)
            }
        };
        env.sort();
        SandboxSpec {
            program,
            args,
            env,
            env_file: Some(self.env_file.clone()),
            identity: self.identity,
            cwd: self.user_dir.clone(),
            rw_paths: [self.user_dir.clone(), self.runtime_dir.clone()]
                .into_iter()
                .chain(self.extra_rw_paths.iter().cloned())
                .collect(),
            ro_paths,
            bind_port: Some(self.port),
            connect_guard: guard,
            listen_socket: listen,
            stdout: log,
            stderr: log_dup,
            cgroup: Some(cgroup),
            rlimits: self.rlimits,
            private_tmp_bytes,
        }
    }
}
