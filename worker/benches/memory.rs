//! Memory benchmark (`cargo bench -p worker --bench memory`): BM25-only indexing of 10 MB of markdown, hybrid
//! search latency over 100,000 chunks, and RSS with that index open, each printed next to a naive baseline
//! measured in the same run. A plain `main` (harness = false): the figures are wall-clock on this machine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::Path;
use std::time::{Duration, Instant};

use axum::{Json, Router, routing::post};
use serde_json::{Value, json};
use worker::memory::{MemoryConfig, MemoryIndex, chunk_markdown};

const DIMS: usize = 256;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn vocabulary(n: usize) -> Vec<String> {
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

/// Markdown lines of 8-14 Zipf-ish words, a heading every 12 lines.
fn write_corpus(
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

/// A hashed bag-of-words embedding (what the bench's local embeddings endpoint returns).
fn embed(text: &str) -> Vec<f32> {
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

async fn serve_embeddings() -> (String, tokio::task::JoinHandle<()>) {
    async fn handler(Json(body): Json<Value>) -> Json<Value> {
        let inputs: Vec<String> = body["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "embedding": embed(t)}))
            .collect();
        Json(
            json!({"data": data, "model": body["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
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

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let vocab = vocabulary(8_000);

    // 1. BM25-only indexing of 10 MB; baseline = the unavoidable part (read, chunk, hash every file).
    let ws = tempfile::tempdir().unwrap();
    let bytes = write_corpus(ws.path(), 500, 20 * 1024, &vocab, 7);
    let floor_start = Instant::now();
    let mut floor_chunks = 0;
    for entry in std::fs::read_dir(ws.path().join("memory")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        floor_chunks += chunk_markdown(&text, 400, 80).len();
    }
    let floor = floor_start.elapsed();
    let state = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let index =
        MemoryIndex::open(state.path(), "bench", ws.path(), MemoryConfig::default()).unwrap();
    let stats = index.sync().await.unwrap();
    let took = start.elapsed();
    println!(
        "index_bm25_10mb: {:.2} MB, {} files, {} chunks in {:.3} s (target <= 3 s); baseline read+chunk only {:.3} s ({} chunks); ratio {:.1}x",
        bytes as f64 / 1e6,
        stats.files_indexed,
        stats.chunks_indexed,
        took.as_secs_f64(),
        floor.as_secs_f64(),
        floor_chunks,
        took.as_secs_f64() / floor.as_secs_f64()
    );
    let start = Instant::now();
    let again = index.sync().await.unwrap();
    println!(
        "resync_unchanged_10mb: {} files unchanged in {:.1} ms",
        again.files_unchanged,
        ms(start.elapsed())
    );
    drop(index);

    // 2. Hybrid search over 100,000 chunks (256-char chunks, 256-dim embeddings from a loopback endpoint).
    let (url, server) = serve_embeddings().await;
    let ws = tempfile::tempdir().unwrap();
    write_corpus(ws.path(), 1_000, 25_000, &vocab, 11);
    let config = MemoryConfig::from_json(&json!({
        "remote": {"baseUrl": url},
        "chunking": {"tokens": 64, "overlap": 0},
    }))
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let rss_before = rss_mb();
    let start = Instant::now();
    let index = MemoryIndex::open(state.path(), "bench", ws.path(), config.clone()).unwrap();
    let stats = index.sync().await.unwrap();
    println!(
        "index_hybrid: {} chunks embedded and indexed in {:.1} s ({} embeddings fetched)",
        stats.chunks_indexed,
        start.elapsed().as_secs_f64(),
        stats.embeddings_fetched
    );
    drop(index);
    // Reopen so RSS reflects a gateway that opens an existing index, then searches it.
    let index = MemoryIndex::open(state.path(), "bench", ws.path(), config).unwrap();
    let mut rng = Rng(99);
    let queries: Vec<String> = (0..200)
        .map(|_| {
            (0..3)
                .map(|_| vocab[((vocab.len() as f64) * rng.unit().powi(2)) as usize].clone())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    for q in queries.iter().take(10) {
        index.search_with_vector(q, Some(embed(q))).await.unwrap();
    }
    let mut hybrid = Vec::new();
    for q in &queries {
        let qv = embed(q);
        let t = Instant::now();
        let hits = index.search_with_vector(q, Some(qv)).await.unwrap();
        hybrid.push(t.elapsed());
        assert!(hits.len() <= 6);
    }
    let mut end_to_end = Vec::new();
    for q in queries.iter().take(100) {
        let t = Instant::now();
        index.search(q).await.unwrap();
        end_to_end.push(t.elapsed());
    }
    let mut vector_only = Vec::new();
    let mut vector_hits = Vec::new();
    for q in &queries {
        let qv = embed(q);
        let t = Instant::now();
        let hits = index.search_with_vector("", Some(qv)).await.unwrap();
        vector_only.push(t.elapsed());
        vector_hits.push(hits);
    }
    let mut bm25 = Vec::new();
    for q in &queries {
        let t = Instant::now();
        index.search_with_vector(q, None).await.unwrap();
        bm25.push(t.elapsed());
    }
    let rss_open = rss_mb();

    // Baseline: the naive approach: every chunk's text and vector in RAM, scanned linearly per query.
    let conn = rusqlite::Connection::open(index.db_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT text, embedding, path, start_line FROM chunks")
        .unwrap();
    let rows: Vec<(String, Vec<f32>, String, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                serde_json::from_str(&r.get::<_, String>(1)?).unwrap(),
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut naive = Vec::new();
    for q in &queries {
        let qv = embed(q);
        let words: Vec<&str> = q.split(' ').collect();
        let t = Instant::now();
        let mut scored: Vec<(f32, usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, (text, v, _, _))| {
                let cos: f32 = v.iter().zip(&qv).map(|(a, b)| a * b).sum();
                let kw =
                    words.iter().filter(|w| text.contains(**w)).count() as f32 / words.len() as f32;
                (0.7 * cos + 0.3 * kw, i)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(6);
        naive.push(t.elapsed());
    }
    // Recall of the vector side against an exact scan: exact top-6 with cosine >= 0.5 (what minScore lets through).
    let (mut expected, mut found) = (0usize, 0usize);
    for (q, hits) in queries.iter().zip(&vector_hits).take(50) {
        let qv = embed(q);
        let mut exact: Vec<(f32, usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.1.iter().zip(&qv).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (cos, i) in exact.into_iter().take(6).filter(|e| e.0 >= 0.5) {
            let _ = cos;
            expected += 1;
            if hits
                .iter()
                .any(|h| h.path == rows[i].2 && h.start_line as i64 == rows[i].3)
            {
                found += 1;
            }
        }
    }
    println!(
        "vector_recall_vs_exact_top6: {found}/{expected} ({:.2})",
        found as f64 / expected.max(1) as f64
    );
    let (h50, h95) = (percentile(&mut hybrid, 0.5), percentile(&mut hybrid, 0.95));
    let n50 = percentile(&mut naive, 0.5);
    println!(
        "search_hybrid_100k: {} chunks, p50 {:.2} ms, p95 {:.2} ms (target p50 <= 3 ms); baseline naive linear scan p50 {:.2} ms; ratio {:.2}x",
        rows.len(),
        ms(h50),
        ms(h95),
        ms(n50),
        ms(h50) / ms(n50)
    );
    println!(
        "search_vector_only_100k: p50 {:.2} ms; search_bm25_only_100k: p50 {:.2} ms; search_end_to_end_with_query_embedding_http: p50 {:.2} ms",
        ms(percentile(&mut vector_only, 0.5)),
        ms(percentile(&mut bm25, 0.5)),
        ms(percentile(&mut end_to_end, 0.5))
    );
    println!(
        "rss: {:.0} MB before indexing, {:.0} MB with the 100k-chunk index open after 500 searches (index file {:.0} MB); naive baseline holds {:.0} MB more",
        rss_before,
        rss_open,
        std::fs::metadata(index.db_path()).unwrap().len() as f64 / 1e6,
        rss_mb() - rss_open
    );
    server.abort();
}
