//! The provisioning API against real directories: modes, owners, idempotence, preserved user data, rollback on a
//! real filesystem failure, token rotation, and the archive round trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use provisioning::{
    Error, Layout, Owner, ProvisionSpec, Secret, Tier, UserId, deprovision, gateway_token,
    provision, restore_archive, rotate_gateway_token,
};

/// A temp data root and runtime root.
struct Roots {
    _tmp: tempfile::TempDir,
    layout: Layout,
}

fn roots() -> Roots {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("data"), tmp.path().join("run"));
    Roots { _tmp: tmp, layout }
}

fn spec(id: &str) -> ProvisionSpec {
    ProvisionSpec {
        user: id.parse().unwrap(),
        tier: Tier::Dedicated,
        owner: None,
        email: Some("alice@example.com".into()),
        display_name: Some("Alice".into()),
        gateway_port: Some(18789),
        provider_keys: BTreeMap::new(),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Every path of the tree relative to the user dir, with its expected mode (the design in issue 2).
const EXPECTED: &[(&str, u32)] = &[
    ("", 0o700),
    ("clawdbot.json", 0o600),
    ("credentials", 0o700),
    ("cron", 0o700),
    ("devices", 0o700),
    ("identity", 0o700),
    ("sessions", 0o700),
    ("agents", 0o700),
    ("agents/main", 0o700),
    ("agents/main/agent", 0o700),
    ("agents/main/agent/auth-profiles.json", 0o600),
    ("agents/main/sessions", 0o700),
    ("workspace", 0o700),
    ("workspace/MEMORY.md", 0o600),
    ("workspace/memory", 0o700),
    ("workspace/canvas", 0o700),
    ("workspace/skills", 0o700),
    // The Wirebot skills in the managed skills dir (issue 7).
    ("skills", 0o700),
    ("skills/wirebot-core", 0o700),
    ("skills/wirebot-core/SKILL.md", 0o600),
    ("skills/wirebot-accountability", 0o700),
    ("skills/wirebot-accountability/SKILL.md", 0o600),
    ("skills/wirebot-memory", 0o700),
    ("skills/wirebot-memory/SKILL.md", 0o600),
    ("skills/wirebot-network", 0o700),
    ("skills/wirebot-network/SKILL.md", 0o600),
];

/// One path's observable state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i128,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
}

/// Everything below `root` (relative paths; "" is the root): type+mode, owner, mtime, bytes, link target.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, Node>) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let rel = path
        .strip_prefix(root)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let ft = meta.file_type();
    out.insert(
        rel,
        Node {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            content: ft.is_file().then(|| std::fs::read(path).unwrap()),
            link: ft.is_symlink().then(|| std::fs::read_link(path).unwrap()),
        },
    );
    if ft.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            walk(root, &entry.unwrap().path(), out);
        }
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn tree_has_exactly_the_designed_paths_and_modes() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    assert!(p.created && p.changed);
    assert_eq!(p.user_dir, r.layout.data_dir.join("users/alice"));
    let snap = snapshot(&p.user_dir);
    let got: BTreeMap<&str, u32> = snap
        .iter()
        .map(|(k, n)| (k.as_str(), n.mode & 0o7777))
        .collect();
    let want: BTreeMap<&str, u32> = EXPECTED.iter().copied().collect();
    assert_eq!(got, want);
    for (path, node) in &snap {
        let is_dir = EXPECTED.iter().any(|(p, m)| p == path && *m == 0o700);
        assert_eq!(node.content.is_none(), is_dir, "{path}: file/dir type");
        if !is_root() {
            assert_eq!(
                (node.uid, node.gid),
                (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw()
                ),
                "{path}"
            );
        }
    }
    // Runtime side: dir 0700, empty gateway.env 0600.
    let env = r.layout.gateway_env(&"alice".parse().unwrap());
    assert_eq!(mode_of(env.parent().unwrap()), 0o700);
    assert_eq!(mode_of(&env), 0o600);
    assert_eq!(std::fs::read(&env).unwrap(), b"");
    // No staging dir is left in users/.
    let names: Vec<_> = std::fs::read_dir(r.layout.users_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["alice"]);
}

#[test]
fn files_hold_the_designed_content() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    let config = json(&p.user_dir.join("clawdbot.json"));
    assert_eq!(config["gateway"]["mode"], "local");
    assert_eq!(config["gateway"]["bind"], "loopback");
    assert_eq!(config["gateway"]["port"], 18789);
    assert_eq!(config["gateway"]["auth"]["mode"], "token");
    assert_eq!(config["gateway"]["auth"]["token"], p.gateway_token.expose());
    assert_eq!(config["gateway"]["reload"]["mode"], "off");
    assert_eq!(config["update"]["checkOnStart"], false);
    assert_eq!(
        config["agents"]["defaults"]["workspace"],
        p.user_dir.join("workspace").to_str().unwrap()
    );
    assert_eq!(p.gateway_token.expose().len(), 43);
    assert_eq!(
        json(&p.user_dir.join("agents/main/agent/auth-profiles.json")),
        serde_json::json!({"version": 1, "profiles": {}})
    );
    let memory = std::fs::read_to_string(p.user_dir.join("workspace/MEMORY.md")).unwrap();
    assert!(memory.starts_with("# Memory\n"), "{memory}");
    assert!(
        memory.contains("- Member: Alice <alice@example.com>"),
        "{memory}"
    );
    // The token lives only in clawdbot.json.
    let snap = snapshot(&p.user_dir);
    let holders: Vec<_> = snap
        .iter()
        .filter(|(_, n)| {
            n.content
                .as_ref()
                .is_some_and(|c| String::from_utf8_lossy(c).contains(p.gateway_token.expose()))
        })
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(holders, ["clawdbot.json"]);
}

#[test]
fn provider_keys_go_to_gateway_env_only() {
    let r = roots();
    let mut s = spec("alice");
    s.provider_keys
        .insert("OPENAI_API_KEY".into(), Secret::from("sk-o".to_owned()));
    s.provider_keys.insert(
        "ANTHROPIC_API_KEY".into(),
        Secret::from("sk-ant-1".to_owned()),
    );
    let p = provision(&r.layout, &s).unwrap();
    let env = r.layout.gateway_env(&s.user);
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "ANTHROPIC_API_KEY=sk-ant-1\nOPENAI_API_KEY=sk-o\n"
    );
    assert_eq!(mode_of(&env), 0o600);
    for node in snapshot(&p.user_dir).values() {
        if let Some(c) = &node.content {
            assert!(!String::from_utf8_lossy(c).contains("sk-ant-1"));
        }
    }
    // Re-provision without keys keeps them; with other keys replaces them exactly.
    let again = provision(&r.layout, &spec("alice")).unwrap();
    assert!(!again.changed);
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "ANTHROPIC_API_KEY=sk-ant-1\nOPENAI_API_KEY=sk-o\n"
    );
    let mut s2 = spec("alice");
    s2.provider_keys
        .insert("OPENAI_API_KEY".into(), Secret::from("sk-o2".to_owned()));
    assert!(provision(&r.layout, &s2).unwrap().changed);
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "OPENAI_API_KEY=sk-o2\n"
    );
}

#[test]
fn bad_provider_keys_are_refused_before_anything_is_created() {
    for (name, value, reason) in [
        ("openai_api_key", "k", "the name must start with A-Z or '_'"),
        ("A-B", "k", "the name may only hold A-Z, 0-9 and '_'"),
        ("", "k", "the name is empty"),
        ("KEY", "", "the value is empty"),
        ("KEY", "a\nEVIL=1", "the value contains a line break or NUL"),
    ] {
        let r = roots();
        let mut s = spec("alice");
        s.provider_keys
            .insert(name.into(), Secret::from(value.to_owned()));
        let err = provision(&r.layout, &s).unwrap_err();
        assert!(matches!(err, Error::InvalidProviderKey { .. }), "{err:?}");
        assert!(err.to_string().ends_with(reason), "{err}");
        assert!(
            !err.to_string().contains("EVIL"),
            "the value never appears in the message"
        );
        assert!(!r.layout.data_dir.exists());
    }
}

#[test]
fn second_provision_changes_no_byte_mode_owner_or_mtime() {
    let r = roots();
    let mut s = spec("alice");
    s.provider_keys
        .insert("OPENAI_API_KEY".into(), Secret::from("sk-o".to_owned()));
    if is_root() {
        s.owner = Some(Owner {
            uid: 61001,
            gid: 61001,
        });
    }
    let first = provision(&r.layout, &s).unwrap();
    let before = (
        snapshot(&first.user_dir),
        snapshot(&r.layout.runtime_user_dir(&s.user)),
    );
    let second = provision(&r.layout, &s).unwrap();
    assert!(!second.created);
    assert!(!second.changed);
    assert_eq!(second.gateway_token, first.gateway_token);
    let after = (
        snapshot(&first.user_dir),
        snapshot(&r.layout.runtime_user_dir(&s.user)),
    );
    assert_eq!(before, after);
}

#[test]
fn user_data_and_unmanaged_config_keys_survive_reprovisioning() {
    let r = roots();
    let first = provision(&r.layout, &spec("alice")).unwrap();
    let dir = &first.user_dir;
    let memory = dir.join("workspace/MEMORY.md");
    provisioning::atomic::write_file(&memory, b"# Mine\nAlice likes tea.\n", 0o600).unwrap();
    provisioning::atomic::write_file(&dir.join("workspace/memory/2026-01-01.md"), b"note", 0o600)
        .unwrap();
    provisioning::atomic::write_file(
        &dir.join("agents/main/sessions/sessions.json"),
        b"{\"s\":1}",
        0o600,
    )
    .unwrap();
    provisioning::atomic::write_file(&dir.join("credentials/oauth.json"), b"{\"o\":1}", 0o600)
        .unwrap();
    let profiles = r#"{"version":1,"profiles":{"anthropic:default":{"type":"api_key","provider":"anthropic","key":"k"}}}"#;
    provisioning::atomic::write_file(
        &dir.join("agents/main/agent/auth-profiles.json"),
        profiles.as_bytes(),
        0o600,
    )
    .unwrap();
    let config_path = dir.join("clawdbot.json");
    let mut config = json(&config_path);
    config["session"] = serde_json::json!({"dmScope": "per-channel-peer"});
    config["gateway"]["trustedProxies"] = serde_json::json!(["127.0.0.1"]);
    provisioning::atomic::write_file(
        &config_path,
        serde_json::to_string_pretty(&config).unwrap().as_bytes(),
        0o600,
    )
    .unwrap();
    let before = snapshot(dir);

    let mut s = spec("alice");
    s.gateway_port = None;
    let again = provision(&r.layout, &s).unwrap();
    assert!(!again.changed, "nothing managed differs");
    assert_eq!(snapshot(dir), before);

    // A managed change (new port) rewrites clawdbot.json but keeps every other key, in order, and the token.
    s.gateway_port = Some(20001);
    let moved = provision(&r.layout, &s).unwrap();
    assert!(moved.changed);
    assert_eq!(moved.gateway_token, first.gateway_token);
    let new_config = json(&config_path);
    assert_eq!(new_config["gateway"]["port"], 20001);
    assert_eq!(new_config["session"]["dmScope"], "per-channel-peer");
    assert_eq!(new_config["gateway"]["trustedProxies"][0], "127.0.0.1");
    let keys: Vec<_> = new_config.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["gateway", "update", "agents", "session"]);
    let after = snapshot(dir);
    for kept in [
        "workspace/MEMORY.md",
        "workspace/memory/2026-01-01.md",
        "agents/main/sessions/sessions.json",
        "credentials/oauth.json",
        "agents/main/agent/auth-profiles.json",
    ] {
        assert_eq!(after[kept], before[kept], "{kept}");
    }
}

#[test]
fn reprovisioning_fixes_wrong_modes_and_recreates_missing_dirs() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    std::fs::set_permissions(&p.user_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        p.user_dir.join("clawdbot.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        p.user_dir.join("workspace/MEMORY.md"),
        std::fs::Permissions::from_mode(0o4777),
    )
    .unwrap();
    std::fs::remove_dir(p.user_dir.join("workspace/canvas")).unwrap();
    let again = provision(&r.layout, &spec("alice")).unwrap();
    assert!(again.changed && !again.created);
    let got: BTreeMap<String, u32> = snapshot(&p.user_dir)
        .into_iter()
        .map(|(k, n)| (k, n.mode & 0o7777))
        .collect();
    let want: BTreeMap<String, u32> = EXPECTED
        .iter()
        .map(|(k, m)| ((*k).to_owned(), *m))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_planted_symlink_is_refused_not_followed() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    let outside = r.layout.data_dir.join("outside.txt");
    provisioning::atomic::write_file(&outside, b"secret", 0o644).unwrap();
    let memory = p.user_dir.join("workspace/MEMORY.md");
    std::fs::remove_file(&memory).unwrap();
    std::os::unix::fs::symlink(&outside, &memory).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} must be a regular file, found a symbolic link",
            memory.display()
        )
    );
    assert_eq!(
        mode_of(&outside),
        0o644,
        "the target's mode was not touched"
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret");

    // A symlinked directory is refused too.
    std::fs::remove_file(&memory).unwrap();
    let canvas = p.user_dir.join("workspace/canvas");
    std::fs::remove_dir(&canvas).unwrap();
    std::os::unix::fs::symlink(&r.layout.data_dir, &canvas).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} must be a directory, found a symbolic link",
            canvas.display()
        )
    );
}

/// The rollback recipe documented on `provision`: a regular file where a runtime directory must be.
#[test]
fn failed_first_provision_leaves_nothing_behind() {
    for blocker in ["users", "users/alice"] {
        let r = roots();
        let blocked = r.layout.runtime_dir.join(blocker);
        std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
        provisioning::atomic::write_file(&blocked, b"in the way", 0o600).unwrap();
        let err = provision(&r.layout, &spec("alice")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} must be a directory, found a regular file",
                blocked.display()
            )
        );
        assert!(!r.layout.user_dir(&"alice".parse().unwrap()).exists());
        let left: Vec<_> = std::fs::read_dir(r.layout.users_dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            std::fs::read(&blocked).unwrap(),
            b"in the way",
            "the blocker is untouched"
        );
        // Once the blocker is gone, provisioning succeeds.
        std::fs::remove_file(&blocked).unwrap();
        assert!(provision(&r.layout, &spec("alice")).unwrap().created);
    }
}

#[test]
fn a_failure_before_the_runtime_step_creates_no_runtime_dir() {
    let r = roots();
    // users/ under data is a regular file: fails before the tree; the runtime side must stay clean too.
    std::fs::create_dir_all(&r.layout.data_dir).unwrap();
    provisioning::atomic::write_file(&r.layout.users_dir(), b"x", 0o600).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert!(matches!(err, Error::WrongFileType { .. }), "{err:?}");
    assert!(
        !r.layout
            .runtime_user_dir(&"alice".parse().unwrap())
            .exists()
    );
}

#[test]
fn failed_reprovision_keeps_existing_data() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    provisioning::atomic::write_file(&p.user_dir.join("workspace/MEMORY.md"), b"keep me", 0o600)
        .unwrap();
    let before = snapshot(&p.user_dir);
    let runtime = r.layout.runtime_user_dir(&"alice".parse().unwrap());
    std::fs::remove_dir_all(&runtime).unwrap();
    provisioning::atomic::write_file(&runtime, b"blocker", 0o600).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert!(matches!(err, Error::WrongFileType { .. }), "{err:?}");
    assert_eq!(snapshot(&p.user_dir), before);
}

#[test]
fn a_corrupt_existing_config_is_reported_and_left_alone() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    let path = p.user_dir.join("clawdbot.json");
    provisioning::atomic::write_file(&path, b"{ gateway: ", 0o600).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot parse {} as JSON or JSON5", path.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"{ gateway: ");
}

#[test]
fn a_file_where_the_user_dir_belongs_is_refused() {
    let r = roots();
    std::fs::create_dir_all(r.layout.users_dir()).unwrap();
    let path = r.layout.users_dir().join("alice");
    provisioning::atomic::write_file(&path, b"x", 0o600).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} must be a directory, found a regular file",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[test]
fn stale_staging_dir_from_a_crash_is_replaced() {
    let r = roots();
    let staging = r.layout.users_dir().join(".staging-alice");
    std::fs::create_dir_all(staging.join("junk")).unwrap();
    provision(&r.layout, &spec("alice")).unwrap();
    assert!(!staging.exists());
    assert!(
        !r.layout
            .user_dir(&"alice".parse().unwrap())
            .join("junk")
            .exists()
    );
}

#[test]
fn tokens_are_read_and_rotated_in_clawdbot_json_only() {
    let r = roots();
    let alice: UserId = "alice".parse().unwrap();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    assert_eq!(gateway_token(&r.layout, &alice).unwrap(), p.gateway_token);
    let config_path = p.user_dir.join("clawdbot.json");
    let mut config = json(&config_path);
    config["logging"] = serde_json::json!({"level": "debug"});
    provisioning::atomic::write_file(&config_path, config.to_string().as_bytes(), 0o600).unwrap();

    let rotated = rotate_gateway_token(&r.layout, &alice, None).unwrap();
    assert_ne!(rotated, p.gateway_token);
    assert_eq!(gateway_token(&r.layout, &alice).unwrap(), rotated);
    let after = json(&config_path);
    assert_eq!(after["logging"]["level"], "debug");
    assert_eq!(mode_of(&config_path), 0o600);
    // Re-provisioning keeps the rotated token.
    assert_eq!(
        provision(&r.layout, &spec("alice")).unwrap().gateway_token,
        rotated
    );

    let bob: UserId = "bob".parse().unwrap();
    let err = gateway_token(&r.layout, &bob).unwrap_err();
    assert!(matches!(err, Error::NotProvisioned { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("user bob is not provisioned"),
        "{err}"
    );
    assert!(matches!(
        rotate_gateway_token(&r.layout, &bob, None),
        Err(Error::NotProvisioned { .. })
    ));
}

#[test]
fn removal_archives_first_and_the_archive_restores_byte_for_byte() {
    let r = roots();
    let mut s = spec("alice");
    if is_root() {
        s.owner = Some(Owner {
            uid: 61002,
            gid: 61003,
        });
    }
    s.provider_keys
        .insert("OPENAI_API_KEY".into(), Secret::from("sk-o".to_owned()));
    let p = provision(&r.layout, &s).unwrap();
    let dir = &p.user_dir;
    provisioning::atomic::write_file(
        &dir.join("workspace/memory/notes.md"),
        &vec![7u8; 200_000],
        0o640,
    )
    .unwrap();
    std::fs::create_dir(dir.join("workspace/skills/deep")).unwrap();
    std::fs::set_permissions(
        dir.join("workspace/skills/deep"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("../MEMORY.md", dir.join("workspace/skills/link")).unwrap();
    let before = snapshot(dir);

    let archive = deprovision(&r.layout, &s.user).unwrap();
    let name = archive.file_name().unwrap().to_str().unwrap();
    assert_eq!(archive.parent().unwrap(), r.layout.archive_dir());
    assert!(
        name.starts_with("alice-") && name.ends_with("Z.tar.zst"),
        "{name}"
    );
    let stamp = &name["alice-".len()..name.len() - ".tar.zst".len()];
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok(),
        "{stamp}"
    );
    assert_eq!(mode_of(&archive), 0o600);
    assert!(!dir.exists(), "user dir deleted after archiving");
    assert!(
        !r.layout.runtime_user_dir(&s.user).exists(),
        "runtime dir deleted"
    );
    let archive_names: Vec<_> = std::fs::read_dir(r.layout.archive_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        archive_names.len(),
        1,
        "no temp file left: {archive_names:?}"
    );

    let restored = restore_archive(&archive, &r.layout.users_dir()).unwrap();
    assert_eq!(&restored, dir);
    let after = snapshot(dir);
    // Restored = same modes, bytes, link targets (and owners when root could set them).
    let strip = |m: &BTreeMap<String, Node>, owners: bool| -> BTreeMap<String, Node> {
        m.iter()
            .map(|(k, n)| {
                let uid = if owners { n.uid } else { 0 };
                let gid = if owners { n.gid } else { 0 };
                (
                    k.clone(),
                    Node {
                        uid,
                        gid,
                        mtime_ns: 0,
                        ..n.clone()
                    },
                )
            })
            .collect()
    };
    assert_eq!(strip(&after, is_root()), strip(&before, is_root()));
    // File mtimes survive too.
    assert_eq!(
        after["workspace/memory/notes.md"].mtime_ns / 1_000_000_000,
        before["workspace/memory/notes.md"].mtime_ns / 1_000_000_000
    );

    // Restoring over an existing tree is refused.
    let err = restore_archive(&archive, &r.layout.users_dir()).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot restore into existing"),
        "{err}"
    );

    // A second removal in the same second never overwrites the first archive.
    let second = deprovision(&r.layout, &s.user).unwrap();
    assert_ne!(second, archive);
    assert!(archive.exists() && second.exists());
}

#[test]
fn removing_an_unknown_user_is_an_error_and_writes_nothing() {
    let r = roots();
    let err = deprovision(&r.layout, &"ghost".parse().unwrap()).unwrap_err();
    assert!(matches!(err, Error::NotProvisioned { .. }), "{err:?}");
    assert!(!r.layout.archive_dir().exists());
}

/// Build a tar.zst with the given (path, data) file entries, bypassing tar's own path checks.
fn crafted_archive(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join("crafted.tar.zst");
    let file = std::fs::File::create(&path).unwrap();
    let mut builder = tar::Builder::new(zstd::Encoder::new(file, 3).unwrap().auto_finish());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap();
    path
}

#[test]
fn hostile_archives_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    std::fs::create_dir(&users).unwrap();
    let x: &[u8] = b"x";
    type Entries<'a> = &'a [(&'a str, &'a [u8])];
    let cases: [(Entries<'_>, &str); 5] = [
        (&[("alice/../../evil", x)], "is not a plain relative path"),
        (&[("/abs/evil", x)], "does not start with a user id"),
        (
            &[("alice/a", x), ("bob/b", x)],
            "entries for both alice and bob",
        ),
        (&[("Alice/a", x)], "user id \"Alice\" is invalid"),
        (&[], "it has no entries"),
    ];
    for (entries, detail) in cases {
        let archive = crafted_archive(tmp.path(), entries);
        let err = restore_archive(&archive, &users).unwrap_err();
        assert!(matches!(err, Error::InvalidArchive { .. }), "{err:?}");
        assert!(err.to_string().contains(detail), "{err} / {detail}");
        let left: BTreeSet<_> = std::fs::read_dir(&users)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!tmp.path().join("evil").exists());
    }
}

#[test]
fn as_root_each_tenant_owns_its_whole_tree() {
    if !is_root() {
        eprintln!(
            "SKIP as_root_each_tenant_owns_its_whole_tree: needs root to chown to other uids"
        );
        return;
    }
    let r = roots();
    let tenants = [
        (
            "alice",
            Owner {
                uid: 62001,
                gid: 62001,
            },
        ),
        (
            "bob",
            Owner {
                uid: 62002,
                gid: 62002,
            },
        ),
    ];
    for (id, owner) in tenants {
        let mut s = spec(id);
        s.owner = Some(owner);
        s.provider_keys
            .insert("OPENAI_API_KEY".into(), Secret::from("k".to_owned()));
        let p = provision(&r.layout, &s).unwrap();
        let runtime = r.layout.runtime_user_dir(&s.user);
        for (root, nodes) in [
            (&p.user_dir, snapshot(&p.user_dir)),
            (&runtime, snapshot(&runtime)),
        ] {
            assert!(nodes.len() > 1, "{}", root.display());
            for (path, node) in nodes {
                assert_eq!(
                    (node.uid, node.gid),
                    (owner.uid, owner.gid),
                    "{}/{path}",
                    root.display()
                );
            }
        }
    }
    let owner_of = |id: &str| {
        std::fs::metadata(r.layout.users_dir().join(id))
            .unwrap()
            .uid()
    };
    assert_ne!(owner_of("alice"), owner_of("bob"));
    // users/ itself stays root-owned and traversable only.
    let users = std::fs::metadata(r.layout.users_dir()).unwrap();
    assert_eq!((users.uid(), users.mode() & 0o7777), (0, 0o711));

    // A tree chowned away from its tenant (e.g. root-created files) is given back on re-provision.
    let mut s = spec("alice");
    s.owner = Some(tenants[0].1);
    let memory = r.layout.user_dir(&s.user).join("workspace/MEMORY.md");
    std::os::unix::fs::chown(&memory, Some(0), Some(0)).unwrap();
    assert!(provision(&r.layout, &s).unwrap().changed);
    assert_eq!(std::fs::metadata(&memory).unwrap().uid(), 62001);
    assert_eq!(mode_of(&memory), 0o600);
}

#[test]
fn archiving_stores_planted_symlinks_as_links_never_their_targets() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    let outside = r.layout.data_dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    provisioning::atomic::write_file(&outside.join("secret.txt"), b"root-only secret", 0o600)
        .unwrap();
    let canvas = p.user_dir.join("workspace/canvas");
    std::fs::remove_dir(&canvas).unwrap();
    std::os::unix::fs::symlink(&outside, &canvas).unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret.txt"),
        p.user_dir.join("workspace/memory/s.md"),
    )
    .unwrap();

    let archive = deprovision(&r.layout, &"alice".parse().unwrap()).unwrap();
    assert!(
        outside.join("secret.txt").exists(),
        "removal never follows links out of the tree"
    );
    let restored = restore_archive(&archive, &r.layout.users_dir()).unwrap();
    let snap = snapshot(&restored);
    assert_eq!(
        snap["workspace/canvas"].link.as_deref(),
        Some(outside.as_path())
    );
    assert_eq!(
        snap["workspace/memory/s.md"].link.as_deref(),
        Some(outside.join("secret.txt").as_path())
    );
    for (path, node) in &snap {
        if let Some(c) = &node.content {
            assert!(
                !String::from_utf8_lossy(c).contains("root-only secret"),
                "{path} holds the target's content"
            );
        }
    }
}

/// Not as root: everything belongs to the caller, and handing the tree to another uid fails cleanly. As root, the
/// test re-runs itself as `nobody` (a child process: credentials are process-wide) and checks that run passed.
#[test]
fn not_as_root_the_caller_owns_everything() {
    const NAME: &str = "not_as_root_the_caller_owns_everything";
    if is_root() {
        use std::os::unix::process::CommandExt as _;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1"])
            .uid(65534)
            .gid(65534)
            .env("TMPDIR", std::env::temp_dir())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child as nobody failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let me = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    let runtime = r.layout.runtime_user_dir(&"alice".parse().unwrap());
    for root in [&p.user_dir, &runtime] {
        for (path, node) in snapshot(root) {
            assert_eq!((node.uid, node.gid), me, "{}/{path}", root.display());
        }
    }
    let modes: BTreeMap<String, u32> = snapshot(&p.user_dir)
        .into_iter()
        .map(|(k, n)| (k, n.mode & 0o7777))
        .collect();
    assert_eq!(
        modes,
        EXPECTED
            .iter()
            .map(|(k, m)| ((*k).to_owned(), *m))
            .collect()
    );

    // Another uid needs root: a clear error and nothing left behind.
    let mut bob = spec("bob");
    bob.owner = Some(Owner {
        uid: me.0 + 1,
        gid: me.1 + 1,
    });
    let err = provision(&r.layout, &bob).unwrap_err();
    assert!(matches!(err, Error::Chown { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot chown "), "{err}");
    assert!(!r.layout.user_dir(&bob.user).exists());
    assert!(!r.layout.runtime_user_dir(&bob.user).exists());

    // Removal and restore work without root too.
    let archive = deprovision(&r.layout, &"alice".parse().unwrap()).unwrap();
    assert!(!p.user_dir.exists());
    restore_archive(&archive, &r.layout.users_dir()).unwrap();
    assert_eq!(snapshot(&p.user_dir).len(), EXPECTED.len());
}

#[test]
fn a_planted_fifo_is_refused_without_hanging() {
    let r = roots();
    let p = provision(&r.layout, &spec("alice")).unwrap();
    let memory = p.user_dir.join("workspace/MEMORY.md");
    std::fs::remove_file(&memory).unwrap();
    nix::unistd::mkfifo(&memory, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = provision(&r.layout, &spec("alice")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} must be a regular file, found a FIFO", memory.display())
    );
    let config = p.user_dir.join("clawdbot.json");
    std::fs::remove_file(&memory).unwrap();
    std::fs::remove_file(&config).unwrap();
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = gateway_token(&r.layout, &"alice".parse().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} must be a regular file, found a FIFO", config.display())
    );
}

#[test]
fn layout_paths_follow_the_design() {
    let layout = Layout::new("/data/wirebot", "/run/wirebot");
    let alice: UserId = "alice".parse().unwrap();
    assert_eq!(layout.users_dir(), Path::new("/data/wirebot/users"));
    assert_eq!(
        layout.user_dir(&alice),
        Path::new("/data/wirebot/users/alice")
    );
    assert_eq!(
        layout.clawdbot_json(&alice),
        Path::new("/data/wirebot/users/alice/clawdbot.json")
    );
    assert_eq!(
        layout.workspace_dir(&alice),
        Path::new("/data/wirebot/users/alice/workspace")
    );
    assert_eq!(
        layout.runtime_user_dir(&alice),
        Path::new("/run/wirebot/users/alice")
    );
    assert_eq!(
        layout.gateway_env(&alice),
        Path::new("/run/wirebot/users/alice/gateway.env")
    );
    assert_eq!(layout.archive_dir(), Path::new("/data/wirebot/archive"));
}

#[test]
fn a_relative_data_dir_still_gets_an_absolute_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    // A path relative to the current dir that points into the temp dir (cwd is not changed: tests share it).
    let cwd = std::env::current_dir().unwrap();
    let relative: PathBuf = std::iter::repeat_n("..", cwd.components().count())
        .collect::<PathBuf>()
        .join(tmp.path().strip_prefix("/").unwrap());
    let layout = Layout::new(relative.join("data"), relative.join("run"));
    let p = provision(&layout, &spec("alice")).unwrap();
    let config = json(&p.user_dir.join("clawdbot.json"));
    let workspace = PathBuf::from(config["agents"]["defaults"]["workspace"].as_str().unwrap());
    assert!(workspace.is_absolute(), "{}", workspace.display());
    assert_eq!(
        workspace.canonicalize().unwrap(),
        tmp.path()
            .join("data/users/alice/workspace")
            .canonicalize()
            .unwrap()
    );
}

#[test]
fn a_failed_archive_leaves_the_user_tree_and_runtime_dir_in_place() {
    let r = roots();
    let mut s = spec("alice");
    s.provider_keys
        .insert("OPENAI_API_KEY".into(), Secret::from("sk-o".to_owned()));
    let p = provision(&r.layout, &s).unwrap();
    let before = snapshot(&p.user_dir);
    // A regular file where the archive dir must be: a real failure, also as root.
    provisioning::atomic::write_file(&r.layout.archive_dir(), b"in the way", 0o600).unwrap();
    let err = deprovision(&r.layout, &s.user).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} must be a directory, found a regular file",
            r.layout.archive_dir().display()
        )
    );
    assert_eq!(snapshot(&p.user_dir), before);
    assert!(r.layout.gateway_env(&s.user).exists());
}
