//! `MemoryConfig`: the `memorySearch` object of clawdbot.json (agents.defaults or an agents.list entry), with Clawdbot's defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A credential that never shows in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `memorySearch` as Clawdbot reads it; keys we do not use (`fallback`, `local`, `sources`, …) are ignored, not rejected.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct MemoryConfig {
    /// `false` turns the memory tools off; the index can still be opened.
    pub enabled: bool,
    /// `openai`, `gemini`, `local` or `auto`. Only OpenAI-compatible endpoints are spoken here.
    pub provider: String,
    /// Any OpenAI-compatible `/embeddings` endpoint; setting `baseUrl` enables vector search.
    pub remote: RemoteConfig,
    /// Embedding model name (default `text-embedding-3-small`).
    pub model: String,
    pub query: QueryConfig,
    pub chunking: ChunkingConfig,
    pub store: StoreConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct RemoteConfig {
    /// e.g. `http://127.0.0.1:9000/v1`; requests go to `{baseUrl}/embeddings`.
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
    /// Extra request headers (values may be credentials: never logged).
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryConfig {
    /// Results returned (default 6).
    pub max_results: usize,
    /// Results scoring below this are dropped (default 0.35).
    pub min_score: f64,
    pub hybrid: HybridConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HybridConfig {
    pub enabled: bool,
    /// Weight of `1 − cosine distance` (default 0.7).
    pub vector_weight: f64,
    /// Weight of the normalised BM25 score (default 0.3).
    pub text_weight: f64,
    /// Candidates fetched from each side = maxResults × this (default 4).
    pub candidate_multiplier: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ChunkingConfig {
    /// Chunk size in tokens; tokens ≈ chars / 4 (default 400 → 1600 chars).
    pub tokens: usize,
    /// Overlap carried into the next chunk (default 80 → 320 chars).
    pub overlap: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct StoreConfig {
    /// SQLite path; `{agentId}` is replaced. Default `<state>/memory/<agentId>.sqlite`.
    pub path: Option<String>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            enabled: true,
            provider: "auto".to_owned(),
            remote: RemoteConfig::default(),
            model: DEFAULT_MODEL.to_owned(),
            query: QueryConfig::default(),
            chunking: ChunkingConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            max_results: 6,
            min_score: 0.35,
            hybrid: HybridConfig::default(),
        }
    }
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            enabled: true,
            vector_weight: 0.7,
            text_weight: 0.3,
            candidate_multiplier: 4,
        }
    }
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        ChunkingConfig {
            tokens: 400,
            overlap: 80,
        }
    }
}

pub(crate) const DEFAULT_MODEL: &str = "text-embedding-3-small";
const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Where embeddings come from, once resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingEndpoint {
    /// Provider id stored in the index meta (`openai` for every OpenAI-compatible endpoint).
    pub provider: String,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub headers: BTreeMap<String, String>,
    pub model: String,
}

impl MemoryConfig {
    /// Parses a `memorySearch` JSON object (missing keys take Clawdbot's defaults).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        MemoryConfig::deserialize(value)
    }

    /// The embedding endpoint, or `None` for BM25-only search: `remote.baseUrl` wins; provider `openai` with
    /// `remote.apiKey` uses api.openai.com. (The gateway may copy a key from its auth profiles into `remote.apiKey`.)
    pub fn embedding_endpoint(&self) -> Option<EmbeddingEndpoint> {
        if !self.enabled
            || matches!(self.provider.as_str(), "none" | "local" | "gemini")
                && self.remote.base_url.is_none()
        {
            return None;
        }
        let base_url = match (&self.remote.base_url, &self.remote.api_key) {
            (Some(url), _) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_owned(),
            (_, Some(_)) => OPENAI_BASE_URL.to_owned(),
            _ => return None,
        };
        let model = if self.model.trim().is_empty() {
            DEFAULT_MODEL.to_owned()
        } else {
            self.model.clone()
        };
        Some(EmbeddingEndpoint {
            provider: "openai".to_owned(),
            base_url,
            api_key: self.remote.api_key.clone(),
            headers: self.remote.headers.clone(),
            model,
        })
    }

    /// Weights normalised to sum to 1 (Clawdbot's rule); both zero falls back to the defaults.
    pub(crate) fn weights(&self) -> (f64, f64) {
        let v = self.query.hybrid.vector_weight.max(0.0);
        let t = self.query.hybrid.text_weight.max(0.0);
        if v + t <= f64::EPSILON {
            (0.7, 0.3)
        } else {
            (v / (v + t), t / (v + t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_takes_clawdbot_defaults() {
        let c = MemoryConfig::from_json(&serde_json::json!({})).unwrap();
        assert_eq!(c, MemoryConfig::default());
        assert_eq!((c.query.max_results, c.query.min_score), (6, 0.35));
        assert_eq!((c.chunking.tokens, c.chunking.overlap), (400, 80));
        assert_eq!(c.embedding_endpoint(), None);
    }

    #[test]
    fn remote_base_url_enables_embeddings_and_key_is_redacted() {
        let c = MemoryConfig::from_json(&serde_json::json!({
            "provider": "openai", "fallback": "none",
            "remote": {"baseUrl": "http://127.0.0.1:9/v1/", "apiKey": "sk-secret", "headers": {"x-a": "b"}},
            "query": {"maxResults": 3, "hybrid": {"vectorWeight": 3, "textWeight": 1}}
        }))
        .unwrap();
        let e = c.embedding_endpoint().unwrap();
        assert_eq!(e.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(e.model, DEFAULT_MODEL);
        assert!(!format!("{c:?}").contains("sk-secret"));
        assert_eq!(c.weights(), (0.75, 0.25));
        assert_eq!(c.query.max_results, 3);
    }

    #[test]
    fn api_key_alone_means_openai() {
        let c = MemoryConfig::from_json(&serde_json::json!({"remote": {"apiKey": "k"}})).unwrap();
        assert_eq!(
            c.embedding_endpoint().unwrap().base_url,
            "https://api.openai.com/v1"
        );
        let off = MemoryConfig::from_json(
            &serde_json::json!({"enabled": false, "remote": {"apiKey": "k"}}),
        )
        .unwrap();
        assert_eq!(off.embedding_endpoint(), None);
    }
}
