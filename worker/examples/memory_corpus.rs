//! The memory benchmark's corpus and embedding endpoint as a command, so `tests/bench/memory_clawdbot.sh` can run
//! Clawdbot's memory search and ours on the same files in the same run:
//! `memory_corpus write <dir> <files> <bytes_per_file> <seed>` writes `<dir>/memory/*.md`;
//! `memory_corpus queries <n>` prints the benchmark's queries, one a line;
//! `memory_corpus serve` prints the `/v1` base URL of a loopback `POST /v1/embeddings` and serves until stdin closes;
//! `memory_corpus wirebot <state> <workspace> <url> <queries>` indexes with our `MemoryIndex` and times searches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use worker::memory::{MemoryConfig, MemoryIndex};

#[path = "../benches/corpus/mod.rs"]
mod corpus;

fn p50(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn p95(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() * 95 / 100].as_secs_f64() * 1000.0
}

async fn wirebot(state: &Path, ws: &Path, url: &str, n: usize) {
    let config = MemoryConfig::from_json(&json!({
        "provider": "openai",
        "remote": {"baseUrl": url, "apiKey": "bench-key"},
        "chunking": {"tokens": 64, "overlap": 0},
    }))
    .unwrap();
    let start = Instant::now();
    let index = MemoryIndex::open(state, "main", ws, config).unwrap();
    let stats = index.sync().await.unwrap();
    let index_s = start.elapsed().as_secs_f64();
    let queries = corpus::queries(&corpus::vocabulary(8_000), n);
    let first = Instant::now();
    index.search(&queries[0]).await.unwrap();
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;
    let (mut e2e, mut hybrid) = (Vec::new(), Vec::new());
    let mut hits = 0;
    for q in &queries {
        let t = Instant::now();
        hits += index.search(q).await.unwrap().len();
        e2e.push(t.elapsed());
        let v = corpus::embed(q);
        let t = Instant::now();
        index.search_with_vector(q, Some(v)).await.unwrap();
        hybrid.push(t.elapsed());
    }
    println!(
        "{}",
        json!({
            "chunks": stats.chunks_indexed,
            "index_s": index_s,
            "first_search_ms": first_ms,
            "search_http_p50_ms": p50(&mut e2e),
            "search_http_p95_ms": p95(&mut e2e),
            "hybrid_p50_ms": p50(&mut hybrid),
            "hybrid_p95_ms": p95(&mut hybrid),
            "hits": hits,
        })
    );
}

/// Opens an index built by `wirebot` (no sync) and times hybrid, vector-only and BM25-only searches with
/// precomputed query vectors: the search path alone, for profiling.
async fn search(state: &Path, ws: &Path, url: &str, n: usize) {
    let config = MemoryConfig::from_json(&json!({
        "provider": "openai",
        "remote": {"baseUrl": url, "apiKey": "bench-key"},
        "chunking": {"tokens": 64, "overlap": 0},
    }))
    .unwrap();
    let index = MemoryIndex::open(state, "main", ws, config).unwrap();
    let queries = corpus::queries(&corpus::vocabulary(8_000), n);
    let t = Instant::now();
    index
        .search_with_vector(&queries[0], Some(corpus::embed(&queries[0])))
        .await
        .unwrap();
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (mut hybrid, mut vector, mut bm25) = (Vec::new(), Vec::new(), Vec::new());
    for q in &queries {
        let v = corpus::embed(q);
        let t = Instant::now();
        index.search_with_vector(q, Some(v.clone())).await.unwrap();
        hybrid.push(t.elapsed());
        let t = Instant::now();
        index.search_with_vector("", Some(v)).await.unwrap();
        vector.push(t.elapsed());
        let t = Instant::now();
        index.search_with_vector(q, None).await.unwrap();
        bm25.push(t.elapsed());
    }
    println!(
        "first search (loads vectors) {load_ms:.0} ms; hybrid p50 {:.2} p95 {:.2}; vector-only p50 {:.2}; bm25-only p50 {:.2} ms",
        p50(&mut hybrid),
        p95(&mut hybrid),
        p50(&mut vector),
        p50(&mut bm25)
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "write" => {
            let bytes = corpus::write_corpus(
                Path::new(arg(2)),
                arg(3).parse().unwrap(),
                arg(4).parse().unwrap(),
                &corpus::vocabulary(8_000),
                arg(5).parse().unwrap(),
            );
            println!("{bytes}");
        }
        "queries" => {
            for q in corpus::queries(&corpus::vocabulary(8_000), arg(2).parse().unwrap()) {
                println!("{q}");
            }
        }
        "serve" => {
            let (url, server) = corpus::serve_embeddings().await;
            println!("{url}");
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            server.abort();
        }
        "search" => {
            search(
                Path::new(arg(2)),
                Path::new(arg(3)),
                arg(4),
                arg(5).parse().unwrap(),
            )
            .await;
        }
        "wirebot" => {
            wirebot(
                Path::new(arg(2)),
                Path::new(arg(3)),
                arg(4),
                arg(5).parse().unwrap(),
            )
            .await;
        }
        _ => {
            eprintln!("usage: memory_corpus write|queries|serve|wirebot ...");
            return std::process::ExitCode::from(64);
        }
    }
    std::process::ExitCode::SUCCESS
}
