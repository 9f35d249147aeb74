//! Turns a [`SandboxSpec`] into the allocation-free pieces the pre-exec module needs, and starts the process.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cgroup::CgroupSet;
use super::exec::{self, LISTEN_PID_DIGITS, LISTEN_PID_PREFIX, PidFd, Prepared};
use super::spec::SandboxSpec;
use super::{Error, procfs, rules};

/// A started worker process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// Start time (field 22 of `/proc/<pid>/stat`) read right after exec, for later re-adoption checks.
    pub start_time: u64,
    pub pidfd: PidFd,
    pub cgroup: Option<CgroupSet>,
}

/// Starts `spec.program` inside the sandbox. Blocking (fork + exec handshake): call from `spawn_blocking`.
pub fn spawn(spec: SandboxSpec) -> Result<Spawned, Error> {
    spec.validate()?;
    let prepared = prepare(&spec)?;
    let (pid, pidfd) = exec::fork_exec(prepared).map_err(|failure| Error::Child {
        program: spec.program.clone(),
        failure,
    })?;
    // The pidfd pins the process; a start time of 0 only if it already exited (its record is then never adopted).
    let start_time = procfs::start_time(pid)?.unwrap_or(0);
    Ok(Spawned {
        pid,
        start_time,
        pidfd,
        cgroup: spec.cgroup,
    })
}

fn cstring(bytes: &[u8], field: &'static str) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::InvalidSpec {
        field,
        reason: "contains a NUL byte".to_owned(),
    })
}

fn path_cstring(path: &Path, field: &'static str) -> Result<CString, Error> {
    cstring(path.as_os_str().as_bytes(), field)
}

fn env_entry(key: &str, value: &OsStr) -> Vec<u8> {
    let mut e = Vec::with_capacity(key.len() + value.len() + 2);
    e.extend_from_slice(key.as_bytes());
    e.push(b'=');
    e.extend_from_slice(value.as_bytes());
    e.push(0);
    e
}

fn high(fd: impl AsFd, what: &'static str) -> Result<OwnedFd, Error> {
    exec::high_fd(fd.as_fd()).map_err(|source| Error::Sys { op: what, source })
}

fn prepare(spec: &SandboxSpec) -> Result<Prepared, Error> {
    let program = path_cstring(&spec.program, "program")?;
    let mut argv = vec![program.clone()];
    for a in &spec.args {
        argv.push(cstring(a.as_bytes(), "args")?);
    }
    let mut env: Vec<Vec<u8>> = spec.env.iter().map(|(k, v)| env_entry(k, v)).collect();
    if let Some(file) = &spec.env_file {
        env.push(env_entry("WIREBOT_ENV_FILE", file.as_os_str()));
    }
    let mut listen_pid_slot = None;
    if spec.listen_socket.is_some() {
        env.push(env_entry("LISTEN_FDS", OsStr::new("1")));
        let mut slot = LISTEN_PID_PREFIX.to_vec();
        slot.resize(LISTEN_PID_PREFIX.len() + LISTEN_PID_DIGITS, 0);
        listen_pid_slot = Some(env.len());
        env.push(slot);
    }
    let dev_null = File::open("/dev/null").map_err(|source| Error::Io {
        op: "open",
        path: "/dev/null".into(),
        source,
    })?;
    let listen = spec
        .listen_socket
        .as_ref()
        .map(|s| high(s, "move the listening socket above fd 9"))
        .transpose()?;
    let mut landlock = Vec::new();
    if let Some(fd) = spec.connect_guard.as_ref().and_then(|g| g.fd()) {
        landlock.push(high(fd, "duplicate the connect guard")?);
    }
    // Without Landlock filesystem support (old kernel) there is no worker ruleset to add the /tmp rule to.
    let mut private_tmp_access = 0;
    if let Some(fd) = rules::worker_ruleset(spec)? {
        landlock.push(high(&fd, "move the worker ruleset above fd 9")?);
        private_tmp_access = rules::private_tmp_access();
    }
    let cgroup_procs = match &spec.cgroup {
        Some(set) => set
            .procs_files()
            .iter()
            .map(|p| path_cstring(p, "cgroup"))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let private_tmp = spec
        .private_tmp_bytes
        .map(|bytes| {
            cstring(
                format!("size={bytes},mode=1777").as_bytes(),
                "private_tmp_bytes",
            )
        })
        .transpose()?;
    Ok(Prepared {
        program,
        argv,
        env,
        listen_pid_slot,
        stdin: high(&dev_null, "move /dev/null above fd 9")?,
        stdout: high(&spec.stdout, "move stdout above fd 9")?,
        stderr: high(&spec.stderr, "move stderr above fd 9")?,
        listen,
        rlimits: vec![
            (libc::RLIMIT_NOFILE, spec.rlimits.nofile),
            (libc::RLIMIT_NPROC, spec.rlimits.nproc),
            (libc::RLIMIT_CORE, 0),
        ],
        cgroup_procs,
        private_tmp,
        private_tmp_access,
        uid: spec.identity.uid,
        gid: spec.identity.gid,
        cwd: path_cstring(&spec.cwd, "cwd")?,
        landlock,
        seccomp: rules::seccomp_programs()?,
    })
}
