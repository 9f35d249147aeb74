//! Tenant A cannot read, signal, ptrace or reach tenant B: every layer of the worker sandbox, checked from inside it.
//!
//! Real processes under real uids: each tenant's worker is started through `supervisor::sandbox`, and the
//! `isolation-probe` binary is run inside the same sandbox (uid, caps, Landlock, seccomp) to attempt every
//! cross-tenant action. Also: memory and pids limits hold, and a neighbour's health latency stays flat meanwhile.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use supervisor::sandbox::{
    self, CgroupLayout, ConnectGuard, Identity, PortRange, ResourceLimits, Rlimits, SandboxSpec,
};

/// Worker ports used by these tests: the Landlock connect guard forbids exactly this range.
pub(crate) const TEST_WORKER_PORTS: (u16, u16) = (23000, 23999);

/// A root for test data that is NOT under `/tmp` (workers get a private `/tmp`), traversable by tenant uids.
pub(crate) fn data_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("iso-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o711)).unwrap();
    root
}

/// The binary a worker runs: the real `wirebot-worker` when built, else the probe in serve mode.
pub(crate) fn probe_bin() -> PathBuf {
    tests::bin_path("isolation-probe")
}

/// One tenant: its ids, user dir (0700, owned), runtime dir with a 0600 env file, and a port from the test range.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) name: String,
    pub(crate) id: Identity,
    pub(crate) user_dir: PathBuf,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) env_file: PathBuf,
    pub(crate) port: u16,
    pub(crate) listener: Option<TcpListener>,
}

pub(crate) fn tenant(root: &Path, name: &str, uid: u32) -> Tenant {
    let user_dir = root.join("users").join(name);
    let runtime_dir = root.join("run").join(name);
    for d in [&user_dir, &runtime_dir] {
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d.parent().unwrap(), fs::Permissions::from_mode(0o711)).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
    }
    let env_file = runtime_dir.join("gateway.env");
    {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&env_file)
            .unwrap();
        writeln!(f, "OPENAI_API_KEY=sk-{name}-secret").unwrap();
    }
    std::os::unix::fs::chown(&env_file, Some(uid), Some(uid)).unwrap();
    let secret = user_dir.join("secret.txt");
    fs::File::create(&secret).unwrap();
    std::os::unix::fs::chown(&secret, Some(uid), Some(uid)).unwrap();
    let (port, listener) = free_port();
    Tenant {
        name: name.to_owned(),
        id: Identity { uid, gid: uid },
        user_dir,
        runtime_dir,
        env_file,
        port,
        listener: Some(listener),
    }
}

/// A free port inside the test worker range, bound (listening) so nobody else takes it.
pub(crate) fn free_port() -> (u16, TcpListener) {
    let span = TEST_WORKER_PORTS.1 - TEST_WORKER_PORTS.0;
    let start = rand::random_range(0..span);
    for i in 0..span {
        let port = TEST_WORKER_PORTS.0 + (start + i) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return (port, l);
        }
    }
    panic!("no free port in {TEST_WORKER_PORTS:?}");
}

pub(crate) fn connect_guard() -> Arc<ConnectGuard> {
    static GUARD: std::sync::OnceLock<Arc<ConnectGuard>> = std::sync::OnceLock::new();
    GUARD
        .get_or_init(|| {
            let range = PortRange::new(TEST_WORKER_PORTS.0, TEST_WORKER_PORTS.1).unwrap();
            Arc::new(ConnectGuard::new(range).unwrap())
        })
        .clone()
}

/// An append-only log file owned by root (0600), the way the lifecycle opens worker logs.
pub(crate) fn log_file(path: &Path) -> OwnedFd {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .into()
}

/// The full sandbox for `t`, running `program args`, output to `log`, in cgroup `cgroup_name`.
pub(crate) fn spec_for(
    t: &Tenant,
    program: &Path,
    args: &[&str],
    log: &Path,
    cgroup_name: &str,
    limits: ResourceLimits,
    hand_over_socket: bool,
) -> SandboxSpec {
    let layout = CgroupLayout::detect().unwrap();
    // Unique per test root, so leftovers of an aborted run never collide.
    let tag = log
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let cgroup = layout
        .create(&format!("{tag}.{cgroup_name}"), &limits)
        .unwrap();
    let out = log_file(log);
    SandboxSpec {
        program: program.to_owned(),
        args: args.iter().map(OsString::from).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), t.user_dir.clone().into_os_string()),
        ],
        env_file: Some(t.env_file.clone()),
        identity: t.id,
        cwd: t.user_dir.clone(),
        rw_paths: vec![t.user_dir.clone(), t.runtime_dir.clone()],
        ro_paths: vec![],
        bind_port: Some(t.port),
        connect_guard: Some(connect_guard()),
        listen_socket: if hand_over_socket {
            t.listener
                .as_ref()
                .map(|l| OwnedFd::from(l.try_clone().unwrap()))
        } else {
            None
        },
        stderr: out.try_clone().unwrap(),
        stdout: out,
        cgroup: Some(cgroup),
        rlimits: Rlimits {
            nofile: 1024,
            nproc: 4096,
        },
        private_tmp_bytes: Some(16 << 20),
    }
}

/// Polls `log` until a line containing `needle` appears (deadline 10 s); returns that line.
pub(crate) fn wait_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(1);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = File::open(log) {
            f.read_to_string(&mut text).unwrap();
        }
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn status(pid: i32, key: &str) -> String {
    sandbox::procfs::status_field(pid, key)
        .unwrap()
        .unwrap_or_default()
}

#[test]
fn worker_runs_as_tenant_with_every_layer() {
    tests::require_root!();
    let root = data_root();
    let a = tenant(root.path(), "alpha", 61001);
    let log = root.path().join("alpha.log");
    let spec = spec_for(
        &a,
        &probe_bin(),
        &["--state-dir", a.user_dir.to_str().unwrap()],
        &log,
        "it-layers-alpha",
        ResourceLimits::default(),
        true,
    );
    let w = sandbox::spawn(spec).unwrap();
    let ready = wait_line(&log, "ready port=");
    assert_eq!(
        ready,
        format!("wirebot-worker ready port={} pid={}", a.port, w.pid),
        "LISTEN_PID must be the child's pid"
    );
    assert_eq!(status(w.pid, "Uid"), "61001\t61001\t61001\t61001");
    assert_eq!(status(w.pid, "Gid"), "61001\t61001\t61001\t61001");
    assert_eq!(status(w.pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status(w.pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status(w.pid, "NoNewPrivs"), "1");
    assert_eq!(status(w.pid, "Seccomp"), "2");
    let cg = w.cgroup.as_ref().unwrap();
    assert!(cg.contains(w.pid).unwrap(), "worker is in its own cgroup");
    let environ = fs::read(format!("/proc/{}/environ", w.pid)).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains(&format!("WIREBOT_ENV_FILE={}", a.env_file.display())));
    assert!(
        !environ.contains("sk-alpha-secret"),
        "the secret stays in the env file"
    );
    assert!(environ.contains(&format!("LISTEN_PID={}", w.pid)));
    cg.kill_all(Duration::from_secs(5)).unwrap();
    cg.remove().unwrap();
}

/// Waits (deadline 30 s) for a sandboxed process to exit and reaps it.
pub(crate) fn wait_exit(w: &sandbox::Spawned) -> nix::sys::wait::WaitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = w.pidfd.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "pid {} did not exit", w.pid);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn cleanup(w: &sandbox::Spawned) {
    if let Some(cg) = &w.cgroup {
        cg.kill_all(Duration::from_secs(5)).unwrap();
        let _ = w.pidfd.try_wait();
        cg.remove().unwrap();
    }
}

/// Runs the probe inside `t`'s sandbox with `args` and returns its JSON verdict.
fn probe_as(
    t: &Tenant,
    root: &Path,
    tag: &str,
    args: &[String],
) -> serde_json::Map<String, serde_json::Value> {
    let log = root.join(format!("probe-{tag}.log"));
    let mut all: Vec<&str> = vec!["--probe"];
    all.extend(args.iter().map(String::as_str));
    let spec = spec_for(
        t,
        &probe_bin(),
        &all,
        &log,
        &format!("it-probe-{tag}"),
        ResourceLimits::default(),
        false,
    );
    let w = sandbox::spawn(spec).unwrap();
    let status = wait_exit(&w);
    cleanup(&w);
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "probe {tag}: {status:?}"
    );
    let text = fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no verdict in {text}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn isolation_matrix_two_dedicated_tenants_and_the_shared_tenant() {
    tests::require_root!();
    let root = data_root();
    let tenants = [
        tenant(root.path(), "ann", 61011),
        tenant(root.path(), "bob", 61012),
        tenant(root.path(), "shared", 61100),
    ];
    // An allowed egress target outside the worker range (stands in for an LLM provider).
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    assert!(!(TEST_WORKER_PORTS.0..=TEST_WORKER_PORTS.1).contains(&outside_port));
    std::thread::spawn(move || {
        for s in outside.incoming() {
            drop(s)
        }
    });
    let workers: Vec<sandbox::Spawned> = tenants
        .iter()
        .map(|t| {
            let log = root.path().join(format!("{}.log", t.name));
            let args = ["--state-dir", t.user_dir.to_str().unwrap()];
            let spec = spec_for(
                t,
                &probe_bin(),
                &args,
                &log,
                &format!("it-matrix-{}", t.name),
                ResourceLimits::default(),
                true,
            );
            let w = sandbox::spawn(spec).unwrap();
            wait_line(&log, "ready port=");
            w
        })
        .collect();
    for (i, me) in tenants.iter().enumerate() {
        // Still: /proc/<worker>/status shows the tenant's uid and every layer.
        let pid = workers[i].pid;
        assert_eq!(
            status(pid, "Uid").split('\t').next().unwrap(),
            me.id.uid.to_string()
        );
        assert_eq!(status(pid, "CapEff"), "0000000000000000");
        assert_eq!(status(pid, "CapBnd"), "0000000000000000");
        assert_eq!(status(pid, "NoNewPrivs"), "1");
        assert_eq!(status(pid, "Seccomp"), "2");
        for (j, other) in tenants.iter().enumerate() {
            if i == j {
                continue;
            }
            let free_other_port = free_port().0;
            let args: Vec<String> = [
                ("--own-dir", me.user_dir.display().to_string()),
                ("--other-dir", other.user_dir.display().to_string()),
                ("--other-file", other.env_file.display().to_string()),
                (
                    "--other-log",
                    root.path()
                        .join(format!("{}.log", other.name))
                        .display()
                        .to_string(),
                ),
                ("--other-pid", workers[j].pid.to_string()),
                ("--other-port", other.port.to_string()),
                ("--allowed-port", outside_port.to_string()),
                ("--bind-port", free_other_port.to_string()),
            ]
            .into_iter()
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect();
            let v = probe_as(
                me,
                root.path(),
                &format!("{}-{}", me.name, other.name),
                &args,
            );
            let verdict = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or("missing")
                    .to_owned()
            };
            println!(
                "{} -> {}: {}",
                me.name,
                other.name,
                serde_json::to_string(&v).unwrap()
            );
            // Positive controls: the probe really runs and can do its own legitimate work.
            assert_eq!(verdict("write_own_dir"), "ok");
            assert_eq!(verdict("read_etc_passwd"), "ok");
            assert_eq!(verdict("write_private_tmp"), "ok");
            assert_eq!(verdict("connect_allowed_port"), "ok");
            // Every cross-tenant action fails.
            for k in [
                "list_other_dir",
                "write_other_dir",
                "read_other_file",
                "read_other_log",
                "kill0_other",
                "sigterm_other",
                "ptrace_attach_other",
                "read_other_environ",
                "read_other_mem",
                "connect_other_port",
                "bind_other_port",
                "mount_tmpfs",
                "unshare_user",
                "unshare_mount",
                "setuid_root",
            ] {
                assert_ne!(
                    verdict(k),
                    "ok",
                    "{} could {k} against {}",
                    me.name,
                    other.name
                );
                assert_ne!(verdict(k), "missing", "{k} not attempted");
            }
            assert_eq!(
                verdict("connect_other_port"),
                "EACCES",
                "Landlock refuses connect into the worker range"
            );
            assert_eq!(
                verdict("bind_other_port"),
                "EACCES",
                "Landlock allows binding only the own port"
            );
            assert_eq!(
                verdict("ptrace_attach_other"),
                "EPERM",
                "seccomp denies ptrace"
            );
            assert_eq!(verdict("unshare_user"), "EPERM", "seccomp denies unshare");
            let fds: u32 = verdict("fds_open").parse().unwrap();
            assert!(fds <= 5, "no supervisor fd leaked: {fds} open");
        }
    }
    for w in &workers {
        // The victims are unharmed: the SIGTERMs above never arrived.
        assert!(w.pidfd.try_wait().unwrap().is_none(), "pid {} died", w.pid);
        cleanup(w);
    }
}

/// p50/p99 of `n` health requests to `port`, in microseconds; every one must succeed.
fn health_latency(port: u16, n: usize) -> (u128, u128) {
    let mut times: Vec<u128> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            use std::io::Write;
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            assert!(body.starts_with("HTTP/1.1 200"), "{body}");
            t.elapsed().as_micros()
        })
        .collect();
    times.sort_unstable();
    (times[n / 2], times[n * 99 / 100])
}

#[test]
fn memory_and_pids_limits_hold_while_a_neighbour_stays_healthy() {
    tests::require_root!();
    let root = data_root();
    let calm = tenant(root.path(), "calm", 61021);
    let hog = tenant(root.path(), "hog", 61022);
    let bomber = tenant(root.path(), "bomber", 61023);
    let calm_log = root.path().join("calm.log");
    let calm_args = ["--state-dir", calm.user_dir.to_str().unwrap()];
    let calm_w = sandbox::spawn(spec_for(
        &calm,
        &probe_bin(),
        &calm_args,
        &calm_log,
        "it-limits-calm",
        ResourceLimits::default(),
        true,
    ))
    .unwrap();
    wait_line(&calm_log, "ready port=");
    let before = health_latency(calm.port, 200);

    let hog_log = root.path().join("hog.log");
    let mem = ResourceLimits {
        memory_bytes: Some(64 << 20),
        pids: Some(64),
        cpu_percent: Some(50),
    };
    let hog_args = ["--state-dir", hog.user_dir.to_str().unwrap(), "--alloc"];
    let hog_w = sandbox::spawn(spec_for(
        &hog,
        &probe_bin(),
        &hog_args,
        &hog_log,
        "it-limits-hog",
        mem,
        true,
    ))
    .unwrap();
    let bomb_log = root.path().join("bomber.log");
    let pids = ResourceLimits {
        memory_bytes: Some(256 << 20),
        pids: Some(32),
        cpu_percent: Some(50),
    };
    let bomb_args = [
        "--state-dir",
        bomber.user_dir.to_str().unwrap(),
        "--forkbomb",
    ];
    let bomb_w = sandbox::spawn(spec_for(
        &bomber,
        &probe_bin(),
        &bomb_args,
        &bomb_log,
        "it-limits-bomber",
        pids,
        true,
    ))
    .unwrap();
    let during = health_latency(calm.port, 200);

    let hog_status = wait_exit(&hog_w);
    assert_eq!(
        hog_status,
        nix::sys::wait::WaitStatus::Signaled(
            nix::unistd::Pid::from_raw(hog_w.pid),
            nix::sys::signal::Signal::SIGKILL,
            false
        ),
        "the unbounded allocator is killed by its own memory limit"
    );
    let hog_cg = hog_w.cgroup.as_ref().unwrap();
    assert!(hog_cg.oom_kills() >= 1, "the cgroup recorded the OOM kill");
    let verdict = wait_line(&bomb_log, "\"forked\"");
    let v: serde_json::Value = serde_json::from_str(&verdict).unwrap();
    let forked = v["forked"].as_u64().unwrap();
    assert_eq!(v["error"], "EAGAIN", "{verdict}");
    assert!(
        forked < 32,
        "the fork bomb stopped below pids.max=32 (forked {forked})"
    );
    assert!(bomb_w.cgroup.as_ref().unwrap().pids().unwrap().len() <= 32);
    let after = health_latency(calm.port, 200);
    println!(
        "neighbour health latency µs (p50/p99): before {before:?}, during alloc+forkbomb {during:?}, after {after:?}; fork bomb stopped at {forked}"
    );
    assert!(
        calm_w.pidfd.try_wait().unwrap().is_none(),
        "the neighbour is untouched"
    );
    for w in [&calm_w, &hog_w, &bomb_w] {
        cleanup(w);
    }
}

#[test]
fn spec_errors_are_precise() {
    tests::require_root!();
    let root = data_root();
    let t = tenant(root.path(), "val", 61031);
    let log = root.path().join("val.log");
    let mut spec = spec_for(
        &t,
        &probe_bin(),
        &[],
        &log,
        "it-validate",
        ResourceLimits::default(),
        false,
    );
    spec.env.push(("OPENAI_API_KEY".into(), "sk-x".into()));
    let cg = spec.cgroup.clone().unwrap();
    let err = sandbox::spawn(spec).unwrap_err().to_string();
    assert!(err.contains("OPENAI_API_KEY looks like a secret"), "{err}");
    let mut spec = spec_for(
        &t,
        &probe_bin(),
        &[],
        &log,
        "it-validate",
        ResourceLimits::default(),
        false,
    );
    spec.rw_paths.push("/tmp/elsewhere".into());
    let err = sandbox::spawn(spec).unwrap_err().to_string();
    assert!(err.contains("under /tmp"), "{err}");
    let mut spec = spec_for(
        &t,
        &probe_bin(),
        &[],
        &log,
        "it-validate",
        ResourceLimits::default(),
        false,
    );
    spec.cwd = root.path().join("users/missing");
    let err = sandbox::spawn(spec).unwrap_err();
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        chain.contains("step Chdir"),
        "the failing pre-exec step is named: {chain}"
    );
    cg.remove().unwrap();
}
