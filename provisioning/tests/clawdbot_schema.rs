//! The rendered `clawdbot.json` passes the real Clawdbot 2026.1.24-3 validator (`validateConfigObject`, zod strict),
//! when `tests/install-clawdbot.sh` has installed it; skipped with a printed reason otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use provisioning::{Layout, ProvisionSpec, Tier, provision, rotate_gateway_token};

/// `$WIREBOT_CLAWDBOT_DIR`, else `<repo>/.cache/clawdbot` (where tests/install-clawdbot.sh installs it).
fn clawdbot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WIREBOT_CLAWDBOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/clawdbot"));
    let ok = dir.join("venv/bin/node").exists()
        && dir
            .join("node_modules/clawdbot/dist/config/validation.js")
            .exists();
    ok.then_some(dir)
}

/// Run Clawdbot's own validator on a config file; `Ok(())` or the issues it reports.
fn validate(clawdbot: &Path, config: &Path) -> Result<(), String> {
    let validation = clawdbot.join("node_modules/clawdbot/dist/config/validation.js");
    let script = format!(
        "import {{ validateConfigObject }} from {validation:?};\n\
         import fs from 'node:fs';\n\
         const r = validateConfigObject(JSON.parse(fs.readFileSync(process.argv[1], 'utf8')));\n\
         console.log(JSON.stringify(r.ok ? {{ ok: true }} : {{ ok: false, issues: r.issues }}));",
        validation = validation.to_str().unwrap()
    );
    let out = Command::new(clawdbot.join("venv/bin/node"))
        .args(["--input-type=module", "-e", &script])
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    if verdict["ok"] == true {
        Ok(())
    } else {
        Err(verdict["issues"].to_string())
    }
}

fn spec(id: &str, port: Option<u16>) -> ProvisionSpec {
    ProvisionSpec {
        user: id.parse().unwrap(),
        tier: Tier::Dedicated,
        owner: None,
        email: None,
        display_name: None,
        gateway_port: port,
        provider_keys: BTreeMap::new(),
    }
}

#[test]
fn rendered_config_passes_the_real_clawdbot_validator() {
    let Some(clawdbot) = clawdbot_dir() else {
        eprintln!(
            "SKIP rendered_config_passes_the_real_clawdbot_validator: run tests/install-clawdbot.sh first"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("data"), tmp.path().join("run"));
    for (id, port) in [("alice", Some(20000)), ("bob", None)] {
        let p = provision(&layout, &spec(id, port)).unwrap();
        let config = p.user_dir.join("clawdbot.json");
        validate(&clawdbot, &config)
            .unwrap_or_else(|issues| panic!("{id}: Clawdbot rejects {issues}"));
        rotate_gateway_token(
            &layout,
            &p.user_dir
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
            None,
        )
        .unwrap();
        validate(&clawdbot, &config)
            .unwrap_or_else(|issues| panic!("{id} after rotation: Clawdbot rejects {issues}"));
    }

    // The validator is strict (so this test can fail): one unknown key is rejected.
    let bad = tmp.path().join("bad.json");
    provisioning::atomic::write_file(&bad, br#"{"gateway":{"mode":"local","tenant":"x"}}"#, 0o600)
        .unwrap();
    let issues = validate(&clawdbot, &bad).unwrap_err();
    assert!(issues.contains("Unrecognized key"), "{issues}");
}
