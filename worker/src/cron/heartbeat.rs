//! The agent heartbeat (Clawdbot's `agents.defaults.heartbeat` merged with `agents.list[].heartbeat`): every
//! `every` (default 30m) a turn in each enabled agent's main session with the heartbeat prompt ("Read
//! HEARTBEAT.md if it exists…"). A reply that is only the ack token `HEARTBEAT_OK` (or the token plus at most
//! `ackMaxChars` characters) is not kept: its turn is pruned from the transcript, as Clawdbot does, so it is no
//! visible message and does not pollute the context. Anything else stays in the main session as the agent's message.
//!
//! Which agents: those of `agents.list[]` that have a `heartbeat` key, or, when none has, the default agent only.
//! Skipped (a `heartbeat` event says why): outside `activeHours`, while any run is in flight, and when
//! `HEARTBEAT.md` is missing or effectively empty (headings, empty list items) unless system events wait for the
//! main session. The schedule is re-read from the live config every tick, so a reload takes effect.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Timelike as _;
use chrono_tz::Tz;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::schedule::heartbeat_interval;
use crate::agent_id::AgentId;
use crate::chat_run::{self, StartRun, Started};
use crate::config::AgentConfig;
use crate::hub::Audience;
use crate::runs;
use crate::session_key::SessionKey;
use crate::state::Gateway;

/// The ack token.
pub const HEARTBEAT_TOKEN: &str = "HEARTBEAT_OK";
/// Clawdbot 2026.1.24's default heartbeat prompt (`HEARTBEAT_PROMPT`), sent verbatim as the user message.
pub const DEFAULT_PROMPT: &str = "Read HEARTBEAT.md if it exists (workspace context). Follow it strictly. Do not infer or repeat old tasks from prior chats. If nothing needs attention, reply HEARTBEAT_OK.";
/// Characters allowed next to the token for a reply to still count as an ack (Clawdbot's default).
pub const DEFAULT_ACK_MAX_CHARS: usize = 300;
/// Default `every`.
const DEFAULT_EVERY: &str = "30m";
/// Default `target` (Clawdbot: the last channel the member used).
const DEFAULT_TARGET: &str = "last";
/// The workspace file the prompt points at.
const HEARTBEAT_FILE: &str = "HEARTBEAT.md";
/// A heartbeat turn may take this long.
const TURN_TIMEOUT: Duration = Duration::from_secs(600);
/// The runner re-reads the config at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// `activeHours`: heartbeats only run from `start` (inclusive) to `end` (exclusive), minutes of the day in `zone`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHours {
    start_min: u32,
    end_min: u32,
    zone: Zone,
}

#[derive(Debug, Clone, PartialEq)]
enum Zone {
    /// `timezone` missing or `"user"`: the member's zone (`agents.defaults.userTimezone`, else UTC).
    User,
    /// `"local"`: the host's zone.
    Local,
    Named(Tz),
}

/// One agent's resolved heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatSettings {
    /// `every` as configured (e.g. `30m`).
    pub every_raw: String,
    pub every: Duration,
    pub prompt: String,
    /// `target`: kept and reported; the worker has no outbound channels, so a non-ack reply is delivered only
    /// to the main session (its transcript and connected clients).
    pub target: String,
    pub ack_max_chars: usize,
    pub active_hours: Option<ActiveHours>,
}

/// The heartbeat of `agent`, or `None` when it has none (not enabled for it, `every` is 0 or does not parse).
pub fn settings(
    parsed: &Value,
    agent: &AgentId,
    default_agent: &AgentId,
) -> Option<HeartbeatSettings> {
    let list = parsed
        .pointer("/agents/list")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let own = list
        .iter()
        .find(|a| a.get("id").and_then(Value::as_str) == Some(agent.as_str()))
        .and_then(|a| a.get("heartbeat"));
    let explicit = list.iter().any(|a| a.get("heartbeat").is_some());
    if (explicit && own.is_none()) || (!explicit && agent != default_agent) {
        return None;
    }
    let mut merged = parsed
        .pointer("/agents/defaults/heartbeat")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(own)) = own {
        merged.extend(own.clone());
    }
    let every_raw = match merged.get("every") {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => DEFAULT_EVERY.to_owned(),
    };
    let every = match heartbeat_interval(Some(&every_raw)) {
        Ok(Some(every)) => every,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(agent = %agent, %error, "heartbeat.every does not parse; heartbeat off");
            return None;
        }
    };
    let text = |key: &str| {
        merged
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    // Negative → 0 (Clawdbot: Math.max(0, n)).
    let ack_max_chars = match merged.get("ackMaxChars") {
        Some(n) if n.as_i64().is_some_and(|n| n < 0) => 0,
        Some(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_ACK_MAX_CHARS),
        None => DEFAULT_ACK_MAX_CHARS,
    };
    Some(HeartbeatSettings {
        every_raw,
        every,
        prompt: text("prompt").unwrap_or_else(|| DEFAULT_PROMPT.to_owned()),
        target: text("target").unwrap_or_else(|| DEFAULT_TARGET.to_owned()),
        ack_max_chars,
        active_hours: merged.get("activeHours").and_then(active_hours),
    })
}

/// The `heartbeat` object of an agent in the `health` payload (Clawdbot's `HeartbeatSummary`).
pub fn summary(settings: Option<&HeartbeatSettings>) -> Value {
    match settings {
        Some(s) => json!({"enabled": true, "every": s.every_raw,
            "everyMs": u64::try_from(s.every.as_millis()).unwrap_or(u64::MAX),
            "prompt": s.prompt, "target": s.target, "ackMaxChars": s.ack_max_chars}),
        None => {
            json!({"enabled": false, "every": "disabled", "everyMs": null, "prompt": DEFAULT_PROMPT,
            "target": DEFAULT_TARGET, "ackMaxChars": DEFAULT_ACK_MAX_CHARS})
        }
    }
}

/// `activeHours {start, end, timezone?}`; invalid or equal times mean "always" (`None`), as in Clawdbot.
fn active_hours(v: &Value) -> Option<ActiveHours> {
    let start_min = hhmm_minutes(v.get("start")?.as_str()?, false)?;
    let end_min = hhmm_minutes(v.get("end")?.as_str()?, true)?;
    if start_min == end_min {
        return None;
    }
    let zone = match v.get("timezone").and_then(Value::as_str).map(str::trim) {
        None | Some("" | "user") => Zone::User,
        Some("local") => Zone::Local,
        Some(name) => name.parse().map_or(Zone::User, Zone::Named),
    };
    Some(ActiveHours {
        start_min,
        end_min,
        zone,
    })
}

/// `HH:MM` (00-23, or `24:00` when `allow_24`) → minutes of the day.
fn hhmm_minutes(raw: &str, allow_24: bool) -> Option<u32> {
    let (h, m) = raw.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if allow_24 => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl ActiveHours {
    /// Whether `now` falls inside the window (`user_tz` stands for the member's zone).
    pub fn contains(&self, now: chrono::DateTime<chrono::Utc>, user_tz: Tz) -> bool {
        let (h, m) = match &self.zone {
            Zone::User => {
                let t = now.with_timezone(&user_tz);
                (t.hour(), t.minute())
            }
            Zone::Named(tz) => {
                let t = now.with_timezone(tz);
                (t.hour(), t.minute())
            }
            Zone::Local => {
                let t = now.with_timezone(&chrono::Local);
                (t.hour(), t.minute())
            }
        };
        let now_min = h * 60 + m;
        if self.end_min > self.start_min {
            (self.start_min..self.end_min).contains(&now_min)
        } else {
            now_min >= self.start_min || now_min < self.end_min
        }
    }
}

/// Whether `HEARTBEAT.md` holds nothing to act on: only blank lines, ATX headings (`#`, `## x`) and empty list
/// items (`-`, `* [ ]`). Clawdbot's `isHeartbeatContentEffectivelyEmpty`.
pub fn effectively_empty(content: &str) -> bool {
    content.lines().map(str::trim).all(|line| {
        if line.is_empty() {
            return true;
        }
        let hashes = line.len() - line.trim_start_matches('#').len();
        if hashes > 0
            && line[hashes..]
                .chars()
                .next()
                .is_none_or(char::is_whitespace)
        {
            return true;
        }
        let Some(rest) = line.strip_prefix(['-', '*', '+']) else {
            return false;
        };
        let rest = rest.trim();
        rest.is_empty() || matches!(rest, "[]" | "[ ]" | "[x]" | "[X]")
    })
}

/// What a heartbeat reply amounts to: `None` = an ack to drop (just the token, possibly wrapped in markup or with
/// at most `ack_max_chars` other characters around it at the start or end), `Some(text)` = a message to keep
/// (with an edge token removed). Clawdbot's `stripHeartbeatToken` in heartbeat mode.
pub fn strip_ack(reply: &str, ack_max_chars: usize) -> Option<String> {
    let trimmed = reply.trim();
    if trimmed.is_empty() {
        return None;
    }
    let normalized = strip_markup(trimmed);
    if !trimmed.contains(HEARTBEAT_TOKEN) && !normalized.contains(HEARTBEAT_TOKEN) {
        return Some(trimmed.to_owned());
    }
    let original = strip_token_at_edges(trimmed);
    let picked = match original {
        Some(ref t) if !t.is_empty() => original,
        _ => strip_token_at_edges(&normalized),
    };
    match picked {
        None => Some(trimmed.to_owned()),
        Some(rest) if rest.chars().count() <= ack_max_chars => None,
        Some(rest) => Some(rest),
    }
}

/// HTML tags → spaces, `&nbsp;` → space, markdown wrappers (`*`, `` ` ``, `~`, `_`) trimmed at both ends.
fn strip_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if in_tag => {}
            _ => out.push(c),
        }
    }
    let out = out.replace("&nbsp;", " ").replace("&NBSP;", " ");
    out.trim_matches(['*', '`', '~', '_']).to_owned()
}

/// Removes the token at the start and at the end (with up to 4 trailing non-word characters), repeatedly;
/// `None` when there was no token at an edge. Whitespace in what remains is collapsed.
fn strip_token_at_edges(text: &str) -> Option<String> {
    let mut text = text.trim().to_owned();
    let mut stripped = false;
    loop {
        let t = text.trim();
        if let Some(after) = t.strip_prefix(HEARTBEAT_TOKEN) {
            text = after.trim_start().to_owned();
            stripped = true;
            continue;
        }
        let Some(idx) = t.rfind(HEARTBEAT_TOKEN) else {
            break;
        };
        let tail = &t[idx + HEARTBEAT_TOKEN.len()..];
        if tail.chars().count() > 4 || tail.chars().any(|c| c.is_alphanumeric() || c == '_') {
            break;
        }
        let before = t[..idx].trim_end();
        text = if before.is_empty() {
            String::new()
        } else {
            format!("{before}{}", tail.trim_start())
                .trim_end()
                .to_owned()
        };
        stripped = true;
    }
    stripped.then(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// How one heartbeat went, as sent in the `heartbeat` event (`status`, `reason`).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not run: `quiet-hours`, `requests-in-flight`, `empty-heartbeat-file`, `no-heartbeat-file`.
    Skipped(&'static str),
    /// The reply was an ack; its turn was pruned from the transcript.
    OkToken,
    /// The reply was an ack but the member wrote meanwhile, so the transcript was left as it is.
    OkTokenKept,
    /// The reply was a message; it stays in the main session.
    Sent(String),
    Failed(String),
}

impl Outcome {
    fn event(&self, agent: &AgentId, duration_ms: i64) -> Value {
        let (status, reason, preview) = match self {
            Outcome::Skipped(r) => ("skipped", Some(*r), None),
            Outcome::OkToken => ("ok-token", None, None),
            Outcome::OkTokenKept => ("ok-token", Some("transcript-busy"), None),
            Outcome::Sent(text) => (
                "sent",
                None,
                Some(text.chars().take(200).collect::<String>()),
            ),
            Outcome::Failed(e) => ("failed", Some(e.as_str()), None),
        };
        let mut v = json!({"ts": crate::transcript::now_ms(), "agentId": agent, "status": status,
            "durationMs": duration_ms});
        if let Some(r) = reason {
            v["reason"] = json!(r);
        }
        if let Some(p) = preview {
            v["preview"] = json!(p);
        }
        v
    }
}

/// Starts the heartbeat runner on the gateway's tasks; it stops with the gateway.
pub fn start(gw: &Arc<Gateway>) {
    let stop = gw.shutdown.child_token();
    gw.tasks.spawn(run(Arc::downgrade(gw), stop));
}

/// The runner: per agent, the next due time (`every` after the start, then after each run).
async fn run(weak: Weak<Gateway>, shutdown: CancellationToken) {
    tracing::info!("heartbeat runner started");
    // agent → (interval, next due).
    let mut due: HashMap<AgentId, (Duration, tokio::time::Instant)> = HashMap::new();
    while !shutdown.is_cancelled() {
        let Some(gw) = weak.upgrade() else { break };
        let cfg = gw.cfg();
        let now = tokio::time::Instant::now();
        let plan: Vec<(AgentConfig, HeartbeatSettings)> = cfg
            .agents
            .iter()
            .filter_map(|a| {
                settings(&cfg.parsed, &a.id, &cfg.default_agent).map(|s| (a.clone(), s))
            })
            .collect();
        due.retain(|id, _| plan.iter().any(|(a, _)| &a.id == id));
        for (agent, s) in &plan {
            let slot = due
                .entry(agent.id.clone())
                .or_insert((s.every, now + s.every));
            if slot.0 != s.every {
                *slot = (s.every, now + s.every);
            }
        }
        drop(cfg);
        for (agent, s) in plan {
            if shutdown.is_cancelled() {
                break;
            }
            if due
                .get(&agent.id)
                .is_some_and(|(_, at)| *at <= tokio::time::Instant::now())
            {
                let id = agent.id.clone();
                let every = s.every;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = run_once(&gw, agent, &s) => {}
                }
                due.insert(id, (every, tokio::time::Instant::now() + every));
            }
        }
        let next = due
            .values()
            .map(|(_, at)| *at)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + MAX_SLEEP)
            .min(tokio::time::Instant::now() + MAX_SLEEP);
        drop(gw);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    tracing::info!("heartbeat runner stopped");
}

/// One heartbeat of `agent`: checks, the turn, the ack handling; publishes a `heartbeat` event.
async fn run_once(gw: &Arc<Gateway>, agent: AgentConfig, s: &HeartbeatSettings) -> Outcome {
    let started = std::time::Instant::now();
    let id = agent.id.clone();
    let outcome = heartbeat(gw, agent, s).await;
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    match &outcome {
        Outcome::Failed(error) => tracing::warn!(agent = %id, %error, "heartbeat failed"),
        other => tracing::info!(agent = %id, outcome = ?other, duration_ms, "heartbeat"),
    }
    gw.hub.publish(
        "heartbeat",
        &outcome.event(&id, duration_ms),
        &Audience::Agent(id),
        false,
    );
    outcome
}

async fn heartbeat(gw: &Arc<Gateway>, agent: AgentConfig, s: &HeartbeatSettings) -> Outcome {
    if let Some(active) = &s.active_hours
        && !active.contains(chrono::Utc::now(), gw.features.timezone)
    {
        return Outcome::Skipped("quiet-hours");
    }
    if gw.runs.active() > 0 {
        return Outcome::Skipped("requests-in-flight");
    }
    let key = SessionKey::main(&agent.id, &gw.cfg().session.main_key);
    // Peek at the main session's queued system events (cron `next-heartbeat` jobs): they make a turn worth it.
    let pending = gw.features.take_system_events(key.as_str());
    let has_events = !pending.is_empty();
    for text in pending {
        gw.features.push_system_event(key.as_str(), text);
    }
    if !has_events {
        match std::fs::read_to_string(agent.workspace.join(HEARTBEAT_FILE)) {
            Ok(text) if effectively_empty(&text) => {
                return Outcome::Skipped("empty-heartbeat-file");
            }
            Ok(_) => {}
            Err(_) => return Outcome::Skipped("no-heartbeat-file"),
        }
    }

    let before = transcript_state(gw, &agent, &key);
    let run_id = format!("heartbeat-{}", uuid::Uuid::new_v4());
    let started = chat_run::start(
        gw,
        StartRun {
            run_id: run_id.clone(),
            agent: agent.clone(),
            key: key.clone(),
            message: s.prompt.clone(),
            channel: "heartbeat",
            extra_system: None,
            timeout: TURN_TIMEOUT,
            tap: None,
        },
    );
    match started {
        Err(e) => return Outcome::Failed(e.message),
        Ok(Started::Existing(_)) => return Outcome::Failed("run id collision".into()),
        Ok(Started::New { .. }) => {}
    }
    let Some((rx, _)) = gw.runs.watch(&run_id) else {
        return Outcome::Failed("run vanished".into());
    };
    let reply = match runs::wait(rx, TURN_TIMEOUT + Duration::from_secs(5)).await {
        Some(o) if o.status == "ok" => o.text,
        Some(o) => return Outcome::Failed(o.error.unwrap_or_else(|| format!("run {}", o.status))),
        None => return Outcome::Failed("run timed out".into()),
    };
    match strip_ack(&reply, s.ack_max_chars) {
        Some(text) => Outcome::Sent(text),
        None => match prune(gw, &agent, &key, before, &s.prompt) {
            Ok(true) => Outcome::OkToken,
            Ok(false) => Outcome::OkTokenKept,
            Err(e) => Outcome::Failed(format!("pruning the ack from the transcript failed: {e}")),
        },
    }
}

/// The main session's transcript file and its length before the heartbeat (`None`: no session yet).
fn transcript_state(gw: &Gateway, agent: &AgentConfig, key: &SessionKey) -> Option<(PathBuf, u64)> {
    let entry = gw.sessions.entry(agent, key).ok().flatten()?;
    let file = PathBuf::from(entry.get("sessionFile")?.as_str()?);
    let len = std::fs::metadata(&file).ok()?.len();
    Some((file, len))
}

/// Truncates the transcript back to where it was before the heartbeat turn, but only when everything after that
/// point belongs to it (one user message, the heartbeat prompt, then assistant and tool entries): a member who
/// wrote meanwhile keeps their message (returns `false`), and so does a run in flight. A session the heartbeat
/// created keeps only its header. The session store has no truncate of its own: a run registering and appending
/// in the instant between the check and the truncation would lose its entry (Clawdbot truncates unchecked).
fn prune(
    gw: &Gateway,
    agent: &AgentConfig,
    key: &SessionKey,
    before: Option<(PathBuf, u64)>,
    prompt: &str,
) -> std::io::Result<bool> {
    let (file, keep) = match before {
        Some(b) => b,
        None => {
            let Some((file, _)) = transcript_state(gw, agent, key) else {
                return Ok(false);
            };
            let header = first_line_len(&file)?;
            (file, header)
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)?;
    f.seek(std::io::SeekFrom::Start(keep))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    // A run that started meanwhile registers before it appends: leave the transcript to it.
    if !only_heartbeat_turn(&tail, prompt) || gw.runs.active() > 0 {
        return Ok(false);
    }
    f.set_len(keep)?;
    f.sync_all()?;
    // The session store caches the transcript's last entry id; drop it so the next entry chains to the real tail.
    gw.sessions.forget(&agent.store_path);
    Ok(true)
}

fn first_line_len(file: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(file)?;
    Ok(text.find('\n').map_or(0, |i| (i + 1) as u64))
}

/// `tail` (complete JSONL lines) is exactly one heartbeat turn: its user message first, then only assistant
/// messages and tool results.
fn only_heartbeat_turn(tail: &str, prompt: &str) -> bool {
    let mut lines = tail.lines().filter(|l| !l.trim().is_empty());
    let role = |line: &str| -> Option<(String, String)> {
        let v: Value = serde_json::from_str(line).ok()?;
        if v.get("type")?.as_str()? != "message" {
            return None;
        }
        let m = v.get("message")?;
        Some((
            m.get("role")?.as_str()?.to_owned(),
            crate::transcript::message_text(m),
        ))
    };
    let Some((first_role, first_text)) = lines.next().and_then(role) else {
        return false;
    };
    if first_role != "user" || !first_text.ends_with(prompt) {
        return false;
    }
    lines.all(|l| role(l).is_some_and(|(r, _)| r == "assistant" || r == "toolResult"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn settings_follow_clawdbots_agent_selection_and_merge() {
        let main = id("main");
        // No config at all: the default agent every 30 minutes with the default prompt.
        let s = settings(&json!({}), &main, &main).unwrap();
        assert_eq!(
            (
                s.every,
                s.prompt.as_str(),
                s.target.as_str(),
                s.ack_max_chars
            ),
            (Duration::from_secs(1800), DEFAULT_PROMPT, "last", 300)
        );
        assert!(settings(&json!({}), &id("bob"), &main).is_none());
        // Off with 0.
        let off = json!({"agents": {"defaults": {"heartbeat": {"every": "0m"}}}});
        assert!(settings(&off, &main, &main).is_none());
        // Any agent with its own heartbeat: only those agents, defaults merged under theirs.
        let cfg = json!({"agents": {"defaults": {"heartbeat": {"every": "1h", "prompt": "P", "ackMaxChars": 5}},
            "list": [{"id": "main"}, {"id": "bob", "heartbeat": {"every": "2s", "target": "none"}}]}});
        assert!(settings(&cfg, &main, &main).is_none());
        let bob = settings(&cfg, &id("bob"), &main).unwrap();
        assert_eq!(
            (
                bob.every,
                bob.prompt.as_str(),
                bob.target.as_str(),
                bob.ack_max_chars
            ),
            (Duration::from_secs(2), "P", "none", 5)
        );
        assert_eq!(summary(Some(&bob))["everyMs"], 2000);
        assert_eq!(summary(None)["enabled"], false);
    }

    #[test]
    fn active_hours_window_wraps_midnight_and_uses_the_zone() {
        let at = |h: u32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 1, 5)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
                .and_utc()
        };
        let day =
            active_hours(&json!({"start": "08:00", "end": "24:00", "timezone": "Europe/Berlin"}))
                .unwrap();
        assert!(day.contains(at(7, 0), Tz::UTC), "08:00 Berlin");
        assert!(!day.contains(at(6, 59), Tz::UTC));
        let night = active_hours(&json!({"start": "22:00", "end": "06:00"})).unwrap();
        assert!(night.contains(at(23, 0), Tz::UTC));
        assert!(night.contains(at(5, 59), Tz::UTC));
        assert!(!night.contains(at(6, 0), Tz::UTC));
        // The member's zone for "user": 22:00 UTC is 23:00 in Berlin.
        assert!(!night.contains(at(21, 30), Tz::UTC));
        assert!(night.contains(at(21, 30), "Europe/Berlin".parse().unwrap()));
        assert!(active_hours(&json!({"start": "9:00", "end": "17:00"})).is_none());
        assert!(active_hours(&json!({"start": "09:00", "end": "09:00"})).is_none());
    }

    #[test]
    fn heartbeat_file_emptiness() {
        assert!(effectively_empty(""));
        assert!(effectively_empty(
            "# HEARTBEAT.md\n\n## Tasks\n- \n- [ ]\n* [x]\n"
        ));
        assert!(!effectively_empty(
            "# Tasks\n- Check the launch checklist\n"
        ));
        assert!(!effectively_empty("#todo\n"));
    }

    #[test]
    fn acks_are_dropped_and_messages_kept() {
        for ack in [
            "HEARTBEAT_OK",
            "  HEARTBEAT_OK.  ",
            "**HEARTBEAT_OK**",
            "<b>HEARTBEAT_OK</b>",
            "HEARTBEAT_OK all quiet",
            "Nothing to do. HEARTBEAT_OK!!",
            "",
        ] {
            assert_eq!(strip_ack(ack, 300), None, "{ack:?}");
        }
        assert_eq!(
            strip_ack("HEARTBEAT_OK Reminder: ship it", 5).as_deref(),
            Some("Reminder: ship it")
        );
        assert_eq!(
            strip_ack("Reminder: the launch checklist has 2 open items.", 300).as_deref(),
            Some("Reminder: the launch checklist has 2 open items.")
        );
        // A token in the middle is not an ack.
        assert_eq!(
            strip_ack("Say HEARTBEAT_OK when done, please", 300).as_deref(),
            Some("Say HEARTBEAT_OK when done, please")
        );
    }

    #[test]
    fn only_a_lone_heartbeat_turn_is_prunable() {
        let user = |t: &str| {
            json!({"type": "message", "id": "a", "message": {"role": "user", "content": [{"type": "text", "text": t}]}})
                .to_string()
        };
        let assistant = json!({"type": "message", "id": "b", "message": {"role": "assistant",
            "content": [{"type": "text", "text": "HEARTBEAT_OK"}]}})
        .to_string();
        let turn = format!("{}\n{assistant}\n", user("System: x\n\nPROMPT"));
        assert!(only_heartbeat_turn(&turn, "PROMPT"));
        let busy = format!(
            "{}\n{}\n{assistant}\n",
            user("PROMPT"),
            user("hi, member here")
        );
        assert!(!only_heartbeat_turn(&busy, "PROMPT"));
        assert!(!only_heartbeat_turn("", "PROMPT"));
    }
}
