//! The Landlock rulesets and seccomp filters a worker is confined by, all built in the parent before `fork`.
//!
//! Network choice (Landlock rules are per port, and `ConnectTcp` rules are an allow-list): a worker's own ruleset
//! handles `BindTcp` (only its own port is allowed); a *separate* Landlock layer, the [`ConnectGuard`], handles
//! `ConnectTcp` and allows every port outside the worker port range. That layer holds ~65 k rules, so it is built once
//! per supervisor and its ruleset fd is reused for every spawn (Landlock layers stack: an access must pass all of
//! them). Net effect: a worker can reach LLM providers and DNS-over-TCP on any port, but no other worker's port.
//! That completeness costs ~60 ms per spawn (the kernel copies the ~63.5 k rules into each new domain), so
//! [`ConnectGuard::allow_only`] offers the fast alternative: an explicit egress allow-list (443, 80, 53, provider
//! ports), which refuses the worker range too and is stricter egress besides.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::Error;
use super::spec::{DEVICE_RW_PATHS, PortRange, SYSTEM_RO_PATHS, SandboxSpec};

/// Filesystem rights are pinned to ABI 5 (adds `IoctlDev`), scopes to ABI 6 (signals, abstract unix sockets): newer
/// rights are added here deliberately after testing, never implicitly.
const FS_ABI: ABI = ABI::V5;
const SCOPE_ABI: ABI = ABI::V6;

/// A Landlock layer refusing TCP connect to the worker port range. Build once, share across spawns.
#[derive(Debug)]
pub struct ConnectGuard {
    fd: Option<OwnedFd>,
    forbidden: PortRange,
}

impl ConnectGuard {
    /// Allows `ConnectTcp` to every port except `forbidden`: one rule per port (~63.5 k), built once (~70 ms). Complete,
    /// but the kernel copies every rule into each new worker's Landlock domain: ~60 ms per spawn (measured).
    pub fn new(forbidden: PortRange) -> Result<ConnectGuard, Error> {
        let allowed = (1..forbidden.first).chain(forbidden.last.saturating_add(1)..=u16::MAX);
        ConnectGuard::build(allowed.filter(|p| !forbidden.contains(*p)), forbidden)
    }

    /// Allows `ConnectTcp` only to `ports` (e.g. 443, 80, 53 and the configured LLM provider ports); everything else,
    /// including the whole worker range, is refused. A handful of rules: no measurable spawn cost. A port inside
    /// `forbidden` is an error.
    pub fn allow_only(ports: &[u16], forbidden: PortRange) -> Result<ConnectGuard, Error> {
        if let Some(p) = ports.iter().find(|p| forbidden.contains(**p)) {
            return Err(Error::InvalidSpec {
                field: "egress ports",
                reason: format!(
                    "{p} is inside the worker port range {}-{}",
                    forbidden.first, forbidden.last
                ),
            });
        }
        ConnectGuard::build(ports.iter().copied(), forbidden)
    }

    fn build(
        allowed: impl Iterator<Item = u16>,
        forbidden: PortRange,
    ) -> Result<ConnectGuard, Error> {
        let ll = |op| move |source| Error::Landlock { op, source };
        let mut ruleset = Ruleset::default()
            .handle_access(AccessNet::ConnectTcp)
            .map_err(ll("handle ConnectTcp"))?
            .create()
            .map_err(ll("create the connect ruleset"))?;
        for port in allowed {
            (&mut ruleset)
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(ll("add a connect rule"))?;
        }
        Ok(ConnectGuard {
            fd: ruleset.into(),
            forbidden,
        })
    }

    /// The port range no worker may connect to.
    pub fn forbidden(&self) -> PortRange {
        self.forbidden
    }

    /// The ruleset fd (`None` when the kernel has no Landlock network support).
    pub(super) fn fd(&self) -> Option<&OwnedFd> {
        self.fd.as_ref()
    }
}

/// The worker's own Landlock layer: read-only system paths + program dir + `ro_paths`, read-write `rw_paths` and the
/// private `/tmp`, bind only `bind_port`, and scoped signals / abstract unix sockets (it cannot signal anything outside
/// its own sandbox even where uids would allow it, e.g. two shared-tier workers under one uid).
pub(super) fn worker_ruleset(spec: &SandboxSpec) -> Result<Option<OwnedFd>, Error> {
    let ll = |op| move |source| Error::Landlock { op, source };
    let mut ruleset: RulesetCreated = Ruleset::default()
        .handle_access(AccessFs::from_all(FS_ABI))
        .map_err(ll("handle filesystem access"))?
        .handle_access(AccessNet::BindTcp)
        .map_err(ll("handle BindTcp"))?
        .scope(Scope::from_all(SCOPE_ABI))
        .map_err(ll("scope signals and abstract sockets"))?
        .create()
        .map_err(ll("create the worker ruleset"))?;
    let mut ro: Vec<PathBuf> = SYSTEM_RO_PATHS.iter().map(PathBuf::from).collect();
    ro.extend(spec.program_dir().map(Path::to_owned));
    ro.extend(spec.ro_paths.iter().cloned());
    let mut rw: Vec<PathBuf> = spec.rw_paths.clone();
    rw.extend(DEVICE_RW_PATHS.iter().map(PathBuf::from));
    // The private /tmp is a tmpfs mounted in the child: its rule is added there, after the mount (a rule made
    // here would name the host's /tmp inode, hidden under the mount). See `private_tmp_access`.
    let existing =
        |paths: Vec<PathBuf>| paths.into_iter().filter(|p| p.exists()).collect::<Vec<_>>();
    for rule in path_beneath_rules(existing(ro), AccessFs::from_read(FS_ABI)) {
        (&mut ruleset)
            .add_rule(rule.map_err(ll("open a read-only path"))?)
            .map_err(ll("add a read-only rule"))?;
    }
    for rule in path_beneath_rules(existing(rw), AccessFs::from_all(FS_ABI)) {
        (&mut ruleset)
            .add_rule(rule.map_err(ll("open a read-write path"))?)
            .map_err(ll("add a read-write rule"))?;
    }
    if let Some(port) = spec.bind_port {
        (&mut ruleset)
            .add_rule(NetPort::new(port, AccessNet::BindTcp))
            .map_err(ll("add the bind rule"))?;
    }
    Ok(ruleset.into())
}

/// The access rights the child grants on its freshly mounted private `/tmp` (all filesystem rights this ruleset
/// handles).
pub(super) fn private_tmp_access() -> u64 {
    AccessFs::from_all(FS_ABI).bits()
}

/// Syscalls a worker never needs and that would let it escape, spy on, or disturb others. Denied with `EPERM`.
fn denied_syscalls() -> Vec<i64> {
    vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_perf_event_open,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_settimeofday,
        libc::SYS_adjtimex,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_vhangup,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_ioperm,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_uselib,
    ]
}

/// `clone` flags that create namespaces: refused like `unshare`, since a new user namespace is the usual first step
/// of a kernel exploit and unprivileged user namespaces are enabled on this kernel.
const NAMESPACE_CLONE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The seccomp programs, applied last in the child: (1) the deny list + namespace-creating `clone` → `EPERM`;
/// (2) `clone3` → `ENOSYS` (its flags sit behind a pointer seccomp cannot read; libc then falls back to `clone`,
/// whose flags filter (1) checks). Anything else, including syscalls of a foreign architecture, is decided by
/// seccompiler's arch check (foreign arch → kill).
pub(super) fn seccomp_programs() -> Result<Vec<BpfProgram>, Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(Error::Seccomp)?;
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_CLONE_FLAGS {
        let flag = u64::from(flag.unsigned_abs());
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(Error::Seccomp)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(Error::Seccomp)?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let eperm = u32::try_from(libc::EPERM).unwrap_or(1);
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(eperm),
        arch,
    )
    .map_err(Error::Seccomp)?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(enosys),
        arch,
    )
    .map_err(Error::Seccomp)?;
    Ok(vec![
        deny.try_into().map_err(Error::Seccomp)?,
        clone3.try_into().map_err(Error::Seccomp)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_programs_compile() {
        let progs = seccomp_programs().unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
    }
}
