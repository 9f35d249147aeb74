//! `wirebot-worker` binary: parses flags, loads the config, takes over or binds the listener, prints the ready
//! line, and serves until SIGTERM/SIGINT (exit 0 after draining; 64 for usage/config errors). SIGHUP re-reads
//! `clawdbot.json` and the env file and applies them live (`worker::reload`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use worker::config::{Config, DEFAULT_PORT, Env};

/// A Clawdbot-compatible gateway for one member or many agents: protocol v3 WebSocket control plane, WebChat at
/// `/`, `GET /healthz`, `POST /v1/chat/completions` and `/hooks/*`, all on one loopback port.
#[derive(Debug, Parser)]
#[command(name = "wirebot-worker", version)]
struct Args {
    /// State directory: holds clawdbot.json, agents/<id>/{agent,sessions}/; nothing is written outside it.
    #[arg(long)]
    state_dir: PathBuf,
    /// Port on 127.0.0.1 when no socket is passed via LISTEN_FDS (default: gateway.port, else 18789; 0 = any).
    #[arg(long)]
    port: Option<u16>,
    /// File of KEY=value lines (provider keys, CLAWDBOT_GATEWAY_TOKEN) overriding the environment.
    #[arg(long)]
    env_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // `Targets` (`warn`, `worker=debug,info`) rather than `EnvFilter`: the latter compiles regexes at start, which
    // every idle worker would then keep paying for in resident pages (BENCHMARKS.md, issue 3).
    let wanted = std::env::var("WIREBOT_LOG").ok();
    let parsed = wanted.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(t)) => t.clone(),
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    if let Some(Err(error)) = parsed {
        tracing::warn!(%error, value = ?wanted, "WIREBOT_LOG not understood (`level` or `target=level,…`); logging at info");
    }
    let args = Args::parse();
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wirebot-worker: {e:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wirebot-worker: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wirebot-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> anyhow::Result<Config> {
    worker::atomic::create_dir_all(&args.state_dir).context("create the state dir")?;
    let mut env = Env::from_process();
    if let Some(f) = &args.env_file {
        env.overlay_file(f)?;
    }
    let cfg = Config::load(&args.state_dir, env)?;
    if !cfg.unmodelled.is_empty() {
        tracing::info!(keys = ?cfg.unmodelled, "config keys kept as-is but not used by wirebot-worker");
    }
    Ok(cfg)
}

async fn serve(args: Args, cfg: Config) -> anyhow::Result<()> {
    let std_listener = match worker::listen_fd::inherited_listener(|k| std::env::var(k).ok())? {
        Some(l) => l,
        None => {
            let port = args.port.or(cfg.port).unwrap_or(DEFAULT_PORT);
            let l = std::net::TcpListener::bind(("127.0.0.1", port))
                .map_err(|e| worker::Error::Bind { port, source: e })?;
            l.set_nonblocking(true)
                .context("set the listener non-blocking")?;
            l
        }
    };
    let listener =
        tokio::net::TcpListener::from_std(std_listener).context("register the listener")?;
    let addr = listener.local_addr().context("read the listener address")?;
    let shutdown = CancellationToken::new();
    let gw = worker::Gateway::new(cfg, shutdown.clone())?;
    {
        let cfg = gw.cfg();
        tracing::info!(%addr, agents = cfg.agents.len(), state_dir = %cfg.state_dir.display(), "listening");
    }
    let gw_hup = std::sync::Arc::clone(&gw);
    let env_file = args.env_file.clone();
    // Installed before the ready line: a SIGHUP sent as soon as we are ready must reload, not kill us.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "wirebot-worker ready port={} pid={}",
            addr.port(),
            std::process::id()
        )
        .context("print the ready line")?;
        out.flush().context("flush stdout")?;
    }
    let signals = async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); break; }
                _ = int.recv() => { tracing::info!("SIGINT"); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // The outcome is logged and exposed by /healthz; a refused reload keeps the old config.
                    let _ = worker::reload::reload_from_disk(&gw_hup, env_file.as_deref());
                }
            }
        }
        shutdown.cancel();
    };
    let gw2 = std::sync::Arc::clone(&gw);
    tokio::select! {
        r = worker::run(gw2, listener) => r?,
        _ = async { signals.await; std::future::pending::<()>().await } => {}
    }
    Ok(())
}
