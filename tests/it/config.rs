//! `wirebot.toml` through the real binary: every mistake reported at once with its key (exit 64) by both
//! `config check` and `serve` (which then binds and creates nothing), and the shipped template and deploy example pass.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tests::supervisor::wirebot;

fn workspace_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(rel)
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wirebot.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

#[test]
fn a_config_with_three_mistakes_reports_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = write_config(
        dir.path(),
        &format!(
            "data_dir = {:?}\n\n[ports]\nfirst = 70000\n\n[proxy]\nlisten_addr = \"127.0.0.1:8080\"\n\n[tiers.premium]\npids_max = 10\n",
            data.display().to_string()
        ),
    );
    // (what, where): each mistake is reported with its key path and its line.
    let expected = [
        ("ports.first: 70000 is out of range (0..=65535)", "(line 4)"),
        ("proxy.listen_addr: unknown key", "(line 7)"),
        (
            "tiers.premium: unknown key (expected one of: shared, dedicated)",
            "(line 9)",
        ),
    ];
    let reported = |stderr: &str, (what, line): (&str, &str)| {
        stderr
            .lines()
            .any(|l| l.trim_start().starts_with(what) && l.ends_with(line))
    };

    let check = wirebot(["config", "check", path.to_str().unwrap()]);
    check.fails_with(64);
    assert!(check.stderr.contains("3 errors"), "{}", check.stderr);
    for mistake in expected {
        assert!(
            reported(&check.stderr, mistake),
            "missing {mistake:?} in:
{}",
            check.stderr
        );
    }

    // `serve` checks the same way before touching anything: nothing created, nothing bound.
    let serve = wirebot(["--config", path.to_str().unwrap(), "serve"]);
    serve.fails_with(64);
    for mistake in expected {
        assert!(
            reported(&serve.stderr, mistake),
            "missing {mistake:?} in:
{}",
            serve.stderr
        );
    }
    assert!(
        !data.exists(),
        "serve created {} despite an invalid config",
        data.display()
    );
}

#[test]
fn syntax_errors_and_missing_files_are_one_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "data_dir = \"/x\"\n[ports\nfirst = 1\n");
    let out = wirebot(["config", "check", path.to_str().unwrap()]);
    out.fails_with(64);
    assert!(
        out.stderr.contains("not valid TOML at line 2"),
        "{}",
        out.stderr
    );

    let missing = dir.path().join("nope.toml");
    let out = wirebot(["config", "check", missing.to_str().unwrap()]);
    out.fails_with(64);
    assert!(
        out.stderr.contains("nope.toml") && out.stderr.contains("cannot read"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_template_and_the_deploy_example_are_valid() {
    for rel in ["templates/wirebot.toml", "deploy/wirebot.toml"] {
        let path = workspace_file(rel);
        let out = wirebot(["config", "check", path.to_str().unwrap()]);
        out.ok();
        assert!(out.stdout.contains("ok"), "{}", out.stdout);
    }
    let deploy = wirebot([
        "config",
        "check",
        workspace_file("deploy/wirebot.toml").to_str().unwrap(),
    ]);
    assert!(
        deploy.stdout.contains("data_dir /data/wirebot")
            && deploy.stdout.contains("runtime_dir /run/wirebot")
    );
    let embedded = wirebot(["config", "check"]);
    embedded.ok();
    assert!(
        embedded.stdout.contains("<embedded default>")
            && embedded.stdout.contains("./wirebot-data"),
        "{}",
        embedded.stdout
    );
}

#[test]
fn an_exposed_admin_listener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[admin]\ntcp = \"0.0.0.0:7070\"\n");
    let out = wirebot(["config", "check", path.to_str().unwrap()]);
    out.fails_with(64);
    assert!(
        out.stderr
            .contains("admin.tcp: 0.0.0.0:7070 is not a loopback address"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("admin.token_file: required"),
        "{}",
        out.stderr
    );
}
