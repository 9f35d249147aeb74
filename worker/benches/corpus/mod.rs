//! The memory benchmark's synthetic corpus, queries and embedding endpoint, shared by `benches/memory.rs` and
//! `examples/memory_corpus.rs` (which `tests/bench/memory_clawdbot.sh` uses to feed the same corpus to Clawdbot).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::Path;

use axum::{Json, Router, routing::post};
use serde_json::{Value, json};

/// Embedding width of the benchmark's endpoint.
pub(crate) const DIMS: usize = 256;

/// xorshift64*: deterministic and dependency-free.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` made-up words of 2-4 syllables.
pub(crate) fn vocabulary(n: usize) -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ren", "sa", "to", "vel", "dra", "qui", "zen", "po", "lu", "mar", "ti",
        "ga", "bro", "ne", "sil", "fa", "gor", "hu", "ja", "ke", "wy",
    ];
    let mut rng = Rng(42);
    (0..n)
        .map(|_| {
            let len = 2 + (rng.next() % 3) as usize;
            (0..len)
                .map(|_| SYL[(rng.next() % SYL.len() as u64) as usize])
                .collect()
        })
        .collect()
}

/// Writes `files` markdown files of about `bytes_per_file` under `<dir>/memory/`: lines of 8-14 Zipf-ish
/// words, a heading every 12 lines. Returns the bytes written.
pub(crate) fn write_corpus(
    dir: &Path,
    files: usize,
    bytes_per_file: usize,
    vocab: &[String],
    seed: u64,
) -> usize {
    let mut rng = Rng(seed);
    let mut total = 0;
    std::fs::create_dir_all(dir.join("memory")).unwrap();
    for f in 0..files {
        let mut text = format!("# Notes {f}\n\n");
        let mut line_no = 0;
        while text.len() < bytes_per_file {
            line_no += 1;
            if line_no % 12 == 0 {
                text.push_str(&format!("\n## Section {line_no}\n"));
            }
            let words = 8 + (rng.next() % 7) as usize;
            let line: Vec<&str> = (0..words)
                .map(|_| vocab[((vocab.len() as f64) * rng.unit().powi(3)) as usize].as_str())
                .collect();
            text.push_str("- ");
            text.push_str(&line.join(" "));
            text.push('\n');
        }
        total += text.len();
        let path = dir.join(format!(
            "memory/2026-{:02}-{:02}-{f}.md",
            1 + f % 12,
            1 + f % 28
        ));
        #[allow(clippy::disallowed_methods)] // benchmark fixture
        std::fs::write(path, text).unwrap();
    }
    total
}

/// `n` three-word queries drawn from the same vocabulary (less skewed than the text).
pub(crate) fn queries(vocab: &[String], n: usize) -> Vec<String> {
    let mut rng = Rng(99);
    (0..n)
        .map(|_| {
            (0..3)
                .map(|_| vocab[((vocab.len() as f64) * rng.unit().powi(2)) as usize].clone())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A hashed bag-of-words embedding (what the benchmark's embeddings endpoint returns).
pub(crate) fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIMS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
    {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % DIMS as u64) as usize] += if h >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Serves OpenAI-compatible `POST /v1/embeddings` with [`embed`] on 127.0.0.1:0; returns the `/v1` base URL.
pub(crate) async fn serve_embeddings() -> (String, tokio::task::JoinHandle<()>) {
    async fn handler(Json(body): Json<Value>) -> Json<Value> {
        let inputs: Vec<String> = match &body["input"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => Vec::new(),
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embed(t)}))
            .collect();
        Json(
            json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = Router::new().route("/v1/embeddings", post(handler));
    (
        url,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}
