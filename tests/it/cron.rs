//! Worker cron engine end to end on real files and the real clock: a one-second `every` job firing on its grid,
//! one catch-up run for jobs due while stopped, the `cron.*` method handlers, and Clawdbot's jobs.json shape.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use worker::cron::{
    self, CronAction, CronEvent, CronService, CronStore, Executor, Job, RunOutcome, RunStatus,
};

type Seen = Arc<Mutex<Vec<String>>>;

/// An executor that records which job ran and succeeds.
fn recording() -> (Executor, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let exec: Executor = Arc::new(move |job: Job| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            log.lock().unwrap().push(job.id.clone());
            RunOutcome::ok(Some(format!("did {}", job.name)))
        })
    });
    (exec, seen)
}

async fn next_finished(rx: &mut tokio::sync::broadcast::Receiver<CronEvent>) -> CronEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = rx.recv().await.unwrap();
            if event.action == CronAction::Finished {
                return event;
            }
        }
    })
    .await
    .expect("no cron run finished within 20 s")
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test]
async fn one_second_every_job_fires_on_its_grid() {
    let state = tempfile::tempdir().unwrap();
    let (exec, seen) = recording();
    let cron = CronService::new(CronStore::open(state.path()).unwrap(), exec);
    let added = cron::methods::add(
        &cron,
        &json!({"name": "tick", "schedule": {"kind": "every", "everyMs": 1000}, "sessionTarget": "isolated",
                "wakeMode": "now", "payload": {"kind": "agentTurn", "message": "tick"}}),
    )
    .unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    let created = added["createdAtMs"].as_i64().unwrap();
    let mut rx = cron.subscribe();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Arc::clone(&cron).run(shutdown.clone()));

    let first = next_finished(&mut rx).await;
    let second = next_finished(&mut rx).await;
    shutdown.cancel();
    runner.await.unwrap();

    // Runs start no earlier than their slot, and slots are exactly one second apart on the creation grid.
    let slot1 = first.run_at_ms.unwrap() - (first.run_at_ms.unwrap() - created) % 1000;
    assert!(first.run_at_ms.unwrap() >= created + 1000);
    assert_eq!(first.next_run_at_ms, Some(slot1 + 1000));
    assert!(second.run_at_ms.unwrap() >= slot1 + 1000);
    assert_eq!(
        (first.status, second.status),
        (Some(RunStatus::Ok), Some(RunStatus::Ok))
    );
    assert_eq!(*seen.lock().unwrap(), [id.clone(), id.clone()]);

    let runs = cron::methods::runs(&cron, &json!({"id": id})).unwrap();
    let entries = runs["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["action"], "finished");
    assert_eq!(entries[0]["summary"], "did tick");
    let log = std::fs::read_to_string(state.path().join(format!("cron/runs/{id}.jsonl"))).unwrap();
    assert_eq!(log.lines().count(), 2);
}

#[tokio::test]
async fn job_due_while_stopped_runs_once_after_start() {
    let state = tempfile::tempdir().unwrap();
    let now = now_ms();
    // What a gateway that stopped an hour ago left behind, in Clawdbot's exact shape.
    let file = json!({"version": 1, "jobs": [
        {"id": "hourly", "name": "hourly check", "enabled": true, "createdAtMs": now - 7_200_000, "updatedAtMs": now - 7_200_000,
         "schedule": {"kind": "every", "everyMs": 3_600_000}, "sessionTarget": "isolated", "wakeMode": "now",
         "payload": {"kind": "agentTurn", "message": "check", "deliver": false}, "state": {"nextRunAtMs": now - 1_800_000}},
        {"id": "once", "name": "one-off reminder", "enabled": true, "createdAtMs": now - 7_200_000, "updatedAtMs": now - 7_200_000,
         "schedule": {"kind": "at", "atMs": now - 600_000}, "sessionTarget": "main", "wakeMode": "next-heartbeat",
         "payload": {"kind": "systemEvent", "text": "send the update"}, "state": {"nextRunAtMs": now - 600_000}},
        {"id": "later", "name": "not yet", "enabled": true, "createdAtMs": now, "updatedAtMs": now,
         "schedule": {"kind": "at", "atMs": now + 86_400_000}, "sessionTarget": "main", "wakeMode": "now",
         "payload": {"kind": "systemEvent", "text": "tomorrow"}, "state": {"nextRunAtMs": now + 86_400_000}}
    ]});
    std::fs::create_dir_all(state.path().join("cron")).unwrap();
    #[allow(clippy::disallowed_methods)] // fixture written by "the previous gateway"
    std::fs::write(
        state.path().join("cron/jobs.json"),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();

    let (exec, seen) = recording();
    let cron = CronService::new(CronStore::open(state.path()).unwrap(), exec);
    let mut rx = cron.subscribe();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Arc::clone(&cron).run(shutdown.clone()));
    let a = next_finished(&mut rx).await;
    let b = next_finished(&mut rx).await;
    shutdown.cancel();
    runner.await.unwrap();

    let mut ran: Vec<String> = seen.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran, ["hourly", "once"]);
    assert!(a.job_id != b.job_id);
    let hourly = cron.store().get("hourly").unwrap();
    // Back on the hourly grid, in the future: no backlog of missed runs.
    let next = hourly.state.next_run_at_ms.unwrap();
    assert!(
        next > now && next <= now + 3_600_000,
        "next {next} now {now}"
    );
    assert_eq!((next - hourly.created_at_ms) % 3_600_000, 0);
    let once = cron.store().get("once").unwrap();
    assert_eq!(
        (
            once.enabled,
            once.state.next_run_at_ms,
            once.state.last_status
        ),
        (false, None, Some(RunStatus::Ok))
    );
    assert_eq!(
        cron.store().get("later").unwrap().state.last_run_at_ms,
        None
    );
    for id in ["hourly", "once"] {
        assert_eq!(cron.store().runs(id, 100).unwrap().len(), 1, "{id}");
    }
    // A restart now finds nothing due: nothing runs twice.
    let (exec, seen) = recording();
    let cron = CronService::new(CronStore::open(state.path()).unwrap(), exec);
    let result = cron::methods::run(&cron, &json!({"id": "hourly", "mode": "due"}))
        .await
        .unwrap();
    assert_eq!(
        result,
        json!({"ok": true, "ran": false, "reason": "not-due"})
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cron_methods_round_trip_and_reject_bad_input_precisely() {
    let state = tempfile::tempdir().unwrap();
    let (exec, seen) = recording();
    let cron = CronService::new(CronStore::open(state.path()).unwrap(), exec);
    let job = cron::methods::handle(
        &cron,
        "cron.add",
        &json!({"name": "standup", "schedule": {"kind": "cron", "expr": "30 8 * * 1-5", "tz": "Europe/Berlin"},
                "sessionTarget": "main", "wakeMode": "now", "payload": {"kind": "systemEvent", "text": "standup time"}}),
    )
    .await
    .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["enabled"], true);
    assert!(job["state"]["nextRunAtMs"].as_i64().unwrap() > now_ms());

    let updated = cron::methods::handle(
        &cron,
        "cron.update",
        &json!({"jobId": id, "patch": {"name": "morning standup", "enabled": false}}),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            updated["name"].as_str(),
            updated["state"].get("nextRunAtMs")
        ),
        (Some("morning standup"), None)
    );
    let listed = cron::methods::handle(&cron, "cron.list", &json!({}))
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);
    let listed = cron::methods::handle(&cron, "cron.list", &json!({"includeDisabled": true}))
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());

    let ran = cron::methods::handle(&cron, "cron.run", &json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(
        (ran["ran"].as_bool(), ran["status"].as_str()),
        (Some(true), Some("ok"))
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let status = cron::methods::handle(&cron, "cron.status", &json!({}))
        .await
        .unwrap();
    assert_eq!(status["jobs"], 1);

    // On disk: version 1, Clawdbot's field names, and the previous version kept as .bak.
    let disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("cron/jobs.json")).unwrap())
            .unwrap();
    assert_eq!(disk["version"], 1);
    let stored = &disk["jobs"][0];
    for key in [
        "id",
        "name",
        "enabled",
        "createdAtMs",
        "updatedAtMs",
        "schedule",
        "sessionTarget",
        "wakeMode",
        "payload",
        "state",
    ] {
        assert!(stored.get(key).is_some(), "missing {key}");
    }
    assert_eq!(
        stored["schedule"],
        json!({"kind": "cron", "expr": "30 8 * * 1-5", "tz": "Europe/Berlin"})
    );
    assert!(state.path().join("cron/jobs.json.bak").is_file());

    let removed = cron::methods::handle(&cron, "cron.remove", &json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(removed, json!({"ok": true, "removed": true}));
    assert!(!state.path().join(format!("cron/runs/{id}.jsonl")).exists());

    // Bad input: precise messages, INVALID_REQUEST, and the file is unchanged.
    let before = std::fs::read(state.path().join("cron/jobs.json")).unwrap();
    for (method, params, needle) in [
        (
            "cron.add",
            json!({"name": "x", "schedule": {"kind": "cron", "expr": "0 25 * * *"}, "sessionTarget": "main", "payload": {"kind": "systemEvent", "text": "t"}}),
            "invalid schedule",
        ),
        (
            "cron.add",
            json!({"name": "x", "schedule": {"kind": "cron", "expr": "0 9 * * *", "tz": "Mars/Olympus"}, "sessionTarget": "main", "payload": {"kind": "systemEvent", "text": "t"}}),
            "unknown time zone",
        ),
        (
            "cron.add",
            json!({"name": "x", "schedule": {"kind": "every", "everyMs": 5}, "sessionTarget": "isolated", "payload": {"kind": "systemEvent", "text": "t"}}),
            "agentTurn",
        ),
        (
            "cron.add",
            json!({"name": "x", "schedule": {"kind": "weekly"}, "sessionTarget": "main", "payload": {"kind": "systemEvent", "text": "t"}}),
            "unknown variant",
        ),
        (
            "cron.update",
            json!({"id": "nope", "patch": {"name": "y"}}),
            "no job with id",
        ),
        ("cron.remove", json!({}), "id (or jobId) is required"),
        ("cron.run", json!({"id": "nope"}), "no job with id"),
        (
            "cron.runs",
            json!({"id": "../../etc/passwd"}),
            "not a valid job id",
        ),
        ("cron.nope", json!({}), "unknown method"),
    ] {
        let err = cron::methods::handle(&cron, method, &params)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{method}: {err}");
        assert_eq!(err.protocol_code(), "INVALID_REQUEST", "{method}");
    }
    assert_eq!(
        std::fs::read(state.path().join("cron/jobs.json")).unwrap(),
        before
    );
}

#[tokio::test]
async fn corrupt_jobs_file_is_refused_and_left_intact() {
    let state = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(state.path().join("cron")).unwrap();
    #[allow(clippy::disallowed_methods)]
    std::fs::write(
        state.path().join("cron/jobs.json"),
        b"{\"version\":1,\"jobs\":[{\"id\":",
    )
    .unwrap();
    let err = CronStore::open(state.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("jobs.json is not a valid jobs file"),
        "{err}"
    );
    assert_eq!(err.protocol_code(), "UNAVAILABLE");
    assert_eq!(
        std::fs::read(state.path().join("cron/jobs.json")).unwrap(),
        b"{\"version\":1,\"jobs\":[{\"id\":"
    );
}
