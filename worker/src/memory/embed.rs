//! Client for any OpenAI-compatible `POST {baseUrl}/embeddings` endpoint: batching, response checks, provider key.

use std::time::Duration;

use serde::Deserialize;

use super::chunk::sha256_hex;
use super::config::EmbeddingEndpoint;
use super::error::{Error, Result};

/// Inputs per request and characters per request; Clawdbot batches by ~8000 tokens, we cap both.
const MAX_BATCH_INPUTS: usize = 128;
const MAX_BATCH_CHARS: usize = 64_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A configured embedding client.
#[derive(Debug, Clone)]
pub(crate) struct Embedder {
    endpoint: EmbeddingEndpoint,
    url: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

impl Embedder {
    pub(crate) fn new(endpoint: EmbeddingEndpoint) -> Result<Self> {
        let url = format!("{}/embeddings", endpoint.base_url);
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source| Error::EmbedHttp {
                op: "build client",
                url: url.clone(),
                source,
            })?;
        Ok(Embedder {
            endpoint,
            url,
            http,
        })
    }

    pub(crate) fn provider(&self) -> &str {
        &self.endpoint.provider
    }

    pub(crate) fn model(&self) -> &str {
        &self.endpoint.model
    }

    /// Identifies the endpoint for the embedding cache: base URL plus non-credential headers, hashed.
    pub(crate) fn provider_key(&self) -> String {
        let mut material = self.endpoint.base_url.clone();
        for (k, v) in &self.endpoint.headers {
            let lower = k.to_ascii_lowercase();
            if lower != "authorization" && !lower.contains("key") && !lower.contains("token") {
                material.push_str(&format!("\n{lower}:{v}"));
            }
        }
        sha256_hex(material)[..16].to_owned()
    }

    /// Embeds `inputs` in order, in as many requests as the batch limits need.
    pub(crate) async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            let mut end = start;
            let mut chars = 0;
            while end < inputs.len()
                && end - start < MAX_BATCH_INPUTS
                && (end == start || chars + inputs[end].len() <= MAX_BATCH_CHARS)
            {
                chars += inputs[end].len();
                end += 1;
            }
            out.extend(self.embed_batch(&inputs[start..end]).await?);
            start = end;
        }
        Ok(out)
    }

    async fn embed_batch(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut request = self
            .http
            .post(&self.url)
            .json(&serde_json::json!({"model": self.endpoint.model, "input": inputs}));
        if let Some(key) = &self.endpoint.api_key {
            request = request.bearer_auth(key.expose());
        }
        for (k, v) in &self.endpoint.headers {
            request = request.header(k, v);
        }
        let response = request.send().await.map_err(|source| Error::EmbedHttp {
            op: "send",
            url: self.url.clone(),
            source,
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(Error::EmbedStatus {
                url: self.url.clone(),
                status: status.as_u16(),
                body,
            });
        }
        let parsed: EmbeddingResponse =
            response.json().await.map_err(|source| Error::EmbedHttp {
                op: "decode response",
                url: self.url.clone(),
                source,
            })?;
        if parsed.data.len() != inputs.len() {
            return Err(Error::EmbedShape {
                url: self.url.clone(),
                reason: format!(
                    "{} embeddings for {} inputs",
                    parsed.data.len(),
                    inputs.len()
                ),
            });
        }
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
        for (position, item) in parsed.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            let slot = slots.get_mut(index).ok_or_else(|| Error::EmbedShape {
                url: self.url.clone(),
                reason: format!("index {index} out of range"),
            })?;
            *slot = Some(item.embedding);
        }
        let vectors: Option<Vec<Vec<f32>>> = slots.into_iter().collect();
        let vectors = vectors.ok_or_else(|| Error::EmbedShape {
            url: self.url.clone(),
            reason: "duplicate index".into(),
        })?;
        let dims = vectors.first().map_or(0, Vec::len);
        if dims == 0 || vectors.iter().any(|v| v.len() != dims) {
            return Err(Error::EmbedShape {
                url: self.url.clone(),
                reason: "empty or ragged embeddings".into(),
            });
        }
        Ok(vectors)
    }
}

/// Scales `v` to unit length (left as is when zero), so L2 order equals cosine order and `1 − d²/2` is the cosine.
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Little-endian f32 bytes, the form vec0 takes as a blob.
pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
