//! End-to-end: provisioning installs the Wirebot skills and the member's default cron jobs; Clawdbot's CLI lists them.
//! Members are provisioned with the `provisioning` library (as the daemon does), then our real worker runs on the
//! tree: `skills.status` shows the four skills eligible, `cron.list` the standup and reflection jobs, and the real
//! `clawdbot gateway call cron.list` reads the same jobs from our worker.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use provisioning::schedule::{MemberSchedule, write_member_jobs};
use provisioning::{Layout, Owner, ProvisionSpec, Tier, UserId, provision};
use serde_json::{Value, json};
use tests::supervisor::{NodeKind, tree};
use tests::worker::{Worker, WorkerOpts, WsClient};

const SKILLS: [&str; 4] = [
    "wirebot-core",
    "wirebot-accountability",
    "wirebot-memory",
    "wirebot-network",
];

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/skills")
}

/// As root each member gets its own uid/gid (no passwd entry needed); otherwise the caller owns the tree.
fn owner_for(n: u32) -> (Option<Owner>, (u32, u32)) {
    if tests::is_root() {
        let id = 61_000 + n;
        (Some(Owner { uid: id, gid: id }), (id, id))
    } else {
        (
            None,
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            ),
        )
    }
}

fn spec(id: &str, owner: Option<Owner>) -> ProvisionSpec {
    ProvisionSpec {
        user: id.parse::<UserId>().unwrap(),
        tier: Tier::Dedicated,
        owner,
        email: None,
        display_name: None,
        gateway_port: None,
        provider_keys: Default::default(),
    }
}

fn berlin_schedule() -> MemberSchedule {
    MemberSchedule::parse(Some("Europe/Berlin"), Some("08:30"), Some("Friday 17:00")).unwrap()
}

fn jobs(user_dir: &Path) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(user_dir.join("cron/jobs.json")).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    v["jobs"].as_array().unwrap().clone()
}

/// Every path of the tree has the member's owner and the tree's modes (dirs 0700, files 0600), and the skills
/// are the templates byte for byte.
fn assert_skills_tree(user_dir: &Path, owner: (u32, u32)) {
    for (path, node) in tree(user_dir) {
        assert_eq!((node.uid, node.gid), owner, "owner of {path}");
        let want = if matches!(node.kind, NodeKind::Dir) {
            0o700
        } else {
            0o600
        };
        assert_eq!(node.mode, want, "mode of {path}");
    }
    let mut installed: Vec<String> = std::fs::read_dir(user_dir.join("skills"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    installed.sort();
    let mut want: Vec<String> = SKILLS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(installed, want);
    for name in SKILLS {
        let got = std::fs::read(user_dir.join("skills").join(name).join("SKILL.md")).unwrap();
        let template = std::fs::read(templates().join(name).join("SKILL.md")).unwrap();
        assert_eq!(got, template, "{name} differs from templates/skills");
    }
}

#[test]
fn provisioning_installs_skills_and_schedule_jobs_idempotently() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("data"), tmp.path().join("run"));
    let (alice_owner, alice_ids) = owner_for(1);
    let (bob_owner, bob_ids) = owner_for(2);

    // Alice gives no times: skills, but no jobs. Bob's rituals are in Berlin time.
    let alice = provision(&layout, &spec("alice", alice_owner)).unwrap();
    write_member_jobs(
        &layout,
        &"alice".parse::<UserId>().unwrap(),
        "main",
        &MemberSchedule::default(),
        alice_owner,
    )
    .unwrap();
    let bob_id = "bob".parse::<UserId>().unwrap();
    let bob = provision(&layout, &spec("bob", bob_owner)).unwrap();
    assert!(write_member_jobs(&layout, &bob_id, "main", &berlin_schedule(), bob_owner).unwrap());

    assert_skills_tree(&alice.user_dir, alice_ids);
    assert_skills_tree(&bob.user_dir, bob_ids);
    assert!(!alice.user_dir.join("cron/jobs.json").exists());

    let bob_jobs = jobs(&bob.user_dir);
    assert_eq!(bob_jobs.len(), 2);
    let standup = &bob_jobs[0];
    assert_eq!(standup["id"], "wirebot-daily-standup-main");
    assert_eq!(standup["agentId"], "main");
    assert_eq!(standup["name"], "Daily standup");
    assert_eq!(standup["enabled"], true);
    assert_eq!(
        standup["schedule"],
        json!({"kind": "cron", "expr": "30 8 * * *", "tz": "Europe/Berlin"})
    );
    assert_eq!(standup["sessionTarget"], "main");
    assert_eq!(standup["wakeMode"], "now");
    assert_eq!(standup["payload"]["kind"], "systemEvent");
    let text = standup["payload"]["text"].as_str().unwrap();
    assert!(text.contains("wirebot-accountability"), "{text}");
    let reflection = &bob_jobs[1];
    assert_eq!(reflection["id"], "wirebot-weekly-reflection-main");
    assert_eq!(reflection["name"], "Weekly reflection");
    assert_eq!(
        reflection["schedule"],
        json!({"kind": "cron", "expr": "0 17 * * 5", "tz": "Europe/Berlin"})
    );

    // Again with the same settings: no byte, mode, owner or mtime changes anywhere.
    let before = (tree(&alice.user_dir), tree(&bob.user_dir));
    assert!(
        !provision(&layout, &spec("alice", alice_owner))
            .unwrap()
            .changed
    );
    assert!(!provision(&layout, &spec("bob", bob_owner)).unwrap().changed);
    assert!(!write_member_jobs(&layout, &bob_id, "main", &berlin_schedule(), bob_owner).unwrap());
    assert_eq!((tree(&alice.user_dir), tree(&bob.user_dir)), before);

    // A changed template is restored, the member's own skill is kept.
    let core = bob.user_dir.join("skills/wirebot-core/SKILL.md");
    provisioning::atomic::write_file_owned(&core, b"an old version", 0o600, bob_owner).unwrap();
    let own = bob.user_dir.join("skills/pitch-deck");
    std::fs::create_dir(&own).unwrap();
    provisioning::atomic::write_file(
        &own.join("SKILL.md"),
        b"---\nname: pitch-deck\ndescription: mine\n---\n",
        0o600,
    )
    .unwrap();
    assert!(provision(&layout, &spec("bob", bob_owner)).unwrap().changed);
    assert_eq!(
        std::fs::read(&core).unwrap(),
        std::fs::read(templates().join("wirebot-core/SKILL.md")).unwrap()
    );
    assert!(own.join("SKILL.md").exists());
    std::fs::remove_dir_all(&own).unwrap();

    // A new standup time changes that job only; removing the reflection time removes its job.
    let earlier =
        MemberSchedule::parse(Some("Europe/Berlin"), Some("07:45"), Some("Friday 17:00")).unwrap();
    assert!(write_member_jobs(&layout, &bob_id, "main", &earlier, bob_owner).unwrap());
    let after = jobs(&bob.user_dir);
    assert_eq!(after[0]["schedule"]["expr"], "45 7 * * *");
    assert_eq!(after[0]["createdAtMs"], standup["createdAtMs"]);
    assert_eq!(&after[1], reflection, "the reflection job is untouched");
    let no_reflection = MemberSchedule::parse(Some("Europe/Berlin"), Some("07:45"), None).unwrap();
    assert!(write_member_jobs(&layout, &bob_id, "main", &no_reflection, bob_owner).unwrap());
    let after = jobs(&bob.user_dir);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], "wirebot-daily-standup-main");
    // The tree keeps its owner and modes through all of it (jobs.json.bak included).
    for (path, node) in tree(&bob.user_dir) {
        assert_eq!((node.uid, node.gid), bob_ids, "owner of {path}");
    }
}

/// The install dir of the real Clawdbot (see `clawdbot_compat.rs`); `None` when it is not installed.
fn clawdbot_install() -> Option<PathBuf> {
    let dir = std::env::var_os("WIREBOT_CLAWDBOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/clawdbot"));
    let ok = dir.join("node_modules/.bin/clawdbot").exists() && dir.join("venv/bin/node").exists();
    ok.then_some(dir)
}

/// `clawdbot gateway call <method> --json` against our worker, its own state in `run` (contract §11).
fn clawdbot_call(install: &Path, run: &Path, port: u16, token: &str, method: &str) -> Value {
    for d in ["home", "tmp", "cli-state"] {
        std::fs::create_dir_all(run.join(d)).unwrap();
    }
    let path = format!(
        "{}:{}",
        install.join("venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(install.join("node_modules/.bin/clawdbot"))
        .args([
            "gateway",
            "call",
            method,
            "--url",
            &format!("ws://127.0.0.1:{port}"),
            "--json",
            "--params",
            "{}",
        ])
        .env_clear()
        .env("PATH", path)
        .env("HOME", run.join("home"))
        .env("TMPDIR", run.join("tmp"))
        .env("CLAWDBOT_STATE_DIR", run.join("cli-state"))
        .env("CLAWDBOT_CONFIG_PATH", run.join("cli-state/clawdbot.json"))
        .env("CLAWDBOT_DISABLE_BONJOUR", "1")
        .env("CLAWDBOT_NO_RESPAWN", "1")
        .env("CLAWDBOT_GATEWAY_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run the clawdbot CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clawdbot gateway call {method} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON from {method}: {stdout}"));
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{method}: {e}: {stdout}"))
}

#[tokio::test]
async fn worker_on_a_provisioned_tree_lists_the_skills_and_jobs_and_clawdbot_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("data"), tmp.path().join("run"));
    let (owner, _) = owner_for(3);
    let carol = "carol".parse::<UserId>().unwrap();
    let p = provision(&layout, &spec("carol", owner)).unwrap();
    write_member_jobs(&layout, &carol, "main", &berlin_schedule(), owner).unwrap();
    let token = p.gateway_token.expose().to_owned();

    let w = Worker::start(&p.user_dir, WorkerOpts::default());
    let mut c = WsClient::connect(&w.ws_url(), &token, None).await.unwrap();

    let status = c.call_ok("skills.status", json!({})).await;
    for name in SKILLS {
        let skill = status["skills"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from skills.status: {status}"));
        assert_eq!(skill["eligible"], true, "{skill}");
        assert_eq!(skill["source"], "clawdbot-managed", "{skill}");
        let file = PathBuf::from(skill["filePath"].as_str().unwrap());
        assert_eq!(file, p.user_dir.join("skills").join(name).join("SKILL.md"));
    }

    let listed = c.call_ok("cron.list", json!({})).await;
    let mut ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "wirebot-daily-standup-main",
            "wirebot-weekly-reflection-main"
        ]
    );
    for job in listed["jobs"].as_array().unwrap() {
        assert_eq!(job["schedule"]["tz"], "Europe/Berlin");
        assert_eq!(job["payload"]["kind"], "systemEvent");
        // The worker scheduled them: the next run is in the future.
        let next = job["state"]["nextRunAtMs"].as_i64().unwrap();
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!(next > now, "{job}");
    }

    let Some(install) = clawdbot_install() else {
        eprintln!(
            "SKIP {}: clawdbot@2026.1.24-3 is not installed (run tests/install-clawdbot.sh); our worker's side passed",
            module_path!()
        );
        return;
    };
    let (run, port) = (tmp.path().join("clawdbot-cli"), w.port);
    let out = tokio::task::spawn_blocking(move || {
        clawdbot_call(&install, &run, port, &token, "cron.list")
    })
    .await
    .unwrap();
    let mut cli_ids: Vec<&str> = out["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {out}"))
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    cli_ids.sort_unstable();
    assert_eq!(
        cli_ids,
        [
            "wirebot-daily-standup-main",
            "wirebot-weekly-reflection-main"
        ]
    );
    let standup = out["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "Daily standup")
        .unwrap();
    assert_eq!(
        standup["schedule"],
        json!({"kind": "cron", "expr": "30 8 * * *", "tz": "Europe/Berlin"})
    );
}
