//! The `wirebot` CLI against the real daemon: the operator tour, exit codes (0/1/64/65/69), hostile ids refused
//! locally with one line and no change anywhere, the no-daemon message, and daemon start/stop behaviour.

use serde_json::Value;
use tests::supervisor::{Options, Supervisor, tree, wirebot};

/// Ids that must never become a user (each is also never a safe path component or is ambiguous).
const HOSTILE_IDS: &[&str] = &[
    "",
    ".",
    "..",
    "../etc",
    "a/b",
    "/abs",
    "A",
    "Alice",
    "ａ",         // fullwidth a
    "ａｄｍｉｎ", // fullwidth
    "é",
    "ß",
    "ıd",          // dotless i
    "Ⅸ",           // roman numeral
    "١٢",          // arabic-indic digits
    "a\u{301}",    // combining accent
    "con\u{200b}", // zero-width space
    "-x",
    "-",
    "_x",
    ".hidden",
    "a.b",
    " ",
    "a b",
    "a\tb",
    "a\nb",
    "a\\b",
    "a:b",
    "a*",
    "a?",
    "$(id)",
    "`id`",
    "a;b",
    "a|b",
    "~root",
    "a%2fb",
    "x@y",
    "a'b",
    "a\"b",
    "a=b",
];

#[test]
fn hostile_ids_are_refused_with_65_one_line_and_no_change() {
    let long = "a".repeat(64);
    let mut ids: Vec<&str> = HOSTILE_IDS.to_vec();
    ids.push(&long);
    assert!(ids.len() >= 30);

    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "keep", "--tier", "shared"]).ok();
    let disk_before = tree(sup.data_dir())
        .into_keys()
        .filter(|p| !p.starts_with("wirebot.db"))
        .collect::<Vec<_>>();
    let events_before = sup.event_count();

    for id in &ids {
        for args in [
            vec!["user", "add", id, "--tier", "dedicated"],
            vec!["user", "show", id],
            vec!["user", "remove", id],
            vec!["user", "tier", id, "shared"],
            vec!["user", "token", id, "--rotate"],
        ] {
            let out = sup.cli(&args);
            assert_eq!(
                out.code(),
                65,
                "{args:?}: stdout {:?} stderr {:?}",
                out.stdout,
                out.stderr
            );
            assert_eq!(
                out.stderr.trim_end_matches('\n').lines().count(),
                1,
                "{args:?}: not one line: {:?}",
                out.stderr
            );
            assert!(
                out.stderr.starts_with("wirebot: user id ") && out.stderr.contains("is invalid"),
                "{:?}",
                out.stderr
            );
            assert!(out.stdout.is_empty(), "{args:?}: {:?}", out.stdout);
        }
    }

    let disk_after = tree(sup.data_dir())
        .into_keys()
        .filter(|p| !p.starts_with("wirebot.db"))
        .collect::<Vec<_>>();
    assert_eq!(disk_after, disk_before, "hostile ids changed the disk");
    assert_eq!(sup.registry_users(), vec![("keep".into(), "shared".into())]);
    assert_eq!(
        sup.event_count(),
        events_before,
        "hostile ids reached the daemon"
    );
}

#[test]
fn operator_tour_add_list_show_tier_token_remove() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);

    let added = sup.cli([
        "user",
        "add",
        "alice",
        "--tier",
        "dedicated",
        "--email",
        "alice@example.org",
    ]);
    added.ok();
    assert!(
        added.stdout.starts_with("created alice (dedicated)"),
        "{}",
        added.stdout
    );
    let token = added
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("gateway token (shown once): "))
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 43);
    sup.cli(["user", "add", "bob", "--tier", "shared"]).ok();

    let list = sup.cli(["user", "list"]);
    list.ok();
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert!(rows[0].starts_with("ID"), "{}", list.stdout);
    assert!(
        rows[1].starts_with("alice")
            && rows[1].contains("dedicated")
            && rows[1].contains("alice@example.org")
    );
    assert!(rows[2].starts_with("bob") && rows[2].contains("shared"));
    let json = sup.cli(["user", "list", "--json"]).ok().json();
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert!(
        json[0].get("token_hash").is_none(),
        "the token hash leaks through the API"
    );

    let show = sup.cli(["user", "show", "alice"]);
    show.ok();
    assert!(
        show.stdout.contains("tier:         dedicated"),
        "{}",
        show.stdout
    );
    let alice = sup.cli(["user", "show", "alice", "--json"]).ok().json();
    assert_eq!(alice["email"], "alice@example.org");
    assert!(alice["port"].is_u64());

    sup.cli(["user", "tier", "bob", "dedicated"]).ok();
    let bob = sup.cli(["user", "show", "bob", "--json"]).ok().json();
    assert_eq!(bob["tier"], "dedicated");
    assert!(
        bob["port"].as_u64().unwrap() != alice["port"].as_u64().unwrap(),
        "two workers share a port"
    );

    let rotated = sup.cli(["user", "token", "alice", "--rotate"]);
    rotated.ok();
    let new_token = rotated.stdout.trim().rsplit(' ').next().unwrap();
    assert_ne!(new_token, token);
    let config: Value = serde_json::from_slice(
        &std::fs::read(sup.user_dir("alice").join("clawdbot.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["gateway"]["auth"]["token"], new_token);

    let status = sup.cli(["status", "--json"]).ok().json();
    assert_eq!(status["users"]["total"], 2);
    assert_eq!(status["users"]["dedicated"], 2);
    sup.cli(["status"]).ok();

    let removed = sup.cli(["user", "remove", "alice"]);
    removed.ok();
    assert!(removed.stdout.contains("archive:"), "{}", removed.stdout);
    sup.cli(["user", "show", "alice"]).fails_with(65);
    sup.cli(["user", "add", "bob", "--tier", "shared"])
        .fails_with(65); // exists
    sup.cli([
        "user",
        "add",
        "zed",
        "--tier",
        "shared",
        "--email",
        "not an email",
    ])
    .fails_with(65);
    assert_eq!(
        sup.registry_users(),
        vec![("bob".into(), "dedicated".into())]
    );
}

#[test]
fn usage_errors_exit_64_and_help_documents_the_exit_codes() {
    let help = wirebot(["--help"]);
    help.ok();
    for needle in ["Exit codes", "64", "65", "69"] {
        assert!(
            help.stdout.contains(needle),
            "--help lacks {needle}: {}",
            help.stdout
        );
    }
    wirebot(["user", "add"]).fails_with(64);
    wirebot(["user", "token", "alice"]).fails_with(64); // --rotate is required
    wirebot(["frobnicate"]).fails_with(64);
    wirebot(["user", "add", "alice", "--tier", "gold"]).fails_with(65);
    let completions = wirebot(["completions", "bash"]);
    completions.ok();
    assert!(completions.stdout.contains("wirebot"));
}

#[test]
fn without_a_daemon_one_line_names_the_socket_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let out = wirebot(["--socket", socket.to_str().unwrap(), "user", "list"]);
    out.fails_with(69);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(socket.to_str().unwrap()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("wirebot serve"), "{}", out.stderr);

    // Via a config file: the socket comes from it, and the hint names it.
    let config = dir.path().join("wirebot.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    std::io::Write::write_all(
        &mut f,
        format!(
            "data_dir = {:?}\n",
            dir.path().join("d").display().to_string()
        )
        .as_bytes(),
    )
    .unwrap();
    let out = wirebot(["--config", config.to_str().unwrap(), "status"]);
    out.fails_with(69);
    assert!(
        out.stderr
            .contains(&dir.path().join("d/run/admin.sock").display().to_string()),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("wirebot serve --config {}", config.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    let second = Supervisor::try_start_with(&dir, Options::default()).unwrap_err();
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains("another wirebot daemon is running"),
        "{}",
        second.stderr
    );
    // The first one still serves.
    sup.cli(["status"]).ok();
}

#[test]
fn sigterm_drains_and_a_stale_socket_after_kill9_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "gus", "--tier", "shared"]).ok();
    let socket = sup.socket().to_owned();
    let mut sup = sup.restart(); // SIGTERM, exit 0, start again on the same state
    sup.cli(["user", "show", "gus"]).ok();

    sup.kill9();
    assert!(socket.exists(), "SIGKILL leaves the socket file behind");
    let mut again = Supervisor::start(&dir);
    assert!(
        again.wait_for_log("removing a stale admin socket"),
        "{}",
        again.logs()
    );
    again.cli(["user", "show", "gus"]).ok();

    let status = again.terminate();
    assert!(status.success(), "{status}");
    assert!(
        again.wait_for_log("drained: every request and task finished"),
        "{}",
        again.logs()
    );
    assert!(!socket.exists(), "the socket was not removed on SIGTERM");
}

#[test]
fn readiness_goes_to_systemd_the_watchdog_is_fed_and_state_is_private() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(tests::supervisor::DEADLINE))
        .unwrap();
    let options = Options {
        env: vec![
            ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..Options::default()
    };
    let sup = Supervisor::start_with(&dir, options);

    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m| m == "READY=1") && seen.iter().any(|m| m == "WATCHDOG=1")) {
        let n = notify
            .recv(&mut buf)
            .expect("no sd-notify message before the deadline");
        seen.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    assert_eq!(seen[0], "READY=1", "READY=1 comes first: {seen:?}");

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(sup.socket()), 0o600, "admin socket");
    // As root, tenants' workers must traverse (not list) the state dirs to reach their own.
    let dir_mode = if tests::is_root() { 0o711 } else { 0o700 };
    assert_eq!(mode(sup.data_dir()), dir_mode, "data_dir");
    assert_eq!(mode(sup.runtime_dir()), dir_mode, "runtime_dir");
    assert_eq!(mode(&sup.data_dir().join("wirebot.db")), 0o600, "registry");
}

#[test]
fn events_show_the_audit_log_filtered_by_user() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "ivy", "--tier", "shared"]).ok();
    sup.cli(["user", "add", "jon", "--tier", "dedicated"]).ok();
    sup.cli(["user", "add", "ivy", "--tier", "shared"])
        .fails_with(65);
    sup.cli(["user", "remove", "jon"]).ok();

    let all = sup.cli(["events"]);
    all.ok();
    // The dedicated member's worker transitions are interleaved; this test is about user actions.
    let lines: Vec<&str> = all
        .stdout
        .lines()
        .filter(|l| !l.contains(" worker."))
        .collect();
    assert_eq!(lines.len(), 4, "{}", all.stdout);
    assert!(
        lines[0].contains("cli")
            && lines[0].contains("user.create")
            && lines[0].contains("ivy")
            && lines[0].ends_with("ok")
    );
    assert!(
        lines[2].contains("user.create")
            && lines[2].contains("error")
            && lines[2].contains("already exists"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("user.delete") && lines[3].contains("jon"));

    let ivy = sup.cli(["events", "--user", "ivy", "--json"]);
    ivy.ok();
    let events: Vec<serde_json::Value> = ivy
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["user_id"] == "ivy"));
    assert!(events[0]["id"].as_i64() < events[1]["id"].as_i64());

    sup.cli(["events", "--user", "../x"]).fails_with(65);
    let api = sup.api("GET", "/v1/events?limit=0", None);
    api.problem(400);
    let api = sup.api("GET", "/v1/events?bogus=1", None);
    assert!(
        api.problem(400)["detail"]
            .as_str()
            .unwrap()
            .contains("bogus")
    );
    let after = sup
        .api(
            "GET",
            &format!("/v1/events?after={}", events[0]["id"]),
            None,
        )
        .ok_json();
    let user_actions: Vec<&serde_json::Value> = after
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["action"].as_str().unwrap().starts_with("worker."))
        .collect();
    assert_eq!(user_actions.len(), 3, "{after}");
    assert!(
        user_actions
            .iter()
            .all(|e| e["id"].as_i64() > events[0]["id"].as_i64())
    );
}

#[test]
fn a_user_whose_directory_vanished_can_still_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "lost", "--tier", "shared"]).ok();
    std::fs::remove_dir_all(sup.user_dir("lost")).unwrap();
    let out = sup.cli(["user", "remove", "lost"]);
    out.ok();
    assert!(
        out.stdout.contains("no state directory to archive"),
        "{}",
        out.stdout
    );
    assert!(sup.registry_users().is_empty());
    assert!(!sup.runtime_dir().join("users/lost").exists());
}

#[test]
fn reconcile_provisions_a_vanished_directory_again_with_a_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "lena", "--tier", "shared"]).ok();
    let token_hash = || -> String {
        sup.registry()
            .query_row("SELECT token_hash FROM users WHERE id = 'lena'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let before = token_hash();
    std::fs::remove_dir_all(sup.user_dir("lena")).unwrap();

    let dry = sup.cli(["reconcile", "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout.contains("drift missing-dir lena"),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("repaired"), "{}", dry.stdout);
    assert!(!sup.user_dir("lena").exists(), "a dry run changes nothing");
    assert_eq!(token_hash(), before);

    let fixed = sup.cli(["reconcile", "--json"]);
    fixed.ok();
    let report = fixed.json();
    assert_eq!(report["dry_run"], false);
    assert!(
        report["repaired"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("missing-dir lena")),
        "{report}"
    );
    assert!(sup.user_dir("lena").is_dir());
    assert_ne!(token_hash(), before, "the lost token is replaced");
    assert_eq!(
        sup.cli(["reconcile", "--dry-run"]).ok().stdout.trim(),
        "no drift"
    );
    let events = sup.cli(["events", "--user", "lena"]).ok().stdout.clone();
    assert!(events.contains("user.reprovision"), "{events}");
}
