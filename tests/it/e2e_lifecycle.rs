//! Worker lifecycle through the real `wirebot` binary: `user add --tier dedicated` returns with a Ready worker running
//! as the tenant (uid, no caps, no_new_privs, seccomp), kill -9 of the daemon leaves it running and a new daemon
//! re-adopts it (same pid, no restart, no duplicate), `worker stop` + a proxied request wakes it, `logs` shows its
//! output, and `user remove` stops it before archiving.

use std::path::Path;

use serde_json::Value;
use tests::supervisor::{Options, Supervisor};

/// A temp root outside `/tmp` (workers get a private `/tmp`, which would hide a state dir below it).
pub(crate) fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// `user add <id> --tier dedicated`; returns the gateway token the CLI printed once.
pub(crate) fn add_dedicated(sup: &Supervisor, id: &str) -> String {
    let out = sup.cli(["user", "add", id, "--tier", "dedicated"]);
    out.ok();
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("gateway token (shown once): "))
        .unwrap_or_else(|| panic!("no token in: {}", out.stdout))
        .trim()
        .to_owned()
}

/// The `worker list --json` entry of one member.
pub(crate) fn worker_of(sup: &Supervisor, id: &str) -> Option<Value> {
    let list = sup.cli(["worker", "list", "--json"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|w| w["user_id"] == id)
        .cloned()
}

fn status_field(pid: i64, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

pub(crate) fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Pids of live `wirebot-worker` processes running as `uid` with their working directory under `root` (this test's
/// daemon; concurrent test runs may reuse the uid).
fn workers_of_uid(root: &Path, uid: u64) -> Vec<i64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if !comm.trim().starts_with("wirebot-worker") || !alive(pid) {
            continue;
        }
        let in_root =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root));
        if !in_root {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next().map(str::to_owned));
        if real_uid.as_deref() == Some(uid.to_string().as_str()) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls (deadline 30 s) until `f` holds; panics with `what` otherwise.
pub(crate) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20)); // polling a condition with a deadline
    }
}

#[test]
fn dedicated_worker_is_isolated_outlives_the_daemon_is_re_adopted_woken_and_removed() {
    tests::require_root!();
    let dir = state_root();
    let mut sup = Supervisor::start(dir.path());
    let token = add_dedicated(&sup, "alice");

    // `user add` returned once the worker was Ready.
    let user = sup.cli(["user", "show", "alice", "--json"]).json();
    let uid = user["uid"].as_u64().unwrap();
    let w = worker_of(&sup, "alice").expect("alice has a worker");
    assert!(
        w["state"] == "ready" || w["state"] == "running",
        "worker after add: {w}"
    );
    let pid = w["pid"].as_i64().unwrap();
    assert!(alive(pid));
    // The worker runs as the tenant, without privileges.
    let uids: Vec<String> = status_field(pid, "Uid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(uids.iter().all(|u| *u == uid.to_string()), "Uid: {uids:?}");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    // `user show` prints the worker state.
    let shown = sup.cli(["user", "show", "alice"]);
    assert!(
        shown.ok().stdout.contains(&format!("pid {pid}")),
        "{}",
        shown.stdout
    );
    // The transitions are in the audit log.
    let events = sup.cli(["events", "--user", "alice"]).ok().stdout.clone();
    assert!(events.contains("worker.ready"), "{events}");

    // Through the proxy with the member's own token: the worker answers.
    let health = sup.proxy(
        "GET",
        "/u/alice/healthz",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(
        health.status,
        200,
        "{}",
        String::from_utf8_lossy(&health.body)
    );

    // kill -9 of the daemon: the worker keeps running; a new daemon re-adopts it without restarting it.
    sup.kill9();
    assert!(alive(pid), "the worker died with the daemon");
    let sup = Supervisor::start_with(dir.path(), Options::default());
    let w = worker_of(&sup, "alice").expect("alice's worker is supervised again");
    assert_eq!(
        w["pid"].as_i64(),
        Some(pid),
        "re-adopted, not restarted: {w}"
    );
    assert_eq!(w["restarts"], 0);
    assert_eq!(
        workers_of_uid(dir.path(), uid),
        vec![pid],
        "exactly one worker for alice"
    );
    let events = sup.cli(["events", "--user", "alice"]).ok().stdout.clone();
    assert!(events.contains("worker.adopt"), "{events}");
    let health = sup.proxy(
        "GET",
        "/u/alice/healthz",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(health.status, 200);

    // `worker stop`: the process is gone; the next proxied request wakes a new one, without an error.
    let stopped = sup.cli(["worker", "stop", "alice"]);
    assert!(
        stopped.ok().stdout.contains("stopped"),
        "{}",
        stopped.stdout
    );
    eventually("the stopped worker exits", || !alive(pid));
    let woken = sup.proxy(
        "GET",
        "/u/alice/healthz",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(
        woken.status,
        200,
        "{}",
        String::from_utf8_lossy(&woken.body)
    );
    let w = worker_of(&sup, "alice").unwrap();
    let new_pid = w["pid"].as_i64().unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(workers_of_uid(dir.path(), uid), vec![new_pid]);

    // `logs` prints the worker's own output (its ready line).
    let logs = sup.cli(["logs", "alice", "-n", "50"]);
    assert!(
        logs.ok().stdout.contains("wirebot-worker ready"),
        "{}",
        logs.stdout
    );

    // `user remove` stops the worker, then archives.
    let removed = sup.cli(["user", "remove", "alice"]);
    assert!(
        removed.ok().stdout.contains("archive"),
        "{}",
        removed.stdout
    );
    eventually("the removed worker exits", || !alive(new_pid));
    assert!(worker_of(&sup, "alice").is_none());
    assert!(workers_of_uid(dir.path(), uid).is_empty());
    assert!(!Path::new(&sup.user_dir("alice")).exists());
}

#[test]
fn stop_workers_on_exit_stops_them_and_a_restart_starts_them_again() {
    tests::require_root!();
    let dir = state_root();
    let mut sup =
        Supervisor::start_with(dir.path(), Options::default().arg("--stop-workers-on-exit"));
    add_dedicated(&sup, "carol");
    let pid = worker_of(&sup, "carol").unwrap()["pid"].as_i64().unwrap();
    let status = sup.terminate();
    assert!(status.success(), "{status}");
    assert!(
        !alive(pid),
        "--stop-workers-on-exit left the worker running"
    );

    // A new daemon (default: workers outlive it) starts the member's worker again.
    let sup = Supervisor::start_with(dir.path(), Options::default());
    eventually("carol's worker runs again", || {
        worker_of(&sup, "carol").is_some_and(|w| {
            w["pid"].as_i64().is_some_and(|p| p != pid && alive(p))
                && (w["state"] == "ready" || w["state"] == "running")
        })
    });
    let shown = sup.cli(["worker", "list"]).ok().stdout.clone();
    assert!(shown.contains("carol"), "{shown}");
}

#[test]
fn restart_and_start_answer_with_the_worker_and_unknown_members_are_404() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    add_dedicated(&sup, "dave");
    let before = worker_of(&sup, "dave").unwrap()["pid"].as_i64().unwrap();
    let out = sup.cli(["worker", "restart", "dave"]);
    assert!(out.ok().stdout.contains("dave: "), "{}", out.stdout);
    let after = worker_of(&sup, "dave").unwrap()["pid"].as_i64().unwrap();
    assert_ne!(before, after);
    assert!(!alive(before));
    let status = sup.cli(["status"]).ok().stdout.clone();
    assert!(status.contains("workers:      1 (1 "), "{status}");
    sup.cli(["worker", "start", "dave"]).ok(); // already running: a no-op
    assert_eq!(
        worker_of(&sup, "dave").unwrap()["pid"].as_i64(),
        Some(after)
    );
    // Unknown member and a shared member (no worker of its own): 404 → exit 65.
    sup.cli(["worker", "restart", "nobody"]).fails_with(65);
    sup.cli(["user", "add", "erin", "--tier", "shared"]).ok();
    sup.cli(["worker", "stop", "erin"]).fails_with(65);
}

#[test]
fn tier_moves_start_and_stop_the_dedicated_worker() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    sup.cli(["user", "add", "fay", "--tier", "shared"]).ok();
    assert!(
        worker_of(&sup, "fay").is_none(),
        "shared members have no worker of their own"
    );
    sup.cli(["user", "tier", "fay", "dedicated"]).ok();
    let w = worker_of(&sup, "fay").expect("a move to dedicated starts the worker");
    assert!(w["state"] == "ready" || w["state"] == "running", "{w}");
    let pid = w["pid"].as_i64().unwrap();
    sup.cli(["user", "tier", "fay", "shared"]).ok();
    eventually("the dedicated worker stops", || !alive(pid));
    assert!(worker_of(&sup, "fay").is_none());
}

#[test]
fn a_crash_looping_worker_is_quarantined_and_user_add_and_show_say_why() {
    tests::require_root!();
    let dir = state_root();
    // A "worker" that exits at once with code 1: five crashes within the window end in quarantine.
    let sup = Supervisor::start_with(
        dir.path(),
        Options::default().set("lifecycle.worker_program", "\"/bin/false\""),
    );
    let add = sup.cli(["user", "add", "gil", "--tier", "dedicated"]);
    add.fails_with(1);
    assert!(
        add.stderr.contains("quarantined") && add.stderr.contains("exit code 1"),
        "{}",
        add.stderr
    );
    let shown = sup.cli(["user", "show", "gil"]);
    let text = &shown.ok().stdout;
    assert!(text.contains("quarantined"), "{text}");
    assert!(
        text.contains("diagnosis:") && text.contains("exit code 1"),
        "{text}"
    );
    let events = sup.cli(["events", "--user", "gil"]).ok().stdout.clone();
    assert!(events.contains("worker.quarantined"), "{events}");
}

#[test]
fn sigterm_leaves_workers_running_and_the_next_daemon_re_adopts_them() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    add_dedicated(&sup, "hal");
    let pid = worker_of(&sup, "hal").unwrap()["pid"].as_i64().unwrap();
    let sup = sup.restart(); // SIGTERM (exit 0), then a new daemon on the same state
    assert!(alive(pid));
    let w = worker_of(&sup, "hal").unwrap();
    assert_eq!(w["pid"].as_i64(), Some(pid), "{w}");
    assert_eq!(w["restarts"], 0);
}

/// `wirebot reconcile`: with the daemon down, a dry run lists a dead member worker and a state directory no member
/// owns, and changes nothing; repairs need the daemon; with it up, `reconcile` archives then removes the orphan, the
/// member's worker runs, and a last dry run finds no drift.
#[test]
fn reconcile_dry_run_lists_drift_and_changes_nothing_then_repairs_it() {
    tests::require_root!();
    let dir = state_root();
    let mut sup = Supervisor::start(dir.path());
    add_dedicated(&sup, "rita");
    let pid = worker_of(&sup, "rita").expect("rita has a worker")["pid"]
        .as_i64()
        .unwrap();
    assert!(sup.terminate().success());
    assert!(alive(pid), "SIGTERM of the daemon leaves workers running");

    // While the daemon is down: the worker dies, and a directory appears that no member owns.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.try_into().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the killed worker is gone", || !alive(pid));
    let orphan = sup.user_dir("ghost");
    std::fs::create_dir_all(orphan.join("workspace")).unwrap();
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(orphan.join("workspace/notes.md")).unwrap();
        f.write_all(b"keep me\n").unwrap();
    }
    let recorded_pid = || -> Option<i64> {
        sup.registry()
            .query_row("SELECT pid FROM workers WHERE user_id = 'rita'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let archives = || -> usize {
        std::fs::read_dir(sup.data_dir().join("archive"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("ghost-"))
                    .count()
            })
            .unwrap_or(0)
    };

    let dry = sup.cli(["reconcile", "--dry-run"]);
    dry.ok();
    let out = &dry.stdout;
    assert!(out.contains("drift orphan-dir ghost"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("drift worker-not-running rita")
                && l.contains(&format!("pid {pid}"))),
        "{out}"
    );
    assert!(!out.contains("repaired"), "{out}");
    // Nothing changed.
    assert!(orphan.join("workspace/notes.md").is_file());
    assert_eq!(archives(), 0);
    assert_eq!(recorded_pid(), Some(pid));
    // Repairs go through the daemon.
    let refused = sup.cli(["reconcile"]);
    refused.fails_with(69);
    assert!(refused.stderr.contains("--dry-run"), "{}", refused.stderr);
    assert!(orphan.join("workspace/notes.md").is_file());

    let sup2 = Supervisor::start_with(dir.path(), Options::default());
    let report = sup2
        .api("POST", "/v1/reconcile?dry_run=true", None)
        .ok_json();
    assert_eq!(report["dry_run"], true);
    assert!(
        report["drift"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "orphan_dir" && d["user_id"] == "ghost"),
        "{report}"
    );
    assert!(
        orphan.is_dir(),
        "a dry run through the daemon changes nothing either"
    );
    sup2.api("POST", "/v1/reconcile?dry_run=maybe", None)
        .problem(400);

    let fixed = sup2.cli(["reconcile"]);
    fixed.ok();
    assert!(
        fixed
            .stdout
            .lines()
            .any(|l| l.starts_with("repaired orphan-dir ghost") && l.contains("archived to")),
        "{}",
        fixed.stdout
    );
    assert!(!orphan.exists(), "the orphan is removed");
    assert_eq!(archives(), 1, "after it was archived");
    let w = worker_of(&sup2, "rita").expect("rita's worker is supervised");
    assert!(w["state"] == "ready" || w["state"] == "running", "{w}");
    let new_pid = w["pid"].as_i64().unwrap();
    assert_ne!(new_pid, pid);
    assert!(alive(new_pid));
    eventually("no drift is left", || {
        sup2.cli(["reconcile", "--dry-run"]).ok().stdout.trim() == "no drift"
    });
    let events = sup2.cli(["events", "--user", "ghost"]).ok().stdout.clone();
    assert!(events.contains("user.orphan.archive"), "{events}");
}

#[test]
fn a_runtime_the_daemon_cannot_run_is_refused_and_changes_nothing() {
    let dir = state_root();
    let sup = Supervisor::start(dir.path()); // no [clawdbot] section
    let events = sup.event_count();
    let out = sup.cli([
        "user",
        "add",
        "claw",
        "--tier",
        "dedicated",
        "--runtime",
        "clawdbot",
    ]);
    out.fails_with(65);
    assert!(
        out.stderr.contains("/runtime") && out.stderr.contains("[clawdbot] install_dir"),
        "{}",
        out.stderr
    );
    let out = sup.cli([
        "user",
        "add",
        "claw",
        "--tier",
        "dedicated",
        "--runtime",
        "node",
    ]);
    out.fails_with(65);
    assert!(
        out.stderr.contains("unknown runtime \"node\""),
        "{}",
        out.stderr
    );
    let r = sup.api(
        "POST",
        "/v1/users",
        Some(&serde_json::json!({"id": "claw", "tier": "shared", "runtime": 7})),
    );
    assert_eq!(r.problem(422)["pointer"], "/runtime");
    assert!(sup.registry_users().is_empty());
    assert_eq!(sup.event_count(), events);
    assert!(!sup.user_dir("claw").exists());
}

/// Per-member runtime: the tiers run `wirebot-worker`, one member asks for the real Clawdbot gateway, then back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_runs_the_real_clawdbot_reached_through_the_proxy_and_switches_back_to_wirebot() {
    tests::require_root!();
    let Some(install) = crate::lifecycle::clawdbot_dir() else {
        eprintln!("SKIP a_member_runs_the_real_clawdbot…: run tests/install-clawdbot.sh first");
        return;
    };
    let dir = state_root();
    let sup = Supervisor::start_with(
        dir.path(),
        Options::default()
            .set("tiers.dedicated.memory_max", "\"3G\"")
            .set("tiers.dedicated.pids_max", "512")
            .set("tiers.dedicated.cpu_quota_percent", "200")
            .set(
                "clawdbot.install_dir",
                &format!("{:?}", install.display().to_string()),
            ),
    );
    // `user add` returns once the Node gateway accepts connections (or says why not).
    let started = std::time::Instant::now();
    let out = sup.cli_within(
        std::time::Duration::from_secs(600),
        [
            "user",
            "add",
            "claw",
            "--tier",
            "dedicated",
            "--runtime",
            "clawdbot",
        ],
    );
    out.ok();
    println!(
        "user add → Ready with the Clawdbot runtime: {} ms",
        started.elapsed().as_millis()
    );
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("gateway token (shown once): "))
        .unwrap()
        .trim()
        .to_owned();
    let shown = sup.cli(["user", "show", "claw"]).ok().stdout.clone();
    assert!(shown.contains("runtime:      clawdbot"), "{shown}");
    let w = worker_of(&sup, "claw").expect("claw's worker is supervised");
    let pid = w["pid"].as_i64().unwrap();
    let uid = std::fs::metadata(sup.user_dir("claw"))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(
        status_field(pid, "Uid").split('\t').next().unwrap(),
        uid.to_string()
    );
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // Clawdbot retitles its process; the executable is the node binary of the install.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.starts_with(&install) && exe.ends_with("bin/node"),
        "the worker is the real Clawdbot gateway on its node: {}",
        exe.display()
    );
    // WS `health` with the member's token, through the daemon's proxy on the member's path.
    let health = || async {
        let url = format!("ws://{}/u/claw/?token={token}", sup.addr("proxy"));
        let mut c = tests::worker::WsClient::connect(&url, &token, None)
            .await
            .unwrap();
        c.call_ok("health", serde_json::json!({})).await
    };
    assert_eq!(health().await["ok"], true);
    // A wrong token is refused by the proxy before Clawdbot sees it.
    let r = sup.proxy("GET", "/u/claw/", &[("authorization", "Bearer nope")]);
    assert!([401, 403].contains(&r.status), "{}", r.status);

    // Back to the tier's runtime: Clawdbot stops, our worker takes the same directory, port and token.
    let out = sup.cli_within(
        std::time::Duration::from_secs(120),
        ["user", "runtime", "claw", "default"],
    );
    out.ok();
    assert!(out.stdout.contains("the tier's runtime"), "{}", out.stdout);
    eventually("Clawdbot is replaced", || !alive(pid));
    let w = worker_of(&sup, "claw").unwrap();
    let new_pid = w["pid"].as_i64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert!(
        exe.ends_with("wirebot-worker"),
        "now the member runs wirebot-worker: {}",
        exe.display()
    );
    assert_eq!(health().await["ok"], true);
    let workers = sup.cli(["worker", "list", "--json"]).ok().json();
    let claws = workers
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["user_id"] == "claw")
        .count();
    assert_eq!(claws, 1, "one worker per member: {workers}");
    sup.cli(["user", "remove", "claw"]).ok();
    eventually("the worker stops with the member", || !alive(new_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_schedule_writes_the_standup_and_reflection_jobs_the_worker_then_lists() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    let token = add_dedicated(&sup, "rita");
    let pid = worker_of(&sup, "rita").unwrap()["pid"].as_i64().unwrap();
    // Bad settings: exit 65, the message names the setting, nothing changes.
    for (flag, value, word) in [
        ("--standup", "25:00", "standup"),
        ("--timezone", "Mars/Olympus", "time zone"),
        ("--reflection", "someday 17:00", "reflection"),
    ] {
        let out = sup.cli(["user", "schedule", "rita", flag, value]);
        out.fails_with(65);
        assert!(out.stderr.contains(word), "{flag} {value}: {}", out.stderr);
    }
    assert_eq!(worker_of(&sup, "rita").unwrap()["pid"].as_i64(), Some(pid));

    let out = sup.cli([
        "user",
        "schedule",
        "rita",
        "--timezone",
        "Europe/Berlin",
        "--standup",
        "08:30",
        "--reflection",
        "fri 17:00",
    ]);
    out.ok();
    assert!(out.stdout.contains("cron jobs written"), "{}", out.stdout);
    let cron_list = || async {
        let url = format!("ws://{}/u/rita/?token={token}", sup.addr("proxy"));
        let mut c = tests::worker::WsClient::connect(&url, &token, None)
            .await
            .unwrap();
        c.call_ok("cron.list", serde_json::json!({"includeDisabled": true}))
            .await
    };
    let jobs = cron_list().await;
    let listed = jobs["jobs"].as_array().unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(listed.len(), 2, "{jobs}");
    let text = jobs.to_string();
    assert!(
        text.contains("30 8 * * *") && text.contains("Europe/Berlin"),
        "{text}"
    );
    assert!(text.contains("0 17 * * 5"), "{text}");

    // No flags = no rituals: the jobs go away again.
    sup.cli(["user", "schedule", "rita"]).ok();
    let jobs = cron_list().await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
}

#[test]
fn kill_9_of_the_daemon_under_traffic_keeps_workers_serving_and_the_next_daemon_adopts_them_all() {
    tests::require_root!();
    let dir = state_root();
    let mut sup = Supervisor::start(dir.path());
    for id in ["ka", "kb", "kc"] {
        add_dedicated(&sup, id);
    }
    sup.cli(["user", "add", "ks", "--tier", "shared"]).ok();
    let before: Vec<(String, i64, u64)> = ["ka", "kb", "kc", "wb-shard-0"]
        .iter()
        .map(|id| {
            let w = worker_of(&sup, id).unwrap();
            (
                id.to_string(),
                w["pid"].as_i64().unwrap(),
                w["port"].as_u64().unwrap(),
            )
        })
        .collect();
    // Members' traffic straight to their workers' ports keeps flowing while the daemon dies and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = before
        .iter()
        .map(|(id, _, port)| {
            let (id, port, stop) = (id.clone(), *port, stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::<String>::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let addr =
                        std::net::SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()));
                    match std::net::TcpStream::connect(addr) {
                        Ok(s) => {
                            let r =
                                tests::supervisor::http_exchange(s, "GET", "/healthz", &[], b"");
                            if r.status == 200 {
                                ok += 1
                            } else {
                                failed.push(format!("status {}", r.status))
                            }
                        }
                        Err(e) => failed.push(format!("connect: {e}")),
                    }
                }
                (id, ok, failed)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200)); // traffic before the kill
    sup.kill9();
    let sup2 = Supervisor::start_with(dir.path(), Options::default());
    std::thread::sleep(std::time::Duration::from_millis(200)); // traffic after the adoption
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in traffic {
        let (id, ok, failed) = t.join().unwrap();
        assert!(ok > 10, "{id}: only {ok} requests");
        assert!(
            failed.is_empty(),
            "{id}: failures {failed:?} while the daemon was replaced"
        );
    }
    for (id, pid, _) in &before {
        let w = worker_of(&sup2, id).unwrap();
        assert_eq!(
            w["pid"].as_i64(),
            Some(*pid),
            "{id} re-adopted, not restarted: {w}"
        );
        assert_eq!(w["restarts"], 0, "{id}");
        let uid = status_field(*pid, "Uid")
            .split('\t')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            workers_of_uid(dir.path(), uid).len(),
            1,
            "{id}: exactly one worker"
        );
    }
    assert_eq!(
        sup2.cli(["reconcile", "--dry-run"]).ok().stdout.trim(),
        "no drift",
        "no orphan, nothing missing"
    );
}
