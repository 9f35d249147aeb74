//! Harness for the offline WordPress 6.1.9 used by the webhook tests: runs `tests/wordpress/setup.sh` once (PHP, the
//! Debian `wordpress` tree, the SQLite integration plugin, cached under `.cache/`), installs a site with the Wirebot
//! plugin into a temp dir, serves it with `php -S 127.0.0.1:<port>`, and runs PHP snippets inside it. Also provides the
//! PyPI `standardwebhooks` oracle. Every "unavailable" answer carries the reason, so tests can skip with it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The download and venv cache shared by runs (`<root>/.cache`, git-ignored).
pub fn cache_dir() -> PathBuf {
    workspace_root().join(".cache")
}

/// A Python interpreter with PyPI `standardwebhooks` 1.1.0, installed into `.cache/h7-venv` on first use;
/// `None` when Python or PyPI is unavailable.
pub fn python_oracle() -> Option<PathBuf> {
    static ORACLE: OnceLock<Option<PathBuf>> = OnceLock::new();
    ORACLE
        .get_or_init(|| {
            let venv = cache_dir().join("h7-venv");
            let python = venv.join("bin/python");
            let works = |python: &Path| {
                Command::new(python)
                    .args(["-c", "import standardwebhooks"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if works(&python) {
                return Some(python);
            }
            let _ = std::fs::create_dir_all(cache_dir());
            let made = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success());
            let installed = made
                && Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "standardwebhooks==1.1.0"])
                    .status()
                    .is_ok_and(|s| s.success());
            (installed && works(&python)).then_some(python)
        })
        .clone()
}

/// The prepared WordPress tree (`setup.sh` output), or why it is unavailable. Runs setup once per process.
pub fn prepared() -> Result<&'static Prepared, String> {
    static PREPARED: OnceLock<Result<Prepared, String>> = OnceLock::new();
    PREPARED
        .get_or_init(|| prepare().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// Paths produced by `tests/wordpress/setup.sh`.
#[derive(Debug)]
pub struct Prepared {
    /// Unpacked WordPress 6.1.9 (read-only template; each site copies it).
    pub wordpress: PathBuf,
    /// The SQLite integration plugin directory.
    pub sqlite_plugin: PathBuf,
}

fn prepare() -> Result<Prepared> {
    let script = workspace_root().join("tests/wordpress/setup.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("WIREBOT_CACHE", cache_dir())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| PathBuf::from(v.trim())))
            .with_context(|| format!("setup.sh printed no {key}"))
    };
    Ok(Prepared {
        wordpress: field("WORDPRESS=")?,
        sqlite_plugin: field("SQLITE_PLUGIN=")?,
    })
}

/// One installed WordPress site in a temp dir, served by `php -S` on a loopback port; killed and reaped on drop.
#[derive(Debug)]
pub struct WordPress {
    pub root: PathBuf,
    pub url: String,
    server: Child,
    _dir: tempfile::TempDir,
}

impl WordPress {
    /// Installs a site with the Wirebot plugin active and configured to deliver to `receiver_url` signed with `secret`.
    pub fn install(receiver_url: &str, secret: &str) -> Result<WordPress> {
        let prepared = prepared().map_err(anyhow::Error::msg)?;
        // On tmpfs when there is one: WordPress on SQLite commits every statement, and ~650 fsyncs on disk make an
        // install take seconds instead of under one.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let root = dir.path().join("site");
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let status = Command::new("bash")
            .arg(workspace_root().join("tests/wordpress/install-site.sh"))
            .args([&prepared.wordpress, &prepared.sqlite_plugin, &root])
            .arg(workspace_root().join("deploy/wordpress/wirebot"))
            .arg(&url)
            .status()
            .context("running install-site.sh")?;
        if !status.success() {
            bail!("install-site.sh failed");
        }
        let server = Command::new("php")
            .args(["-S", &format!("127.0.0.1:{port}"), "-t"])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting php -S")?;
        let mut site = WordPress {
            root,
            url,
            server,
            _dir: dir,
        };
        site.wait_listening(port)?;
        site.php(&format!(
            "wirebot_test_configure({}, {});",
            php_string(receiver_url),
            php_string(secret)
        ))?;
        Ok(site)
    }

    fn wait_listening(&mut self, port: u16) -> Result<()> {
        // php -S prints "Development Server ... started" on stderr once it listens.
        let stderr = self.server.stderr.take().context("php -S stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) if line.contains("started") => {
                    // Keep draining stderr so php never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return Ok(());
                }
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
        bail!("php -S on port {port} did not report it was listening")
    }

    /// Runs due cron events the way production does (DISABLE_WP_CRON + a request to wp-cron.php); returns the HTTP status.
    pub fn run_cron(&self) -> Result<u16> {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(stream, "GET /wp-cron.php HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("wp-cron.php answered no HTTP status")
    }

    /// The plugin's outbox rows (without bodies), oldest first.
    pub fn outbox(&self) -> Result<Vec<serde_json::Value>> {
        self.php("wirebot_test_outbox();")?
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).context("outbox row"))
            .collect()
    }

    /// Runs a PHP snippet with WordPress loaded (wp-load.php) and the test helpers; returns its stdout.
    pub fn php(&self, code: &str) -> Result<String> {
        let script = format!(
            "<?php\nerror_reporting(E_ALL & ~E_DEPRECATED);\n$_SERVER['HTTP_HOST'] = '{host}';\nrequire '{root}/wp-load.php';\nrequire_once '{helpers}';\n{code}\n",
            host = self.url.trim_start_matches("http://"),
            root = self.root.display(),
            helpers = workspace_root()
                .join("tests/wordpress/helpers.php")
                .display(),
        );
        let output = Command::new("php")
            .args(["-d", "display_errors=stderr"])
            .arg("-r")
            .arg(script.trim_start_matches("<?php\n"))
            .output()?;
        if !output.status.success() {
            bail!(
                "php failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for WordPress {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A PHP single-quoted string literal.
pub fn php_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
