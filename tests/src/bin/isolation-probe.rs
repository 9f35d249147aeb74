//! A tiny program the isolation and lifecycle tests run INSIDE a worker sandbox, as the tenant.
//!
//! Modes (flags combine with `--state-dir <dir> [--port N]`, the `wirebot-worker` command line):
//! - serve (default): takes the listening socket from fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`=own pid) or binds `--port`,
//!   prints `wirebot-worker ready port=<p> pid=<pid>`, answers `GET /healthz` with 200, exits 0 on SIGTERM;
//! - `--ignore-term`: serve, but SIGTERM is ignored (only SIGKILL stops it);
//! - `--exit-after-ready N`: print the ready line, then exit with code N (a crash loop);
//! - `--alloc`: serve, and allocate + touch memory without bound (killed by the cgroup memory limit);
//! - `--forkbomb`: serve, and start `--park` children until fork fails; prints `{"forked":N,"error":"EAGAIN"}`;
//! - `--park`: block forever;
//! - `--probe …`: attempt every cross-tenant action, print ONE JSON line of outcomes (`"ok"` or the errno name), exit 0;
//! - `--bench-lifecycle --root <dir> --worker <bin> [--spawn 100] [--levels 200,500,1000]`: NOT sandboxed itself; acts
//!   as the supervisor (run as root): spawn-until-Ready p50/p95 through `supervisor::lifecycle` vs a plain fork/exec
//!   baseline of the same binary, then idle capacity (health p99) and supervisor RSS. Used by `tests/bench/lifecycle.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::time::Duration;

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn has(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
            None => format!("{:?}", e.kind()),
        },
    }
}

fn nix_outcome<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if has(&args, "--park") {
        loop {
            std::thread::park();
        }
    }
    if has(&args, "--bench-lifecycle") {
        return bench::run(&args);
    }
    if has(&args, "--probe") {
        probe(&args);
        return std::process::ExitCode::SUCCESS;
    }
    serve(&args)
}

/// The listening socket: fd 3 when handed over for us, else a fresh bind of `--port`.
fn listener(args: &[String]) -> TcpListener {
    let ours = std::env::var("LISTEN_FDS").ok().as_deref() == Some("1")
        && std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if ours {
        // The sandbox put a bound, listening TCP socket on fd 3 for this very process (LISTEN_PID checked).
        let fd: OwnedFd = take_fd3();
        return TcpListener::from(fd);
    }
    let port: u16 = arg_value(args, "--port")
        .map(|p| p.parse().unwrap())
        .unwrap_or(0);
    TcpListener::bind(("127.0.0.1", port)).unwrap()
}

#[allow(unsafe_code)]
fn take_fd3() -> OwnedFd {
    // SAFETY: LISTEN_FDS=1 with our own pid in LISTEN_PID means fd 3 is the listening socket handed to us, and
    // nothing else in this process owns it.
    unsafe { OwnedFd::from_raw_fd(3) }
}

fn serve(args: &[String]) -> std::process::ExitCode {
    let listener = listener(args);
    let port = listener.local_addr().unwrap().port();
    println!(
        "wirebot-worker ready port={port} pid={}",
        std::process::id()
    );
    std::io::stdout().flush().unwrap();
    if let Some(code) = arg_value(args, "--exit-after-ready") {
        return std::process::ExitCode::from(code.parse::<u8>().unwrap());
    }
    let ignore_term = has(args, "--ignore-term");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if has(args, "--alloc") {
        std::thread::spawn(alloc_forever);
    }
    if has(args, "--forkbomb") {
        std::thread::spawn(forkbomb);
    }
    rt.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_term {
                        eprintln!("probe: SIGTERM ignored");
                        continue;
                    }
                    eprintln!("probe: SIGTERM, exiting 0");
                    return;
                }
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    tokio::spawn(answer(stream));
                }
            }
        }
    });
    std::process::ExitCode::SUCCESS
}

async fn answer(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, body) = if head.starts_with("GET /healthz ") {
        ("200 OK", "ok")
    } else {
        ("404 Not Found", "not found")
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
}

fn alloc_forever() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        // Touch every page so the memory is really charged to the cgroup.
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        hoard.push(block);
    }
}

fn forkbomb() {
    let me = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    let error = loop {
        match std::process::Command::new(&me).arg("--park").spawn() {
            Ok(child) => children.push(child),
            Err(e) => break outcome::<()>(Err(e)),
        }
        if children.len() >= 10_000 {
            break "no limit hit".to_owned();
        }
    };
    eprintln!(
        "{}",
        serde_json::json!({ "forked": children.len(), "error": error })
    );
    // Keep the children: the cgroup stays full while the test measures the other tenants.
    loop {
        std::thread::park();
    }
}

fn probe(args: &[String]) {
    let mut out = BTreeMap::new();
    if let Some(dir) = arg_value(args, "--own-dir") {
        out.insert(
            "write_own_dir",
            outcome(std::fs::File::create(format!("{dir}/probe-was-here"))),
        );
    }
    out.insert("read_etc_passwd", outcome(std::fs::read("/etc/passwd")));
    out.insert(
        "write_private_tmp",
        outcome(std::fs::File::create("/tmp/probe")),
    );
    if let Some(dir) = arg_value(args, "--other-dir") {
        out.insert("list_other_dir", outcome(std::fs::read_dir(&dir)));
        out.insert(
            "write_other_dir",
            outcome(std::fs::File::create(format!("{dir}/intruder"))),
        );
    }
    if let Some(file) = arg_value(args, "--other-file") {
        out.insert("read_other_file", outcome(std::fs::read(&file)));
    }
    if let Some(file) = arg_value(args, "--other-log") {
        out.insert("read_other_log", outcome(std::fs::read(&file)));
    }
    if let Some(pid) = arg_value(args, "--other-pid") {
        let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
        out.insert(
            "kill0_other",
            nix_outcome(nix::sys::signal::kill(pid, None)),
        );
        out.insert(
            "sigterm_other",
            nix_outcome(nix::sys::signal::kill(
                pid,
                nix::sys::signal::Signal::SIGTERM,
            )),
        );
        out.insert(
            "ptrace_attach_other",
            nix_outcome(nix::sys::ptrace::attach(pid)),
        );
        out.insert(
            "read_other_environ",
            outcome(std::fs::read(format!("/proc/{pid}/environ"))),
        );
        out.insert(
            "read_other_mem",
            outcome(std::fs::File::open(format!("/proc/{pid}/mem"))),
        );
    }
    let connect = |port: u16| {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|mut s| {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b);
        })
    };
    if let Some(port) = arg_value(args, "--other-port") {
        out.insert(
            "connect_other_port",
            outcome(connect(port.parse().unwrap())),
        );
    }
    if let Some(port) = arg_value(args, "--allowed-port") {
        out.insert(
            "connect_allowed_port",
            outcome(connect(port.parse().unwrap())),
        );
    }
    if let Some(port) = arg_value(args, "--bind-port") {
        out.insert(
            "bind_other_port",
            outcome(TcpListener::bind((
                "127.0.0.1",
                port.parse::<u16>().unwrap(),
            ))),
        );
    }
    let tmp_target = "/tmp";
    out.insert(
        "mount_tmpfs",
        nix_outcome(nix::mount::mount(
            Some("tmpfs"),
            tmp_target,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )),
    );
    out.insert(
        "unshare_user",
        nix_outcome(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)),
    );
    out.insert(
        "unshare_mount",
        nix_outcome(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)),
    );
    out.insert(
        "setuid_root",
        nix_outcome(nix::unistd::setuid(nix::unistd::Uid::from_raw(0))),
    );
    out.insert(
        "fds_open",
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count().to_string())
            .unwrap_or_default(),
    );
    println!("{}", serde_json::to_string(&out).unwrap());
}

// Indices and counts here are < 2000 (ports, uids) and percentiles index small vectors: casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
mod bench {
    //! The lifecycle benchmark (see the file header).

    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{ExitCode, Stdio};
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use supervisor::lifecycle::{Manager, ManagerConfig, Policy, Runtime, WorkerSpec};
    use supervisor::sandbox::{Identity, PortRange, ResourceLimits, Rlimits};

    const FIRST_PORT: u16 = 24000;
    const BASE_PORT: u16 = 27000;
    const FIRST_UID: u32 = 62000;

    fn pct(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
                })
            })
            .unwrap_or(0)
    }

    fn tenant_spec(root: &Path, worker: &Path, i: usize) -> WorkerSpec {
        let uid = FIRST_UID + i as u32;
        let name = format!("b{i}");
        let user_dir = root.join("users").join(&name);
        let runtime_dir = root.join("run").join(&name);
        for d in [&user_dir, &runtime_dir] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
        }
        let env_file = runtime_dir.join("gateway.env");
        std::fs::File::create(&env_file).unwrap();
        std::os::unix::fs::chown(&env_file, Some(uid), Some(uid)).unwrap();
        WorkerSpec {
            user_id: name.parse().unwrap(),
            runtime: Runtime::Wirebot {
                program: worker.to_owned(),
                extra_args: vec![],
            },
            identity: Identity { uid, gid: uid },
            user_dir,
            runtime_dir,
            env_file,
            port: FIRST_PORT + i as u16,
            limits: ResourceLimits {
                memory_bytes: Some(256 << 20),
                pids: Some(64),
                cpu_percent: Some(100),
            },
            rlimits: Rlimits {
                nofile: 1024,
                nproc: 256,
            },
            extra_rw_paths: Vec::new(),
            start_timeout: None,
        }
    }

    fn summary(label: &str, ms: &mut [f64]) -> f64 {
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p50 = pct(ms, 0.5);
        println!(
            "{label}: n={} p50={p50:.2} ms p95={:.2} ms max={:.2} ms",
            ms.len(),
            pct(ms, 0.95),
            pct(ms, 1.0)
        );
        p50
    }

    /// Plain fork/exec of the same binary (no sandbox layers, root, binds its own port), until its ready line.
    fn baseline(root: &Path, worker: &Path, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let dir = root.join("baseline").join(format!("b{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let port = (BASE_PORT + i as u16).to_string();
                let t = Instant::now();
                let mut child = std::process::Command::new(worker)
                    .args(["--state-dir", dir.to_str().unwrap(), "--port", &port])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
                let ready = lines
                    .find(|l| l.as_ref().is_ok_and(|l| l.contains("ready port=")))
                    .is_some();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert!(ready, "baseline worker {i} printed no ready line");
                let _ = child.kill();
                let _ = child.wait();
                ms
            })
            .collect()
    }

    /// Cost of `sandbox::spawn` itself (fork → exec succeeded) for `/bin/true`, per layer left out.
    fn layer_costs(
        root: &Path,
        guard: std::sync::Arc<supervisor::sandbox::ConnectGuard>,
        allow: std::sync::Arc<supervisor::sandbox::ConnectGuard>,
    ) {
        use supervisor::sandbox::{CgroupLayout, SandboxSpec};
        let layout = CgroupLayout::detect().unwrap();
        let dir = root.join("users").join("layers");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(FIRST_UID + 1999), Some(FIRST_UID + 1999)).unwrap();
        let variants = [
            "all layers, connect guard = every port outside the worker range",
            "no connect guard",
            "no private /tmp",
            "no cgroup",
            "all layers, connect guard = allow-list 443,80,53",
        ];
        for (v, label) in variants.iter().enumerate() {
            let mut ms: Vec<f64> = (0..30)
                .map(|i| {
                    let log: std::os::fd::OwnedFd = std::fs::File::create(root.join("layers.log"))
                        .unwrap()
                        .into();
                    let t = Instant::now();
                    let cgroup = (v != 3).then(|| {
                        layout
                            .create(
                                &format!("bench-layers-{i}"),
                                &ResourceLimits {
                                    memory_bytes: Some(64 << 20),
                                    pids: Some(16),
                                    cpu_percent: Some(100),
                                },
                            )
                            .unwrap()
                    });
                    let spec = SandboxSpec {
                        program: PathBuf::from("/bin/true"),
                        args: vec![],
                        env: vec![],
                        env_file: None,
                        identity: Identity {
                            uid: FIRST_UID + 1999,
                            gid: FIRST_UID + 1999,
                        },
                        cwd: dir.clone(),
                        rw_paths: vec![dir.clone()],
                        ro_paths: vec![],
                        bind_port: None,
                        connect_guard: match v {
                            1 => None,
                            4 => Some(allow.clone()),
                            _ => Some(guard.clone()),
                        },
                        listen_socket: None,
                        stderr: log.try_clone().unwrap(),
                        stdout: log,
                        cgroup: cgroup.clone(),
                        rlimits: Rlimits {
                            nofile: 256,
                            nproc: 64,
                        },
                        private_tmp_bytes: (v != 2).then_some(16 << 20),
                    };
                    let w = supervisor::sandbox::spawn(spec).unwrap();
                    let elapsed = t.elapsed().as_secs_f64() * 1e3;
                    while w.pidfd.try_wait().unwrap().is_none() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if let Some(cg) = cgroup {
                        cg.remove().unwrap();
                    }
                    elapsed
                })
                .collect();
            summary(
                &format!("  sandbox::spawn(/bin/true), cgroup create included: {label}"),
                &mut ms,
            );
        }
    }

    async fn health_sweep(ports: &[u16]) -> (Vec<f64>, usize) {
        let results: Vec<Option<f64>> = futures_util::stream::iter(ports.iter().copied())
            .map(|port| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let t = Instant::now();
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .await
                    .ok()?;
                let mut head = [0u8; 12];
                s.read_exact(&mut head).await.ok()?;
                head.starts_with(b"HTTP/1.1 200")
                    .then(|| t.elapsed().as_secs_f64() * 1e3)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let failures = results.iter().filter(|r| r.is_none()).count();
        (results.into_iter().flatten().collect(), failures)
    }

    pub(super) fn run(args: &[String]) -> ExitCode {
        let root = PathBuf::from(super::arg_value(args, "--root").expect("--root"));
        let worker = PathBuf::from(super::arg_value(args, "--worker").expect("--worker"));
        let n: usize = super::arg_value(args, "--spawn")
            .map(|v| v.parse().unwrap())
            .unwrap_or(100);
        let levels: Vec<usize> = super::arg_value(args, "--levels")
            .unwrap_or_else(|| "200,500,1000".to_owned())
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
        for d in ["users", "run"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let max = levels.iter().copied().max().unwrap_or(0).max(n);
            let config = ManagerConfig {
                logs_dir: root.join("logs"),
                worker_ports: PortRange::new(FIRST_PORT, FIRST_PORT + 1999).unwrap(),
                egress_ports: Some(vec![443, 80, 53]),
                policy: Policy { health_interval: Duration::from_secs(10), ..Policy::default() },
                private_tmp_bytes: Some(16 << 20),
                stop_all_on_exit: true,
                cgroup_group: "bench".to_owned(),
            };
            let t = Instant::now();
            let (mgr, mut events) = Manager::new(config).unwrap();
            println!("manager setup (cgroup detect + Landlock connect guard): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
            let guard = std::sync::Arc::new(
                supervisor::sandbox::ConnectGuard::new(PortRange::new(FIRST_PORT, FIRST_PORT + 1999).unwrap()).unwrap(),
            );
            let allow = std::sync::Arc::new(
                supervisor::sandbox::ConnectGuard::allow_only(&[443, 80, 53], PortRange::new(FIRST_PORT, FIRST_PORT + 1999).unwrap())
                    .unwrap(),
            );
            let layer_root = root.clone();
            tokio::task::spawn_blocking(move || layer_costs(&layer_root, guard, allow)).await.unwrap();
            let specs: Vec<WorkerSpec> = (0..max).map(|i| tenant_spec(&root, &worker, i)).collect();
            let mut sandboxed = Vec::new();
            for s in &specs[..n] {
                mgr.register(s.clone()).await;
                let t = Instant::now();
                mgr.ensure_running(&s.user_id).await.unwrap();
                sandboxed.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let sp50 = summary("sandboxed spawn-until-Ready (supervisor::lifecycle, all layers, egress allow-list)", &mut sandboxed);
            let mut base = tokio::task::spawn_blocking({
                let (root, worker) = (root.clone(), worker.clone());
                move || baseline(&root, &worker, n)
            })
            .await
            .unwrap();
            let bp50 = summary("baseline plain fork/exec until ready line (no sandbox)", &mut base);
            println!("ratio sandboxed/baseline p50: {:.2}x", sp50 / bp50);
            let mut running = n;
            for level in levels {
                let mut more = Vec::new();
                for s in &specs[running..level.max(running)] {
                    mgr.register(s.clone()).await;
                    let t = Instant::now();
                    if let Err(e) = mgr.ensure_running(&s.user_id).await {
                        println!("start failed at {}: {e}", s.user_id);
                        break;
                    }
                    more.push(t.elapsed().as_secs_f64() * 1e3);
                }
                running = running.max(level.min(running + more.len()));
                if !more.is_empty() {
                    summary(&format!("  spawn-until-Ready while growing to {level}"), &mut more);
                }
                let ports: Vec<u16> = specs[..running].iter().map(|s| s.port).collect();
                let mut all = Vec::new();
                let mut failures = 0;
                for _ in 0..3 {
                    let (lat, f) = health_sweep(&ports).await;
                    all.extend(lat);
                    failures += f;
                }
                all.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let pids: Vec<u32> = mgr.list().await.iter().filter_map(|r| r.pid).map(|p| p as u32).collect();
                let workers_rss: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
                let sup_rss = rss_kib(std::process::id());
                let p99 = pct(&all, 0.99);
                println!(
                    "idle workers {running}: health p50={:.2} ms p99={p99:.2} ms max={:.2} ms failures={failures}; supervisor RSS {:.1} MiB; workers RSS total {:.0} MiB ({:.1} MiB each)",
                    pct(&all, 0.5),
                    pct(&all, 1.0),
                    sup_rss as f64 / 1024.0,
                    workers_rss as f64 / 1024.0,
                    workers_rss as f64 / 1024.0 / running.max(1) as f64
                );
                if p99 > 50.0 || failures > 0 || running < level {
                    println!("stopping the ramp: p99 {p99:.1} ms, {failures} failures, {running} running");
                    break;
                }
            }
            let t = Instant::now();
            mgr.shutdown().await;
            println!("stopped {running} workers in {:.1} s", t.elapsed().as_secs_f64());
            drain.abort();
        });
        ExitCode::SUCCESS
    }
}
