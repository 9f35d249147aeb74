//! The cron job model in Clawdbot's exact JSON shape (`cron/jobs.json` v1, `schema/cron.js`), with unknown
//! fields kept so a file written by Clawdbot round-trips; plus `cron.add` params and `cron.update` patches.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::schedule::validate_schedule;

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Schedule {
    /// Once, at an absolute time (ms since the epoch).
    #[serde(rename_all = "camelCase")]
    At { at_ms: i64 },
    /// Every `every_ms`, on the grid `anchor_ms + k·every_ms` (anchor defaults to the job's creation time).
    #[serde(rename_all = "camelCase")]
    Every {
        every_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor_ms: Option<i64>,
    },
    /// A cron expression (5 fields, or 6 with seconds) in an IANA time zone (default UTC).
    Cron {
        expr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tz: Option<String>,
    },
}

/// What a job does when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Payload {
    /// Injects `text` into the main session as a system event (sessionTarget `main`).
    SystemEvent { text: String },
    /// Runs an agent turn with `message` in the isolated session `cron:<jobId>` (sessionTarget `isolated`).
    #[serde(rename_all = "camelCase")]
    AgentTurn {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thinking: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deliver: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SessionTarget {
    Main,
    Isolated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WakeMode {
    /// Run the main session's heartbeat right away.
    #[serde(rename = "now")]
    Now,
    /// Let the event wait for the next scheduled heartbeat.
    #[serde(rename = "next-heartbeat")]
    NextHeartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunStatus {
    Ok,
    Error,
    Skipped,
}

/// Runtime state Clawdbot keeps inside each job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<RunStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One job of `cron/jobs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_run: Option<bool>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub schedule: Schedule,
    pub session_target: SessionTarget,
    pub wake_mode: WakeMode,
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Value>,
    #[serde(default)]
    pub state: JobState,
    /// Fields we do not model, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `cron/jobs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsFile {
    pub version: u32,
    pub jobs: Vec<Job>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `cron.add` params.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewJob {
    pub name: String,
    pub schedule: Schedule,
    pub session_target: SessionTarget,
    #[serde(default = "default_wake_mode")]
    pub wake_mode: WakeMode,
    pub payload: Payload,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub delete_after_run: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub isolation: Option<Value>,
}

fn default_wake_mode() -> WakeMode {
    WakeMode::NextHeartbeat
}

impl Job {
    /// A new job from `cron.add` params (validated), created at `now_ms`; its `nextRunAtMs` is not yet set.
    pub fn create(new: NewJob, id: String, now_ms: i64) -> Result<Job> {
        let job = Job {
            id,
            agent_id: new.agent_id,
            name: new.name.trim().to_owned(),
            description: new.description,
            enabled: new.enabled.unwrap_or(true),
            delete_after_run: new.delete_after_run,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            schedule: new.schedule,
            session_target: new.session_target,
            wake_mode: new.wake_mode,
            payload: new.payload,
            isolation: new.isolation,
            state: JobState::default(),
            extra: Map::new(),
        };
        job.validate()?;
        Ok(job)
    }

    /// Clawdbot's rules: a name, a valid schedule, `main` ⇔ `systemEvent`, `isolated` ⇔ `agentTurn`, non-empty text.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::Invalid {
                what: "name",
                reason: "must not be empty".into(),
            });
        }
        validate_schedule(&self.schedule)?;
        match (&self.session_target, &self.payload) {
            (SessionTarget::Main, Payload::SystemEvent { text }) if text.trim().is_empty() => {
                Err(Error::Invalid {
                    what: "payload.text",
                    reason: "must not be empty".into(),
                })
            }
            (SessionTarget::Isolated, Payload::AgentTurn { message, .. })
                if message.trim().is_empty() =>
            {
                Err(Error::Invalid {
                    what: "payload.message",
                    reason: "must not be empty".into(),
                })
            }
            (SessionTarget::Main, Payload::SystemEvent { .. })
            | (SessionTarget::Isolated, Payload::AgentTurn { .. }) => Ok(()),
            (SessionTarget::Main, _) => Err(Error::Invalid {
                what: "payload",
                reason: "main cron jobs require payload.kind=\"systemEvent\"".into(),
            }),
            (SessionTarget::Isolated, _) => Err(Error::Invalid {
                what: "payload",
                reason: "isolated cron jobs require payload.kind=\"agentTurn\"".into(),
            }),
        }
    }

    /// Applies a `cron.update` patch (top-level fields; `id`, `createdAtMs` and `state` cannot be patched) and
    /// validates the result. Returns whether the schedule or `enabled` changed (so the next run is recomputed).
    pub fn patched(&self, patch: &Value, now_ms: i64) -> Result<(Job, bool)> {
        let Value::Object(patch) = patch else {
            return Err(Error::Invalid {
                what: "patch",
                reason: "must be an object".into(),
            });
        };
        let mut value = serde_json::to_value(self).map_err(|e| Error::Invalid {
            what: "job",
            reason: e.to_string(),
        })?;
        let Value::Object(fields) = &mut value else {
            return Err(Error::Invalid {
                what: "job",
                reason: "not an object".into(),
            });
        };
        for (key, v) in patch {
            if matches!(key.as_str(), "id" | "createdAtMs" | "state" | "updatedAtMs") {
                return Err(Error::Invalid {
                    what: "patch",
                    reason: format!("{key} cannot be changed"),
                });
            }
            if v.is_null() {
                fields.remove(key);
            } else {
                fields.insert(key.clone(), v.clone());
            }
        }
        let mut job: Job = serde_json::from_value(value).map_err(|e| Error::Invalid {
            what: "patch",
            reason: e.to_string(),
        })?;
        job.updated_at_ms = now_ms;
        job.validate()?;
        let reschedule = job.schedule != self.schedule || job.enabled != self.enabled;
        Ok((job, reschedule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clawdbot_job_round_trips_with_unknown_fields() {
        let raw = serde_json::json!({"id":"0b6c","name":"ping","enabled":true,"createdAtMs":1,"updatedAtMs":2,
            "schedule":{"kind":"every","everyMs":3600000},"sessionTarget":"isolated","wakeMode":"now",
            "payload":{"kind":"agentTurn","message":"ping","deliver":false},"state":{"nextRunAtMs":5,"futureField":1},
            "someNewKey":{"a":1}});
        let job: Job = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(
            job.schedule,
            Schedule::Every {
                every_ms: 3_600_000,
                anchor_ms: None
            }
        );
        assert_eq!(serde_json::to_value(&job).unwrap(), raw);
    }

    #[test]
    fn add_enforces_target_payload_pairing() {
        let new: NewJob = serde_json::from_value(
            serde_json::json!({"name":"x","schedule":{"kind":"at","atMs":10},
            "sessionTarget":"main","payload":{"kind":"agentTurn","message":"hi"}}),
        )
        .unwrap();
        let err = Job::create(new, "id".into(), 0).unwrap_err();
        assert!(err.to_string().contains("systemEvent"), "{err}");
        let ok: NewJob = serde_json::from_value(serde_json::json!({"name":"x","schedule":{"kind":"cron","expr":"0 9 * * 1-5","tz":"Europe/Berlin"},
            "sessionTarget":"main","payload":{"kind":"systemEvent","text":"standup"}}))
        .unwrap();
        let job = Job::create(ok, "id".into(), 7).unwrap();
        assert_eq!(
            (job.wake_mode, job.enabled, job.created_at_ms),
            (WakeMode::NextHeartbeat, true, 7)
        );
    }

    #[test]
    fn patch_changes_fields_and_refuses_identity() {
        let new: NewJob = serde_json::from_value(
            serde_json::json!({"name":"x","schedule":{"kind":"every","everyMs":1000},
            "sessionTarget":"isolated","payload":{"kind":"agentTurn","message":"hi"}}),
        )
        .unwrap();
        let job = Job::create(new, "id".into(), 0).unwrap();
        let (p, resched) = job.patched(&serde_json::json!({"name":"y"}), 5).unwrap();
        assert_eq!((p.name.as_str(), p.updated_at_ms, resched), ("y", 5, false));
        let (_, resched) = job
            .patched(&serde_json::json!({"enabled":false}), 5)
            .unwrap();
        assert!(resched);
        assert!(job.patched(&serde_json::json!({"id":"z"}), 5).is_err());
        assert!(
            job.patched(
                &serde_json::json!({"schedule":{"kind":"cron","expr":"nope"}}),
                5
            )
            .is_err()
        );
    }
}
