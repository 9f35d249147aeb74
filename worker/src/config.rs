//! `clawdbot.json`: JSON5 parsing, `${VAR}` substitution, the env file, and the typed view the worker uses.
//! Keys the worker does not model are kept in the raw value (served by `config.get`) and logged once, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Error;
use crate::agent_id::AgentId;
use crate::secret::Secret;

/// Default gateway port (Clawdbot's).
pub const DEFAULT_PORT: u16 = 18789;

/// Environment lookups: the process environment overlaid by the env file the supervisor names (file wins).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, Secret>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars().map(|(k, v)| (k, Secret::new(v))).collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v)))
                .collect(),
        }
    }

    /// Reads `KEY=value` lines (blank lines, `#` comments and an `export ` prefix allowed; values may be quoted)
    /// and lets them override what is already present.
    pub fn overlay_file(&mut self, path: &Path) -> Result<(), Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("read env file", path, e))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(Error::EnvFileSyntax {
                    path: path.into(),
                    line: n + 1,
                });
            };
            let k = k.trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::EnvFileSyntax {
                    path: path.into(),
                    line: n + 1,
                });
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            self.vars.insert(k.to_string(), Secret::new(v));
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.vars.get(key).filter(|v| !v.expose().is_empty())
    }
}

/// Gateway authentication as Clawdbot resolves it (`dist/gateway/auth.js`).
#[derive(Clone, Debug)]
pub enum GatewayAuth {
    Token(Secret),
    Password(Secret),
    /// No secret configured: any non-empty token passes (Clawdbot's mode none).
    None,
}

/// One provider endpoint: built-in (`anthropic`, `openai`) or from `models.providers.<id>`.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub id: String,
    pub base_url: String,
    pub api: Api,
    pub api_key: Option<Secret>,
    pub models: Vec<Value>,
}

/// The wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    AnthropicMessages,
    OpenAiCompletions,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic-messages",
            Api::OpenAiCompletions => "openai-completions",
        }
    }
}

/// `model` as Clawdbot accepts it: a string or `{primary, fallbacks}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelChoice {
    pub primary: Option<String>,
    pub fallbacks: Vec<String>,
}

/// One agent after defaults are applied.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: AgentId,
    pub name: Option<String>,
    pub identity: Option<Value>,
    pub workspace: PathBuf,
    pub agent_dir: PathBuf,
    /// The session index (`sessions.json`): `session.store` with `{agentId}` replaced, else
    /// `<state>/agents/<id>/sessions/sessions.json`.
    pub store_path: PathBuf,
    /// The index's directory, where the agent's transcripts live too.
    pub sessions_dir: PathBuf,
    pub model: ModelChoice,
}

/// A routing rule from `bindings[]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Binding {
    pub agent_id: String,
    pub channel: Option<String>,
    pub account_id: Option<String>,
    pub peer: Option<(String, String)>,
    pub guild_id: Option<String>,
    pub team_id: Option<String>,
}

/// `session.*` settings that shape keys.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub main_key: String,
    pub dm_scope: DmScope,
    pub global: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmScope {
    Main,
    PerPeer,
    PerChannelPeer,
}

/// `hooks.*` when enabled with a token.
#[derive(Clone, Debug)]
pub struct HooksConfig {
    pub token: Secret,
    pub path: String,
    pub max_body_bytes: usize,
}

/// The typed configuration; immutable once loaded.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub state_dir: PathBuf,
    /// The file's text as read (before substitution), for `config.get`.
    pub raw: Option<String>,
    /// The parsed value after `${VAR}` substitution: unmodelled keys live on here untouched.
    pub parsed: Value,
    pub hash: String,
    pub port: Option<u16>,
    pub auth: GatewayAuth,
    pub agents: Vec<AgentConfig>,
    pub default_agent: AgentId,
    pub default_model: ModelChoice,
    pub timeout_seconds: u64,
    pub bindings: Vec<Binding>,
    pub session: SessionConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub hooks: Option<HooksConfig>,
    pub chat_completions_enabled: bool,
    /// Dotted paths of keys present in the file that the worker does not act on.
    pub unmodelled: Vec<String>,
    pub env: Env,
}

/// Top-level keys the worker acts on (others are kept and reported as unmodelled).
const MODELLED: &[&str] = &[
    "gateway", "agents", "bindings", "session", "models", "hooks",
];

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct GatewayFile {
    port: Option<u16>,
    auth: AuthFile,
    http: Value,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AuthFile {
    mode: Option<String>,
    token: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AgentsFile {
    defaults: AgentDefaultsFile,
    list: Vec<AgentFile>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AgentDefaultsFile {
    workspace: Option<String>,
    model: Option<Value>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AgentFile {
    id: String,
    default: bool,
    name: Option<String>,
    identity: Option<Value>,
    workspace: Option<String>,
    agent_dir: Option<String>,
    model: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BindingFile {
    agent_id: String,
    #[serde(rename = "match")]
    matcher: MatchFile,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct MatchFile {
    channel: Option<String>,
    account_id: Option<String>,
    peer: Option<PeerFile>,
    guild_id: Option<String>,
    team_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PeerFile {
    kind: String,
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SessionFile {
    scope: Option<String>,
    dm_scope: Option<String>,
    main_key: Option<String>,
    store: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ModelsFile {
    providers: BTreeMap<String, ProviderFile>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ProviderFile {
    base_url: Option<String>,
    api_key: Option<String>,
    api: Option<String>,
    models: Vec<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct HooksFile {
    enabled: bool,
    token: Option<String>,
    path: Option<String>,
    max_body_bytes: Option<usize>,
}

impl Config {
    /// Loads `<state_dir>/clawdbot.json` (absent ⇒ an empty config: one agent `main`, mode none).
    pub fn load(state_dir: &Path, env: Env) -> Result<Config, Error> {
        let path = state_dir.join("clawdbot.json");
        let raw = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read config", &path, e)),
        };
        let mut parsed = match &raw {
            Some(text) if !text.trim().is_empty() => {
                json5::from_str::<Value>(text).map_err(|e| Error::ConfigSyntax {
                    path: path.clone(),
                    message: syntax_message(&e),
                })?
            }
            _ => Value::Object(Map::new()),
        };
        if !parsed.is_object() {
            return Err(Error::ConfigInvalid {
                path,
                message: "the top level must be an object".into(),
            });
        }
        substitute_env(&mut parsed, &env, &path)?;
        Config::from_value(path, state_dir, raw, parsed, env)
    }

    /// Builds the typed view from an already parsed value (pure; tests pass values directly).
    pub fn from_value(
        path: PathBuf,
        state_dir: &Path,
        raw: Option<String>,
        parsed: Value,
        env: Env,
    ) -> Result<Config, Error> {
        let section = |name: &str| parsed.get(name).cloned().unwrap_or(Value::Null);
        let invalid = |name: &str, e: serde_json::Error| Error::ConfigInvalid {
            path: path.clone(),
            message: format!("{name}: {e}"),
        };
        let gateway: GatewayFile =
            from_section(section("gateway")).map_err(|e| invalid("gateway", e))?;
        let agents_file: AgentsFile =
            from_section(section("agents")).map_err(|e| invalid("agents", e))?;
        let bindings_file: Vec<BindingFile> =
            from_section(section("bindings")).map_err(|e| invalid("bindings", e))?;
        let session_file: SessionFile =
            from_section(section("session")).map_err(|e| invalid("session", e))?;
        let models_file: ModelsFile =
            from_section(section("models")).map_err(|e| invalid("models", e))?;
        let hooks_file: HooksFile =
            from_section(section("hooks")).map_err(|e| invalid("hooks", e))?;

        let secret = |s: Option<String>| s.filter(|s| !s.is_empty()).map(Secret::new);
        let token =
            secret(gateway.auth.token).or_else(|| env.get("CLAWDBOT_GATEWAY_TOKEN").cloned());
        let password =
            secret(gateway.auth.password).or_else(|| env.get("CLAWDBOT_GATEWAY_PASSWORD").cloned());
        let auth = match (gateway.auth.mode.as_deref(), token, password) {
            (Some("password"), _, Some(p)) => GatewayAuth::Password(p),
            (Some("token"), Some(t), _) => GatewayAuth::Token(t),
            (Some("token"), None, _) => {
                return Err(Error::ConfigInvalid {
                    path,
                    message: "gateway.auth.mode is \"token\" but no token is set (gateway.auth.token or CLAWDBOT_GATEWAY_TOKEN)"
                        .into(),
                });
            }
            (Some("password"), _, None) => {
                return Err(Error::ConfigInvalid {
                    path,
                    message: "gateway.auth.mode is \"password\" but no password is set".into(),
                });
            }
            (_, _, Some(p)) => GatewayAuth::Password(p),
            (_, Some(t), _) => GatewayAuth::Token(t),
            (_, None, None) => GatewayAuth::None,
        };
        let port = env
            .get("CLAWDBOT_GATEWAY_PORT")
            .and_then(|p| p.expose().parse().ok())
            .or(gateway.port);
        let chat_completions_enabled = gateway
            .http
            .pointer("/endpoints/chatCompletions/enabled")
            .and_then(Value::as_bool)
            .unwrap_or(true);

        let default_model = model_choice(agents_file.defaults.model.as_ref());
        let store = StoreTemplate::new(
            session_file.store.as_deref(),
            state_dir,
            env.get("HOME").map(Secret::expose),
            agents_file.list.len(),
        );
        let mut agents = Vec::new();
        let mut default_agent = None;
        for (i, a) in agents_file.list.iter().enumerate() {
            let id = AgentId::parse(&a.id).map_err(|_| Error::ConfigInvalid {
                path: path.clone(),
                message: format!("agents.list[{i}].id {:?} is not a valid agent id", a.id),
            })?;
            if agents.iter().any(|x: &AgentConfig| x.id == id) {
                return Err(Error::ConfigInvalid {
                    path,
                    message: format!("agents.list: duplicate agent id {id}"),
                });
            }
            if a.default && default_agent.is_none() {
                default_agent = Some(id.clone());
            }
            agents.push(agent_config(
                state_dir,
                &id,
                a,
                &agents_file.defaults,
                i == 0,
                &store,
            ));
        }
        if agents.is_empty() {
            let id = AgentId::main();
            agents.push(agent_config(
                state_dir,
                &id,
                &AgentFile::default(),
                &agents_file.defaults,
                true,
                &store,
            ));
        }
        let default_agent = default_agent.unwrap_or_else(|| agents[0].id.clone());

        let bindings = bindings_file
            .into_iter()
            .map(|b| Binding {
                agent_id: b.agent_id.to_ascii_lowercase(),
                channel: b.matcher.channel.map(|c| c.to_ascii_lowercase()),
                account_id: b.matcher.account_id,
                peer: b.matcher.peer.map(|p| (p.kind, p.id)),
                guild_id: b.matcher.guild_id,
                team_id: b.matcher.team_id,
            })
            .collect();

        let session = SessionConfig {
            main_key: session_file
                .main_key
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "main".into())
                .to_ascii_lowercase(),
            dm_scope: match session_file.dm_scope.as_deref() {
                Some("per-peer") => DmScope::PerPeer,
                Some("per-channel-peer") => DmScope::PerChannelPeer,
                _ => DmScope::Main,
            },
            global: session_file.scope.as_deref() == Some("global"),
        };

        let mut providers = BTreeMap::new();
        providers.insert(
            "anthropic".to_string(),
            ProviderConfig {
                id: "anthropic".into(),
                base_url: "https://api.anthropic.com".into(),
                api: Api::AnthropicMessages,
                api_key: None,
                models: Vec::new(),
            },
        );
        providers.insert(
            "openai".to_string(),
            ProviderConfig {
                id: "openai".into(),
                base_url: "https://api.openai.com/v1".into(),
                api: Api::OpenAiCompletions,
                api_key: None,
                models: Vec::new(),
            },
        );
        for (id, p) in models_file.providers {
            let builtin = providers.get(&id).cloned();
            let api = match p.api.as_deref() {
                Some("anthropic-messages") => Api::AnthropicMessages,
                Some("openai-completions") | Some("openai-responses") => Api::OpenAiCompletions,
                Some(other) => {
                    return Err(Error::ConfigInvalid {
                        path,
                        message: format!(
                            "models.providers.{id}.api {other:?} is not supported (anthropic-messages, openai-completions)"
                        ),
                    });
                }
                None => builtin
                    .as_ref()
                    .map(|b| b.api)
                    .unwrap_or(Api::OpenAiCompletions),
            };
            let Some(base_url) = p.base_url.or_else(|| builtin.map(|b| b.base_url)) else {
                return Err(Error::ConfigInvalid {
                    path,
                    message: format!("models.providers.{id}.baseUrl is required"),
                });
            };
            providers.insert(
                id.clone(),
                ProviderConfig {
                    id,
                    base_url: base_url.trim_end_matches('/').to_string(),
                    api,
                    api_key: secret(p.api_key),
                    models: p.models,
                },
            );
        }

        let hooks = if hooks_file.enabled {
            let Some(token) = secret(hooks_file.token) else {
                return Err(Error::ConfigInvalid {
                    path,
                    message: "hooks.enabled needs hooks.token".into(),
                });
            };
            let p = hooks_file.path.unwrap_or_else(|| "/hooks".into());
            Some(HooksConfig {
                token,
                path: format!("/{}", p.trim_matches('/')),
                max_body_bytes: hooks_file.max_body_bytes.unwrap_or(256 * 1024),
            })
        } else {
            None
        };

        let unmodelled = parsed
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !MODELLED.contains(&k.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(
                raw.as_deref().unwrap_or("").as_bytes(),
            ))
        };
        Ok(Config {
            path,
            state_dir: state_dir.to_path_buf(),
            raw,
            parsed,
            hash,
            port,
            auth,
            agents,
            default_agent,
            default_model,
            timeout_seconds: agents_file.defaults.timeout_seconds.unwrap_or(600),
            bindings,
            session,
            providers,
            hooks,
            chat_completions_enabled,
            unmodelled,
            env,
        })
    }

    pub fn agent(&self, id: &AgentId) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| &a.id == id)
    }

    /// The agent's model choice: its own `model`, else `agents.defaults.model`, else Clawdbot's default.
    pub fn model_for(&self, agent: &AgentConfig) -> ModelChoice {
        let mut m = agent.model.clone();
        if m.primary.is_none() {
            m.primary = self.default_model.primary.clone();
        }
        if m.fallbacks.is_empty() && agent.model.primary.is_none() {
            m.fallbacks = self.default_model.fallbacks.clone();
        }
        if m.primary.is_none() {
            m.primary = Some("anthropic/claude-opus-4-5".into());
        }
        m
    }
}

/// A JSON5 syntax error without the source line the parser quotes (it may hold a token): position and what was
/// expected only.
fn syntax_message(e: &json5::Error) -> String {
    let json5::Error::Message { msg, location } = e;
    let expected = msg
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("= "))
        .unwrap_or("invalid JSON5");
    match location {
        Some(l) => format!(
            "syntax error at line {}, column {}: {expected}",
            l.line, l.column
        ),
        None => format!("syntax error: {expected}"),
    }
}

fn from_section<T: serde::de::DeserializeOwned + Default>(
    v: Value,
) -> Result<T, serde_json::Error> {
    if v.is_null() {
        Ok(T::default())
    } else {
        serde_json::from_value(v)
    }
}

/// `session.store` as Clawdbot resolves it (`resolveStorePath`): `{agentId}` replaced, `~` = home; relative paths
/// are taken from the state dir (Clawdbot: the cwd, which a worker does not rely on).
#[derive(Debug)]
struct StoreTemplate {
    template: Option<String>,
}

impl StoreTemplate {
    fn new(raw: Option<&str>, state_dir: &Path, home: Option<&str>, agents: usize) -> Self {
        let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return StoreTemplate { template: None };
        };
        if agents > 1 && !raw.contains("{agentId}") {
            // One index shared by several agents would be rewritten by each of them in turn.
            tracing::warn!(
                "session.store without {{agentId}} is ignored with several agents; using each agent's own sessions dir"
            );
            return StoreTemplate { template: None };
        }
        let expanded = match (raw.strip_prefix('~'), home) {
            (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                format!("{home}{rest}")
            }
            _ => raw.to_string(),
        };
        let path = Path::new(&expanded);
        let full = if path.is_absolute() {
            expanded
        } else {
            state_dir.join(path).display().to_string()
        };
        StoreTemplate {
            template: Some(full),
        }
    }

    fn path_for(&self, state_dir: &Path, id: &AgentId) -> PathBuf {
        match &self.template {
            Some(t) => PathBuf::from(t.replace("{agentId}", id.as_str())),
            None => state_dir
                .join("agents")
                .join(id.as_str())
                .join("sessions")
                .join("sessions.json"),
        }
    }
}

fn agent_config(
    state_dir: &Path,
    id: &AgentId,
    a: &AgentFile,
    d: &AgentDefaultsFile,
    first: bool,
    store: &StoreTemplate,
) -> AgentConfig {
    let workspace = a
        .workspace
        .clone()
        .or_else(|| {
            if first {
                d.workspace.clone()
            } else {
                d.workspace.as_ref().map(|w| format!("{w}-{id}"))
            }
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            state_dir.join(if first {
                "workspace".to_string()
            } else {
                format!("workspace-{id}")
            })
        });
    let agent_dir = a
        .agent_dir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir.join("agents").join(id.as_str()).join("agent"));
    let store_path = store.path_for(state_dir, id);
    let sessions_dir = store_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.to_path_buf());
    AgentConfig {
        id: id.clone(),
        name: a.name.clone(),
        identity: a.identity.clone(),
        workspace,
        agent_dir,
        store_path,
        sessions_dir,
        model: model_choice(a.model.as_ref()),
    }
}

fn model_choice(v: Option<&Value>) -> ModelChoice {
    match v {
        Some(Value::String(s)) => ModelChoice {
            primary: Some(s.clone()),
            fallbacks: Vec::new(),
        },
        Some(Value::Object(o)) => ModelChoice {
            primary: o.get("primary").and_then(Value::as_str).map(str::to_string),
            fallbacks: o
                .get("fallbacks")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        },
        _ => ModelChoice::default(),
    }
}

/// Replaces `${VAR}` (uppercase names) in every string value; `$${VAR}` stays literal as `${VAR}`.
/// A missing variable is an error naming it, as in Clawdbot.
pub fn substitute_env(v: &mut Value, env: &Env, path: &Path) -> Result<(), Error> {
    match v {
        Value::String(s) if s.contains("${") => *s = substitute_str(s, env, path)?,
        Value::Array(a) => {
            for x in a {
                substitute_env(x, env, path)?;
            }
        }
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                substitute_env(x, env, path)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn substitute_str(s: &str, env: &Env, path: &Path) -> Result<String, Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let escaped = i > 0 && rest.as_bytes()[i - 1] == b'$';
        let after = &rest[i + 2..];
        let end = after.find('}');
        let name = end.map(|e| &after[..e]);
        let valid = name.is_some_and(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        match (valid, name, end) {
            (true, Some(name), Some(end)) => {
                if escaped {
                    out.push_str(&rest[..i - 1]);
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                } else {
                    out.push_str(&rest[..i]);
                    let value = env.get(name).ok_or_else(|| Error::MissingEnvVar {
                        path: path.into(),
                        var: name.to_string(),
                    })?;
                    out.push_str(value.expose());
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&rest[..i + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Config {
        Config::from_value(
            "/s/clawdbot.json".into(),
            Path::new("/s"),
            None,
            v,
            Env::default(),
        )
        .unwrap()
    }

    #[test]
    fn substitution_replaces_escapes_and_reports_missing() {
        let env = Env::from_pairs([("TOK", "abc"), ("A_1", "x")]);
        let p = Path::new("c.json");
        let mut v =
            json!({"a": "${TOK}", "b": ["pre-${A_1}-post"], "c": "$${TOK}", "d": "${lower}"});
        substitute_env(&mut v, &env, p).unwrap();
        assert_eq!(
            v,
            json!({"a": "abc", "b": ["pre-x-post"], "c": "${TOK}", "d": "${lower}"})
        );
        let mut v = json!({"a": "${NOPE}"});
        let e = substitute_env(&mut v, &env, p).unwrap_err();
        assert!(e.to_string().contains("NOPE"), "{e}");
    }

    #[test]
    fn unknown_keys_are_kept_and_listed() {
        let c = cfg(
            json!({"gateway": {"auth": {"token": "t"}, "tenant": "x"}, "frobnicate": {"a": 1}}),
        );
        assert_eq!(c.unmodelled, vec!["frobnicate".to_string()]);
        assert_eq!(c.parsed["frobnicate"]["a"], 1);
        assert!(matches!(c.auth, GatewayAuth::Token(_)));
    }

    #[test]
    fn agents_defaults_and_default_agent() {
        let c = cfg(
            json!({"agents": {"defaults": {"model": {"primary": "anthropic/x", "fallbacks": ["openai/y"]}},
            "list": [{"id": "alice"}, {"id": "bob", "default": true, "model": "openai/z"}]}}),
        );
        assert_eq!(c.default_agent.as_str(), "bob");
        let alice = c.agent(&AgentId::parse("alice").unwrap()).unwrap();
        assert_eq!(c.model_for(alice).primary.as_deref(), Some("anthropic/x"));
        assert_eq!(c.model_for(alice).fallbacks, vec!["openai/y".to_string()]);
        let bob = c.agent(&AgentId::parse("bob").unwrap()).unwrap();
        assert_eq!(
            c.model_for(bob),
            ModelChoice {
                primary: Some("openai/z".into()),
                fallbacks: vec![]
            }
        );
        assert_eq!(alice.sessions_dir, Path::new("/s/agents/alice/sessions"));
        assert_eq!(
            alice.store_path,
            Path::new("/s/agents/alice/sessions/sessions.json")
        );
    }

    #[test]
    fn session_store_template_puts_each_agent_apart() {
        let c = cfg(
            json!({"session": {"store": "/d/users/{agentId}/agents/main/sessions/sessions.json"},
            "agents": {"list": [{"id": "a"}, {"id": "b"}]}}),
        );
        let b = c.agent(&AgentId::parse("b").unwrap()).unwrap();
        assert_eq!(
            b.store_path,
            Path::new("/d/users/b/agents/main/sessions/sessions.json")
        );
        assert_eq!(b.sessions_dir, Path::new("/d/users/b/agents/main/sessions"));
        // Relative: from the state dir. Fixed path with several agents: ignored (each agent keeps its own).
        let c = cfg(json!({"session": {"store": "st/{agentId}/s.json"}}));
        assert_eq!(c.agents[0].store_path, Path::new("/s/st/main/s.json"));
        let c = cfg(json!({"session": {"store": "/x/sessions.json"},
            "agents": {"list": [{"id": "a"}, {"id": "b"}]}}));
        assert_eq!(
            c.agents[1].store_path,
            Path::new("/s/agents/b/sessions/sessions.json")
        );
        let c = cfg(json!({"session": {"store": "/x/sessions.json"}}));
        assert_eq!(c.agents[0].store_path, Path::new("/x/sessions.json"));
    }

    #[test]
    fn custom_provider_needs_known_api() {
        let r = Config::from_value(
            "c".into(),
            Path::new("/s"),
            None,
            json!({"models": {"providers": {"x": {"baseUrl": "http://h/v1", "api": "grpc"}}}}),
            Env::default(),
        );
        assert!(r.unwrap_err().to_string().contains("grpc"));
    }

    #[test]
    fn syntax_errors_do_not_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        crate::atomic::write_file(
            &dir.path().join("clawdbot.json"),
            b"{gateway: {auth: {token: \"sekrit-token\" oops}}}",
            0o600,
        )
        .unwrap();
        let e = Config::load(dir.path(), Env::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("sekrit"), "{e}");
    }

    #[test]
    fn env_file_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        crate::atomic::write_file(&p, b"# c\nexport A=1\nB=\"two\"\n\n", 0o600).unwrap();
        let mut env = Env::from_pairs([("A", "0")]);
        env.overlay_file(&p).unwrap();
        assert_eq!(env.get("A").unwrap().expose(), "1");
        assert_eq!(env.get("B").unwrap().expose(), "two");
        crate::atomic::write_file(&p, b"oops\n", 0o600).unwrap();
        assert!(env.overlay_file(&p).is_err());
    }
}
