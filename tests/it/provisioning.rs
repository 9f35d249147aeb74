//! Per-user state trees through the real daemon: exact modes and owners (per-tenant uids as root, caller-owned
//! otherwise), idempotent re-provisioning that keeps user edits, rollback of an injected failure, archive-before-delete.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use serde_json::{Value, json};
use tests::supervisor::{NodeKind, Options, Supervisor, tree};

/// Directories of a provisioned tree (relative to `users/<id>`), each 0700.
const DIRS: &[&str] = &[
    "",
    "credentials",
    "cron",
    "devices",
    "identity",
    "sessions",
    "agents",
    "agents/main",
    "agents/main/agent",
    "agents/main/sessions",
    "workspace",
    "workspace/memory",
    "workspace/canvas",
    "workspace/skills",
];

/// Files of a provisioned tree, each 0600.
const FILES: &[&str] = &[
    "clawdbot.json",
    "agents/main/agent/auth-profiles.json",
    "workspace/MEMORY.md",
];

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Asserts the exact layout and modes, and that every path belongs to `owner`.
fn assert_tree(user_dir: &Path, owner: (u32, u32)) {
    for dir in DIRS {
        let path = user_dir.join(dir);
        assert!(path.is_dir(), "{} is missing", path.display());
        assert_eq!(mode(&path), 0o700, "{}", path.display());
    }
    for file in FILES {
        let path = user_dir.join(file);
        assert!(path.is_file(), "{} is missing", path.display());
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let profiles: Value = serde_json::from_slice(
        &std::fs::read(user_dir.join("agents/main/agent/auth-profiles.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(profiles, json!({"version": 1, "profiles": {}}));
    for (path, node) in tree(user_dir) {
        assert_eq!(
            (node.uid, node.gid),
            owner,
            "owner of {}/{path}",
            user_dir.display()
        );
        let expected = if matches!(node.kind, NodeKind::Dir) {
            0o700
        } else {
            0o600
        };
        assert_eq!(node.mode, expected, "mode of {}/{path}", user_dir.display());
    }
}

fn write(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn as_root_each_tenant_owns_its_tree_with_its_own_uid() {
    tests::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "alice", "--tier", "dedicated"])
        .ok();
    sup.cli(["user", "add", "bob", "--tier", "dedicated"]).ok();
    sup.cli(["user", "add", "carol", "--tier", "shared"]).ok();

    let alice = sup.api("GET", "/v1/users/alice", None).ok_json();
    let bob = sup.api("GET", "/v1/users/bob", None).ok_json();
    let alice_uid = u32::try_from(alice["uid"].as_u64().unwrap()).unwrap();
    let bob_uid = u32::try_from(bob["uid"].as_u64().unwrap()).unwrap();
    assert_ne!(alice_uid, bob_uid, "two tenants share a uid");
    assert!(alice_uid != 0 && bob_uid != 0);
    assert_tree(&sup.user_dir("alice"), (alice_uid, alice_uid));
    assert_tree(&sup.user_dir("bob"), (bob_uid, bob_uid));
    // A shared member's tree belongs to the shard workers' uid (`[shared] uid`, by default just below the
    // tenant range), never to another member.
    let carol = sup.api("GET", "/v1/users/carol", None).ok_json();
    let carol_uid = u32::try_from(carol["uid"].as_u64().unwrap()).unwrap();
    let first = alice_uid.min(bob_uid).min(carol_uid);
    assert_tree(&sup.user_dir("carol"), (first - 1, first - 1));

    // Runtime secrets live on the runtime dir, private to the tenant.
    let env = sup.runtime_dir().join("users/alice/gateway.env");
    assert_eq!(mode(&env), 0o600);
    assert_eq!(std::fs::metadata(&env).unwrap().uid(), alice_uid);

    // The token returned once is the one in clawdbot.json, and only its hash is in the registry.
    let config: Value = serde_json::from_slice(
        &std::fs::read(sup.user_dir("alice").join("clawdbot.json")).unwrap(),
    )
    .unwrap();
    let token = config["gateway"]["auth"]["token"].as_str().unwrap();
    assert_eq!(token.len(), 43, "32 random bytes, base64url");
    let stored: String = sup
        .registry()
        .query_row("SELECT token_hash FROM users WHERE id = 'alice'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(stored, token);
    assert_eq!(stored.len(), 64);
}

#[test]
fn not_as_root_the_same_modes_and_everything_caller_owned() {
    let dir = tempfile::tempdir().unwrap();
    // As root, exercise the unprivileged path for real by running the daemon as nobody.
    let (options, owner) = if tests::is_root() {
        (
            Options {
                run_as: Some((65534, 65534)),
                ..Options::default()
            },
            (65534, 65534),
        )
    } else {
        (
            Options::default(),
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            ),
        )
    };
    let sup = Supervisor::start_with(&dir, options);
    sup.cli(["user", "add", "carol", "--tier", "dedicated"])
        .ok();
    assert_tree(&sup.user_dir("carol"), owner);
    let carol = sup.api("GET", "/v1/users/carol", None).ok_json();
    assert_eq!(carol["uid"], Value::Null, "no tenant uid without root");
    assert_eq!(
        sup.api("GET", "/v1/status", None).ok_json()["tenancy"],
        "caller-owned"
    );
    let db = std::fs::metadata(sup.data_dir().join("wirebot.db")).unwrap();
    assert_eq!(
        (db.uid(), db.mode() & 0o077),
        (owner.0, 0),
        "registry owned by the caller, private"
    );
}

#[test]
fn reprovisioning_changes_nothing_and_keeps_user_edits() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli([
        "user",
        "add",
        "dana",
        "--tier",
        "dedicated",
        "--email",
        "dana@example.org",
    ])
    .ok();
    let user_dir = sup.user_dir("dana");
    let runtime = sup.runtime_dir().join("users/dana");

    // A second provisioning with the same values: every byte, mode, owner and mtime unchanged.
    let before = (tree(&user_dir), tree(&runtime));
    sup.api(
        "PATCH",
        "/v1/users/dana",
        Some(&json!({"tier": "dedicated", "email": "dana@example.org"})),
    )
    .ok_json();
    assert_eq!(
        (tree(&user_dir), tree(&runtime)),
        before,
        "re-provisioning changed the tree"
    );

    // The member edits MEMORY.md and something adds a key to clawdbot.json that we do not manage.
    let memory = user_dir.join("workspace/MEMORY.md");
    write(&memory, b"# Dana\n\nPrefers short answers.\n");
    let config_path = user_dir.join("clawdbot.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["ui"] = json!({"seamColor": "#112233"});
    write(
        &config_path,
        serde_json::to_vec_pretty(&config).unwrap().as_slice(),
    );
    write(
        &user_dir.join("sessions/s1.jsonl"),
        b"{\"role\":\"user\"}\n",
    );

    // Tier moves re-provision; user data survives both ways.
    sup.cli(["user", "tier", "dana", "shared"]).ok();
    sup.cli(["user", "tier", "dana", "dedicated"]).ok();
    assert_eq!(
        std::fs::read(&memory).unwrap(),
        b"# Dana\n\nPrefers short answers.\n"
    );
    assert_eq!(
        std::fs::read(user_dir.join("sessions/s1.jsonl")).unwrap(),
        b"{\"role\":\"user\"}\n"
    );
    let after: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(
        after["ui"],
        json!({"seamColor": "#112233"}),
        "an unmanaged key was dropped"
    );
    assert_eq!(
        after["gateway"]["auth"]["token"], config["gateway"]["auth"]["token"],
        "the token changed"
    );
}

#[test]
fn a_failure_mid_provisioning_leaves_no_directory_no_row_and_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "first", "--tier", "dedicated"])
        .ok();
    let first_port = sup.api("GET", "/v1/users/first", None).ok_json()["port"].clone();

    // Recipe documented on provisioning::provision: a regular file where the runtime dir must go makes the last
    // step fail after the data tree was fully built in staging.
    let planted = sup.runtime_dir().join("users/erin");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    write(&planted, b"in the way");
    let users_before = tree(&sup.data_dir().join("users"));

    let out = sup.cli(["user", "add", "erin", "--tier", "dedicated"]);
    out.fails_with(1);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(
        out.stderr.contains("erin") && out.stderr.contains("must be a directory"),
        "{}",
        out.stderr
    );

    assert!(!sup.user_dir("erin").exists(), "directory left behind");
    let users_after = tree(&sup.data_dir().join("users"));
    assert_eq!(
        users_after.keys().collect::<Vec<_>>(),
        users_before.keys().collect::<Vec<_>>(),
        "staging or partial paths left behind"
    );
    assert_eq!(
        sup.registry_users(),
        vec![("first".into(), "dedicated".into())],
        "row left behind"
    );
    assert_eq!(std::fs::read(&planted).unwrap(), b"in the way");
    let (outcome, detail): (String, String) = sup
        .registry()
        .query_row(
            "SELECT outcome, detail FROM events WHERE action = 'user.create' AND user_id = 'erin'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(outcome, "error");
    assert!(detail.contains("must be a directory"), "{detail}");

    // Once the obstacle is gone the same request succeeds, with the allocation the failed attempt gave back.
    std::fs::remove_file(&planted).unwrap();
    sup.cli(["user", "add", "erin", "--tier", "dedicated"]).ok();
    let erin = sup.api("GET", "/v1/users/erin", None).ok_json();
    assert_eq!(erin["port"].as_u64(), first_port.as_u64().map(|p| p + 20));
}

#[test]
fn removal_archives_first_and_the_archive_restores_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "fay", "--tier", "shared"]).ok();
    let user_dir = sup.user_dir("fay");
    write(&user_dir.join("workspace/MEMORY.md"), b"# Fay\nlikes tea\n");
    write(
        &user_dir.join("workspace/memory/2026-11-25.md"),
        b"- met Bob\n",
    );
    write(&user_dir.join("sessions/abc.jsonl"), &[0u8, 1, 2, 255]);
    let before = tree(&user_dir);

    let removed = sup.api("DELETE", "/v1/users/fay", None).ok_json();
    let archive = Path::new(removed["archive"].as_str().unwrap()).to_owned();
    assert!(!user_dir.exists(), "tree still there after removal");
    assert!(
        !sup.runtime_dir().join("users/fay").exists(),
        "runtime dir still there"
    );
    assert!(sup.registry_users().is_empty());
    assert!(
        archive.starts_with(sup.data_dir().join("archive")),
        "{}",
        archive.display()
    );
    assert!(archive.to_string_lossy().ends_with(".tar.zst"));
    assert_eq!(mode(&archive), 0o600);

    let restore = tempfile::tempdir().unwrap();
    let restored = provisioning::restore_archive(&archive, restore.path()).unwrap();
    assert_eq!(restored, restore.path().join("fay"));
    let after = tree(&restored);
    let strip = |t: &std::collections::BTreeMap<String, tests::supervisor::Node>| {
        t.iter()
            .map(|(p, n)| (p.clone(), (n.mode, n.uid, n.gid, n.kind.clone())))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&after), strip(&before), "the restored tree differs");

    // The id is free again: a new member with it gets a fresh tree.
    sup.cli(["user", "add", "fay", "--tier", "shared"]).ok();
    assert_eq!(
        std::fs::read(user_dir.join("workspace/memory/2026-11-25.md")).ok(),
        None
    );
}

#[test]
fn a_create_interrupted_by_a_daemon_crash_is_swept_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "kept", "--tier", "shared"]).ok();
    sup.kill9();

    // What a crash between "row reserved" and "row activated" leaves: a `provisioning` row and a partial tree.
    let db = rusqlite::Connection::open(dir.path().join("data/wirebot.db")).unwrap();
    db.execute(
        "INSERT INTO users (id, tier, status, token_hash, created_at, updated_at)
         VALUES ('half', 'dedicated', 'provisioning', '', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
        [],
    )
    .unwrap();
    drop(db);
    std::fs::create_dir_all(dir.path().join("data/users/half/workspace")).unwrap();
    std::fs::create_dir_all(dir.path().join("run/users/half")).unwrap();

    let sup = Supervisor::start(&dir);
    assert!(!sup.user_dir("half").exists(), "partial tree left behind");
    assert!(!sup.runtime_dir().join("users/half").exists());
    assert_eq!(sup.registry_users(), vec![("kept".into(), "shared".into())]);
    let (actor, outcome): (String, String) = sup
        .registry()
        .query_row("SELECT actor, outcome FROM events WHERE action = 'user.create.recover' AND user_id = 'half'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((actor.as_str(), outcome.as_str()), ("daemon", "error"));
    // Whatever the tree held was archived first, like every removal.
    let archived = std::fs::read_dir(sup.data_dir().join("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .any(|name| name.starts_with("half-") && name.ends_with(".tar.zst"));
    assert!(archived, "the interrupted tree was not archived");
    sup.cli(["user", "add", "half", "--tier", "dedicated"]).ok();
}
