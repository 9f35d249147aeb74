//! The `cron.*` gateway methods as plain functions: params JSON in, result JSON out (shapes per the contract §3).
//! The gateway wires each as one match arm, or all of them through `handle`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::job::NewJob;
use super::runner::{CronService, NotRun};

/// The method names this module answers.
pub const METHODS: [&str; 7] = [
    "cron.list",
    "cron.status",
    "cron.add",
    "cron.update",
    "cron.remove",
    "cron.run",
    "cron.runs",
];

/// Dispatches any of `METHODS`.
pub async fn handle(cron: &CronService, method: &str, params: &Value) -> Result<Value> {
    match method {
        "cron.list" => list(cron, params),
        "cron.status" => status(cron, params),
        "cron.add" => add(cron, params),
        "cron.update" => update(cron, params),
        "cron.remove" => remove(cron, params),
        "cron.run" => run(cron, params).await,
        "cron.runs" => runs(cron, params),
        other => Err(Error::UnknownMethod {
            method: other.to_owned(),
        }),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(what: &'static str, params: &Value) -> Result<T> {
    let params = if params.is_null() { &json!({}) } else { params };
    T::deserialize(params).map_err(|e| Error::Invalid {
        what,
        reason: e.to_string(),
    })
}

/// `{id}` or `{jobId}`.
fn job_id(params: &Value) -> Result<String> {
    ["id", "jobId"]
        .iter()
        .find_map(|k| params.get(k).and_then(Value::as_str))
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Invalid {
            what: "params",
            reason: "id (or jobId) is required".into(),
        })
}

/// `cron.list {includeDisabled?}` → `{jobs}`, soonest first, disabled jobs last (and only when asked for).
pub fn list(cron: &CronService, params: &Value) -> Result<Value> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        #[serde(default)]
        include_disabled: bool,
    }
    let p: P = parse("cron.list params", params)?;
    let mut jobs: Vec<_> = cron
        .store()
        .jobs()
        .into_iter()
        .filter(|j| p.include_disabled || j.enabled)
        .collect();
    jobs.sort_by_key(|j| (!j.enabled, j.state.next_run_at_ms.unwrap_or(i64::MAX)));
    Ok(json!({ "jobs": jobs }))
}

/// `cron.status {}` → `{enabled, storePath, jobs, nextWakeAtMs}`.
pub fn status(cron: &CronService, _params: &Value) -> Result<Value> {
    Ok(json!({
        "enabled": true,
        "storePath": cron.store().path(),
        "jobs": cron.store().jobs().len(),
        "nextWakeAtMs": cron.next_wake_at_ms(),
    }))
}

/// `cron.add {name, schedule, sessionTarget, wakeMode, payload, …}` → the job.
pub fn add(cron: &CronService, params: &Value) -> Result<Value> {
    let new: NewJob = parse("cron.add params", params)?;
    to_value(&cron.add(new)?)
}

/// `cron.update {id|jobId, patch}` → the updated job.
pub fn update(cron: &CronService, params: &Value) -> Result<Value> {
    let id = job_id(params)?;
    let patch = params.get("patch").ok_or_else(|| Error::Invalid {
        what: "params",
        reason: "patch is required".into(),
    })?;
    to_value(&cron.update(&id, patch)?)
}

/// `cron.remove {id|jobId}` → `{ok, removed}`.
pub fn remove(cron: &CronService, params: &Value) -> Result<Value> {
    let id = job_id(params)?;
    let removed = cron.remove(&id)?;
    Ok(json!({ "ok": true, "removed": removed }))
}

/// `cron.run {id|jobId, mode?: "due"|"force"}` (default force) → `{ok, ran, status?, error?, reason?}`; waits for the run.
pub async fn run(cron: &CronService, params: &Value) -> Result<Value> {
    let id = job_id(params)?;
    let force = match params.get("mode").and_then(Value::as_str) {
        None | Some("force") => true,
        Some("due") => false,
        Some(other) => {
            return Err(Error::Invalid {
                what: "mode",
                reason: format!("{other:?} (expected due or force)"),
            });
        }
    };
    Ok(match cron.run_now(&id, force).await? {
        Ok(outcome) => {
            json!({ "ok": true, "ran": true, "status": outcome.status, "error": outcome.error })
        }
        Err(NotRun::NotDue) => json!({ "ok": true, "ran": false, "reason": "not-due" }),
        Err(NotRun::AlreadyRunning) => {
            json!({ "ok": true, "ran": false, "reason": "already-running" })
        }
    })
}

/// `cron.runs {id|jobId, limit?}` (default 50, at most 5000) → `{entries}`, oldest first.
pub fn runs(cron: &CronService, params: &Value) -> Result<Value> {
    let id = job_id(params)?;
    let limit = params
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(50)
        .clamp(1, 5000);
    let entries = cron
        .store()
        .runs(&id, usize::try_from(limit).unwrap_or(50))?;
    Ok(json!({ "entries": entries }))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Invalid {
        what: "result",
        reason: e.to_string(),
    })
}
