//! `wirebot`: the supervisor daemon and its admin CLI (a thin shell over the `supervisor` library).
//!
//! `main` parses arguments (usage errors exit 64), then either runs the daemon — tracing, config loaded and checked
//! before anything is bound (exit 64 listing every mistake), serve until a signal — or a client command.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use supervisor::cli::{Cli, Command, Exit, load_config};
use supervisor::daemon::{ServeOptions, serve};
use supervisor::error::Error;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    match &cli.command {
        Command::Serve {
            stop_workers_on_exit,
        } => run_daemon(
            &cli,
            ServeOptions {
                stop_workers_on_exit: *stop_workers_on_exit,
            },
        ),
        _ => supervisor::cli::run_client(&cli),
    }
}

fn run_daemon(cli: &Cli, options: ServeOptions) -> ExitCode {
    init_tracing();
    let config = match load_config(cli.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("wirebot: invalid configuration: {errors}");
            return Exit::Usage.into();
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| {
            runtime
                .block_on(serve(config, options))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("wirebot: {e:#}");
            match e.downcast_ref::<Error>() {
                Some(Error::Config(_)) => Exit::Usage.into(),
                _ => Exit::Other.into(),
            }
        }
    }
}

/// Logs to stderr; filter from `WIREBOT_LOG` (e.g. `debug`, `supervisor=trace`), default `info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WIREBOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
