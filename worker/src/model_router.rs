//! The model router: walks `model.primary` then `fallbacks`, and for each the provider's auth profiles in order,
//! failing over on rate limit / auth / timeout / billing, recording cooldowns in `auth-profiles.json`.

use std::path::Path;
use std::time::Duration;

use crate::Error;
use crate::auth_profiles::{AuthStore, Credential};
use crate::config::{Api, Config, ModelChoice};
use crate::providers::{self, Completion, Message, ModelRequest, ToolSpec};
use crate::transcript::now_ms;

/// One model call to route.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    /// agentDirs to take credentials from: the agent's own first, then the default agent's.
    pub agent_dirs: Vec<&'a Path>,
    pub models: ModelChoice,
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
    /// Bound on the wait for the response head and for each streamed chunk.
    pub idle_timeout: Duration,
}

/// A successful call and where it went.
#[derive(Debug)]
pub struct Routed {
    pub completion: Completion,
    pub provider: String,
    pub model: String,
    pub api: Api,
    pub profile_id: String,
}

/// No model answered: every attempt, in order, for the error message the client sees.
#[derive(Debug, thiserror::Error)]
#[error("no model answered: {}", attempts.join("; "))]
pub struct RouteError {
    pub attempts: Vec<String>,
}

/// Owns the HTTP client and the auth-profile state.
#[derive(Debug)]
pub struct ModelRouter {
    /// Built on the first model call: TLS setup (crypto provider, root store) costs ~1 MB of RSS and start time
    /// that an idle worker never needs.
    client: std::sync::OnceLock<reqwest::Client>,
    auth: AuthStore,
}

/// Splits `provider/model`; a bare model id means Anthropic (Clawdbot's default provider).
pub fn parse_model_ref(r: &str) -> (&str, &str) {
    match r.split_once('/') {
        Some((p, m)) if !p.is_empty() && !m.is_empty() => (p, m),
        _ => ("anthropic", r),
    }
}

impl ModelRouter {
    pub fn new() -> Result<Self, Error> {
        Ok(ModelRouter {
            client: std::sync::OnceLock::new(),
            auth: AuthStore::default(),
        })
    }

    fn client(&self) -> Result<&reqwest::Client, Error> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let built = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(2)
            .build()
            .map_err(Error::HttpClient)?;
        Ok(self.client.get_or_init(|| built))
    }

    /// Routes one call. `on_text` sees streamed text; once any text was streamed, a failure ends the call (no
    /// failover, which would repeat text the client already saw).
    pub async fn complete(
        &self,
        cfg: &Config,
        req: RouteRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Routed, RouteError> {
        let client = self.client().map_err(|e| RouteError {
            attempts: vec![e.to_string()],
        })?;
        let mut attempts = Vec::new();
        let refs: Vec<String> = req
            .models
            .primary
            .iter()
            .chain(req.models.fallbacks.iter())
            .cloned()
            .collect();
        for model_ref in &refs {
            let (provider_id, model) = parse_model_ref(model_ref);
            let Some(provider) = cfg.providers.get(provider_id) else {
                attempts.push(format!("{model_ref}: unknown provider {provider_id:?}"));
                continue;
            };
            let candidates = match self.auth.candidates(
                &req.agent_dirs,
                provider,
                &cfg.env,
                now_ms(),
            ) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, provider = provider_id, "reading auth profiles failed");
                    attempts.push(format!("{model_ref}: auth profiles unreadable"));
                    continue;
                }
            };
            if candidates.usable.is_empty() {
                attempts.push(if candidates.cooling > 0 {
                    format!(
                        "{model_ref}: all {} profile(s) of {provider_id} are cooling down",
                        candidates.cooling
                    )
                } else {
                    format!("{model_ref}: no API key found for provider {provider_id:?}")
                });
                continue;
            }
            let model_req = ModelRequest {
                model: model.to_string(),
                system: req.system.clone(),
                messages: req.messages.clone(),
                tools: req.tools.clone(),
                max_tokens: req.max_tokens,
            };
            for cred in candidates.usable {
                let mut emitted = false;
                let mut sink = |t: &str| {
                    emitted = true;
                    on_text(t);
                };
                let result = providers::stream(
                    client,
                    provider,
                    &cred.key,
                    cred.kind,
                    &model_req,
                    req.idle_timeout,
                    &mut sink,
                )
                .await;
                match result {
                    Ok(completion) => {
                        self.record(&cred, |a, c| a.mark_success(c, provider_id, now_ms()));
                        return Ok(Routed {
                            completion,
                            provider: provider_id.to_string(),
                            model: model.to_string(),
                            api: provider.api,
                            profile_id: cred.profile_id,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(provider = provider_id, model, profile = %cred.profile_id, class = e.class.as_str(),
                            status = e.status, "model call failed: {}", e.message);
                        attempts.push(format!("{model_ref} ({}): {}", cred.profile_id, e.message));
                        if e.class.fails_over() {
                            self.record(&cred, |a, c| a.mark_failure(c, e.class, now_ms()));
                        }
                        if !e.class.fails_over() || emitted {
                            return Err(RouteError { attempts });
                        }
                    }
                }
            }
        }
        if attempts.is_empty() {
            attempts.push("no model configured".into());
        }
        Err(RouteError { attempts })
    }

    fn record(
        &self,
        cred: &Credential,
        f: impl FnOnce(&AuthStore, &Credential) -> Result<(), Error>,
    ) {
        if let Err(e) = f(&self.auth, cred) {
            tracing::warn!(error = %e, profile = %cred.profile_id, "persisting auth profile usage failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs() {
        assert_eq!(parse_model_ref("openai/gpt-5.2"), ("openai", "gpt-5.2"));
        assert_eq!(
            parse_model_ref("claude-opus-4-5"),
            ("anthropic", "claude-opus-4-5")
        );
        assert_eq!(parse_model_ref("local/org/model"), ("local", "org/model"));
    }
}
