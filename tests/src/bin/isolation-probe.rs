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
//! - `--probe …`: attempt every cross-tenant action, print ONE JSON line of outcomes (`"ok"` or the errno name), exit 0.
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
