//! deploy/ files: the systemd unit passes `systemd-analyze verify` and says what the daemon relies on; the
//! cloudflared ingress sends helm.<domain> and api.<domain> to the listeners deploy/wirebot.toml configures.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `key=value` settings of a unit file, in order (comments and section headers skipped).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn setting<'u>(settings: &'u [(String, String)], key: &str) -> &'u str {
    let found: Vec<_> = settings.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(found.len(), 1, "{key} must be set exactly once");
    &found[0].1
}

/// The major version of the installed systemd, from `systemd-analyze --version` ("systemd 252 (252.38-1)").
fn systemd_version() -> Option<u32> {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(version) = systemd_version() else {
        eprintln!("SKIP unit_passes_systemd_analyze_verify: systemd-analyze is not installed");
        return;
    };
    let unit = read("deploy/wirebot.service");
    let exec = "ExecStart=/usr/local/bin/wirebot serve --config /etc/wirebot/wirebot.toml";
    assert!(unit.lines().any(|l| l == exec), "unit must run: {exec}");
    // verify checks that ExecStart is executable: point it at the binary we just built.
    let wirebot = tests::bin_path("wirebot");
    let patched = unit.replace("/usr/local/bin/wirebot", wirebot.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wirebot.service");
    std::fs::File::create(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, patched.as_bytes()))
        .unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on unknown keys and bad values ("ignoring"), so every message counts as a failure, except
    // the two restart-backoff keys that systemd < 254 does not know yet.
    let newer_keys = [
        "Unknown key 'RestartSteps'",
        "Unknown key 'RestartMaxDelaySec'",
    ];
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(version < 254 && newer_keys.iter().any(|k| l.contains(k))))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd {version} complains about the unit:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn unit_declares_notify_watchdog_restart_policy_and_minimal_caps() {
    let unit = read("deploy/wirebot.service");
    let s = unit_settings(&unit);
    assert_eq!(setting(&s, "Type"), "notify");
    assert_eq!(setting(&s, "WatchdogSec"), "30");
    assert_eq!(setting(&s, "KillMode"), "process");
    assert_eq!(setting(&s, "Restart"), "on-failure");
    assert_eq!(setting(&s, "RestartSec"), "1");
    assert_eq!(setting(&s, "StartLimitIntervalSec"), "0");
    assert!(setting(&s, "RestartMaxDelaySec").parse::<u32>().unwrap() >= 10);
    assert_eq!(setting(&s, "StateDirectory"), "wirebot");
    assert_eq!(setting(&s, "RuntimeDirectory"), "wirebot");
    assert_eq!(setting(&s, "RuntimeDirectoryMode"), "0700");
    assert_eq!(setting(&s, "LimitNOFILE"), "20000");

    let mut caps: Vec<&str> = setting(&s, "CapabilityBoundingSet")
        .split_whitespace()
        .collect();
    caps.sort_unstable();
    let mut want = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_ADMIN",
    ];
    want.sort_unstable();
    assert_eq!(caps, want);
    // Each capability is justified in a comment of its own.
    for cap in want {
        assert!(
            unit.lines().any(|l| l.starts_with('#')
                && l.split_whitespace().any(|w| w.trim_end_matches(',') == cap)),
            "{cap} has no comment saying why the daemon needs it"
        );
    }
    // The unit's writable and runtime paths are the ones the production config uses.
    let config = read("deploy/wirebot.toml");
    let data_dir = toml_value(&config, None, "data_dir");
    let writable: Vec<&str> = setting(&s, "ReadWritePaths")
        .split_whitespace()
        .map(|p| p.trim_start_matches('-'))
        .collect();
    assert!(
        writable.contains(&data_dir.as_str()),
        "ReadWritePaths {writable:?} lacks data_dir {data_dir}"
    );
    let runtime_dir = toml_value(&config, None, "runtime_dir");
    assert_eq!(
        runtime_dir,
        format!("/run/{}", setting(&s, "RuntimeDirectory"))
    );
    assert_eq!(
        toml_value(&config, Some("admin"), "socket"),
        format!("{runtime_dir}/admin.sock")
    );

    // The drain must fit in the stop timeout.
    let stop: u64 = setting(&s, "TimeoutStopSec").parse().unwrap();
    let drain_ms: u64 = toml_value(&read("deploy/wirebot.toml"), None, "drain_timeout_ms")
        .parse()
        .unwrap();
    assert!(
        stop * 1000 > drain_ms,
        "TimeoutStopSec={stop} must exceed drain_timeout_ms={drain_ms}"
    );
}

/// The raw value of `key` in `[section]` (or before any section) of a flat TOML file, quotes stripped.
fn toml_value(text: &str, section: Option<&str>, key: &str) -> String {
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
        } else if current.as_deref() == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return v.trim().trim_matches('"').to_owned();
        }
    }
    panic!("{key} not set in [{}]", section.unwrap_or(""))
}

/// One cloudflared ingress rule.
#[derive(Debug, PartialEq, Eq)]
struct Rule {
    hostname: Option<String>,
    service: String,
}

/// The `ingress:` list of a cloudflared config, read strictly: only `hostname` and `service` keys, two-space list
/// items, no tabs. (No YAML crate in the workspace; this reads exactly the subset cloudflared.yml uses and refuses
/// anything else.)
fn ingress(yaml: &str) -> Result<Vec<Rule>, String> {
    if yaml.contains('\t') {
        return Err("tabs are not valid YAML indentation".into());
    }
    let mut rules: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut in_ingress = false;
    for line in yaml.lines() {
        let code = line.split(" #").next().unwrap_or_default();
        if code.trim().is_empty() || code.trim_start().starts_with('#') {
            continue;
        }
        if !code.starts_with(' ') {
            in_ingress = code.trim_end() == "ingress:";
            continue;
        }
        if !in_ingress {
            continue;
        }
        let item = if let Some(rest) = code.strip_prefix("  - ") {
            rules.push((None, None));
            rest
        } else if let Some(rest) = code.strip_prefix("    ").filter(|r| !r.starts_with(' ')) {
            rest
        } else {
            return Err(format!("unexpected indentation in ingress: {line:?}"));
        };
        let (key, value) = item
            .split_once(": ")
            .ok_or_else(|| format!("not `key: value`: {line:?}"))?;
        let rule = rules
            .last_mut()
            .ok_or_else(|| format!("a key before the first `- `: {line:?}"))?;
        let slot = match key.trim() {
            "hostname" => &mut rule.0,
            "service" => &mut rule.1,
            other => return Err(format!("unexpected ingress key {other:?}")),
        };
        if slot.replace(value.trim().to_owned()).is_some() {
            return Err(format!("{key} twice in one rule"));
        }
    }
    rules
        .into_iter()
        .map(|(hostname, service)| {
            Ok(Rule {
                hostname,
                service: service.ok_or("a rule without a service")?,
            })
        })
        .collect()
}

#[test]
fn cloudflared_routes_helm_and_api_to_the_configured_listeners() {
    let config = read("deploy/wirebot.toml");
    let proxy = toml_value(&config, Some("proxy"), "listen");
    let webhooks = toml_value(&config, Some("webhooks"), "listen");
    // The proxy listener is also the embedded default's.
    assert_eq!(
        toml_value(&read("templates/wirebot.toml"), Some("proxy"), "listen"),
        proxy
    );

    let rules = ingress(&read("deploy/cloudflared.yml")).unwrap();
    assert_eq!(
        rules,
        [
            Rule {
                hostname: Some("helm.example.com".into()),
                service: format!("http://{proxy}")
            },
            Rule {
                hostname: Some("api.example.com".into()),
                service: format!("http://{webhooks}")
            },
            Rule {
                hostname: None,
                service: "http_status:404".into()
            },
        ]
    );
}

#[test]
fn ingress_reader_rejects_what_it_does_not_understand() {
    let ok = "tunnel: t\ningress:\n  - hostname: a\n    service: http://x\n  - service: http_status:404\n";
    assert_eq!(ingress(ok).unwrap().len(), 2);
    for (bad, why) in [
        (
            "ingress:\n  - hostname: a\n    servce: http://x\n",
            "unexpected ingress key \"servce\"",
        ),
        (
            "ingress:\n  - hostname: a\n      service: http://x\n",
            "unexpected indentation",
        ),
        ("ingress:\n  - hostname: a\n", "a rule without a service"),
        (
            "ingress:\n  - service: a\n    service: b\n",
            "service twice in one rule",
        ),
        ("ingress:\n\t- service: x\n", "tabs are not valid"),
    ] {
        let err = ingress(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}
