//! The only `unsafe` in the supervisor: `fork`, the ordered pre-exec privilege drop, `execve`, and pidfd syscalls.
//!
//! After `fork` in a multi-threaded process only async-signal-safe calls are allowed: no allocation, no locks. So
//! everything (C strings, the env block with a fixed-width `LISTEN_PID=` slot, BPF programs, Landlock ruleset fds,
//! cgroup file paths) arrives here prepared, and the child only makes raw system calls on it.
//!
//! Why not `std::process::Command` + `pre_exec`: `LISTEN_PID` must be the child's own pid, which exists only after
//! `fork`, and `Command` builds `envp` itself; std's internal error pipe may also sit on fd 3, where the listening
//! socket must go. Forking ourselves lets the child write its pid into a pre-allocated env slot and lets us report
//! which pre-exec step failed (and its errno) over our own `O_CLOEXEC` pipe.
//!
//! Step order in the child, and why:
//! 1. signals: empty mask, default dispositions — an ignored SIGPIPE/SIGTERM would survive `execve`;
//! 2. `setsid`: own session and process group, so signals aimed at the supervisor's group (Ctrl-C, a daemon kill)
//!    never reach the worker and it survives the supervisor;
//! 3. fds: `/dev/null` → 0, log file → 1 and 2, socket → 3, every other fd marked close-on-exec (`close_range`), so
//!    no supervisor fd (registry, other tenants' sockets) leaks into the worker; marking instead of closing keeps our
//!    error pipe and the Landlock ruleset fds usable until `execve`;
//! 4. cgroup: the child writes `0` (= itself) into each `cgroup.procs` *before* exec, so not a single page or fork of
//!    the worker escapes its limits (the parent writing the pid after fork would race with the exec); needs root;
//! 5. mount namespace: `unshare(CLONE_NEWNS)`, `/` made recursively slave (our mounts never propagate back), a
//!    small tmpfs on `/tmp` (and its Landlock rule, which can only name the tmpfs once mounted) — needs
//!    CAP_SYS_ADMIN, so before any privilege is dropped;
//! 6. rlimits (NOFILE, NPROC, CORE=0) — while still privileged, but *after* steps 4–5: they open files, and a lowered
//!    NOFILE bounds fd *numbers*, which the supervisor's inherited (close-on-exec, still open) fds may exceed with
//!    hundreds of workers (EMFILE seen at 500 workers when rlimits came first);
//! 7. capability bounding set and ambient set cleared — `PR_CAPBSET_DROP` needs CAP_SETPCAP, which the uid switch
//!    removes, so this comes *before* it;
//! 8. `setgroups([])`, `setresgid`, `setresuid` — groups and gid first: after setresuid we could no longer change
//!    them. Leaving uid 0 clears the permitted and effective sets (no KEEPCAPS);
//! 9. `capset` all-zero: also clears the inheritable set, which the uid switch leaves alone;
//! 10. `chdir` to the worker's dir as the tenant (its own permissions apply) and `umask 077`;
//! 11. `PR_SET_NO_NEW_PRIVS` — required by Landlock and seccomp for an unprivileged process; no setuid binary can
//!     give privileges back;
//! 12. Landlock (the connect guard layer, then the worker's own layer);
//! 13. seccomp last: it denies `mount`, `unshare`, ... that steps 5–12 needed, and the filter itself must be the
//!     final word (Sandstorm's order);
//! 14. write the pid into `LISTEN_PID=`, then `execve` with the prepared env.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use seccompiler::BpfProgram;

/// A pre-exec step, reported when the child fails before running any worker code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PreExecStep {
    Signals = 1,
    Setsid,
    Fds,
    Cgroup,
    MountNamespace,
    Rlimits,
    CapabilityBounding,
    Identity,
    CapabilitySets,
    Chdir,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Exec,
}

impl PreExecStep {
    fn from_u32(n: u32) -> Option<PreExecStep> {
        use PreExecStep::*;
        [
            Signals,
            Setsid,
            Fds,
            Rlimits,
            Cgroup,
            MountNamespace,
            CapabilityBounding,
            Identity,
            CapabilitySets,
            Chdir,
            NoNewPrivs,
            Landlock,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }
}

impl fmt::Display for PreExecStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The child's own report: which step failed, with its errno.
#[derive(Debug, thiserror::Error)]
#[error("pre-exec step {step} failed")]
pub struct ChildFailure {
    pub step: PreExecStep,
    #[source]
    pub source: io::Error,
}

/// Everything the child touches, prepared (and allocated) before `fork`.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    /// `KEY=value\0` entries; the `LISTEN_PID` entry (if any) is `LISTEN_PID=` followed by 21 NUL bytes.
    pub(super) env: Vec<Vec<u8>>,
    pub(super) listen_pid_slot: Option<usize>,
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    pub(super) listen: Option<OwnedFd>,
    pub(super) rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub(super) cgroup_procs: Vec<CString>,
    /// Mount options of the private `/tmp` tmpfs (`size=…,mode=1777`).
    pub(super) private_tmp: Option<CString>,
    /// Landlock rights granted on the private `/tmp` (added to the LAST ruleset in `landlock`, the worker's own, after
    /// the mount); 0 when there is no worker ruleset.
    pub(super) private_tmp_access: u64,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) cwd: CString,
    pub(super) landlock: Vec<OwnedFd>,
    pub(super) seccomp: Vec<BpfProgram>,
}

/// Length of the `LISTEN_PID=` prefix.
pub(super) const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the pid digits plus the terminating NUL.
pub(super) const LISTEN_PID_DIGITS: usize = 21;

/// Moves `fd` to a number ≥ 10 (close-on-exec): the child dup2s onto 0–3, which must never clobber a source fd.
pub(super) fn high_fd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Forks, runs the pre-exec sequence in the child and execs. Returns the pid and a pidfd once `execve` succeeded
/// (our `O_CLOEXEC` pipe reads EOF); a failing step is reported with its errno and the child is reaped.
pub(super) fn fork_exec(mut p: Prepared) -> Result<(i32, PidFd), ChildFailure> {
    let parent_err = |source: io::Error| ChildFailure {
        step: PreExecStep::Exec,
        source,
    };
    let (err_read, low_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| parent_err(e.into()))?;
    let err_write = high_fd(low_write.as_fd()).map_err(parent_err)?;
    // Only the high copy may stay open: the read below sees EOF only once every write end is closed.
    drop(low_write);

    // Pointer arrays, built before fork (allocation).
    let argv: Vec<*const libc::c_char> = p
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let listen_pid_ptr: Option<*mut u8> =
        p.listen_pid_slot.and_then(|i| p.env.get_mut(i)).map(|e| {
            // SAFETY: the entry is LISTEN_PID_PREFIX + LISTEN_PID_DIGITS bytes long (built in spawn.rs), so the offset is
            // in bounds.
            unsafe { e.as_mut_ptr().add(LISTEN_PID_PREFIX.len()) }
        });
    let envp: Vec<*const libc::c_char> = p
        .env
        .iter()
        .map(|e| e.as_ptr().cast())
        .chain(std::iter::once(std::ptr::null()))
        .collect();

    // SAFETY: fork has no memory-safety preconditions; the child below only performs async-signal-safe system calls
    // on memory allocated before this point, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(parent_err(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; `child` never returns.
        unsafe { child(&p, &argv, &envp, listen_pid_ptr, err_write.as_raw_fd()) }
    }
    drop(err_write);
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(&err_read, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(parent_err(e.into())),
        }
    }
    if got == report.len() {
        let step = u32::from_le_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_le_bytes([report[4], report[5], report[6], report[7]]);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(ChildFailure {
            step: PreExecStep::from_u32(step).unwrap_or(PreExecStep::Exec),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let pidfd = PidFd::open(pid).map_err(parent_err)?;
    Ok((pid, pidfd))
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Fails the step with the current errno when `rc` is negative.
fn check(rc: libc::c_long, step: PreExecStep) -> Result<(), (PreExecStep, i32)> {
    if rc < 0 { Err((step, errno())) } else { Ok(()) }
}

/// # Safety
/// Must only be called in the child right after `fork`; uses nothing but async-signal-safe calls.
unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    listen_pid: Option<*mut u8>,
    err_fd: RawFd,
) -> ! {
    // SAFETY: forwarded precondition.
    let (step, errno) = match unsafe { pre_exec(p, argv, envp, listen_pid) } {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(step as u32).to_le_bytes());
    report[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: err_fd is our pipe's write end, report a valid 8-byte buffer; _exit never returns and skips atexit
    // handlers and stdio flushing (which would touch the parent's copied state).
    unsafe {
        libc::write(err_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

enum Never {}

/// The ordered sequence documented at the top of this file. Returns only on failure.
///
/// # Safety
/// Child-after-fork only.
unsafe fn pre_exec(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    listen_pid: Option<*mut u8>,
) -> Result<Never, (PreExecStep, i32)> {
    use PreExecStep as S;
    // SAFETY: (whole block) every call below is a raw system call (or glibc's thin wrapper) on memory prepared before
    // fork and still owned by `p`, `argv` and `envp`; none allocates or takes a lock.
    unsafe {
        // 1. signals
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()).into(),
            S::Signals,
        )?;
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            // EINVAL for SIGKILL/SIGSTOP and glibc's reserved signals: nothing to reset there.
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        // 2. session
        check(libc::setsid().into(), S::Setsid)?;
        // 3. fds
        check(libc::dup2(p.stdin.as_raw_fd(), 0).into(), S::Fds)?;
        check(libc::dup2(p.stdout.as_raw_fd(), 1).into(), S::Fds)?;
        check(libc::dup2(p.stderr.as_raw_fd(), 2).into(), S::Fds)?;
        let first_closed = match &p.listen {
            Some(sock) => {
                check(libc::dup2(sock.as_raw_fd(), 3).into(), S::Fds)?;
                4
            }
            None => 3,
        };
        check(
            libc::close_range(
                first_closed,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            )
            .into(),
            S::Fds,
        )?;
        // 4. cgroup: "0" names the writing process itself.
        for procs in &p.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fd.into(), S::Cgroup)?;
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            check(n as libc::c_long, S::Cgroup)?;
        }
        // 5. mount namespace with a private /tmp
        if let Some(opts) = &p.private_tmp {
            check(libc::unshare(libc::CLONE_NEWNS).into(), S::MountNamespace)?;
            let root = c"/";
            check(
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                )
                .into(),
                S::MountNamespace,
            )?;
            let (tmpfs, tmp) = (c"tmpfs", c"/tmp");
            check(
                libc::mount(
                    tmpfs.as_ptr(),
                    tmp.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    opts.as_ptr().cast(),
                )
                .into(),
                S::MountNamespace,
            )?;
            // The worker's Landlock ruleset may only name this tmpfs now that it exists.
            if let Some(ruleset) = p.landlock.last().filter(|_| p.private_tmp_access != 0) {
                let dir = libc::open(
                    tmp.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                check(dir.into(), S::MountNamespace)?;
                let attr = PathBeneathAttr {
                    allowed_access: p.private_tmp_access,
                    parent_fd: dir,
                };
                let rc = libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset.as_raw_fd(),
                    LANDLOCK_RULE_PATH_BENEATH,
                    &attr as *const PathBeneathAttr,
                    0,
                );
                libc::close(dir);
                check(rc, S::Landlock)?;
            }
        }
        // 6. rlimits (after the steps that open files: see the file header)
        for (resource, value) in &p.rlimits {
            let lim = libc::rlimit {
                rlim_cur: *value,
                rlim_max: *value,
            };
            check(libc::setrlimit(*resource, &lim).into(), S::Rlimits)?;
        }
        // 7. bounding + ambient capability sets (needs CAP_SETPCAP: before the uid switch)
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno() != libc::EINVAL {
                return Err((S::CapabilityBounding, errno()));
            }
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
            .into(),
            S::CapabilityBounding,
        )?;
        // 8. identity
        check(libc::setgroups(0, std::ptr::null()).into(), S::Identity)?;
        check(libc::setresgid(p.gid, p.gid, p.gid).into(), S::Identity)?;
        check(libc::setresuid(p.uid, p.uid, p.uid).into(), S::Identity)?;
        // 9. permitted/effective/inheritable all empty
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(), CapData::default()];
        check(
            libc::syscall(libc::SYS_capset, &header, data.as_ptr()),
            S::CapabilitySets,
        )?;
        // 10. cwd + umask as the tenant
        check(libc::chdir(p.cwd.as_ptr()).into(), S::Chdir)?;
        libc::umask(0o077);
        // 11. no_new_privs
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            S::NoNewPrivs,
        )?;
        // 12. Landlock layers
        for fd in &p.landlock {
            check(
                libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0),
                S::Landlock,
            )?;
        }
        // 13. seccomp, last
        for prog in &p.seccomp {
            if let Err(e) = seccompiler::apply_filter(prog) {
                let _ = e;
                return Err((S::Seccomp, errno()));
            }
        }
        // 14. LISTEN_PID = our pid, then exec
        if let Some(slot) = listen_pid {
            write_decimal(slot, libc::getpid());
        }
        libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        Err((S::Exec, errno()))
    }
}

/// Writes `n` in decimal at `dst` (which has room for [`LISTEN_PID_DIGITS`] bytes, already NUL-filled).
///
/// # Safety
/// `dst` must point to at least `LISTEN_PID_DIGITS` writable bytes.
unsafe fn write_decimal(dst: *mut u8, n: libc::pid_t) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut v = n.unsigned_abs();
    loop {
        digits[len] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: len ≤ 10 < LISTEN_PID_DIGITS, so every write is in bounds; the byte after stays NUL.
        unsafe { *dst.add(i) = digits[len - 1 - i] };
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `LANDLOCK_RULE_PATH_BENEATH` from `<linux/landlock.h>`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// `struct landlock_path_beneath_attr` (packed in the kernel UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A pidfd: names one process for its whole life (immune to pid reuse); readable once it has exited.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// `pidfd_open(pid)`. Open it *before* verifying a process by start time: the check then covers the process the
    /// fd refers to, with no reuse window.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes plain integers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `signal` to exactly this process (never to a later process reusing its pid).
    pub fn send_signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        // SAFETY: plain integers and a null siginfo, as documented for pidfd_send_signal.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<()>(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reaps the process if it is our exited child: `Ok(Some(status))`; `Ok(None)` while it runs; `Err(ECHILD)` when
    /// it is not our child (adopted from a previous supervisor), whose status is unknowable.
    pub fn try_wait(&self) -> io::Result<Option<WaitStatus>> {
        match waitid(
            Id::PIDFd(self.0.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(status) => Ok(Some(status)),
            Err(e) => Err(e.into()),
        }
    }
}

impl PidFd {
    /// Registers the pidfd with the tokio reactor (readable = exited). Must run inside a tokio runtime.
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<PidFd>> {
        // SAFETY: a PidFd owns its OwnedFd and never replaces it, so as_raw_fd() names the same open descriptor for
        // the whole life of the AsyncFd, as register_with_interest requires.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
