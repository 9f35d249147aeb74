//! `wirebot serve`: prepares state (dirs, lock, registry), binds the listeners, announces readiness (stdout ready line,
//! sd-notify), serves until SIGTERM/SIGINT, then drains under a timeout. Owns the shared [`App`] state.
//!
//! The order is the runbook: the config was loaded and checked by the caller before anything here runs; [`prepare`]
//! touches the disk; [`bind`] opens sockets; [`run`] serves until the shutdown token fires.
//!
//! The parts wired in here:
//! - the worker lifecycle [`Manager`] is a field of [`App`] (only when running as root: workers need their own uids
//!   and cgroups); [`serve`] re-adopts recorded workers before the ready line, [`run`] records every transition and,
//!   with `--stop-workers-on-exit`, stops every worker on shutdown (by default workers outlive the daemon);
//! - the edge proxy gets its listener in [`Listeners`] (announced as `proxy=<addr>`), its route table in [`App`]
//!   (rebuilt from the registry on every member change, see `routes.rs`), and its wake / idle-stop channels are
//!   answered by the manager (see `workers.rs`); `GET /metrics` on the admin listener renders its metrics;
//! - with `[webhooks] secrets_file`, the signed WordPress receiver is mounted at `POST /v1/webhooks/wordpress` on
//!   the admin listeners (and served alone on `[webhooks] listen`), feeding the reconciler (`reconcile.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use provisioning::{Layout, Secret, UserId};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, ConfigErrors, UidRange};
use crate::error::Error;
use crate::lifecycle::{LifecycleEvent, Manager};
use crate::proxy::{ProxyMetrics, RouteTableHandle, UpstreamState};
use crate::registry::Registry;

/// How `wirebot serve` was asked to run, beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Stop every worker when the daemon exits (default: workers outlive the daemon and are re-adopted).
    pub stop_workers_on_exit: bool,
}

/// Whether tenants get their own uids (the daemon runs as root) or everything belongs to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenancy {
    /// Running as root: each tenant gets a uid/gid from this range.
    PerTenantUids(UidRange),
    /// Not root: every file and process belongs to the daemon's own uid.
    CallerOwned,
}

impl Tenancy {
    /// The uid range to allocate from, if any.
    pub fn uids(self) -> Option<UidRange> {
        match self {
            Tenancy::PerTenantUids(range) => Some(range),
            Tenancy::CallerOwned => None,
        }
    }
}

/// State shared by every request handler and background task. Immutable config, cloneable handles; no per-request
/// state. Built once by [`prepare`].
#[derive(Debug)]
pub struct App {
    /// The checked config, with `data_dir`, `runtime_dir` and `admin.socket` made absolute.
    pub config: Arc<Config>,
    /// The single source of truth.
    pub registry: Registry,
    /// Paths of per-user state (`<data_dir>/users/<id>`, `<runtime_dir>/users/<id>`, archives).
    pub layout: Layout,
    pub tenancy: Tenancy,
    pub options: ServeOptions,
    pub started_at: Instant,
    /// Fires when the daemon starts shutting down; background tasks select on it.
    pub shutdown: CancellationToken,
    /// Every background task is spawned on this tracker so shutdown can wait for it (no detached tasks).
    pub tasks: TaskTracker,
    /// Members with a create/update/rotate/removal in flight (one at a time per member).
    pub busy: crate::users::Busy,
    /// The worker lifecycle manager; `None` when the daemon is not root (no tenant uids, no cgroups: no workers).
    pub workers: Option<Manager>,
    /// The `wirebot-worker` executable dedicated workers run.
    pub worker_program: PathBuf,
    /// Transitions of every worker, taken once by [`run`]'s recorder task.
    pub worker_events: Mutex<Option<mpsc::UnboundedReceiver<LifecycleEvent>>>,
    /// The edge proxy's live route table.
    pub routes: Arc<RouteTableHandle>,
    /// The last known upstream of each worker; see `routes.rs` for the locking rule.
    pub upstreams: Mutex<HashMap<UserId, UpstreamState>>,
    /// The edge proxy's Prometheus metrics (`GET /metrics` on the admin listener).
    pub metrics: Arc<ProxyMetrics>,
    /// Shard internal tokens (read from or written to each shard's `clawdbot.json`), see `shared.rs`.
    pub shard_tokens: Mutex<HashMap<u32, provisioning::Secret>>,
    /// Serialises shard agent-list changes (placement and config rewrite) across members; the reload that applies
    /// them is awaited outside it, so one reload can serve every change queued behind it.
    pub shard_lock: tokio::sync::Mutex<()>,
    /// The hash of the `clawdbot.json` last written per shard: a shard reporting it has applied every earlier write.
    pub shard_hashes: Mutex<HashMap<u32, String>>,
    /// The webhook receiver's state, when `[webhooks] secrets_file` is configured.
    pub webhooks: Option<crate::webhook::WebhookState>,
    /// The reconciler's end of the webhook channel and the store, taken once by [`run`].
    pub reconcile: Mutex<Option<ReconcileInput>>,
    /// Holds the exclusive lock on `<data_dir>/wirebot.lock` for the daemon's lifetime.
    _lock: Flock<File>,
}

/// What the reconciler task consumes.
#[derive(Debug)]
pub struct ReconcileInput {
    pub store: Arc<crate::webhook::Store>,
    pub requests: mpsc::Receiver<crate::webhook::ReconcileRequest>,
}

/// The sockets the daemon serves, bound before readiness is announced.
#[derive(Debug)]
pub struct Listeners {
    /// The admin API on `<runtime_dir>/admin.sock` (0600).
    pub admin_unix: UnixListener,
    pub admin_socket: PathBuf,
    /// The optional loopback TCP admin listener and the bearer token it requires.
    pub admin_tcp: Option<(TcpListener, Secret)>,
    /// The member-facing edge proxy listener (`[proxy] listen`).
    pub proxy: TcpListener,
    /// The webhook-only listener (`[webhooks] listen`), if configured.
    pub webhooks: Option<TcpListener>,
    // PLUG (issue 6, webhooks): `pub webhooks: Option<TcpListener>` bound on `config.webhooks.listen`.
}

impl Listeners {
    /// The one ready line tests and operators read: `wirebot ready admin=<socket> pid=<pid> [admin_tcp=<addr>]`.
    /// Later listeners append their own `key=addr` pairs.
    pub fn ready_line(&self) -> String {
        let mut line = format!(
            "wirebot ready admin={} pid={}",
            self.admin_socket.display(),
            std::process::id()
        );
        if let Some((listener, _)) = &self.admin_tcp
            && let Ok(addr) = listener.local_addr()
        {
            line.push_str(&format!(" admin_tcp={addr}"));
        }
        if let Ok(addr) = self.proxy.local_addr() {
            line.push_str(&format!(" proxy={addr}"));
        }
        if let Some(listener) = &self.webhooks
            && let Ok(addr) = listener.local_addr()
        {
            line.push_str(&format!(" webhooks={addr}"));
        }
        line
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

fn config_error(key: &str, message: String) -> Error {
    Error::Config(ConfigErrors {
        source_name: "wirebot.toml".into(),
        errors: vec![ConfigError::new(key, message)],
    })
}

/// Creates a private directory (0700) and its parents; fixes the mode of an existing one.
fn private_dir(path: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create directory", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("set the mode of", path))
}

/// Workers run as their tenant's uid and must reach `<dir>/users/<id>`: every ancestor needs the search bit for
/// others. A 0700 home directory (e.g. `/root` with the embedded default) fails here, with what to do, instead of
/// every worker failing to start.
fn check_traversable(key: &str, dir: &Path) -> Result<(), Error> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(config_error(
                key,
                format!(
                    "{} is inside {} (mode {:o}), which tenant workers cannot traverse; \
                     use a {key} elsewhere (e.g. /var/lib/wirebot) or `chmod o+x {}`",
                    dir.display(),
                    ancestor.display(),
                    meta.permissions().mode() & 0o7777,
                    ancestor.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Makes the config's paths absolute (relative to the working directory), creates `data_dir` and `runtime_dir` (0700),
/// takes the daemon lock, and opens the registry.
pub fn prepare(mut config: Config, options: ServeOptions) -> Result<App, Error> {
    // Everything we create is private to the daemon's uid unless a mode says otherwise (tenant trees are chowned).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for path in [
        &mut config.data_dir,
        &mut config.runtime_dir,
        &mut config.admin.socket,
    ] {
        // Relative to the working directory, `.` components dropped (`std::path::absolute` resolves no symlinks).
        let absolute = std::path::absolute(&*path).map_err(io_err("make absolute", path))?;
        *path = absolute;
    }
    private_dir(&config.data_dir)?;
    private_dir(&config.runtime_dir)?;
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        // Tenants must traverse (not list) the data and runtime dirs to reach their own `users/<id>` dirs.
        for dir in [&config.data_dir, &config.runtime_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io_err("set the mode of", dir))?;
        }
        for (key, dir) in [
            ("data_dir", &config.data_dir),
            ("runtime_dir", &config.runtime_dir),
        ] {
            check_traversable(key, dir)?;
        }
    }
    // Never chmod a socket directory we did not create (it could be /tmp).
    if let Some(parent) = config.admin.socket.parent()
        && !parent.exists()
    {
        private_dir(parent)?;
    }

    let lock_path = config.data_dir.join("wirebot.lock");
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open the lock file", &lock_path))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        Error::AlreadyRunning {
            detail: format!("{} is locked ({errno})", lock_path.display()),
        }
    })?;

    let registry = Registry::open(&config.data_dir.join("wirebot.db"))?;
    let tenancy = if root {
        Tenancy::PerTenantUids(config.uids)
    } else {
        Tenancy::CallerOwned
    };
    let layout = Layout::new(config.data_dir.clone(), config.runtime_dir.clone());
    let worker_program = crate::workers::worker_program(&config)?;
    let (workers, worker_events) = if root {
        let manager_config = crate::workers::manager_config(&config, options.stop_workers_on_exit);
        let (manager, events) =
            Manager::new(manager_config).map_err(|source| Error::WorkerSetup { source })?;
        (Some(manager), Some(events))
    } else {
        tracing::warn!(
            "not running as root: dedicated members get no worker (no tenant uids, no cgroups)"
        );
        (None, None)
    };
    let routes = RouteTableHandle::for_config(Vec::new(), &config.proxy)
        .map_err(|source| Error::Routes { source })?;
    let shutdown = CancellationToken::new();
    let (webhooks, reconcile) = match &config.webhooks.secrets_file {
        None => (None, None),
        Some(path) => {
            let sites = crate::webhook::load_secrets(path)
                .map_err(|e| config_error("webhooks.secrets_file", e.to_string()))?;
            let store = Arc::new(
                crate::webhook::Store::open(&config.data_dir.join("wirebot.db"))
                    .map_err(|source| Error::Webhook { source })?,
            );
            let (tx, rx) = mpsc::channel(1024);
            let state =
                crate::webhook::WebhookState::new(store.clone(), sites, tx, shutdown.clone());
            (
                Some(state),
                Some(ReconcileInput {
                    store,
                    requests: rx,
                }),
            )
        }
    };
    let app = App {
        config: Arc::new(config),
        registry,
        layout,
        tenancy,
        options,
        started_at: Instant::now(),
        shutdown,
        tasks: TaskTracker::new(),
        busy: crate::users::Busy::default(),
        workers,
        worker_program,
        worker_events: Mutex::new(worker_events),
        routes: Arc::new(routes),
        upstreams: Mutex::new(HashMap::new()),
        metrics: Arc::new(ProxyMetrics::new()),
        shard_tokens: Mutex::new(HashMap::new()),
        shard_lock: tokio::sync::Mutex::new(()),
        shard_hashes: Mutex::new(HashMap::new()),
        webhooks,
        reconcile: Mutex::new(reconcile),
        _lock: lock,
    };
    crate::users::recover_interrupted_creates(&app)?;
    Ok(app)
}

/// Binds the admin socket (0600) and the optional TCP admin listener.
///
/// A socket file left by a dead daemon is removed; one that still answers means another daemon is serving it, and we
/// refuse to start (the lock in [`prepare`] normally catches that first, e.g. unless two configs share a socket).
pub async fn bind(config: &Config) -> Result<Listeners, Error> {
    let socket = &config.admin.socket;
    if std::fs::symlink_metadata(socket).is_ok() {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(_) => {
                return Err(Error::AlreadyRunning {
                    detail: format!("a daemon answers on {}", socket.display()),
                });
            }
            Err(_) => {
                tracing::info!(path = %socket.display(), "removing a stale admin socket");
                std::fs::remove_file(socket).map_err(io_err("remove the stale socket", socket))?;
            }
        }
    }
    // Bind under a restrictive umask-equivalent: create, then chmod before announcing anything. The parent directory
    // is 0700, so nobody else can reach the socket in between.
    let admin_unix = UnixListener::bind(socket).map_err(io_err("bind the admin socket", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("set the mode of", socket))?;
    tracing::info!(path = %socket.display(), "admin API listening on the unix socket");

    let admin_tcp = match (config.admin.tcp, &config.admin.token_file) {
        (Some(addr), Some(token_file)) => {
            let token = read_token_file(token_file)?;
            let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
                op: "bind the admin TCP listener on",
                path: PathBuf::from(addr.to_string()),
                source,
            })?;
            let bound: Option<SocketAddr> = listener.local_addr().ok();
            tracing::info!(addr = ?bound, "admin API listening on loopback TCP (bearer token required)");
            Some((listener, token))
        }
        _ => None,
    };
    let proxy = TcpListener::bind(config.proxy.listen)
        .await
        .map_err(|source| Error::Io {
            op: "bind the proxy listener on",
            path: PathBuf::from(config.proxy.listen.to_string()),
            source,
        })?;
    let webhooks = match config.webhooks.listen {
        Some(addr) if config.webhooks.secrets_file.is_some() => {
            Some(TcpListener::bind(addr).await.map_err(|source| Error::Io {
                op: "bind the webhook listener on",
                path: PathBuf::from(addr.to_string()),
                source,
            })?)
        }
        Some(_) => {
            return Err(config_error(
                "webhooks.listen",
                "needs webhooks.secrets_file (deliveries cannot be verified without secrets)"
                    .to_owned(),
            ));
        }
        None => None,
    };
    Ok(Listeners {
        admin_unix,
        admin_socket: socket.clone(),
        admin_tcp,
        proxy,
        webhooks,
    })
}

/// Reads the admin bearer token: the file must exist, be readable only by its owner, and hold a non-empty token.
fn read_token_file(path: &Path) -> Result<Secret, Error> {
    let meta = std::fs::metadata(path).map_err(|e| {
        config_error(
            "admin.token_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(config_error(
            "admin.token_file",
            format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        config_error(
            "admin.token_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(config_error(
            "admin.token_file",
            format!(
                "{} must hold a token of at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok(Secret::from(token.to_owned()))
}

/// Serves every listener until `app.shutdown` fires, then drains for at most `config.drain_timeout`.
/// Returns whether draining finished in time.
pub async fn run(app: Arc<App>, listeners: Listeners) -> bool {
    let Listeners {
        admin_unix,
        admin_socket,
        admin_tcp,
        proxy,
        webhooks,
    } = listeners;

    // Worker transitions → registry, audit log, routes. Stopped only after the manager has shut down, so the
    // final transitions of `--stop-workers-on-exit` are recorded too.
    let recorder_stop = CancellationToken::new();
    let events = app
        .worker_events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let recorder = events.map(|events| {
        tokio::spawn(crate::workers::record_events(
            app.clone(),
            events,
            recorder_stop.clone(),
        ))
    });

    let webhook_router = app
        .webhooks
        .as_ref()
        .map(|state| crate::webhook::router(state.clone()));
    let with_webhooks = |router: axum::Router| match &webhook_router {
        Some(w) => router.merge(w.clone()),
        None => router,
    };
    let input = app
        .reconcile
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(ReconcileInput { store, requests }) = input {
        app.tasks
            .spawn(crate::reconcile::run(app.clone(), store, requests));
    }
    if let (Some(listener), Some(router)) = (webhooks, webhook_router.clone()) {
        let shutdown = app.shutdown.clone();
        app.tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "webhook listener failed");
            }
        });
    }

    let shutdown = app.shutdown.clone();
    let unix_router = with_webhooks(crate::admin::router(app.clone()));
    app.tasks.spawn(async move {
        if let Err(e) = axum::serve(admin_unix, unix_router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "admin unix listener failed");
        }
    });
    if let Some((listener, token)) = admin_tcp {
        let shutdown = app.shutdown.clone();
        let tcp_router = with_webhooks(crate::admin::tcp_router(app.clone(), token));
        app.tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, tcp_router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "admin TCP listener failed");
            }
        });
    }
    let (wake_tx, wake_rx) = mpsc::channel(256);
    app.tasks
        .spawn(crate::workers::serve_wakes(app.clone(), wake_rx));
    if app.config.proxy.idle_check_interval_s > 0 {
        let (stop_tx, stop_rx) = mpsc::channel(256);
        app.tasks
            .spawn(crate::workers::serve_stops(app.clone(), stop_rx));
        app.tasks.spawn(crate::proxy::run_idle_stopper(
            app.routes.clone(),
            app.config.proxy.clone(),
            stop_tx,
            wake_tx.clone(),
            app.metrics.clone(),
            app.shutdown.clone(),
        ));
    }
    app.tasks.spawn(crate::proxy::run(
        proxy,
        app.routes.clone(),
        app.config.proxy.clone(),
        Some(wake_tx),
        app.metrics.clone(),
        app.shutdown.clone(),
    ));

    if let Some(period) = sd_notify::watchdog_enabled() {
        let shutdown = app.shutdown.clone();
        app.tasks.spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
                }
            }
        });
    }

    app.shutdown.cancelled().await;
    tracing::info!("shutting down: draining requests and tasks");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(manager) = app.workers.clone() {
        // With `--stop-workers-on-exit` this stops every worker (TERM, grace, KILL of the cgroup); otherwise it only
        // ends supervision and the workers keep running for the next daemon to re-adopt.
        let stopping = app.options.stop_workers_on_exit;
        manager.shutdown().await;
        tracing::info!(stopped = stopping, "worker supervision ended");
    }
    recorder_stop.cancel();
    if let Some(recorder) = recorder {
        let _ = recorder.await;
    }
    app.tasks.close();
    let drained = tokio::time::timeout(app.config.drain_timeout, app.tasks.wait())
        .await
        .is_ok();
    if drained {
        tracing::info!("drained: every request and task finished");
    } else {
        tracing::warn!(
            timeout_ms = app.config.drain_timeout.as_millis(),
            "drain timed out; exiting with work in flight"
        );
    }
    if let Err(e) = std::fs::remove_file(&admin_socket) {
        tracing::warn!(path = %admin_socket.display(), error = %e, "cannot remove the admin socket");
    }
    drained
}

/// The whole `wirebot serve`: prepare, bind, announce, serve until SIGTERM/SIGINT, drain.
pub async fn serve(config: Config, options: ServeOptions) -> Result<(), Error> {
    let app = Arc::new(prepare(config, options)?);
    let listeners = bind(&app.config).await?;
    crate::workers::start_all(&app).await?;
    crate::routes::rebuild(&app)?;
    tracing::info!(
        data_dir = %app.config.data_dir.display(),
        runtime_dir = %app.config.runtime_dir.display(),
        tenancy = ?app.tenancy,
        "registry open"
    );

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", listeners.ready_line())
        .and_then(|()| stdout.flush())
        .map_err(io_err("write the ready line to", Path::new("<stdout>")))?;
    drop(stdout);
    // Only does something when started by systemd with Type=notify (NOTIFY_SOCKET set).
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let shutdown = app.shutdown.clone();
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    run(app, listeners).await;
    signals.abort();
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "received"),
    }
}

/// Uptime for `/v1/status`.
pub fn uptime(app: &App) -> Duration {
    app.started_at.elapsed()
}
