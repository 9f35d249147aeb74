//! SKILL.md skills: discovery with Clawdbot's precedence (extraDirs < bundled < managed `<state>/skills` <
//! `<workspace>/skills`), the single-line front matter, gating (bins on PATH, env, config, `enabled:false`,
//! OS, bundled allow-list), the `<available_skills>` prompt block, and the `skills.status` result.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Errors while discovering or reading skills.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("skills: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `skill_read` asked for a skill that is not loaded (or not eligible).
    #[error("skills: no skill named {name:?}")]
    UnknownSkill { name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const NAME_MAX: usize = 64;
const DESCRIPTION_MAX: usize = 1024;

/// Where a skill was found; later sources override earlier ones by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum SkillSource {
    #[serde(rename = "clawdbot-extra")]
    Extra,
    #[serde(rename = "clawdbot-bundled")]
    Bundled,
    #[serde(rename = "clawdbot-managed")]
    Managed,
    #[serde(rename = "clawdbot-workspace")]
    Workspace,
}

/// `requires` of `metadata.clawdbot` (also used for what is missing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Requires {
    pub bins: Vec<String>,
    pub any_bins: Vec<String>,
    pub env: Vec<String>,
    pub config: Vec<String>,
}

/// `metadata: {"clawdbot": {…}}` of a SKILL.md.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClawdbotMeta {
    pub always: bool,
    pub emoji: Option<String>,
    pub homepage: Option<String>,
    pub os: Vec<String>,
    pub requires: Requires,
    pub primary_env: Option<String>,
    pub skill_key: Option<String>,
    pub install: Vec<Value>,
}

/// One discovered skill.
#[derive(Debug, Clone, PartialEq)]
pub struct Skill {
    pub name: String,
    pub description: String,
    /// The SKILL.md file (the `<location>` in the prompt).
    pub file_path: PathBuf,
    /// Its directory (`{baseDir}` in the body).
    pub base_dir: PathBuf,
    pub source: SkillSource,
    /// Every front-matter key as written (single-line values, quotes removed).
    pub frontmatter: BTreeMap<String, String>,
    pub meta: ClawdbotMeta,
}

impl Skill {
    /// The key of `skills.entries.<key>`: `metadata.clawdbot.skillKey`, else the name.
    pub fn key(&self) -> &str {
        self.meta.skill_key.as_deref().unwrap_or(&self.name)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.frontmatter
            .get(key)
            .map(|v| v.eq_ignore_ascii_case("true"))
    }

    /// `disable-model-invocation: true` keeps a skill out of the prompt (it stays a slash command).
    pub fn model_invocable(&self) -> bool {
        self.flag("disable-model-invocation") != Some(true)
    }
}

/// The `skills` object of clawdbot.json (only what discovery and gating use).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SkillsConfig {
    pub load: LoadConfig,
    pub entries: BTreeMap<String, SkillEntry>,
    /// When set, only these bundled skills are eligible.
    pub allow_bundled: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadConfig {
    pub extra_dirs: Vec<PathBuf>,
}

/// `skills.entries.<key>`.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SkillEntry {
    pub enabled: Option<bool>,
    pub api_key: Option<String>,
    pub env: BTreeMap<String, String>,
    pub config: Option<Value>,
}

impl std::fmt::Debug for SkillEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // apiKey and env values are credentials.
        f.debug_struct("SkillEntry")
            .field("enabled", &self.enabled)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SkillsConfig {
    /// Parses the `skills` object of clawdbot.json (unknown keys ignored).
    pub fn from_json(value: &Value) -> Result<Self, serde_json::Error> {
        SkillsConfig::deserialize(value)
    }
}

/// The directories searched, in precedence order.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillDirs {
    pub extra: Vec<PathBuf>,
    /// Skills shipped with the worker (`CLAWDBOT_BUNDLED_SKILLS_DIR`, or none).
    pub bundled: Option<PathBuf>,
    /// `<state>/skills`, shared by all agents.
    pub managed: PathBuf,
    /// `<workspace>/skills`.
    pub workspace: PathBuf,
}

impl SkillDirs {
    pub fn new(
        state_dir: &Path,
        workspace: &Path,
        config: &SkillsConfig,
        bundled: Option<PathBuf>,
    ) -> Self {
        SkillDirs {
            extra: config.load.extra_dirs.clone(),
            bundled,
            managed: state_dir.join("skills"),
            workspace: workspace.join("skills"),
        }
    }
}

/// What gating looks at, passed in (never read from the process by the checks themselves) so tests can pin it.
#[derive(Debug, Clone, Default)]
pub struct GateEnv {
    /// `PATH` to look binaries up in.
    pub path: Option<OsString>,
    /// Names of environment variables that are set (values are never needed).
    pub env_vars: HashSet<String>,
    /// The whole clawdbot.json, for `requires.config` paths.
    pub config: Value,
    /// `linux`, `darwin`, `win32` (Node's names, as skills write them).
    pub os: String,
}

impl GateEnv {
    /// This process's PATH and environment variable names, on this OS.
    pub fn from_process(config: Value) -> Self {
        GateEnv {
            path: std::env::var_os("PATH"),
            env_vars: std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .collect(),
            config,
            os: node_platform().to_owned(),
        }
    }
}

fn node_platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    }
}

/// Splits `---`-delimited front matter into single-line `key: value` pairs (quotes stripped) and the body.
/// Lines that are blank, comments, indented continuations or lack a colon are ignored, as Clawdbot's
/// single-line parser does.
pub fn parse_front_matter(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut map = BTreeMap::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return (map, text);
    };
    let mut body = "";
    let mut offset = 0;
    let mut closed = false;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        let trimmed = line.trim_end_matches(['\n', '\r']);
        if trimmed.trim_end() == "---" {
            body = &rest[offset..];
            closed = true;
            break;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((key, value)) = trimmed.split_once(':') {
            let key = key.trim();
            if key.is_empty() {
                continue;
            }
            map.insert(key.to_owned(), unquote(value.trim()).to_owned());
        }
    }
    if !closed {
        return (BTreeMap::new(), text);
    }
    (map, body)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

fn valid_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses one SKILL.md; `None` (with a warning) when it has no description or no usable name.
pub fn parse_skill(file_path: &Path, text: &str, source: SkillSource) -> Option<Skill> {
    let (frontmatter, _body) = parse_front_matter(text);
    let base_dir = file_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dir_name = base_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_owned();
    let name = frontmatter
        .get("name")
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or(dir_name);
    if !valid_name(&name) {
        tracing::warn!(path = %file_path.display(), name, "skill skipped: name must be 1-64 of [a-z0-9-]");
        return None;
    }
    let description = frontmatter
        .get("description")
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    if description.is_empty() {
        tracing::warn!(path = %file_path.display(), "skill skipped: description is required");
        return None;
    }
    let description = if description.chars().count() > DESCRIPTION_MAX {
        tracing::warn!(path = %file_path.display(), "skill description cut to 1024 characters");
        description.chars().take(DESCRIPTION_MAX).collect()
    } else {
        description
    };
    let meta = match frontmatter.get("metadata") {
        None => ClawdbotMeta::default(),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(v) => v
                .get("clawdbot")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .unwrap_or_else(|error| {
                    tracing::warn!(path = %file_path.display(), %error, "skill metadata.clawdbot ignored");
                    None
                })
                .unwrap_or_default(),
            Err(error) => {
                tracing::warn!(path = %file_path.display(), %error, "skill metadata is not single-line JSON; ignored");
                ClawdbotMeta::default()
            }
        },
    };
    Some(Skill {
        name,
        description,
        file_path: file_path.to_path_buf(),
        base_dir,
        source,
        frontmatter,
        meta,
    })
}

/// Every skill below `dir`: a directory holding SKILL.md is a skill; other directories are searched
/// recursively (dot-directories and node_modules skipped). A missing `dir` has no skills.
pub fn scan_dir(dir: &Path, source: SkillSource) -> Result<Vec<Skill>> {
    let mut out = Vec::new();
    scan(dir, source, &mut out, 0)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn scan(dir: &Path, source: SkillSource, out: &mut Vec<Skill>, depth: usize) -> Result<()> {
    if depth > 8 {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => {
            return Err(Error::Io {
                op: "read dir",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Io {
            op: "read dir",
            path: dir.to_path_buf(),
            source: e,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "node_modules" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    for sub in dirs {
        let skill_md = sub.join("SKILL.md");
        if skill_md.is_file() {
            let text = std::fs::read_to_string(&skill_md).map_err(|e| Error::Io {
                op: "read",
                path: skill_md.clone(),
                source: e,
            })?;
            out.extend(parse_skill(&skill_md, &text, source));
        } else {
            scan(&sub, source, out, depth + 1)?;
        }
    }
    Ok(())
}

/// All skills by precedence: a later source replaces an earlier skill of the same name. Sorted by name.
pub fn load_skills(dirs: &SkillDirs) -> Result<Vec<Skill>> {
    let mut by_name: BTreeMap<String, Skill> = BTreeMap::new();
    let mut layers: Vec<(&Path, SkillSource)> = dirs
        .extra
        .iter()
        .map(|d| (d.as_path(), SkillSource::Extra))
        .collect();
    if let Some(b) = &dirs.bundled {
        layers.push((b, SkillSource::Bundled));
    }
    layers.push((&dirs.managed, SkillSource::Managed));
    layers.push((&dirs.workspace, SkillSource::Workspace));
    for (dir, source) in layers {
        for skill in scan_dir(dir, source)? {
            by_name.insert(skill.name.clone(), skill);
        }
    }
    Ok(by_name.into_values().collect())
}

/// The eligibility of one skill and what it lacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    pub eligible: bool,
    /// `skills.entries.<key>.enabled: false`.
    pub disabled: bool,
    pub blocked_by_allowlist: bool,
    pub missing: Requires,
    pub missing_os: Vec<String>,
}

fn on_path(path: Option<&OsString>, bin: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if bin.contains('/') {
        return false;
    }
    path.is_some_and(|p| {
        std::env::split_paths(p).any(|dir| {
            std::fs::metadata(dir.join(bin))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn config_truthy(config: &Value, dotted: &str) -> bool {
    let mut cur = config;
    for part in dotted.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match cur {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Clawdbot's `shouldIncludeSkill`: disabled → no; bundled but not allow-listed → no; wrong OS → no;
/// `always` → yes; otherwise every bin on PATH, one of `anyBins`, every env var (process, `entries.env`, or
/// `apiKey` for the `primaryEnv`), and every config path truthy.
pub fn gate(skill: &Skill, config: &SkillsConfig, env: &GateEnv) -> Gate {
    let entry = config.entries.get(skill.key());
    let disabled = entry.and_then(|e| e.enabled) == Some(false);
    let blocked_by_allowlist = skill.source == SkillSource::Bundled
        && config
            .allow_bundled
            .as_ref()
            .is_some_and(|allow| !allow.iter().any(|a| a == &skill.name || a == skill.key()));
    let missing_os: Vec<String> =
        if skill.meta.os.is_empty() || skill.meta.os.iter().any(|o| o == &env.os) {
            Vec::new()
        } else {
            skill.meta.os.clone()
        };
    let req = &skill.meta.requires;
    let mut missing = Requires::default();
    if !skill.meta.always {
        missing.bins = req
            .bins
            .iter()
            .filter(|b| !on_path(env.path.as_ref(), b))
            .cloned()
            .collect();
        if !req.any_bins.is_empty() && !req.any_bins.iter().any(|b| on_path(env.path.as_ref(), b)) {
            missing.any_bins = req.any_bins.clone();
        }
        missing.env = req
            .env
            .iter()
            .filter(|var| {
                let from_entry = entry.is_some_and(|e| {
                    e.env.get(*var).is_some_and(|v| !v.is_empty())
                        || (e.api_key.as_ref().is_some_and(|k| !k.is_empty())
                            && skill.meta.primary_env.as_deref() == Some(var.as_str()))
                });
                !env.env_vars.contains(*var) && !from_entry
            })
            .cloned()
            .collect();
        missing.config = req
            .config
            .iter()
            .filter(|p| !config_truthy(&env.config, p))
            .cloned()
            .collect();
    }
    let eligible = !disabled
        && !blocked_by_allowlist
        && missing_os.is_empty()
        && missing == Requires::default();
    Gate {
        eligible,
        disabled,
        blocked_by_allowlist,
        missing,
        missing_os,
    }
}

/// The skills that may enter the prompt: eligible and not `disable-model-invocation`.
pub fn eligible_skills(skills: &[Skill], config: &SkillsConfig, env: &GateEnv) -> Vec<Skill> {
    skills
        .iter()
        .filter(|s| s.model_invocable() && gate(s, config, env).eligible)
        .cloned()
        .collect()
}

fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The system-prompt section listing `skills` (already gated) as Clawdbot's `<available_skills>` XML block;
/// empty when there are none. The model loads a SKILL.md on demand with the `skill_read` tool.
pub fn available_skills_block(skills: &[Skill]) -> String {
    if skills.is_empty() {
        return String::new();
    }
    let mut lines = vec![
        "The following skills provide specialized instructions for specific tasks.".to_owned(),
        "Use the skill_read tool (with the skill's name) to load a skill's file when the task matches its description.".to_owned(),
        String::new(),
        "<available_skills>".to_owned(),
    ];
    for s in skills {
        lines.push("  <skill>".to_owned());
        lines.push(format!("    <name>{}</name>", escape_xml(&s.name)));
        lines.push(format!(
            "    <description>{}</description>",
            escape_xml(&s.description)
        ));
        lines.push(format!(
            "    <location>{}</location>",
            escape_xml(&s.file_path.to_string_lossy())
        ));
        lines.push("  </skill>".to_owned());
    }
    lines.push("</available_skills>".to_owned());
    lines.join("\n")
}

/// The body of a loaded skill's SKILL.md with `{baseDir}` replaced (for the `skill_read` tool).
pub fn read_skill(skills: &[Skill], name: &str) -> Result<String> {
    let skill = skills
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::UnknownSkill {
            name: name.to_owned(),
        })?;
    let text = std::fs::read_to_string(&skill.file_path).map_err(|e| Error::Io {
        op: "read",
        path: skill.file_path.clone(),
        source: e,
    })?;
    Ok(text.replace("{baseDir}", &skill.base_dir.to_string_lossy()))
}

/// The `skills.status` result: every loaded skill with its requirements, what is missing, and eligibility.
pub fn skills_status(
    dirs: &SkillDirs,
    skills: &[Skill],
    config: &SkillsConfig,
    env: &GateEnv,
) -> Value {
    let entries: Vec<Value> = skills
        .iter()
        .map(|s| {
            let g = gate(s, config, env);
            let mut missing = serde_json::to_value(&g.missing).unwrap_or_else(|_| json!({}));
            missing["os"] = json!(g.missing_os);
            let mut requirements = serde_json::to_value(&s.meta.requires).unwrap_or_else(|_| json!({}));
            requirements["os"] = json!(s.meta.os);
            json!({
                "name": s.name,
                "description": s.description,
                "source": s.source,
                "filePath": s.file_path,
                "baseDir": s.base_dir,
                "skillKey": s.key(),
                "primaryEnv": s.meta.primary_env,
                "emoji": s.meta.emoji,
                "homepage": s.meta.homepage.clone().or_else(|| s.frontmatter.get("homepage").cloned()),
                "always": s.meta.always,
                "disabled": g.disabled,
                "blockedByAllowlist": g.blocked_by_allowlist,
                "eligible": g.eligible,
                "requirements": requirements,
                "missing": missing,
                "configChecks": [],
                "install": s.meta.install,
            })
        })
        .collect();
    json!({ "workspaceDir": dirs.workspace.parent(), "managedSkillsDir": dirs.managed, "skills": entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        crate::memory::atomic::write_atomic(path, text.as_bytes(), 0o644).unwrap();
    }

    fn skill_md(name: &str, description: &str, meta: &str) -> String {
        format!(
            "---\nname: {name}\ndescription: \"{description}\"\nmetadata: {meta}\n---\n# {name}\nBody in {{baseDir}}.\n"
        )
    }

    #[test]
    fn front_matter_takes_single_line_keys_and_returns_the_body() {
        let text = "---\nname: weather\ndescription: 'Get the weather'\n# comment\nmetadata: {\"clawdbot\":{\"emoji\":\"🌤️\",\"requires\":{\"bins\":[\"curl\"]}}}\n  indented: ignored\nuser-invocable: true\n---\nBody\n";
        let (fm, body) = parse_front_matter(text);
        assert_eq!(fm.get("name").unwrap(), "weather");
        assert_eq!(fm.get("description").unwrap(), "Get the weather");
        assert!(!fm.contains_key("indented"));
        assert_eq!(body, "Body\n");
        let skill =
            parse_skill(Path::new("/s/weather/SKILL.md"), text, SkillSource::Bundled).unwrap();
        assert_eq!(skill.meta.requires.bins, ["curl"]);
        assert_eq!(skill.meta.emoji.as_deref(), Some("🌤️"));
        // No front matter, or no closing fence: no keys.
        assert!(parse_front_matter("# just markdown").0.is_empty());
        assert!(parse_front_matter("---\nname: x\n").0.is_empty());
    }

    #[test]
    fn name_falls_back_to_dir_and_bad_skills_are_dropped() {
        let s = parse_skill(
            Path::new("/s/my-skill/SKILL.md"),
            "---\ndescription: d\n---\n",
            SkillSource::Managed,
        )
        .unwrap();
        assert_eq!(s.name, "my-skill");
        assert!(
            parse_skill(
                Path::new("/s/x/SKILL.md"),
                "---\nname: x\n---\n",
                SkillSource::Managed
            )
            .is_none()
        );
        assert!(
            parse_skill(
                Path::new("/s/x/SKILL.md"),
                "---\nname: Bad_Name\ndescription: d\n---\n",
                SkillSource::Managed
            )
            .is_none()
        );
        let long = format!("---\ndescription: {}\n---\n", "d".repeat(2000));
        assert_eq!(
            parse_skill(Path::new("/s/x/SKILL.md"), &long, SkillSource::Managed)
                .unwrap()
                .description
                .len(),
            1024
        );
    }

    #[test]
    fn precedence_recursion_and_skipped_dirs() {
        let root = tempfile::tempdir().unwrap();
        let (extra, bundled, state, ws) = (
            root.path().join("extra"),
            root.path().join("bundled"),
            root.path().join("state"),
            root.path().join("ws"),
        );
        write(
            &extra.join("a/SKILL.md"),
            &skill_md("a", "from extra", "{}"),
        );
        write(
            &bundled.join("a/SKILL.md"),
            &skill_md("a", "from bundled", "{}"),
        );
        write(
            &bundled.join("group/nested/b/SKILL.md"),
            &skill_md("b", "nested bundled", "{}"),
        );
        write(
            &bundled.join(".hidden/c/SKILL.md"),
            &skill_md("c", "hidden", "{}"),
        );
        write(
            &bundled.join("node_modules/d/SKILL.md"),
            &skill_md("d", "dependency", "{}"),
        );
        write(
            &state.join("skills/b/SKILL.md"),
            &skill_md("b", "managed", "{}"),
        );
        write(
            &ws.join("skills/a/SKILL.md"),
            &skill_md("a", "workspace", "{}"),
        );
        let config = SkillsConfig::from_json(&json!({"load": {"extraDirs": [extra]}})).unwrap();
        let dirs = SkillDirs::new(&state, &ws, &config, Some(bundled));
        let skills = load_skills(&dirs).unwrap();
        let got: Vec<(&str, &str, SkillSource)> = skills
            .iter()
            .map(|s| (s.name.as_str(), s.description.as_str(), s.source))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "workspace", SkillSource::Workspace),
                ("b", "managed", SkillSource::Managed)
            ]
        );
    }

    #[test]
    fn gating_checks_bins_env_config_os_and_enabled() {
        let bin_dir = tempfile::tempdir().unwrap();
        write(&bin_dir.path().join("present-tool"), "#!/bin/sh\n");
        std::fs::set_permissions(
            bin_dir.path().join("present-tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        write(&bin_dir.path().join("not-executable"), "x");
        let env = GateEnv {
            path: Some(bin_dir.path().as_os_str().to_owned()),
            env_vars: ["HOME".to_owned()].into(),
            config: json!({"browser": {"enabled": true}, "off": false}),
            os: "linux".into(),
        };
        let mk = |meta: &str| {
            parse_skill(
                Path::new("/s/t/SKILL.md"),
                &skill_md("t", "d", meta),
                SkillSource::Managed,
            )
            .unwrap()
        };
        let none = SkillsConfig::default();
        assert!(gate(&mk(r#"{"clawdbot":{"requires":{"bins":["present-tool"],"env":["HOME"],"config":["browser.enabled"]}}}"#), &none, &env).eligible);
        let g = gate(
            &mk(
                r#"{"clawdbot":{"requires":{"bins":["present-tool","missing-tool","not-executable"]}}}"#,
            ),
            &none,
            &env,
        );
        assert_eq!(g.missing.bins, ["missing-tool", "not-executable"]);
        assert!(!g.eligible);
        assert!(
            gate(
                &mk(r#"{"clawdbot":{"requires":{"anyBins":["missing-tool","present-tool"]}}}"#),
                &none,
                &env
            )
            .eligible
        );
        assert_eq!(
            gate(
                &mk(r#"{"clawdbot":{"requires":{"anyBins":["x","y"]}}}"#),
                &none,
                &env
            )
            .missing
            .any_bins,
            ["x", "y"]
        );
        assert_eq!(
            gate(
                &mk(r#"{"clawdbot":{"requires":{"config":["off","nope.x"]}}}"#),
                &none,
                &env
            )
            .missing
            .config,
            ["off", "nope.x"]
        );
        assert_eq!(
            gate(&mk(r#"{"clawdbot":{"os":["darwin"]}}"#), &none, &env).missing_os,
            ["darwin"]
        );
        assert!(
            gate(
                &mk(r#"{"clawdbot":{"always":true,"requires":{"bins":["missing-tool"]}}}"#),
                &none,
                &env
            )
            .eligible
        );
        // env satisfied through skills.entries (env or apiKey for primaryEnv); enabled:false disables.
        let needs_key = mk(r#"{"clawdbot":{"primaryEnv":"T_KEY","requires":{"env":["T_KEY"]}}}"#);
        assert!(!gate(&needs_key, &none, &env).eligible);
        let with_key =
            SkillsConfig::from_json(&json!({"entries": {"t": {"apiKey": "k"}}})).unwrap();
        assert!(gate(&needs_key, &with_key, &env).eligible);
        let with_env =
            SkillsConfig::from_json(&json!({"entries": {"t": {"env": {"T_KEY": "v"}}}})).unwrap();
        assert!(gate(&needs_key, &with_env, &env).eligible);
        let disabled =
            SkillsConfig::from_json(&json!({"entries": {"t": {"enabled": false}}})).unwrap();
        let g = gate(&mk("{}"), &disabled, &env);
        assert!(g.disabled && !g.eligible);
        assert!(!format!("{with_key:?}").contains("\"k\""));
    }

    #[test]
    fn block_is_escaped_xml_and_empty_without_skills() {
        let mut s = parse_skill(
            Path::new("/s/x/SKILL.md"),
            "---\ndescription: Tom & Jerry <3\n---\n",
            SkillSource::Managed,
        )
        .unwrap();
        assert_eq!(available_skills_block(&[]), "");
        let block = available_skills_block(std::slice::from_ref(&s));
        assert!(block.contains("<available_skills>\n  <skill>\n    <name>x</name>\n    <description>Tom &amp; Jerry &lt;3</description>\n    <location>/s/x/SKILL.md</location>\n  </skill>\n</available_skills>"), "{block}");
        s.frontmatter
            .insert("disable-model-invocation".into(), "true".into());
        assert!(eligible_skills(&[s], &SkillsConfig::default(), &GateEnv::default()).is_empty());
    }
}
