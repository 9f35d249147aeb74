//! A member's ritual schedule (`MemberSchedule`: time zone, daily standup time, weekly reflection day and time),
//! parsed strictly, and its two default Clawdbot cron jobs merged into a `cron/jobs.json` (version 1 store shape).
//!
//! The jobs are main-session system events that wake the agent now (`sessionTarget: "main"`, `wakeMode: "now"`,
//! `payload.kind: "systemEvent"`): the standup is a conversation with the member, so it happens in the session
//! they talk in, as the wirebot-accountability skill describes. Clawdbot only accepts `systemEvent` payloads for
//! `main` jobs (`agentTurn` is for `isolated` ones, whose replies the member would not see).

use std::fmt;
use std::path::Path;

use chrono::{NaiveTime, Timelike as _, Weekday};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};

use crate::dir::Dir;
use crate::perms::ensure_dir;
use crate::provision::{DIR_MODE, FILE_MODE};
use crate::{Error, Layout, Owner, UserId, template};

/// Job id prefix of the daily standup; the agent id follows (`wirebot-daily-standup-<agentId>`).
pub const STANDUP_ID_PREFIX: &str = "wirebot-daily-standup-";
/// Job id prefix of the weekly reflection (`wirebot-weekly-reflection-<agentId>`).
pub const REFLECTION_ID_PREFIX: &str = "wirebot-weekly-reflection-";

/// The system event of the daily standup.
const STANDUP_TEXT: &str = "Daily standup time. Follow the wirebot-accountability skill (read it with skill_read \
if its instructions are not loaded): recall yesterday's commitments with memory_search, ask the member what they \
finished, what they will get done today and what blocks them, then record the answers with memory_append.";
/// The system event of the weekly reflection.
const REFLECTION_TEXT: &str = "Weekly reflection time. Follow the wirebot-accountability skill (read it with \
skill_read if its instructions are not loaded): review this week's daily logs and goals with memory_search and \
memory_get, ask the member about wins, misses and lessons, agree next week's top three priorities, and record the \
reflection with memory_append (durable goal changes go to MEMORY.md).";

/// The job keys provisioning owns; every other key of an existing job (its `enabled`, `state`, `createdAtMs`, keys
/// we do not know) is kept.
const MANAGED_KEYS: &[&str] = &[
    "agentId",
    "name",
    "description",
    "schedule",
    "sessionTarget",
    "wakeMode",
    "payload",
];

/// When a member's rituals run. Everything is optional: no standup time means no standup job, no reflection time
/// no reflection job, no time zone means UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSchedule {
    timezone: Option<Tz>,
    standup: Option<NaiveTime>,
    reflection: Option<(Weekday, NaiveTime)>,
}

impl MemberSchedule {
    /// Parse the three settings; `None` or an empty (blank) string means "not set".
    ///
    /// - `timezone`: an IANA zone name exactly as the tz database spells it (`Europe/Berlin`, `UTC`).
    /// - `standup`: `HH:MM`, 24-hour, two digits each (`08:30`).
    /// - `reflection`: `<weekday> HH:MM`, the weekday in English, full or three letters, any case
    ///   (`Friday 17:00`, `fri 17:00`).
    ///
    /// Every error names the setting, the value and what was expected.
    pub fn parse(
        timezone: Option<&str>,
        standup: Option<&str>,
        reflection: Option<&str>,
    ) -> Result<MemberSchedule, Error> {
        let timezone = given(timezone)
            .map(|raw| {
                raw.parse::<Tz>().map_err(|_| Error::InvalidSchedule {
                    field: "time zone",
                    value: raw.to_owned(),
                    reason:
                        "not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"
                            .into(),
                })
            })
            .transpose()?;
        let standup = given(standup)
            .map(|raw| parse_time("standup time", raw, raw))
            .transpose()?;
        let reflection = given(reflection).map(parse_reflection).transpose()?;
        Ok(MemberSchedule {
            timezone,
            standup,
            reflection,
        })
    }

    /// The time zone's IANA name, when set.
    pub fn timezone(&self) -> Option<&'static str> {
        self.timezone.map(|tz| tz.name())
    }

    /// The standup time as `HH:MM`, when set.
    pub fn standup(&self) -> Option<String> {
        self.standup.map(hhmm)
    }

    /// The reflection as `<Weekday> HH:MM` (full English weekday name), when set.
    pub fn reflection(&self) -> Option<String> {
        self.reflection
            .map(|(day, time)| format!("{} {}", weekday_name(day), hhmm(time)))
    }

    /// No ritual is scheduled (no job will be written).
    pub fn is_off(&self) -> bool {
        self.standup.is_none() && self.reflection.is_none()
    }

    /// The zone the jobs run in: the member's, else UTC (written explicitly, as Clawdbot would otherwise use the
    /// gateway host's local zone).
    fn zone(&self) -> &'static str {
        self.timezone().unwrap_or("UTC")
    }

    /// `(job id, job)` for both rituals of `agent_id`, `None` for the one that is off.
    fn desired(&self, agent_id: &str, now_ms: i64) -> [(String, Option<Value>); 2] {
        let job = |name: &str, description: &str, expr: String, text: &str| {
            json!({
                "agentId": agent_id,
                "name": name,
                "description": description,
                "enabled": true,
                "createdAtMs": now_ms,
                "updatedAtMs": now_ms,
                "schedule": {"kind": "cron", "expr": expr, "tz": self.zone()},
                "sessionTarget": "main",
                "wakeMode": "now",
                "payload": {"kind": "systemEvent", "text": text},
                "state": {},
            })
        };
        [
            (
                format!("{STANDUP_ID_PREFIX}{agent_id}"),
                self.standup.map(|t| {
                    job(
                        "Daily standup",
                        "Daily check-in on yesterday, today and blockers (wirebot-accountability skill).",
                        format!("{} {} * * *", t.minute(), t.hour()),
                        STANDUP_TEXT,
                    )
                }),
            ),
            (
                format!("{REFLECTION_ID_PREFIX}{agent_id}"),
                self.reflection.map(|(day, t)| {
                    job(
                        "Weekly reflection",
                        "Weekly review of goals, wins, misses and lessons (wirebot-accountability skill).",
                        format!(
                            "{} {} * * {}",
                            t.minute(),
                            t.hour(),
                            day.num_days_from_sunday()
                        ),
                        REFLECTION_TEXT,
                    )
                }),
            ),
        ]
    }
}

impl fmt::Display for MemberSchedule {
    /// `standup 08:30, reflection Friday 17:00, Europe/Berlin` (or `off`), for logs and CLI output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = self.standup() {
            parts.push(format!("standup {s}"));
        }
        if let Some(r) = self.reflection() {
            parts.push(format!("reflection {r}"));
        }
        if parts.is_empty() {
            parts.push("off".to_owned());
        }
        parts.push(self.zone().to_owned());
        f.write_str(&parts.join(", "))
    }
}

/// A setting that is present and not blank.
fn given(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

/// `HH:MM` (two digits each, 24-hour) → a time; `value` is what the error quotes.
fn parse_time(field: &'static str, raw: &str, value: &str) -> Result<NaiveTime, Error> {
    let bad = |reason: &str| Error::InvalidSchedule {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let b = raw.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
        return Err(bad(
            "expected HH:MM, 24-hour with two digits each (e.g. 08:30)",
        ));
    }
    let hour = u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0');
    let minute = u32::from(b[3] - b'0') * 10 + u32::from(b[4] - b'0');
    if hour > 23 {
        return Err(bad("the hour must be 00-23"));
    }
    if minute > 59 {
        return Err(bad("the minute must be 00-59"));
    }
    NaiveTime::from_hms_opt(hour, minute, 0).ok_or_else(|| bad("not a time of day"))
}

/// `<weekday> HH:MM`.
fn parse_reflection(raw: &str) -> Result<(Weekday, NaiveTime), Error> {
    let field = "reflection time";
    let mut words = raw.split_whitespace();
    let (Some(day), Some(time), None) = (words.next(), words.next(), words.next()) else {
        return Err(Error::InvalidSchedule {
            field,
            value: raw.to_owned(),
            reason: "expected `<weekday> HH:MM` (e.g. Friday 17:00)".into(),
        });
    };
    let day = parse_weekday(day).ok_or_else(|| Error::InvalidSchedule {
        field,
        value: raw.to_owned(),
        reason: format!("unknown weekday {day:?} (expected Monday..Sunday or Mon..Sun)"),
    })?;
    Ok((day, parse_time(field, time, raw)?))
}

/// An English weekday, full or three letters, any case.
fn parse_weekday(word: &str) -> Option<Weekday> {
    let lower = word.to_ascii_lowercase();
    [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ]
    .into_iter()
    .find(|d| {
        let full = weekday_name(*d).to_ascii_lowercase();
        lower == full || lower == full[..3]
    })
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

fn hhmm(t: NaiveTime) -> String {
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// Agent ids as Clawdbot normalises them (`[a-z0-9][a-z0-9_-]{0,63}`), so job ids stay valid run-log file names.
fn check_agent_id(agent_id: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&agent_id.len())
        && agent_id.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && matches!(b, b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSchedule {
            field: "agent id",
            value: agent_id.to_owned(),
            reason: "expected 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
                .into(),
        })
    }
}

/// Write or merge `agent_id`'s standup and reflection jobs into the Clawdbot cron store `jobs_json` (usually
/// `<state>/cron/jobs.json`); returns whether anything on disk changed.
///
/// - A job whose time is set is added (id `wirebot-daily-standup-<agentId>` / `wirebot-weekly-reflection-<agentId>`)
///   or, when it exists, gets the managed keys (`agentId`, `name`, `description`, `schedule`, `sessionTarget`,
///   `wakeMode`, `payload`) rewritten if they differ; then `updatedAtMs` moves and a stale `state.nextRunAtMs` is
///   dropped (the gateway recomputes it). `enabled`, `createdAtMs`, the rest of `state` and unknown keys are kept.
/// - A job whose time is not set is removed. Every other job in the file (the member's own, other agents') and
///   every top-level key is kept, in order.
/// - Same schedule again: no write at all (byte, mode, mtime unchanged); only a wrong mode or owner is fixed.
///
/// The parent dir is created if missing (0700, `owner`); the file is written atomically (0600, `owner`), the
/// previous version kept as `jobs.json.bak` as Clawdbot does. A file that does not parse is an
/// [`Error::JobsFile`] and is left untouched. A running gateway keeps its jobs in memory and rewrites the file on
/// its next change: write while it is stopped, or restart it afterwards.
pub fn write_default_jobs(
    jobs_json: &Path,
    agent_id: &str,
    schedule: &MemberSchedule,
    owner: Option<Owner>,
) -> Result<bool, Error> {
    write_jobs(jobs_json, agent_id, schedule, owner, Store::Shared)
}

/// Whether a jobs file holds one member's jobs only (then every job in it is that member's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Shared,
    Member,
}

fn write_jobs(
    jobs_json: &Path,
    agent_id: &str,
    schedule: &MemberSchedule,
    owner: Option<Owner>,
    store: Store,
) -> Result<bool, Error> {
    check_agent_id(agent_id)?;
    let name = jobs_json
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::JobsFile {
            path: jobs_json.to_owned(),
            detail: "the path has no UTF-8 file name".into(),
        })?;
    let parent = match jobs_json.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut changed = ensure_dir(parent, DIR_MODE, owner)?.changed();
    let dir = Dir::open(parent)?;
    let old_bytes = dir.read(name)?;
    let mut file = match &old_bytes {
        Some(bytes) => parse_jobs_file(jobs_json, bytes)?,
        None => json!({"version": 1, "jobs": []}),
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (retargeted, renamed) = match store {
        Store::Member => retarget(&mut file, agent_id, now_ms),
        Store::Shared => (false, Vec::new()),
    };
    let merged = merge(&mut file, schedule, agent_id, now_ms) | retargeted;
    match old_bytes {
        Some(_) if !merged => {
            changed |= dir.fix_file(name, FILE_MODE, owner)?;
        }
        // Nothing to write and nothing there: do not create an empty store.
        None if !merged => {}
        previous => {
            if let Some(previous) = previous {
                dir.write_atomic(&format!("{name}.bak"), &previous, FILE_MODE, owner)?;
            }
            let bytes = template::to_bytes(jobs_json, &file)?;
            dir.write_atomic(name, &bytes, FILE_MODE, owner)?;
            changed = true;
            tracing::info!(path = %jobs_json.display(), agent_id, schedule = %schedule, "default cron jobs written");
        }
    }
    // A renamed default job keeps its run history: `runs/<old id>.jsonl` follows it.
    if !renamed.is_empty() && dir.exists("runs")? {
        let runs = dir.open_dir("runs")?;
        for (old, new) in &renamed {
            runs.rename_if_free(&format!("{old}.jsonl"), &format!("{new}.jsonl"))?;
        }
    }
    Ok(changed)
}

/// Writes a member's default jobs into `<user dir>/cron/jobs.json`, the member's own store: the one a dedicated
/// worker reads (agent id `main`), and on a shard the member's per-agent store (`cron.store` with `{agentId}`; agent
/// id = the member id). As the file is the member's alone, a tier move carries it over: every job that names another
/// agent is retargeted to `agent_id`, and the default jobs written for the other tier's agent id are renamed to this
/// one's ids (state, `enabled` and run log kept; a duplicate is dropped). Otherwise as [`write_default_jobs`].
pub fn write_member_jobs(
    layout: &Layout,
    user: &UserId,
    agent_id: &str,
    schedule: &MemberSchedule,
    owner: Option<Owner>,
) -> Result<bool, Error> {
    let user_dir = layout.user_dir(user);
    if !crate::layout::is_real_dir(&user_dir) {
        return Err(Error::NotProvisioned {
            user: user.clone(),
            path: user_dir,
        });
    }
    write_jobs(
        &user_dir.join("cron/jobs.json"),
        agent_id,
        schedule,
        owner,
        Store::Member,
    )
}

/// A member store's jobs made `agent_id`'s (see [`write_member_jobs`]); returns whether anything changed and the
/// default jobs renamed `(old id, new id)`.
fn retarget(file: &mut Value, agent_id: &str, now_ms: i64) -> (bool, Vec<(String, String)>) {
    let Some(jobs) = file.get_mut("jobs").and_then(Value::as_array_mut) else {
        return (false, Vec::new());
    };
    let before = jobs.len();
    let mut renamed = Vec::new();
    for prefix in [STANDUP_ID_PREFIX, REFLECTION_ID_PREFIX] {
        let want = format!("{prefix}{agent_id}");
        let id_of = |j: &Value| j.get("id").and_then(Value::as_str).map(str::to_owned);
        let mut have = jobs
            .iter()
            .any(|j| id_of(j).as_deref() == Some(want.as_str()));
        jobs.retain_mut(|j| {
            let Some(id) = id_of(j) else { return true };
            if id == want || !id.starts_with(prefix) {
                return true;
            }
            if have {
                return false;
            }
            have = true;
            if let Some(o) = j.as_object_mut() {
                o.insert("id".into(), Value::String(want.clone()));
            }
            renamed.push((id, want.clone()));
            true
        });
    }
    let mut retargeted = false;
    for job in jobs.iter_mut() {
        let Some(o) = job.as_object_mut() else {
            continue;
        };
        if o.get("agentId").is_some_and(|a| a != agent_id) {
            o.insert("agentId".into(), Value::String(agent_id.to_owned()));
            o.insert("updatedAtMs".into(), now_ms.into());
            retargeted = true;
        }
    }
    (
        retargeted || jobs.len() != before || !renamed.is_empty(),
        renamed,
    )
}

/// The parsed store; it must be a version-1 object whose `jobs` is an array of objects.
fn parse_jobs_file(path: &Path, bytes: &[u8]) -> Result<Value, Error> {
    let bad = |detail: String| Error::JobsFile {
        path: path.to_owned(),
        detail,
    };
    let file = template::parse(path, &String::from_utf8_lossy(bytes))?;
    match file.get("version").and_then(Value::as_u64) {
        Some(1) => {}
        other => return Err(bad(format!("`version` must be 1, found {other:?}"))),
    }
    let Some(jobs) = file.get("jobs").and_then(Value::as_array) else {
        return Err(bad("`jobs` must be an array".into()));
    };
    if let Some(i) = jobs.iter().position(|j| !j.is_object()) {
        return Err(bad(format!("`jobs[{i}]` must be an object")));
    }
    Ok(file)
}

/// Converge the two default jobs in `file` (already checked by `parse_jobs_file`); returns whether it changed.
fn merge(file: &mut Value, schedule: &MemberSchedule, agent_id: &str, now_ms: i64) -> bool {
    let Some(jobs) = file.get_mut("jobs").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut changed = false;
    for (id, desired) in schedule.desired(agent_id, now_ms) {
        let at = jobs
            .iter()
            .position(|j| j.get("id").and_then(Value::as_str) == Some(id.as_str()));
        match (at, desired) {
            (None, None) => {}
            (Some(i), None) => {
                jobs.remove(i);
                changed = true;
            }
            (None, Some(want)) => {
                let mut job = Map::new();
                job.insert("id".into(), Value::String(id));
                if let Value::Object(fields) = want {
                    job.extend(fields);
                }
                jobs.push(Value::Object(job));
                changed = true;
            }
            (Some(i), Some(want)) => {
                let Some(job) = jobs[i].as_object_mut() else {
                    continue;
                };
                let mut differs = false;
                for key in MANAGED_KEYS {
                    if job.get(*key) != want.get(*key) {
                        if *key == "schedule"
                            && let Some(Value::Object(state)) = job.get_mut("state")
                        {
                            state.remove("nextRunAtMs");
                        }
                        job.insert((*key).to_owned(), want[*key].clone());
                        differs = true;
                    }
                }
                if differs {
                    job.insert("updatedAtMs".into(), now_ms.into());
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn sched(tz: Option<&str>, standup: Option<&str>, reflection: Option<&str>) -> MemberSchedule {
        MemberSchedule::parse(tz, standup, reflection).unwrap()
    }

    #[test]
    fn parse_accepts_the_documented_forms_and_reports_each_mistake_precisely() {
        let s = sched(Some(" Europe/Berlin "), Some("08:30"), Some("fri 17:05"));
        assert_eq!(s.timezone(), Some("Europe/Berlin"));
        assert_eq!(s.standup().as_deref(), Some("08:30"));
        assert_eq!(s.reflection().as_deref(), Some("Friday 17:05"));
        assert_eq!(
            s.to_string(),
            "standup 08:30, reflection Friday 17:05, Europe/Berlin"
        );
        let off = sched(None, Some(""), Some("  "));
        assert!(off.is_off());
        assert_eq!(off.to_string(), "off, UTC");
        assert_eq!(
            sched(None, None, Some("SUNDAY 00:00"))
                .reflection()
                .as_deref(),
            Some("Sunday 00:00")
        );

        for (tz, standup, reflection, want) in [
            (
                Some("Mars/Base"),
                None,
                None,
                r#"invalid time zone "Mars/Base": not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"#,
            ),
            (
                Some("europe/berlin"),
                None,
                None,
                r#"invalid time zone "europe/berlin": not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"#,
            ),
            (
                None,
                Some("8:30"),
                None,
                r#"invalid standup time "8:30": expected HH:MM, 24-hour with two digits each (e.g. 08:30)"#,
            ),
            (
                None,
                Some("24:00"),
                None,
                r#"invalid standup time "24:00": the hour must be 00-23"#,
            ),
            (
                None,
                Some("09:60"),
                None,
                r#"invalid standup time "09:60": the minute must be 00-59"#,
            ),
            (
                None,
                Some("09:00pm"),
                None,
                r#"invalid standup time "09:00pm": expected HH:MM, 24-hour with two digits each (e.g. 08:30)"#,
            ),
            (
                None,
                None,
                Some("17:00"),
                r#"invalid reflection time "17:00": expected `<weekday> HH:MM` (e.g. Friday 17:00)"#,
            ),
            (
                None,
                None,
                Some("Funday 17:00"),
                r#"invalid reflection time "Funday 17:00": unknown weekday "Funday" (expected Monday..Sunday or Mon..Sun)"#,
            ),
            (
                None,
                None,
                Some("Fri 7:00"),
                r#"invalid reflection time "Fri 7:00": expected HH:MM, 24-hour with two digits each (e.g. 08:30)"#,
            ),
        ] {
            let err = MemberSchedule::parse(tz, standup, reflection).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    fn read(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn jobs_are_added_kept_updated_and_removed_without_touching_other_jobs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cron/jobs.json");

        // Off: no store is created (the missing `cron` dir is).
        let off = MemberSchedule::default();
        assert!(write_default_jobs(&path, "main", &off, None).unwrap());
        assert!(!write_default_jobs(&path, "main", &off, None).unwrap());
        assert!(!path.exists());

        let s = sched(Some("Europe/Berlin"), Some("08:30"), Some("Friday 17:00"));
        assert!(write_default_jobs(&path, "main", &s, None).unwrap());
        let file = read(&path);
        assert_eq!(file["version"], 1);
        let jobs = file["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 2);
        let standup = &jobs[0];
        assert_eq!(standup["id"], "wirebot-daily-standup-main");
        assert_eq!(standup["agentId"], "main");
        assert_eq!(standup["name"], "Daily standup");
        assert_eq!(
            standup["schedule"],
            json!({"kind": "cron", "expr": "30 8 * * *", "tz": "Europe/Berlin"})
        );
        assert_eq!(
            (&standup["sessionTarget"], &standup["wakeMode"]),
            (&json!("main"), &json!("now"))
        );
        assert_eq!(standup["payload"]["kind"], "systemEvent");
        assert!(
            standup["payload"]["text"]
                .as_str()
                .unwrap()
                .contains("wirebot-accountability")
        );
        assert_eq!(
            jobs[1]["schedule"],
            json!({"kind": "cron", "expr": "0 17 * * 5", "tz": "Europe/Berlin"})
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o7777,
            0o700
        );

        // Same schedule: nothing changes on disk.
        let before = std::fs::metadata(&path).unwrap();
        assert!(!write_default_jobs(&path, "main", &s, None).unwrap());
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec()),
            (before.ino(), before.mtime_nsec())
        );

        // The member's own job, a run state, a disabled standup and an unknown key survive a schedule change.
        let mut file = read(&path);
        file["jobs"][0]["enabled"] = json!(false);
        file["jobs"][0]["state"] = json!({"nextRunAtMs": 5, "lastRunAtMs": 4});
        file["jobs"][0]["futureKey"] = json!("kept");
        file["jobs"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"id": "mine", "name": "ping", "enabled": true, "createdAtMs": 1,
                "updatedAtMs": 1, "schedule": {"kind": "every", "everyMs": 60000}, "sessionTarget": "isolated",
                "wakeMode": "now", "payload": {"kind": "agentTurn", "message": "ping"}, "state": {}}));
        file["extraTopLevel"] = json!(true);
        let mine = file["jobs"][0].clone();
        let reflection = file["jobs"][2].clone();
        crate::atomic::write_file(&path, &serde_json::to_vec(&file).unwrap(), 0o600).unwrap();

        let later = sched(Some("Europe/Berlin"), Some("07:45"), Some("Friday 17:00"));
        assert!(write_default_jobs(&path, "main", &later, None).unwrap());
        let file = read(&path);
        assert_eq!(file["extraTopLevel"], true);
        let jobs = file["jobs"].as_array().unwrap();
        assert_eq!(jobs[0], mine);
        assert_eq!(jobs[2], reflection, "the unchanged reflection is untouched");
        let standup = &jobs[1];
        assert_eq!(standup["schedule"]["expr"], "45 7 * * *");
        assert_eq!(standup["enabled"], false, "the member's choice is kept");
        assert_eq!(standup["state"], json!({"lastRunAtMs": 4}));
        assert_eq!(standup["futureKey"], "kept");
        assert!(
            standup["updatedAtMs"].as_i64().unwrap() >= standup["createdAtMs"].as_i64().unwrap()
        );
        // The previous version is kept as the backup.
        let bak = read(&tmp.path().join("cron/jobs.json.bak"));
        assert_eq!(bak["jobs"][1]["schedule"]["expr"], "30 8 * * *");

        // Removing the reflection time removes that job only; another agent's jobs live beside these.
        let no_reflection = sched(Some("Europe/Berlin"), Some("07:45"), None);
        assert!(write_default_jobs(&path, "main", &no_reflection, None).unwrap());
        assert!(write_default_jobs(&path, "bob", &s, None).unwrap());
        let ids: Vec<String> = read(&path)["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            [
                "mine",
                "wirebot-daily-standup-main",
                "wirebot-daily-standup-bob",
                "wirebot-weekly-reflection-bob"
            ]
        );
    }

    #[test]
    fn a_member_store_follows_its_member_across_a_tier_move() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("data"), dir.path().join("run"));
        let bob: UserId = "bob".parse().unwrap();
        let home = layout.user_dir(&bob);
        std::fs::create_dir_all(home.join("cron/runs")).unwrap();
        let path = home.join("cron/jobs.json");
        let s = sched(Some("Europe/Berlin"), Some("08:30"), Some("Friday 17:00"));
        // Dedicated: agent `main`; the member also has a job of their own and a standup run log.
        assert!(write_member_jobs(&layout, &bob, "main", &s, None).unwrap());
        let mut file = read(&path);
        file["jobs"][0]["enabled"] = json!(false);
        file["jobs"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "own", "agentId": "main", "name": "mine"}));
        crate::atomic::write_file(&path, &serde_json::to_vec(&file).unwrap(), 0o600).unwrap();
        crate::atomic::write_file(
            &home.join("cron/runs/wirebot-daily-standup-main.jsonl"),
            b"{}\n",
            0o600,
        )
        .unwrap();

        // On a shard the member's agent id is its own id: same jobs, renamed, retargeted, state and log kept.
        assert!(write_member_jobs(&layout, &bob, "bob", &s, None).unwrap());
        let file = read(&path);
        let ids: Vec<&str> = file["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "wirebot-daily-standup-bob",
                "wirebot-weekly-reflection-bob",
                "own"
            ]
        );
        assert!(
            file["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["agentId"] == "bob")
        );
        assert_eq!(file["jobs"][0]["enabled"], false);
        assert!(
            home.join("cron/runs/wirebot-daily-standup-bob.jsonl")
                .exists()
        );
        assert!(
            !home
                .join("cron/runs/wirebot-daily-standup-main.jsonl")
                .exists()
        );
        assert!(!write_member_jobs(&layout, &bob, "bob", &s, None).unwrap());

        // And back; a stale duplicate of the other tier is dropped, not doubled.
        let mut file = read(&path);
        let mut dup = file["jobs"][1].clone();
        dup["id"] = json!("wirebot-weekly-reflection-main");
        file["jobs"].as_array_mut().unwrap().push(dup);
        crate::atomic::write_file(&path, &serde_json::to_vec(&file).unwrap(), 0o600).unwrap();
        assert!(write_member_jobs(&layout, &bob, "main", &s, None).unwrap());
        let file = read(&path);
        let ids: Vec<&str> = file["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "wirebot-daily-standup-main",
                "own",
                "wirebot-weekly-reflection-main"
            ]
        );
        assert!(
            file["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["agentId"] == "main")
        );
    }

    #[test]
    fn a_broken_store_or_agent_id_is_an_error_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("jobs.json");
        let s = sched(None, Some("09:00"), None);
        for (text, want) in [
            ("{nope", "cannot parse"),
            (r#"{"version": 2, "jobs": []}"#, "`version` must be 1"),
            (r#"{"version": 1, "jobs": {}}"#, "`jobs` must be an array"),
            (
                r#"{"version": 1, "jobs": [1]}"#,
                "`jobs[0]` must be an object",
            ),
        ] {
            crate::atomic::write_file(&path, text.as_bytes(), 0o600).unwrap();
            let err = write_default_jobs(&path, "main", &s, None).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        let err = write_default_jobs(&path, "../x", &s, None).unwrap_err();
        assert!(
            err.to_string().starts_with(r#"invalid agent id "../x""#),
            "{err}"
        );
    }
}
