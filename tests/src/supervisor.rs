//! Harness for the real `wirebot` daemon and CLI: start a daemon on a temp dir (port 0 / per-instance ranges, ready
//! line read with a deadline, killed and reaped on drop), run CLI commands against it, call its admin API over the unix
//! socket, and peek at its registry read-only. Shared by every feature module (CLI, admin API, lifecycle, proxy…).
//!
//! ```text
//! let dir = tempfile::tempdir().unwrap();
//! let sup = Supervisor::start(&dir);
//! sup.cli(["user", "add", "alice", "--tier", "dedicated"]).ok();
//! let alice = sup.api("GET", "/v1/users/alice", None).ok_json();
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin_path;

/// How long a daemon may take to print its ready line, and a CLI command or API call to finish.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How to start a daemon, beyond the defaults `Supervisor::start` uses.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Config overrides as `("section.key", toml_literal)`, e.g. `("proxy.idle_stop_s", "30")`,
    /// `("tiers.dedicated.runtime", "\"clawdbot\"")`. A key without a dot is top-level. Later entries win.
    /// Applied when the dir has no `wirebot.toml` yet: a restart on the same dir keeps the first config.
    pub set: Vec<(String, String)>,
    /// Extra arguments after `serve` (e.g. `--stop-workers-on-exit`).
    pub args: Vec<String>,
    /// Run the daemon as this uid/gid (via `setpriv`, no supplementary groups) instead of the test's own identity;
    /// the temp dir is made traversable and its state dirs are given to that uid. Needs root.
    pub run_as: Option<(u32, u32)>,
    /// Extra environment for the daemon (the environment is otherwise cleared except PATH and `WIREBOT_LOG`).
    pub env: Vec<(String, String)>,
}

impl Options {
    /// Adds one config override (`key` = `"section.key"`, `value` = a TOML literal).
    pub fn set(mut self, key: &str, value: &str) -> Options {
        self.set.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds one argument after `serve`.
    pub fn arg(mut self, arg: &str) -> Options {
        self.args.push(arg.to_owned());
        self
    }
}

/// A running `wirebot serve`, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Supervisor {
    child: Option<Child>,
    root: PathBuf,
    options: Options,
    config_path: PathBuf,
    data_dir: PathBuf,
    runtime_dir: PathBuf,
    socket: PathBuf,
    ready: BTreeMap<String, String>,
    stderr: Arc<(Mutex<String>, Condvar)>,
    /// Kill the workers left under `<root>/data` on drop (off once `restart` handed them to a new daemon).
    cleanup: bool,
}

/// How many 400-port worker blocks fit in 10000..22999: below the kernel's ephemeral range (32768..) and the
/// isolation tests' fixed range (23000..23999). Daemons spawn real workers on these ports, so a block shared with a
/// concurrent test run means "address in use".
const PORT_BLOCKS: u32 = 32;

/// Distinct per-instance port/uid blocks, so concurrent tests (and concurrent test runs) rarely collide: a random
/// start per test process, then consecutive blocks.
fn instance_block() -> u32 {
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| rand::random::<u32>() % PORT_BLOCKS);
    (start + NEXT.fetch_add(1, Ordering::Relaxed)) % PORT_BLOCKS
}

/// Renders the harness config: defaults for a test (everything under `root`, loopback port 0) plus overrides.
fn render_config(root: &Path, options: &Options) -> String {
    let block = instance_block();
    let ports_first = 10_000 + block * 400;
    let uids_first = 200_000 + block * 2_000;
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        let (section, key) = key.rsplit_once('.').unwrap_or(("", key));
        sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value);
    };
    let quoted = |p: PathBuf| format!("{:?}", p.display().to_string());
    put("data_dir", quoted(root.join("data")));
    put("runtime_dir", quoted(root.join("run")));
    put("drain_timeout_ms", "5000".into());
    put("ports.first", ports_first.to_string());
    put("ports.last", (ports_first + 399).to_string());
    put("ports.spacing", "20".into());
    put("uids.first", uids_first.to_string());
    put("uids.last", (uids_first + 1_999).to_string());
    put("proxy.listen", "\"127.0.0.1:0\"".into());
    put("lifecycle.start_timeout_ms", "10000".into());
    put("lifecycle.stop_grace_ms", "2000".into());
    put("lifecycle.health_interval_ms", "1000".into());
    for (key, value) in &options.set {
        put(key, value.clone());
    }
    let mut text = String::from("# written by tests::supervisor\n");
    for (section, keys) in &sections {
        if !section.is_empty() {
            text.push_str(&format!("\n[{section}]\n"));
        }
        for (key, value) in keys {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text
}

/// Why a daemon did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit code if it exited, `None` if it was still running at the deadline (then it was killed).
    pub code: Option<i32>,
    pub stderr: String,
}

impl Supervisor {
    /// Starts a daemon whose whole state lives in `dir` (config `dir/wirebot.toml`, data `dir/data`, runtime `dir/run`).
    /// Starting again on the same dir reuses its config and state (e.g. to test re-adoption after a kill).
    pub fn start(dir: impl AsRef<Path>) -> Supervisor {
        Supervisor::start_with(dir, Options::default())
    }

    /// Like [`Supervisor::start`] with config overrides, extra args or another identity. Panics with the daemon's
    /// stderr if it does not become ready.
    pub fn start_with(dir: impl AsRef<Path>, options: Options) -> Supervisor {
        match Supervisor::try_start_with(dir, options) {
            Ok(sup) => sup,
            Err(failure) => panic!(
                "wirebot serve did not become ready (exit {:?}):\n{}",
                failure.code, failure.stderr
            ),
        }
    }

    /// Starts a daemon and waits for its ready line; returns the exit code and stderr if it fails instead.
    pub fn try_start_with(
        dir: impl AsRef<Path>,
        options: Options,
    ) -> Result<Supervisor, StartFailure> {
        let root = dir.as_ref().to_owned();
        let config_path = root.join("wirebot.toml");
        // Written once per dir: a restart on the same dir keeps the same ranges (ports persisted in the registry).
        if !config_path.exists() {
            write_file(&config_path, render_config(&root, &options).as_bytes());
        }
        let data_dir = root.join("data");
        let runtime_dir = root.join("run");
        if crate::is_root() {
            // Tenant workers must traverse the temp dir (0700 from tempfile) to reach their own state dirs.
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&root).unwrap().permissions().mode();
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
        }
        if let Some((uid, gid)) = options.run_as {
            give_dirs_to(&root, &[&data_dir, &runtime_dir], uid, gid);
        }

        let wirebot = bin_path("wirebot");
        let mut command = match options.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                    "--".into(),
                ]);
                c.arg(&wirebot);
                c
            }
            None => Command::new(&wirebot),
        };
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .args(&options.args)
            .current_dir(&root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "WIREBOT_LOG",
                std::env::var("WIREBOT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", wirebot.display()));

        let stderr = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let (stderr_done, stderr_closed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[wirebot] {line}");
                let (text, changed) = &*sink;
                let mut s = text.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
                changed.notify_all();
            }
            let _ = stderr_done.send(());
        });
        let (tx, rx) = mpsc::channel();
        let pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(pipe).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so the daemon never blocks on a full pipe.
            for _ in lines.map_while(Result::ok) {}
        });

        let first = rx.recv_timeout(DEADLINE).ok().flatten();
        let Some(line) = first.filter(|l| l.starts_with("wirebot ready ")) else {
            let _ = child.kill();
            let status = child.wait().ok();
            // Let the stderr reader reach EOF, which the exit just caused.
            let _ = stderr_closed.recv_timeout(Duration::from_secs(5));
            let text = stderr.0.lock().unwrap().clone();
            return Err(StartFailure {
                code: status.and_then(|s| s.code()),
                stderr: text,
            });
        };
        let ready: BTreeMap<String, String> = line
            .trim_start_matches("wirebot ready ")
            .split_whitespace()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let socket = PathBuf::from(&ready["admin"]);
        Ok(Supervisor {
            child: Some(child),
            root,
            options,
            config_path,
            data_dir,
            runtime_dir,
            socket,
            ready,
            stderr,
            cleanup: true,
        })
    }

    /// The daemon's pid (from the ready line; with `run_as` this is the daemon, not `setpriv`, which execs it).
    pub fn pid(&self) -> u32 {
        self.ready["pid"].parse().unwrap()
    }

    /// A `key=value` of the ready line (`admin`, `pid`, `admin_tcp`, and whatever listeners later add, e.g. `proxy`).
    pub fn ready(&self, key: &str) -> Option<&str> {
        self.ready.get(key).map(String::as_str)
    }

    /// A socket address announced in the ready line, e.g. `sup.addr("proxy")`. Panics if absent.
    pub fn addr(&self, key: &str) -> std::net::SocketAddr {
        let value = self
            .ready(key)
            .unwrap_or_else(|| panic!("ready line has no {key}=: {:?}", self.ready));
        value
            .parse()
            .unwrap_or_else(|e| panic!("{key}={value} is not an address: {e}"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `<data_dir>/users/<id>`.
    pub fn user_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("users").join(id)
    }

    /// Everything the daemon wrote to stderr so far (its tracing log).
    pub fn logs(&self) -> String {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits (up to [`DEADLINE`]) until the daemon's log contains `needle`; returns whether it did.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let (text, changed) = &*self.stderr;
        let end = Instant::now() + DEADLINE;
        let mut guard = text.lock().unwrap();
        loop {
            if guard.contains(needle) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Runs `wirebot --config <this daemon's config> <args>` and returns its output (never panics on failure; use
    /// `.ok()` / `.fails_with(code)`).
    pub fn cli<I, S>(&self, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cli_within(DEADLINE, args)
    }

    /// [`Supervisor::cli`] with another deadline (e.g. `user add` of a member whose worker is the Node-based Clawdbot).
    pub fn cli_within<I, S>(&self, deadline: Duration, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(bin_path("wirebot"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .current_dir(&self.root);
        run_cli(command, deadline)
    }

    /// One admin-API request over the unix socket: `method`, `path`, and an optional JSON body
    /// (sent as `application/json`).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> ApiResponse {
        match body {
            Some(body) => self.api_raw(
                method,
                path,
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            ),
            None => self.api_raw(method, path, &[], b""),
        }
    }

    /// An admin-API request with exact headers and body bytes (for malformed-input tests).
    pub fn api_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> ApiResponse {
        let stream = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()));
        http_exchange(stream, method, path, headers, body)
    }

    /// A read-only connection to the registry (`<data_dir>/wirebot.db`), for assertions.
    pub fn registry(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            self.data_dir.join("wirebot.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// `(id, tier)` of every registry row, ordered by id.
    pub fn registry_users(&self) -> Vec<(String, String)> {
        let conn = self.registry();
        let mut stmt = conn
            .prepare("SELECT id, tier FROM users ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// How many audit events of requests the registry holds: worker lifecycle transitions (`worker.*`, which arrive
    /// on their own schedule, e.g. a shard's first health check) are not counted.
    pub fn event_count(&self) -> i64 {
        self.registry()
            .query_row(
                "SELECT COUNT(*) FROM events WHERE action NOT LIKE 'worker.%'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Sends SIGTERM and waits (with a deadline) for the daemon to exit; returns its status. `logs()` stays readable.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().try_into().unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_with_deadline(&mut child, DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "wirebot did not exit within {DEADLINE:?} of SIGTERM:\n{}",
                self.logs()
            )
        })
    }

    /// One request through the daemon's edge proxy (`proxy=` of the ready line), `Connection: close`.
    pub fn proxy(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> ApiResponse {
        let stream = std::net::TcpStream::connect(self.addr("proxy")).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        http_exchange(stream, method, path, headers, b"")
    }

    /// SIGKILLs the daemon (no cleanup runs) and reaps it. `logs()` stays readable.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new daemon on the same dir and options after `kill9` (the test may change files in between).
    pub fn restart_after_kill(mut self) -> Supervisor {
        assert!(self.child.is_none(), "kill9 first");
        let root = self.root.clone();
        let mut options = self.options.clone();
        options.set.clear(); // the config file already holds them
        self.cleanup = false; // the new daemon re-adopts the workers
        Supervisor::start_with(root, options)
    }

    /// Stops this daemon with SIGTERM and starts a new one on the same dir with the same options.
    pub fn restart(mut self) -> Supervisor {
        let root = self.root.clone();
        let mut options = self.options.clone();
        options.set.clear(); // the config file already holds them
        let status = self.terminate();
        assert!(status.success(), "wirebot exited with {status} on SIGTERM");
        self.cleanup = false; // the new daemon re-adopts the workers
        Supervisor::start_with(root, options)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers outlive their daemon by design: end the ones this test's daemon started (their working directory
        // is their state dir under `<root>/data`), so they neither hold ports nor pile up across tests.
        if self.cleanup {
            kill_processes_under(&self.root.join("data"));
        }
    }
}

/// SIGKILLs every process whose working directory is under `root`.
fn kill_processes_under(root: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        let cwd = cwd.to_string_lossy();
        let cwd = cwd.strip_suffix(" (deleted)").unwrap_or(&cwd);
        if Path::new(cwd).starts_with(root) && pid != std::process::id() as i32 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5)); // polling a child's exit; not a readiness wait
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Makes `root` traversable and hands the daemon's state dirs to `uid:gid` (for `Options::run_as`).
fn give_dirs_to(root: &Path, dirs: &[&Path], uid: u32, gid: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut path = root.to_owned();
    // Every ancestor of the temp dir must be traversable by the unprivileged daemon.
    loop {
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o011))
                    .unwrap();
            }
        }
        if !path.pop() {
            break;
        }
    }
    for dir in dirs {
        std::fs::create_dir_all(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    }
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// Asserts exit 0 and returns self.
    #[track_caller]
    pub fn ok(&self) -> &CliOutput {
        assert_eq!(
            self.code(),
            0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit `code` and returns self.
    #[track_caller]
    pub fn fails_with(&self, code: i32) -> &CliOutput {
        assert_eq!(
            self.code(),
            code,
            "wrong exit code\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `wirebot <args>` with no daemon context (clean environment, no --config): for `config check`, `--help`,
/// `completions`, or the "no daemon" path.
pub fn wirebot<I, S>(args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(bin_path("wirebot"));
    command.args(args);
    run_cli(command, DEADLINE)
}

fn run_cli(mut command: Command, deadline: Duration) -> CliOutput {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_with_deadline(&mut child, deadline).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wirebot CLI did not finish within {deadline:?}: {command:?}")
    });
    CliOutput {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// A response from the admin API.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a 2xx and returns the JSON body.
    #[track_caller]
    pub fn ok_json(&self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "expected 2xx, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// Asserts an `application/problem+json` answer with `status` and returns the problem object.
    #[track_caller]
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "headers: {:?}",
            self.headers
        );
        let problem = self.json();
        assert_eq!(problem["status"], status, "{problem}");
        for key in ["type", "title", "detail"] {
            assert!(problem[key].is_string(), "problem without {key}: {problem}");
        }
        problem
    }
}

/// One HTTP/1.1 exchange with `Connection: close`, read to EOF (sync, so tests need no runtime).
pub fn http_exchange<S: std::io::Read + std::io::Write>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> ApiResponse {
    // `host: wirebot` unless the caller sends its own.
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        ""
    } else {
        "host: wirebot\r\n"
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\n{host}connection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer (and close) before reading a body it does not need: that is not a client error.
    match stream.write_all(&bytes).and_then(|()| stream.flush()) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => panic!("cannot send the request: {e}"),
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> ApiResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    ApiResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// One path of a [`tree`] snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    pub kind: NodeKind,
}

/// What a [`Node`] is, with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Other,
}

/// Snapshot of everything under `dir` (relative paths, `""` = `dir` itself), never following symlinks: for
/// "nothing changed" and "restored byte for byte" assertions.
pub fn tree(dir: &Path) -> BTreeMap<String, Node> {
    use std::os::unix::fs::MetadataExt as _;
    fn walk(base: &Path, path: &Path, out: &mut BTreeMap<String, Node>) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let kind = if meta.is_dir() {
            NodeKind::Dir
        } else if meta.is_file() {
            NodeKind::File(std::fs::read(path).unwrap())
        } else if meta.file_type().is_symlink() {
            NodeKind::Symlink(std::fs::read_link(path).unwrap())
        } else {
            NodeKind::Other
        };
        let rel = path.strip_prefix(base).unwrap().display().to_string();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        out.insert(
            rel,
            Node {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime_ns,
                kind,
            },
        );
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for entry in entries {
                walk(base, &entry, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
