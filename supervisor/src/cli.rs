//! The `wirebot` command line: clap definitions, exit codes, and the client commands (everything except `serve`),
//! which talk to the daemon's admin socket and print human or `--json` output. Ids and tiers are checked locally
//! first, so a hostile id never reaches the daemon.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};
use provisioning::{Tier, UserId};
use serde_json::{Value, json};

use crate::client::{self, ApiResponse, ClientError};
use crate::config::{Config, ConfigErrors, EMBEDDED};
use crate::drift::Report;
use crate::registry::Registry;

/// Exit codes (sysexits.h), documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Anything else: daemon-side failure, I/O error.
    Other = 1,
    /// EX_USAGE: bad arguments or an invalid config file.
    Usage = 64,
    /// EX_DATAERR: bad input (invalid id, tier, field; unknown or existing user).
    BadInput = 65,
    /// EX_UNAVAILABLE: no daemon answers on the admin socket.
    Unavailable = 69,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

const AFTER_HELP: &str = "\
Exit codes:
  0   success
  1   other failure (daemon-side error, I/O)
  64  usage error or invalid config file (every mistake is listed)
  65  bad input: invalid user id or tier, a field the API rejected (400/422), unknown (404) or existing (409) user
  69  daemon unavailable: nothing answers on the admin socket

The client commands find the daemon's admin socket from --socket, else the config file's [admin] socket
(--config or WIREBOT_CONFIG), else the embedded default ./wirebot-data/run/admin.sock.";

/// Wirebot: a multi-tenant supervisor for personal AI-assistant gateways, and its admin CLI.
#[derive(Debug, Parser)]
#[command(name = "wirebot", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (wirebot.toml); without it the embedded default is used.
    #[arg(long, global = true, env = "WIREBOT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Admin socket to talk to (overrides the one in the config).
    #[arg(long, global = true, env = "WIREBOT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor daemon (admin API on the unix socket; prints one ready line on stdout).
    Serve {
        /// Stop every worker when the daemon exits (by default workers keep running and are re-adopted).
        #[arg(long)]
        stop_workers_on_exit: bool,
    },
    /// Add, list, show, change and remove users.
    #[command(subcommand)]
    User(UserCommand),
    /// Show the audit log (every user action, who asked, and its outcome), oldest first.
    Events {
        /// Only this user's events.
        #[arg(long, allow_hyphen_values = true)]
        user: Option<String>,
        /// Keep printing new events as they happen (until interrupted).
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// List, start, stop and restart dedicated members' workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Webhook reconcile operations: what each delivery asked for and how far it got.
    #[command(subcommand, visible_alias = "operation")]
    Op(OpCommand),
    /// Print a worker's log (`<data_dir>/logs/<id>.log`).
    Logs {
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Keep printing new lines as they are written (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
    },
    /// Show (and, without --dry-run, repair) the drift between the registry, the state directories, the route table
    /// and the worker processes: orphan directories, members without a directory, dead or unsupervised workers,
    /// worker cgroups nobody owns. A dry run works without the daemon; repairs need it.
    Reconcile {
        /// Only list the drift; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Provision a user: state directory and registry row; prints the gateway token once.
    Add {
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// shared or dedicated.
        #[arg(long)]
        tier: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        /// The member's own worker runtime, wirebot or clawdbot (default: its tier's `runtime`); used while dedicated.
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Archive a user's state directory, then delete it and the user.
    Remove {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user (and its worker, when it has one).
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a user to another tier.
    Tier {
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// shared or dedicated.
        tier: String,
    },
    /// Choose the member's worker runtime: wirebot, clawdbot, or default (its tier's). A running dedicated worker is
    /// replaced by one of the new kind (requests meanwhile get 503 + Retry-After).
    Runtime {
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// wirebot, clawdbot or default.
        runtime: String,
    },
    /// Set the member's rituals: a daily standup and a weekly reflection in its time zone (an omitted flag = none).
    /// The member gets matching cron jobs at once, in its own dir, on either tier.
    Schedule {
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// IANA time zone, e.g. Europe/Berlin (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Daily standup time, HH:MM (24 h).
        #[arg(long)]
        standup: Option<String>,
        /// Weekly reflection, "<weekday> HH:MM", e.g. "fri 17:00".
        #[arg(long)]
        reflection: Option<String>,
    },
    /// Issue a new gateway token (printed once; the old one stops working).
    Token {
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Required: the current token is never shown again, only replaced.
        #[arg(long, required = true)]
        rotate: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OpCommand {
    /// The newest operations, newest first: state, attempts, last error.
    List {
        /// Only this user's operations.
        #[arg(long, allow_hyphen_values = true)]
        user: Option<String>,
        /// How many to show (1–1000).
        #[arg(short = 'n', long = "limit", default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One operation, by the id a webhook's 202 answer carried.
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Every supervised worker: state, pid, port, restarts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Start a worker and wait until it is Ready.
    Start {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Stop a worker (SIGTERM, grace, SIGKILL); its next proxied request starts it again.
    Stop {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Restart a worker; clears a quarantine.
    Restart {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config file (default: --config, else the embedded default) and report every mistake.
    Check { file: Option<PathBuf> },
}

/// A failed command: what to print on stderr (one line) and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

fn fail(exit: Exit, message: impl Into<String>) -> Failure {
    Failure {
        exit,
        message: message.into(),
    }
}

/// Loads the config named by `--config`, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded_default()),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The admin socket the client commands talk to.
fn socket_path(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(socket) = &cli.socket {
        return Ok(absolute(socket));
    }
    let config =
        load_config(cli.config.as_deref()).map_err(|e| fail(Exit::Usage, e.to_string()))?;
    Ok(absolute(&config.admin.socket))
}

fn parse_id(raw: &str) -> Result<UserId, Failure> {
    raw.parse::<UserId>()
        .map_err(|e| fail(Exit::BadInput, e.to_string()))
}

fn parse_runtime(raw: &str) -> Result<crate::config::Runtime, Failure> {
    raw.parse::<crate::config::Runtime>()
        .map_err(|e| fail(Exit::BadInput, e.to_string()))
}

/// A member's runtime as `user show` prints it: its own, or that it follows its tier.
fn runtime_label(user: &Value) -> String {
    match user["runtime"].as_str() {
        Some(runtime) => runtime.to_owned(),
        None => "the tier's runtime".to_owned(),
    }
}

fn parse_tier(raw: &str) -> Result<Tier, Failure> {
    raw.parse::<Tier>()
        .map_err(|e| fail(Exit::BadInput, e.to_string()))
}

/// Runs a client command (anything but `serve`) and returns its exit code, having printed its output or one error line.
pub fn run_client(cli: &Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Serve { .. } => Err(fail(Exit::Usage, "`serve` is not a client command")),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "wirebot", &mut std::io::stdout());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            config_check(file.as_deref().or(cli.config.as_deref()))
        }
        Command::Status { json } => with_daemon(cli, async |socket| status(socket, *json).await),
        Command::Reconcile { dry_run, json } => reconcile(cli, *dry_run, *json),
        Command::Events { user, follow, json } => {
            let user = user.as_deref().map(parse_id).transpose();
            user.and_then(|user| {
                with_daemon(cli, async |socket| {
                    events(socket, user.as_ref(), *follow, *json).await
                })
            })
        }
        Command::User(command) => user(cli, command),
        Command::Worker(command) => worker(cli, command),
        Command::Op(command) => op(cli, command),
        Command::Logs { id, follow, lines } => parse_id(id).and_then(|id| {
            with_daemon(cli, async |socket| logs(socket, &id, *follow, *lines).await)
        }),
    };
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(Failure { exit, message }) => {
            eprintln!("wirebot: {message}");
            exit.into()
        }
    }
}

fn config_check(file: Option<&Path>) -> Result<(), Failure> {
    let config = load_config(file).map_err(|e| fail(Exit::Usage, e.to_string()))?;
    let name = file.map_or_else(|| EMBEDDED.to_owned(), |f| f.display().to_string());
    println!(
        "{name}: ok (data_dir {}, runtime_dir {}, admin socket {})",
        config.data_dir.display(),
        config.runtime_dir.display(),
        config.admin.socket.display()
    );
    Ok(())
}

/// Checks local input first (ids, tiers), then runs `f` against the daemon on a small runtime.
fn with_daemon(
    cli: &Cli,
    f: impl AsyncFnOnce(&Path) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let socket = socket_path(cli)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Other, format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(f(&socket)).map_err(|mut failure| {
        if failure.exit == Exit::Unavailable {
            let start = match &cli.config {
                Some(config) => format!("wirebot serve --config {}", config.display()),
                None => "wirebot serve".to_owned(),
            };
            failure.message = format!("{}; start the daemon with `{start}`", failure.message);
        }
        failure
    })
}

/// One request; an error status becomes a `Failure` with the problem's detail.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let response = client::request(socket, method, path, body.as_ref(), "cli")
        .await
        .map_err(|e| match e {
            ClientError::Unavailable { .. } => fail(Exit::Unavailable, e.to_string()),
            other => fail(Exit::Other, chain(&other)),
        })?;
    check(response)
}

fn check(response: ApiResponse) -> Result<Value, Failure> {
    if response.status.is_success() {
        return Ok(response.body);
    }
    let exit = match response.status {
        StatusCode::BAD_REQUEST
        | StatusCode::NOT_FOUND
        | StatusCode::CONFLICT
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY => Exit::BadInput,
        _ => Exit::Other,
    };
    Err(fail(exit, response.problem_detail()))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn user(cli: &Cli, command: &UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Add {
            id,
            tier,
            email,
            display_name,
            runtime,
        } => {
            let id = parse_id(id)?;
            let tier = parse_tier(tier)?;
            let mut body = json!({ "id": id, "tier": tier });
            if let Some(runtime) = runtime {
                body["runtime"] = json!(parse_runtime(runtime)?);
            }
            if let Some(email) = email {
                body["email"] = json!(email);
            }
            if let Some(name) = display_name {
                body["display_name"] = json!(name);
            }
            with_daemon(cli, async |socket| {
                let created = call(socket, Method::POST, "/v1/users", Some(body)).await?;
                let user = &created["user"];
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "created {} ({}){}",
                    user["id"].as_str().unwrap_or_default(),
                    text(&user["tier"]),
                    placement(user)
                );
                let _ = writeln!(
                    out,
                    "gateway token (shown once): {}",
                    created["token"].as_str().unwrap_or_default()
                );
                Ok(())
            })
        }
        UserCommand::Remove { id } => {
            let id = parse_id(id)?;
            with_daemon(cli, async |socket| {
                let removed =
                    call(socket, Method::DELETE, &format!("/v1/users/{id}"), None).await?;
                match removed["archive"].as_str() {
                    Some(archive) => println!("removed {id}; archive: {archive}"),
                    None => println!("removed {id}; it had no state directory to archive"),
                }
                Ok(())
            })
        }
        UserCommand::List { json } => with_daemon(cli, async |socket| {
            let users = call(socket, Method::GET, "/v1/users", None).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&users).unwrap_or_default()
                );
                return Ok(());
            }
            let users = users.as_array().cloned().unwrap_or_default();
            if users.is_empty() {
                println!("no users");
                return Ok(());
            }
            println!(
                "{:<24} {:<10} {:<10} {:>7} {:>6}  EMAIL",
                "ID", "TIER", "STATUS", "UID", "PORT"
            );
            for u in &users {
                println!(
                    "{:<24} {:<10} {:<10} {:>7} {:>6}  {}",
                    text(&u["id"]),
                    text(&u["tier"]),
                    text(&u["status"]),
                    text(&u["uid"]),
                    text(&u["port"]),
                    text(&u["email"])
                );
            }
            Ok(())
        }),
        UserCommand::Show { id, json } => {
            let id = parse_id(id)?;
            with_daemon(cli, async |socket| {
                let user = call(socket, Method::GET, &format!("/v1/users/{id}"), None).await?;
                if *json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&user).unwrap_or_default()
                    );
                    return Ok(());
                }
                for (label, key) in [
                    ("id", "id"),
                    ("tier", "tier"),
                    ("status", "status"),
                    ("uid", "uid"),
                    ("gid", "gid"),
                    ("port", "port"),
                    ("email", "email"),
                    ("display name", "display_name"),
                    ("created", "created_at"),
                    ("updated", "updated_at"),
                ] {
                    println!("{:<13} {}", format!("{label}:"), text(&user[key]));
                }
                println!("{:<13} {}", "runtime:", runtime_label(&user));
                let worker = &user["worker"];
                if worker.is_object() {
                    println!(
                        "{:<13} {} (pid {}, restarts {})",
                        "worker:",
                        text(&worker["state"]),
                        text(&worker["pid"]),
                        text(&worker["restarts"])
                    );
                    if let Some(diagnosis) = worker["diagnosis_json"].as_str() {
                        print_diagnosis(diagnosis);
                    }
                } else {
                    println!("{:<13} -", "worker:");
                }
                Ok(())
            })
        }
        UserCommand::Runtime { id, runtime } => {
            let id = parse_id(id)?;
            let runtime = match runtime.as_str() {
                "default" => None,
                other => Some(parse_runtime(other)?),
            };
            with_daemon(cli, async |socket| {
                let user = call(
                    socket,
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(json!({ "runtime": runtime })),
                )
                .await?;
                println!("{id} runs {}{}", runtime_label(&user), placement(&user));
                Ok(())
            })
        }
        UserCommand::Tier { id, tier } => {
            let id = parse_id(id)?;
            let tier = parse_tier(tier)?;
            with_daemon(cli, async |socket| {
                let user = call(
                    socket,
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(json!({ "tier": tier })),
                )
                .await?;
                println!("{id} is now {}{}", text(&user["tier"]), placement(&user));
                Ok(())
            })
        }
        UserCommand::Schedule {
            id,
            timezone,
            standup,
            reflection,
        } => {
            let id = parse_id(id)?;
            with_daemon(cli, async |socket| {
                let set = call(
                    socket,
                    Method::PUT,
                    &format!("/v1/users/{id}/schedule"),
                    Some(json!({ "timezone": timezone, "standup": standup, "reflection": reflection })),
                )
                .await?;
                let show = |v: &Value| v.as_str().unwrap_or("none").to_owned();
                println!(
                    "{id}: standup {}, reflection {}, time zone {}{}",
                    show(&set["standup"]),
                    show(&set["reflection"]),
                    set["timezone"].as_str().unwrap_or("UTC"),
                    if set["jobs"] == true {
                        " (cron jobs written)"
                    } else {
                        ""
                    }
                );
                Ok(())
            })
        }
        UserCommand::Token { id, rotate: _ } => {
            let id = parse_id(id)?;
            with_daemon(cli, async |socket| {
                let rotated =
                    call(socket, Method::POST, &format!("/v1/users/{id}/token"), None).await?;
                println!(
                    "new gateway token for {id} (shown once): {}",
                    text(&rotated["token"])
                );
                Ok(())
            })
        }
    }
}

/// The quarantine (or last crash) diagnosis of `wirebot user show`: summary, then the last log lines.
fn print_diagnosis(raw: &str) {
    match serde_json::from_str::<crate::lifecycle::Diagnosis>(raw) {
        Ok(d) => {
            println!("{:<13} {}", "diagnosis:", d.summary());
            let tail = &d.log_tail[d.log_tail.len().saturating_sub(20)..];
            if !tail.is_empty() {
                println!("last log lines:");
                for line in tail {
                    println!("  {line}");
                }
            }
        }
        Err(_) => println!("{:<13} {raw}", "diagnosis:"),
    }
}

fn worker(cli: &Cli, command: &WorkerCommand) -> Result<(), Failure> {
    let (id, action) = match command {
        WorkerCommand::List { json } => {
            return with_daemon(cli, async |socket| {
                let workers = call(socket, Method::GET, "/v1/workers", None).await?;
                if *json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&workers).unwrap_or_default()
                    );
                    return Ok(());
                }
                let workers = workers.as_array().cloned().unwrap_or_default();
                if workers.is_empty() {
                    println!("no workers");
                    return Ok(());
                }
                println!(
                    "{:<24} {:<12} {:>8} {:>6} {:>8}  DIAGNOSIS",
                    "USER", "STATE", "PID", "PORT", "RESTARTS"
                );
                for w in &workers {
                    println!(
                        "{:<24} {:<12} {:>8} {:>6} {:>8}  {}",
                        text(&w["user_id"]),
                        text(&w["state"]),
                        text(&w["pid"]),
                        text(&w["port"]),
                        text(&w["restarts"]),
                        text(&w["diagnosis"]["summary"])
                    );
                }
                Ok(())
            });
        }
        WorkerCommand::Start { id } => (id, "start"),
        WorkerCommand::Stop { id } => (id, "stop"),
        WorkerCommand::Restart { id } => (id, "restart"),
    };
    let id = parse_id(id)?;
    with_daemon(cli, async |socket| {
        let w = call(
            socket,
            Method::POST,
            &format!("/v1/workers/{id}/{action}"),
            None,
        )
        .await?;
        println!(
            "{id}: {} (pid {}, port {})",
            text(&w["state"]),
            text(&w["pid"]),
            text(&w["port"])
        );
        Ok(())
    })
}

/// Prints the last `lines` lines, then (with `follow`) polls for appended ones.
async fn logs(socket: &Path, id: &UserId, follow: bool, lines: usize) -> Result<(), Failure> {
    let n = lines.clamp(1, crate::admin::LOG_MAX_LINES);
    let mut page = call(
        socket,
        Method::GET,
        &format!("/v1/workers/{id}/logs?n={n}"),
        None,
    )
    .await?;
    loop {
        let mut out = std::io::stdout().lock();
        for line in page["lines"].as_array().into_iter().flatten() {
            if writeln!(out, "{}", line.as_str().unwrap_or_default()).is_err() {
                return Ok(()); // stdout closed
            }
        }
        let _ = out.flush();
        drop(out);
        if !follow {
            return Ok(());
        }
        let offset = page["offset"].as_u64().unwrap_or(0);
        // A human watching a log: a short poll is simpler than a push channel and cheap for the daemon.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        page = call(
            socket,
            Method::GET,
            &format!("/v1/workers/{id}/logs?offset={offset}"),
            None,
        )
        .await?;
    }
}

async fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let status = call(socket, Method::GET, "/v1/status", None).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        return Ok(());
    }
    let users = &status["users"];
    println!(
        "wirebot {} (pid {}, up {}s)",
        text(&status["version"]),
        text(&status["pid"]),
        text(&status["uptime_s"])
    );
    println!("tenancy:      {}", text(&status["tenancy"]));
    println!("data_dir:     {}", text(&status["data_dir"]));
    println!("runtime_dir:  {}", text(&status["runtime_dir"]));
    println!("admin socket: {}", text(&status["admin_socket"]));
    println!(
        "users:        {} ({} shared, {} dedicated)",
        text(&users["total"]),
        text(&users["shared"]),
        text(&users["dedicated"])
    );
    let workers = status["workers"].as_object().cloned().unwrap_or_default();
    let total: u64 = workers.values().filter_map(Value::as_u64).sum();
    let by_state: Vec<String> = workers
        .iter()
        .map(|(state, n)| format!("{} {state}", text(n)))
        .collect();
    if by_state.is_empty() {
        println!("workers:      0");
    } else {
        println!("workers:      {total} ({})", by_state.join(", "));
    }
    if let Some(reconcile) = status["reconcile"].as_object() {
        println!(
            "webhook ops:  {} failed (retried with back-off)",
            text(&reconcile["failed"])
        );
        for op in reconcile["recent_failures"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "  {} {} after {} attempt(s): {}",
                text(&op["user_id"]),
                text(&op["id"]),
                text(&op["attempts"]),
                op["last_error"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// Pages through `/v1/events` (and, with `follow`, keeps polling for new ones).
async fn events(
    socket: &Path,
    user: Option<&UserId>,
    follow: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut after = 0i64;
    loop {
        let mut path = format!(
            "/v1/events?after={after}&limit={}",
            crate::admin::EVENTS_MAX_LIMIT
        );
        if let Some(user) = user {
            path.push_str(&format!("&user={user}"));
        }
        let page = call(socket, Method::GET, &path, None).await?;
        let page = page.as_array().cloned().unwrap_or_default();
        let mut out = std::io::stdout().lock();
        for event in &page {
            after = event["id"].as_i64().unwrap_or(after);
            let line = if json {
                event.to_string()
            } else {
                let detail = event["detail"]
                    .as_str()
                    .map(|d| format!("  {d}"))
                    .unwrap_or_default();
                format!(
                    "{} {:<8} {:<20} {:<24} {}{detail}",
                    text(&event["ts"]),
                    text(&event["actor"]),
                    text(&event["action"]),
                    text(&event["user_id"]),
                    text(&event["outcome"])
                )
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // stdout closed (e.g. piped into `head`)
            }
        }
        let _ = out.flush();
        let full_page =
            page.len() >= usize::try_from(crate::admin::EVENTS_MAX_LIMIT).unwrap_or(usize::MAX);
        if full_page {
            continue;
        }
        if !follow {
            return Ok(());
        }
        // Following is a human watching a log; a short poll is simpler than a push channel and cheap for the daemon.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A JSON scalar for a table cell: strings bare, null as `-`.
fn op(cli: &Cli, command: &OpCommand) -> Result<(), Failure> {
    match command {
        OpCommand::List { user, limit, json } => {
            let user = user.as_deref().map(parse_id).transpose()?;
            if !(1..=crate::admin::OPERATIONS_MAX_LIMIT).contains(limit) {
                return Err(fail(
                    Exit::Usage,
                    format!(
                        "--limit {limit} is not between 1 and {}",
                        crate::admin::OPERATIONS_MAX_LIMIT
                    ),
                ));
            }
            with_daemon(cli, async |socket| {
                let mut path = format!("/v1/operations?limit={limit}");
                if let Some(user) = &user {
                    path.push_str(&format!("&user={user}"));
                }
                let ops = call(socket, Method::GET, &path, None).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&ops).unwrap_or_default());
                    return Ok(());
                }
                let ops = ops.as_array().cloned().unwrap_or_default();
                if ops.is_empty() {
                    println!("no operations");
                    return Ok(());
                }
                println!(
                    "{:<36} {:<20} {:<20} {:<10} {:>8}  LAST ERROR",
                    "ID", "USER", "WANTS", "STATE", "ATTEMPTS"
                );
                for o in &ops {
                    println!(
                        "{:<36} {:<20} {:<20} {:<10} {:>8}  {}",
                        text(&o["id"]),
                        text(&o["user_id"]),
                        format!("{} {}", text(&o["status"]), text(&o["tier"])),
                        text(&o["state"]),
                        text(&o["attempts"]),
                        text(&o["last_error"])
                    );
                }
                Ok(())
            })
        }
        OpCommand::Show { id, json } => {
            let id = id.parse::<crate::webhook::OperationId>().map_err(|e| {
                fail(
                    Exit::BadInput,
                    format!("{id:?} is not an operation id (a UUID): {e}"),
                )
            })?;
            with_daemon(cli, async |socket| {
                let o = call(socket, Method::GET, &format!("/v1/operations/{id}"), None).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&o).unwrap_or_default());
                    return Ok(());
                }
                println!("operation:    {}", text(&o["id"]));
                println!("user:         {}", text(&o["user_id"]));
                println!("webhook id:   {}", text(&o["event_id"]));
                println!(
                    "desired:      {} {} (seq {})",
                    text(&o["status"]),
                    text(&o["tier"]),
                    text(&o["seq"])
                );
                println!("state:        {}", text(&o["state"]));
                println!("attempts:     {}", text(&o["attempts"]));
                println!("created:      {}", unix_time(&o["created_at"]));
                println!("updated:      {}", unix_time(&o["updated_at"]));
                if !o["next_attempt_at"].is_null() {
                    println!("next attempt: {}", unix_time(&o["next_attempt_at"]));
                }
                if !o["last_error"].is_null() {
                    println!("last error:   {}", text(&o["last_error"]));
                }
                Ok(())
            })
        }
    }
}

/// Unix seconds as RFC 3339 UTC (`-` when absent).
fn unix_time(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(
            || text(v),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn placement(user: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(port) = user["port"].as_u64() {
        parts.push(format!("port {port}"));
    }
    if let Some(uid) = user["uid"].as_u64() {
        parts.push(format!("uid {uid}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(", {}", parts.join(", "))
    }
}

/// `wirebot reconcile [--dry-run]`: asks the daemon. With no daemon a dry run still reads the registry, the disk,
/// `/proc` and the cgroup tree directly; repairs need the daemon, which owns the workers.
fn reconcile(cli: &Cli, dry_run: bool, json_out: bool) -> Result<(), Failure> {
    let socket = socket_path(cli)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Other, format!("cannot start the async runtime: {e}")))?;
    let path = format!("/v1/reconcile?dry_run={dry_run}");
    let report = match runtime.block_on(call(&socket, Method::POST, &path, None)) {
        Ok(body) => serde_json::from_value::<Report>(body)
            .map_err(|e| fail(Exit::Other, format!("unexpected reconcile answer: {e}")))?,
        Err(failure) if failure.exit == Exit::Unavailable && dry_run => {
            eprintln!("wirebot: no daemon answers; reading the registry and the disk directly");
            offline_drift(cli)?
        }
        Err(mut failure) => {
            if failure.exit == Exit::Unavailable {
                failure.message = format!(
                    "{}; repairs need the running daemon (`wirebot reconcile --dry-run` works without it)",
                    failure.message
                );
            }
            return Err(failure);
        }
    };
    if json_out {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| fail(Exit::Other, format!("cannot print the report: {e}")))?;
        println!("{text}");
    } else {
        if report.drift.is_empty() {
            println!("no drift");
        }
        for item in &report.drift {
            println!("drift {item}");
        }
        for line in &report.repaired {
            println!("repaired {line}");
        }
        for line in &report.failed {
            println!("failed {line}");
        }
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(fail(
            Exit::Other,
            format!("{} repair(s) failed", report.failed.len()),
        ))
    }
}

/// The drift as seen without a daemon (read-only).
fn offline_drift(cli: &Cli) -> Result<Report, Failure> {
    let config =
        load_config(cli.config.as_deref()).map_err(|e| fail(Exit::Usage, e.to_string()))?;
    let data_dir = absolute(&config.data_dir);
    let db = data_dir.join("wirebot.db");
    if !db.is_file() {
        return Err(fail(
            Exit::Unavailable,
            format!(
                "no daemon answers and there is no registry at {}",
                db.display()
            ),
        ));
    }
    let registry = Registry::open(&db).map_err(|e| fail(Exit::Other, e.chain()))?;
    let layout = provisioning::Layout::new(&data_dir, absolute(&config.runtime_dir));
    let drift = crate::drift::find(&registry, &layout, &crate::workers::cgroup_group(&data_dir))
        .map_err(|e| fail(Exit::Other, e.chain()))?;
    Ok(Report {
        dry_run: true,
        drift,
        repaired: Vec::new(),
        failed: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn hyphen_ids_reach_our_own_validation() {
        let cli =
            Cli::try_parse_from(["wirebot", "user", "add", "-x", "--tier", "shared"]).unwrap();
        match cli.command {
            Command::User(UserCommand::Add { id, .. }) => assert_eq!(id, "-x"),
            other => panic!("{other:?}"),
        }
    }
}
