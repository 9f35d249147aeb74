//! Renders `clawdbot.json`: the embedded template for a new user, merged into the parsed existing file otherwise.
//!
//! Provisioning manages a fixed set of keys (`MANAGED`); every other key of an existing file, and the order of all
//! keys, survives (serde_json `preserve_order`). The rendered file uses only keys of Clawdbot 2026.1.24-3's strict
//! schema (`contracts/clawdbot.md` §6), checked by a unit test.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Secret};

/// `templates/clawdbot.json`, compiled in.
const TEMPLATE: &str = include_str!("../../templates/clawdbot.json");

/// What provisioning writes into `clawdbot.json`, whatever was there before.
#[derive(Debug)]
pub(crate) struct Managed<'a> {
    /// `gateway.auth.token`.
    pub(crate) token: &'a Secret,
    /// `gateway.port`, left alone when `None`.
    pub(crate) port: Option<u16>,
    /// `agents.defaults.workspace` (absolute).
    pub(crate) workspace: &'a Path,
}

/// The key paths provisioning owns, as written by [`apply`].
#[cfg(test)]
pub(crate) const MANAGED: &[&str] = &[
    "gateway.mode",
    "gateway.bind",
    "gateway.auth.mode",
    "gateway.auth.token",
    "gateway.port",
    "gateway.reload.mode",
    "update.checkOnStart",
    "agents.defaults.workspace",
];

/// The embedded template, parsed.
pub(crate) fn template() -> Result<Value, Error> {
    serde_json::from_str(TEMPLATE).map_err(Error::Template)
}

/// Parse an existing `clawdbot.json` (JSON, or JSON5 as Clawdbot accepts) keeping key order.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Value, Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(_) => json5::from_str(text).map_err(|e| Error::ConfigParse {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// `gateway.auth.token` of a parsed config, when it is a non-empty string.
pub(crate) fn token(config: &Value) -> Option<Secret> {
    let t = config.get("gateway")?.get("auth")?.get("token")?.as_str()?;
    (!t.is_empty()).then(|| Secret::from(t.to_owned()))
}

/// Set every managed key in `config` (an object), creating parent objects as needed.
pub(crate) fn apply(path: &Path, config: &mut Value, managed: &Managed<'_>) -> Result<(), Error> {
    let workspace = managed
        .workspace
        .to_str()
        .ok_or_else(|| Error::ConfigShape {
            path: path.to_owned(),
            detail: format!(
                "workspace path {} is not UTF-8",
                managed.workspace.display()
            ),
        })?;
    set(path, config, &["gateway", "mode"], "local".into())?;
    set(path, config, &["gateway", "bind"], "loopback".into())?;
    set(path, config, &["gateway", "auth", "mode"], "token".into())?;
    set(
        path,
        config,
        &["gateway", "auth", "token"],
        managed.token.expose().into(),
    )?;
    if let Some(port) = managed.port {
        set(path, config, &["gateway", "port"], port.into())?;
    }
    set(path, config, &["gateway", "reload", "mode"], "off".into())?;
    set(path, config, &["update", "checkOnStart"], false.into())?;
    set(
        path,
        config,
        &["agents", "defaults", "workspace"],
        workspace.into(),
    )?;
    Ok(())
}

/// Set `config[keys[0]][keys[1]]... = value`; an intermediate that exists but is not an object is an error
/// (it is the user's data: never replaced silently).
fn set(path: &Path, config: &mut Value, keys: &[&str], value: Value) -> Result<(), Error> {
    let mut node = config;
    for (depth, key) in keys.iter().enumerate() {
        let Value::Object(map) = node else {
            let at = if depth == 0 {
                "the top level".to_owned()
            } else {
                format!("`{}`", keys[..depth].join("."))
            };
            return Err(Error::ConfigShape {
                path: path.to_owned(),
                detail: format!("{at} must be an object"),
            });
        };
        if depth + 1 == keys.len() {
            if map.get(*key) != Some(&value) {
                map.insert((*key).to_owned(), value);
            }
            return Ok(());
        }
        node = map.entry(*key).or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// Serialise as Clawdbot's own files look: two-space indented JSON with a trailing newline.
pub(crate) fn to_bytes(path: &Path, config: &Value) -> Result<Vec<u8>, Error> {
    let mut out = serde_json::to_vec_pretty(config).map_err(|e| Error::ConfigShape {
        path: path.to_owned(),
        detail: format!("cannot serialise: {e}"),
    })?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Keys Clawdbot 2026.1.24-3's strict schema accepts, per object path (`contracts/clawdbot.md` §6). Only the
    /// objects provisioning can write are listed: anything else in a rendered file fails the test.
    const ALLOWED: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "gateway", "agents", "bindings", "session", "skills", "cron", "hooks", "update",
                "logging", "plugins", "models", "auth", "tools",
            ],
        ),
        (
            "gateway",
            &[
                "port",
                "mode",
                "bind",
                "auth",
                "trustedProxies",
                "controlUi",
                "http",
                "reload",
                "tls",
                "remote",
            ],
        ),
        (
            "gateway.auth",
            &["mode", "token", "password", "allowTailscale"],
        ),
        ("gateway.reload", &["mode", "debounceMs"]),
        ("update", &["checkOnStart"]),
        ("agents", &["defaults", "list"]),
        (
            "agents.defaults",
            &[
                "workspace",
                "model",
                "models",
                "memorySearch",
                "heartbeat",
                "compaction",
                "thinkingDefault",
                "sandbox",
                "timeoutSeconds",
            ],
        ),
    ];

    /// Allowed values of the enum-like keys provisioning sets.
    const ENUMS: &[(&str, &[&str])] = &[
        ("gateway.mode", &["local", "remote"]),
        (
            "gateway.bind",
            &["loopback", "lan", "tailnet", "auto", "custom"],
        ),
        ("gateway.auth.mode", &["token", "password"]),
        ("gateway.reload.mode", &["hybrid", "hot", "restart", "off"]),
    ];

    /// Every key path in `v` that the schema table does not allow.
    fn unknown_keys(v: &Value, at: &str, out: &mut Vec<String>) {
        let Value::Object(map) = v else { return };
        let allowed = ALLOWED
            .iter()
            .find(|(p, _)| *p == at)
            .map(|(_, keys)| *keys);
        for (key, child) in map {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            match allowed {
                Some(keys) if keys.contains(&key.as_str()) => unknown_keys(child, &path, out),
                _ => out.push(path),
            }
        }
    }

    fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
        path.split('.').try_fold(v, |node, key| node.get(key))
    }

    fn render(port: Option<u16>) -> Value {
        let token = Secret::from("tok-0123456789".to_owned());
        let workspace = PathBuf::from("/data/users/alice/workspace");
        let mut v = template().unwrap();
        apply(
            Path::new("clawdbot.json"),
            &mut v,
            &Managed {
                token: &token,
                port,
                workspace: &workspace,
            },
        )
        .unwrap();
        v
    }

    #[test]
    fn rendered_config_uses_only_schema_keys_and_values() {
        for port in [None, Some(18789)] {
            let v = render(port);
            let mut unknown = Vec::new();
            unknown_keys(&v, "", &mut unknown);
            assert!(
                unknown.is_empty(),
                "keys outside the Clawdbot schema: {unknown:?}"
            );
            for (path, values) in ENUMS {
                let got = lookup(&v, path)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{path} missing"));
                assert!(
                    values.contains(&got),
                    "{path} = {got:?} is not one of {values:?}"
                );
            }
        }
    }

    #[test]
    fn rendered_config_sets_every_managed_key() {
        let v = render(Some(18789));
        for path in MANAGED {
            assert!(lookup(&v, path).is_some(), "{path} missing");
        }
        let expected = serde_json::json!({
            "gateway": {"mode": "local", "bind": "loopback", "auth": {"mode": "token", "token": "tok-0123456789"},
                        "reload": {"mode": "off"}, "port": 18789},
            "update": {"checkOnStart": false},
            "agents": {"defaults": {"workspace": "/data/users/alice/workspace"}}
        });
        assert_eq!(v, expected);
        // No discovery/mDNS key: Bonjour is switched off by the spawner's environment (CLAWDBOT_DISABLE_BONJOUR=1).
        assert!(v.get("discovery").is_none());
    }

    #[test]
    fn merge_keeps_unmanaged_keys_and_their_order() {
        let text = r#"{"session": {"dmScope": "per-channel-peer"}, "gateway": {"port": 1, "auth": {"mode": "password", "password": "p"}}, "x": 1}"#;
        let mut v = parse(Path::new("c.json"), text).unwrap();
        let token = Secret::from("t".to_owned());
        let ws = PathBuf::from("/w");
        apply(
            Path::new("c.json"),
            &mut v,
            &Managed {
                token: &token,
                port: None,
                workspace: &ws,
            },
        )
        .unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["session", "gateway", "x", "update", "agents"]);
        assert_eq!(v["gateway"]["port"], 1, "port left alone when not given");
        assert_eq!(v["gateway"]["auth"]["password"], "p");
        assert_eq!(v["gateway"]["auth"]["mode"], "token");
    }

    #[test]
    fn json5_is_accepted_and_bad_shapes_are_named() {
        let v = parse(
            Path::new("c.json"),
            "{ gateway: { port: 5, }, // comment\n }",
        )
        .unwrap();
        assert_eq!(v["gateway"]["port"], 5);
        let err = parse(Path::new("c.json"), "{ nope").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot parse c.json as JSON or JSON5"),
            "{err}"
        );
        let mut v = serde_json::json!({"gateway": "oops"});
        let token = Secret::from("t".to_owned());
        let ws = PathBuf::from("/w");
        let err = apply(
            Path::new("c.json"),
            &mut v,
            &Managed {
                token: &token,
                port: None,
                workspace: &ws,
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "c.json: `gateway` must be an object");
    }
}
