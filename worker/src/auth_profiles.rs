//! `auth-profiles.json` per agent: credential order, `lastGood`, `usageStats` and Clawdbot's cooldowns
//! (1, 5, 25, 60 min; billing disables 5 h doubling to 24 h), persisted atomically after every change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::config::{Env, ProviderConfig};
use crate::providers::{FailureClass, KeyKind};
use crate::secret::Secret;
use crate::{Error, atomic};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// One usable credential for a provider.
#[derive(Clone, Debug)]
pub struct Credential {
    pub profile_id: String,
    pub key: Secret,
    pub kind: KeyKind,
    /// The auth-profiles.json that records this credential's usage.
    pub store: PathBuf,
}

/// The candidates for one provider: usable now, in order, and how many were skipped as cooling down or disabled.
#[derive(Debug, Default)]
pub struct Candidates {
    pub usable: Vec<Credential>,
    pub cooling: usize,
}

/// Cached `auth-profiles.json` files, by path.
#[derive(Debug, Default)]
pub struct AuthStore {
    files: Mutex<HashMap<PathBuf, Value>>,
}

/// Cooldown after the `n`-th consecutive failure: min(1 h, 1 min · 5^(n−1)).
pub fn cooldown_ms(n: u32) -> i64 {
    let mut ms = MINUTE_MS;
    for _ in 1..n.max(1) {
        ms = (ms * 5).min(HOUR_MS);
    }
    ms.min(HOUR_MS)
}

/// Billing disable after the `n`-th billing failure: 5 h doubling, at most 24 h.
pub fn billing_disable_ms(n: u32) -> i64 {
    let mut ms = 5 * HOUR_MS;
    for _ in 1..n.max(1) {
        ms = (ms * 2).min(24 * HOUR_MS);
    }
    ms.min(24 * HOUR_MS)
}

impl AuthStore {
    fn with<T>(&self, path: &Path, f: impl FnOnce(&mut Value) -> T) -> Result<T, Error> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if !files.contains_key(path) {
            let v = match std::fs::read_to_string(path) {
                Ok(t) => serde_json::from_str(&t).map_err(|e| Error::Json {
                    path: path.into(),
                    source: e,
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    json!({"version": 1, "profiles": {}})
                }
                Err(e) => return Err(Error::io("read auth profiles", path, e)),
            };
            files.insert(path.to_path_buf(), v);
        }
        let v = files.get_mut(path).ok_or_else(|| {
            Error::io(
                "load auth profiles",
                path,
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        Ok(f(v))
    }

    /// Credentials for `provider`, in Clawdbot's order: `order[provider]`, else OAuth/token before API keys and the
    /// least recently used first; then the env var (`ANTHROPIC_API_KEY`…) and `models.providers.<id>.apiKey`.
    /// `dirs` = the agent's own agentDir first, then the default agent's (inherited profiles).
    pub fn candidates(
        &self,
        dirs: &[&Path],
        provider: &ProviderConfig,
        env: &Env,
        now: i64,
    ) -> Result<Candidates, Error> {
        let mut out = Candidates::default();
        let mut seen: Vec<String> = Vec::new();
        let own = dirs.first().map(|d| d.join("auth-profiles.json"));
        for dir in dirs {
            let path = dir.join("auth-profiles.json");
            let list = self.with(&path, |v| ordered_profiles(v, &provider.id))?;
            for (id, key, kind, usable) in list {
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key.clone());
                let usable_now = usable_at(&self.stats(&path, &id)?, now);
                if !usable {
                    continue;
                }
                if usable_now {
                    out.usable.push(Credential {
                        profile_id: id,
                        key: Secret::new(key),
                        kind,
                        store: path.clone(),
                    });
                } else {
                    out.cooling += 1;
                }
            }
        }
        let env_name = format!(
            "{}_API_KEY",
            provider.id.to_ascii_uppercase().replace('-', "_")
        );
        let extra = [
            (format!("{}:env", provider.id), env.get(&env_name).cloned()),
            (format!("{}:config", provider.id), provider.api_key.clone()),
        ];
        if let Some(own) = own {
            for (id, key) in extra {
                let Some(key) = key else { continue };
                if seen.contains(&key.expose().to_string()) {
                    continue;
                }
                seen.push(key.expose().to_string());
                if usable_at(&self.stats(&own, &id)?, now) {
                    out.usable.push(Credential {
                        profile_id: id,
                        key,
                        kind: KeyKind::ApiKey,
                        store: own.clone(),
                    });
                } else {
                    out.cooling += 1;
                }
            }
        }
        Ok(out)
    }

    fn stats(&self, path: &Path, id: &str) -> Result<Value, Error> {
        self.with(path, |v| v["usageStats"][id].clone())
    }

    /// Records a success: `lastGood`, `lastUsed`, counters cleared.
    pub fn mark_success(&self, cred: &Credential, provider: &str, now: i64) -> Result<(), Error> {
        let v = self.with(&cred.store, |v| {
            let root = object(v);
            object(root.entry("lastGood").or_insert(json!({})))
                .insert(provider.into(), json!(cred.profile_id));
            let stats = object(root.entry("usageStats").or_insert(json!({})));
            let s = object(stats.entry(cred.profile_id.clone()).or_insert(json!({})));
            s.insert("lastUsed".into(), json!(now));
            s.insert("errorCount".into(), json!(0));
            s.remove("cooldownUntil");
            s.insert("failureCounts".into(), json!({}));
            v.clone()
        })?;
        atomic::write_json(&cred.store, &v)
    }

    /// Records a failure of `class` and starts the cooldown (or the billing disable).
    pub fn mark_failure(
        &self,
        cred: &Credential,
        class: FailureClass,
        now: i64,
    ) -> Result<(), Error> {
        let v = self.with(&cred.store, |v| {
            let root = object(v);
            let stats = object(root.entry("usageStats").or_insert(json!({})));
            let s = object(stats.entry(cred.profile_id.clone()).or_insert(json!({})));
            let last_failure = s.get("lastFailureAt").and_then(Value::as_i64).unwrap_or(0);
            if now - last_failure > 24 * HOUR_MS {
                s.insert("errorCount".into(), json!(0));
                s.insert("failureCounts".into(), json!({}));
            }
            let n = s.get("errorCount").and_then(Value::as_u64).unwrap_or(0) + 1;
            s.insert("errorCount".into(), json!(n));
            let counts = object(s.entry("failureCounts").or_insert(json!({})));
            let c = counts
                .get(class.as_str())
                .and_then(Value::as_u64)
                .unwrap_or(0)
                + 1;
            counts.insert(class.as_str().into(), json!(c));
            s.insert("lastFailureAt".into(), json!(now));
            if class == FailureClass::Billing {
                s.insert(
                    "disabledUntil".into(),
                    json!(now + billing_disable_ms(u32::try_from(c).unwrap_or(u32::MAX))),
                );
                s.insert("disabledReason".into(), json!("billing"));
            } else {
                s.insert(
                    "cooldownUntil".into(),
                    json!(now + cooldown_ms(u32::try_from(n).unwrap_or(u32::MAX))),
                );
            }
            v.clone()
        })?;
        atomic::write_json(&cred.store, &v)
    }
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made it an object"),
    }
}

fn usable_at(stats: &Value, now: i64) -> bool {
    let until = |k: &str| stats.get(k).and_then(Value::as_i64).unwrap_or(0);
    until("cooldownUntil") <= now && until("disabledUntil") <= now
}

/// `(id, key, kind, has_key)` for the provider's profiles in order.
fn ordered_profiles(v: &Value, provider: &str) -> Vec<(String, String, KeyKind, bool)> {
    let Some(profiles) = v.get("profiles").and_then(Value::as_object) else {
        return Vec::new();
    };
    let cred = |id: &str| -> Option<(String, String, KeyKind, bool)> {
        let p = profiles.get(id)?;
        if p.get("provider").and_then(Value::as_str) != Some(provider) {
            return None;
        }
        let (field, kind) = match p.get("type").and_then(Value::as_str) {
            Some("oauth") => ("access", KeyKind::Bearer),
            Some("token") => ("token", KeyKind::Bearer),
            _ => ("key", KeyKind::ApiKey),
        };
        let key = p
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let expired = p
            .get("expires")
            .and_then(Value::as_i64)
            .is_some_and(|e| e > 0 && e < chrono::Utc::now().timestamp_millis());
        Some((
            id.to_string(),
            key.clone(),
            kind,
            !key.is_empty() && !expired,
        ))
    };
    if let Some(order) = v
        .pointer(&format!("/order/{provider}"))
        .and_then(Value::as_array)
    {
        return order
            .iter()
            .filter_map(Value::as_str)
            .filter_map(cred)
            .collect();
    }
    let mut list: Vec<_> = profiles.keys().filter_map(|id| cred(id)).collect();
    let last_used = |id: &str| {
        v.pointer(&format!("/usageStats/{id}/lastUsed"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    list.sort_by_key(|(id, _, kind, _)| (*kind == KeyKind::ApiKey, last_used(id)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Api;

    fn provider() -> ProviderConfig {
        ProviderConfig {
            id: "anthropic".into(),
            base_url: "http://x".into(),
            api: Api::AnthropicMessages,
            api_key: None,
            models: vec![],
        }
    }

    #[test]
    fn cooldown_schedule_matches_clawdbot() {
        let min = |n| cooldown_ms(n) / MINUTE_MS;
        assert_eq!([min(1), min(2), min(3), min(4), min(9)], [1, 5, 25, 60, 60]);
        let h = |n| billing_disable_ms(n) / HOUR_MS;
        assert_eq!([h(1), h(2), h(3), h(4)], [5, 10, 20, 24]);
    }

    #[test]
    fn order_failure_cooldown_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth-profiles.json");
        atomic::write_json(
            &file,
            &json!({"version": 1,
            "profiles": {"anthropic:a": {"type": "api_key", "provider": "anthropic", "key": "ka"},
                         "anthropic:b": {"type": "api_key", "provider": "anthropic", "key": "kb"},
                         "openai:c": {"type": "api_key", "provider": "openai", "key": "kc"}},
            "order": {"anthropic": ["anthropic:a", "anthropic:b"]}}),
        )
        .unwrap();
        let env = Env::from_pairs([("ANTHROPIC_API_KEY", "kenv")]);
        let store = AuthStore::default();
        let c = store
            .candidates(&[dir.path()], &provider(), &env, 1000)
            .unwrap();
        let ids: Vec<_> = c.usable.iter().map(|c| c.profile_id.as_str()).collect();
        assert_eq!(ids, ["anthropic:a", "anthropic:b", "anthropic:env"]);
        store
            .mark_failure(&c.usable[0], FailureClass::RateLimit, 1000)
            .unwrap();
        store.mark_success(&c.usable[1], "anthropic", 1000).unwrap();
        // A fresh store (restart) reads the persisted cooldown.
        let again = AuthStore::default();
        let c = again
            .candidates(&[dir.path()], &provider(), &env, 2000)
            .unwrap();
        assert_eq!(c.usable[0].profile_id, "anthropic:b");
        assert_eq!(c.cooling, 1);
        let c = again
            .candidates(&[dir.path()], &provider(), &env, 1000 + MINUTE_MS + 1)
            .unwrap();
        assert_eq!(c.usable[0].profile_id, "anthropic:a");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v["lastGood"]["anthropic"], "anthropic:b");
        assert_eq!(v["usageStats"]["anthropic:a"]["errorCount"], 1);
        assert_eq!(
            v["usageStats"]["anthropic:a"]["failureCounts"]["rate_limit"],
            1
        );
    }
}
