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

use serde_json::json;
use worker::memory::{MemoryConfig, MemoryIndex, chunk_markdown};

mod corpus;
use corpus::{embed, queries, serve_embeddings, vocabulary, write_corpus};

fn hybrid_config(url: &str) -> MemoryConfig {
    MemoryConfig::from_json(&json!({
        "remote": {"baseUrl": url},
        "chunking": {"tokens": 64, "overlap": 0},
    }))
    .unwrap()
}

/// A fresh process (this binary again) that opens the existing 100k-chunk index and runs 200 hybrid searches:
/// its RSS is what a worker holds for that index, without the indexing run's allocations.
async fn rss_child(state: &Path, ws: &Path, url: &str) {
    let before = rss_mb();
    let index = MemoryIndex::open(state, "bench", ws, hybrid_config(url)).unwrap();
    let vocab = vocabulary(8_000);
    for q in queries(&vocab, 200) {
        index.search_with_vector(&q, Some(embed(&q))).await.unwrap();
    }
    println!("{before:.0} {:.0}", rss_mb());
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
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, state, ws, url, ..] = args.as_slice()
        && flag == "--rss-child"
    {
        rss_child(Path::new(state), Path::new(ws), url).await;
        return;
    }
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
    let config = hybrid_config(&url);
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
    let queries = queries(&vocab, 200);
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
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--rss-child")
        .arg(state.path())
        .arg(ws.path())
        .arg(&url)
        .output()
        .unwrap();
    let child = String::from_utf8_lossy(&child.stdout);
    let mut child = child.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    let (child_start, child_open) = (child.next().unwrap(), child.next().unwrap());

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
    println!(
        "rss_fresh_process: {child_start:.0} MB at start, {child_open:.0} MB with the 100k-chunk index open after 200 hybrid searches"
    );
    server.abort();
}
