//! Worker memory end to end on real SQLite files: search quality on a 53-note fixture corpus (recall@6 with the
//! fake embedding server and BM25-only), reindex after edits and deletes, the embedding cache, Clawdbot's schema.

use std::path::Path;

use tests::fake_embeddings::FakeEmbeddings;
use worker::memory::{MemoryConfig, MemoryIndex};

/// The fixture: a founder's memory, one short note per file (daily logs and topic notes).
const NOTES: &[(&str, &str)] = &[
    (
        "MEMORY.md",
        "# Long-term memory\nCompany: Brightloop, B2B analytics for independent coffee roasters. Founder: Sam Rivera.\nGoal: reach 100 paying roasters by June 30.\nPreference: standups at 8:30, short and blunt.",
    ),
    (
        "memory/2026-01-05.md",
        "Decided to price the Pro plan at 49 dollars per month after comparing three competitors.",
    ),
    (
        "memory/2026-01-19.md",
        "Tested a 20 percent annual discount coupon on the pricing page; conversions went up slightly.",
    ),
    (
        "memory/projects/pricing.md",
        "Pricing notes: the Starter tier stays free for roasters under 50 kilos a week; Enterprise is custom.",
    ),
    (
        "memory/2026-02-10.md",
        "Two roasters said the Pro plan feels expensive compared with spreadsheets.",
    ),
    (
        "memory/2026-01-08.md",
        "Hired Marta Kowalski as our first backend engineer; she starts on February 2.",
    ),
    (
        "memory/2026-01-21.md",
        "Interviewed three candidates for the frontend role; Diego was the strongest on React.",
    ),
    (
        "memory/people/diego.md",
        "Diego Alvarez, frontend candidate, asked for a salary of 120 thousand and remote work.",
    ),
    (
        "memory/2026-02-03.md",
        "Onboarding plan for Marta: week one on the ingestion pipeline, pair with Sam on deploys.",
    ),
    (
        "memory/2026-01-07.md",
        "Call with Priya Nair from Northwind Ventures; she wants monthly retention numbers before a seed conversation.",
    ),
    (
        "memory/2026-01-27.md",
        "Rewrote the pitch deck: the problem slide now leads with roasters wasting green coffee inventory.",
    ),
    (
        "memory/people/priya.md",
        "Priya Nair, partner at Northwind Ventures, invests in vertical SaaS and prefers warm intros.",
    ),
    (
        "memory/2026-02-12.md",
        "Angel investor Tom Becker committed 50 thousand to the seed round.",
    ),
    (
        "memory/2026-01-09.md",
        "Churn review: four roasters cancelled in December, mostly because the mobile dashboard loads slowly.",
    ),
    (
        "memory/2026-02-05.md",
        "Exit survey idea: ask every cancelling account one question about what they miss.",
    ),
    (
        "memory/2026-02-17.md",
        "Retention for the January cohort is 92 percent after thirty days.",
    ),
    (
        "memory/2026-01-06.md",
        "Standup: finished the onboarding checklist. Today: fix the CSV import bug for roasters using Cropster.",
    ),
    (
        "memory/2026-01-16.md",
        "Shipped roast profile comparison, the feature roasters asked for most.",
    ),
    (
        "memory/projects/mobile.md",
        "Mobile app plan: rewrite the dashboard charts to cut load time below two seconds.",
    ),
    (
        "memory/2026-02-09.md",
        "The inventory forecast crashes when a roaster has no sales history; added a fallback.",
    ),
    (
        "memory/2026-02-19.md",
        "Released version 2.3 with offline mode for the warehouse tablet.",
    ),
    (
        "memory/2026-01-12.md",
        "Runway is eleven months at the current burn of 38 thousand per month.",
    ),
    (
        "memory/2026-01-30.md",
        "January MRR closed at 7,400 dollars, up from 6,100 in December.",
    ),
    (
        "memory/2026-02-14.md",
        "Cut the AWS bill by 30 percent by moving cold data to S3 Glacier.",
    ),
    (
        "memory/projects/budget.md",
        "Budget 2026: marketing 4k a month, contractors 10k, tools 1.5k.",
    ),
    (
        "memory/2026-01-15.md",
        "Back pain again; booked physiotherapy on Thursdays at 7am.",
    ),
    (
        "memory/2026-01-23.md",
        "Slept badly all week; decided no laptop after 10pm.",
    ),
    (
        "memory/2026-02-08.md",
        "Started running three times a week with Alex from the coworking space.",
    ),
    (
        "memory/2026-01-13.md",
        "Signed the lease for a small office in the Pearl District, moving in March.",
    ),
    (
        "memory/2026-02-20.md",
        "Ordered desks and a coffee grinder for the new office; delivery on March 3.",
    ),
    (
        "memory/2026-01-14.md",
        "Launched the referral program: roasters get one free month for each roaster they bring.",
    ),
    (
        "memory/2026-01-28.md",
        "Newsletter issue 4 went out to 1,200 subscribers with a 48 percent open rate.",
    ),
    (
        "memory/2026-02-11.md",
        "Booked a booth at the Specialty Coffee Expo in Houston for April.",
    ),
    (
        "memory/projects/content.md",
        "Blog ideas: how to cut green coffee waste, reading roast curves, pricing your wholesale beans.",
    ),
    (
        "memory/2026-01-20.md",
        "Demo with Heart Roasters went well; they want a multi-location account.",
    ),
    (
        "memory/2026-02-02.md",
        "The chain Ember & Oak signed an annual contract worth 9,000 dollars.",
    ),
    (
        "memory/people/lena.md",
        "Lena Fischer runs Kaffeehaus Lena in Berlin and is our most vocal beta user.",
    ),
    (
        "memory/2026-02-16.md",
        "Support backlog is down to five tickets after bringing on a part-time helper.",
    ),
    (
        "memory/2026-01-22.md",
        "Lawyer says we should register the Brightloop trademark in the EU before launching in Germany.",
    ),
    (
        "memory/2026-02-06.md",
        "Updated the privacy policy for GDPR; data processing agreement template ready.",
    ),
    (
        "memory/2026-01-26.md",
        "Cropster agreed to an API integration partnership; shared Slack channel created.",
    ),
    (
        "memory/2026-02-13.md",
        "Green coffee importer Royal Beans wants to bundle Brightloop with their wholesale accounts.",
    ),
    (
        "memory/2026-01-18.md",
        "Maya's school play is on February 6 at 5pm; keep the afternoon free.",
    ),
    (
        "memory/2026-02-18.md",
        "Planning a week of vacation in Lisbon in late April with the family.",
    ),
    (
        "memory/2026-01-29.md",
        "Decision: no more custom reports for single customers; everything goes into the product.",
    ),
    (
        "memory/2026-02-04.md",
        "Moved the weekly team meeting to Tuesday 10am so Marta can join.",
    ),
    (
        "memory/2026-02-07.md",
        "Switched from Jira to Linear for issue tracking.",
    ),
    (
        "memory/2026-02-15.md",
        "Wrote the Q2 OKRs: 100 paying roasters, 15k MRR, mobile dashboard under two seconds.",
    ),
    (
        "memory/2026-01-31.md",
        "Lesson: asking roasters for their roast logs up front doubles activation.",
    ),
    (
        "memory/2026-02-21.md",
        "Lesson: cold outreach on LinkedIn got 2 replies from 80 messages; warm intros work far better.",
    ),
    (
        "memory/2026-01-10.md",
        "Set up Stripe billing with automatic invoices and dunning emails.",
    ),
    (
        "memory/2026-01-24.md",
        "Migrated the database from Heroku Postgres to Neon; downtime was four minutes.",
    ),
    (
        "memory/2026-01-25.md",
        "Security: enabled two-factor authentication for every admin account.",
    ),
];

/// Twenty questions and the file that answers each. The four marked (paraphrase) share no word with their
/// answer, so only the vector side can find them.
const QUERIES: &[(&str, &str)] = &[
    (
        "What price did we set for the Pro plan?",
        "memory/2026-01-05.md",
    ),
    ("When does Marta start?", "memory/2026-01-08.md"),
    (
        "When does the developer we recruited begin?",
        "memory/2026-01-08.md",
    ), // paraphrase
    (
        "What does Priya from Northwind want before the seed talk?",
        "memory/2026-01-07.md",
    ),
    (
        "Why did roasters cancel in December?",
        "memory/2026-01-09.md",
    ),
    ("Why are clients leaving?", "memory/2026-01-09.md"), // paraphrase
    ("How long is our runway?", "memory/2026-01-12.md"),
    ("What was MRR in January?", "memory/2026-01-30.md"),
    (
        "Physiotherapy appointment for my back",
        "memory/2026-01-15.md",
    ),
    (
        "When do I see the physio for my spine ache?",
        "memory/2026-01-15.md",
    ), // paraphrase
    ("Where is the new office lease?", "memory/2026-01-13.md"),
    (
        "How does the referral program work?",
        "memory/2026-01-14.md",
    ),
    ("Specialty Coffee Expo booth", "memory/2026-02-11.md"),
    (
        "Which customer signed an annual contract?",
        "memory/2026-02-02.md",
    ),
    (
        "What did the lawyer say about the trademark?",
        "memory/2026-01-22.md",
    ),
    (
        "Did we protect our brand legally in Europe?",
        "memory/2026-01-22.md",
    ), // paraphrase
    ("Cropster integration", "memory/2026-01-26.md"),
    ("When is Maya's school play?", "memory/2026-01-18.md"),
    (
        "What did we learn about cold outreach on LinkedIn?",
        "memory/2026-02-21.md",
    ),
    (
        "Which database host did we move to?",
        "memory/2026-01-24.md",
    ),
];

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Test fixture files: a plain write is fine here (clippy's disallowed method targets product code).
    #[allow(clippy::disallowed_methods)]
    std::fs::write(path, text).unwrap();
}

fn corpus() -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    for (rel, text) in NOTES {
        write(ws.path(), rel, &format!("{text}\n"));
    }
    ws
}

fn hybrid_config(server: &FakeEmbeddings) -> MemoryConfig {
    MemoryConfig::from_json(&serde_json::json!({
        "provider": "openai",
        "remote": {"baseUrl": server.base_url, "apiKey": "test-key-not-secret"},
    }))
    .unwrap()
}

/// Recall@6 of `index` over QUERIES, and the queries it missed.
async fn recall(index: &MemoryIndex) -> (f64, Vec<&'static str>) {
    let mut missed = Vec::new();
    for (query, expected) in QUERIES {
        let hits = index.search(query).await.unwrap();
        assert!(hits.len() <= 6);
        if !hits.iter().any(|h| h.path == *expected) {
            missed.push(*query);
        }
    }
    let found = QUERIES.len() - missed.len();
    (found as f64 / QUERIES.len() as f64, missed)
}

#[tokio::test]
async fn hybrid_recall_at_6_is_at_least_0_9_and_beats_bm25_on_paraphrases() {
    assert!(NOTES.len() >= 50 && QUERIES.len() == 20);
    let server = FakeEmbeddings::start().await;
    let ws = corpus();
    let state = tempfile::tempdir().unwrap();
    let index = MemoryIndex::open(state.path(), "main", ws.path(), hybrid_config(&server)).unwrap();
    assert!(index.has_embeddings());
    let stats = index.sync().await.unwrap();
    assert_eq!(stats.files_indexed, NOTES.len());
    assert_eq!(stats.embeddings_fetched, NOTES.len());
    let (hybrid, missed) = recall(&index).await;
    println!("hybrid recall@6 = {hybrid:.2}, missed {missed:?}");
    assert!(
        hybrid >= 0.9,
        "hybrid recall@6 {hybrid} < 0.9; missed {missed:?}"
    );

    let bm25_state = tempfile::tempdir().unwrap();
    let bm25 = MemoryIndex::open(
        bm25_state.path(),
        "main",
        ws.path(),
        MemoryConfig::default(),
    )
    .unwrap();
    bm25.sync().await.unwrap();
    let (text_only, text_missed) = recall(&bm25).await;
    // The paraphrases are what the vector side adds.
    let rescued: Vec<_> = text_missed.iter().filter(|q| !missed.contains(q)).collect();
    assert!(
        !rescued.is_empty(),
        "vector search found nothing BM25 missed: {text_missed:?}"
    );
    assert!(hybrid > text_only);
}

#[tokio::test]
async fn bm25_only_recall_at_6_is_at_least_0_7_without_any_provider() {
    let ws = corpus();
    let state = tempfile::tempdir().unwrap();
    let index =
        MemoryIndex::open(state.path(), "main", ws.path(), MemoryConfig::default()).unwrap();
    assert!(!index.has_embeddings());
    index.sync().await.unwrap();
    let (r, missed) = recall(&index).await;
    println!("bm25 recall@6 = {r:.2}, missed {missed:?}");
    assert!(r >= 0.7, "BM25 recall@6 {r} < 0.7; missed {missed:?}");
    // Every hit of a real query scores in (0, 1] and carries its line range and a snippet.
    let hits = index.search("runway burn").await.unwrap();
    assert_eq!(hits[0].path, "memory/2026-01-12.md");
    assert_eq!((hits[0].start_line, hits[0].end_line), (1, 2));
    assert!(hits[0].snippet.starts_with("Runway is eleven months"));
}

/// An edit is found by its new words and no longer by the removed ones; a deleted file disappears;
/// both with and without embeddings.
#[tokio::test]
async fn edited_file_is_found_by_new_words_not_removed_ones() {
    let server = FakeEmbeddings::start().await;
    for hybrid in [false, true] {
        let ws = corpus();
        let state = tempfile::tempdir().unwrap();
        let config = if hybrid {
            hybrid_config(&server)
        } else {
            MemoryConfig::default()
        };
        let index = MemoryIndex::open(state.path(), "main", ws.path(), config).unwrap();
        index.sync().await.unwrap();
        let target = "memory/2026-02-13.md";
        let old_query = "Royal Beans importer bundle wholesale";
        assert!(
            index
                .search(old_query)
                .await
                .unwrap()
                .iter()
                .any(|h| h.path == target)
        );

        write(
            ws.path(),
            target,
            "Zanzibar retreat: the team votes on kitesurfing lessons versus snorkelling.\n",
        );
        std::fs::remove_file(ws.path().join("memory/2026-01-15.md")).unwrap();
        let stats = index.sync().await.unwrap();
        assert_eq!(
            (stats.files_indexed, stats.files_removed, stats.full_reindex),
            (1, 1, false),
            "hybrid={hybrid}"
        );

        let new_hits = index
            .search("kitesurfing snorkelling Zanzibar")
            .await
            .unwrap();
        assert_eq!(
            new_hits.first().map(|h| h.path.as_str()),
            Some(target),
            "hybrid={hybrid}"
        );
        let old_hits = index.search(old_query).await.unwrap();
        assert!(
            !old_hits.iter().any(|h| h.path == target),
            "hybrid={hybrid}: still found by removed words: {old_hits:?}"
        );
        let gone = index.search("physiotherapy Thursdays").await.unwrap();
        assert!(
            !gone.iter().any(|h| h.path == "memory/2026-01-15.md"),
            "hybrid={hybrid}"
        );
    }
}

#[tokio::test]
async fn embedding_cache_serves_unchanged_text_and_model_change_rebuilds() {
    let server = FakeEmbeddings::start().await;
    let ws = corpus();
    let state = tempfile::tempdir().unwrap();
    let index = MemoryIndex::open(state.path(), "main", ws.path(), hybrid_config(&server)).unwrap();
    index.sync().await.unwrap();
    let inputs_after_first = server.inputs();
    assert_eq!(inputs_after_first, NOTES.len());

    // Same text under a new path: embedded from the cache, not the provider.
    std::fs::rename(
        ws.path().join("memory/2026-01-25.md"),
        ws.path().join("memory/security.md"),
    )
    .unwrap();
    let stats = index.sync().await.unwrap();
    assert_eq!(
        (
            stats.files_indexed,
            stats.files_removed,
            stats.embeddings_fetched,
            stats.embeddings_cached
        ),
        (1, 1, 0, 1)
    );
    assert_eq!(server.inputs(), inputs_after_first);
    // Nothing changed: no request at all.
    let requests = server.requests();
    let idle = index.sync().await.unwrap();
    assert_eq!((idle.files_indexed, idle.files_unchanged), (0, NOTES.len()));
    assert_eq!(server.requests(), requests);
    drop(index);

    // Another model: everything is rebuilt and re-embedded.
    let mut config = hybrid_config(&server);
    config.model = "text-embedding-3-large".into();
    let index = MemoryIndex::open(state.path(), "main", ws.path(), config).unwrap();
    let stats = index.sync().await.unwrap();
    assert!(stats.full_reindex);
    assert_eq!(stats.embeddings_fetched, NOTES.len());
    assert!(
        index
            .search("two-factor authentication")
            .await
            .unwrap()
            .iter()
            .any(|h| h.path == "memory/security.md")
    );
}

/// The file is Clawdbot's: same tables, meta record and columns, readable with plain SQLite.
#[tokio::test]
async fn index_file_has_clawdbot_schema() {
    let server = FakeEmbeddings::start().await;
    let ws = corpus();
    let state = tempfile::tempdir().unwrap();
    let index =
        MemoryIndex::open(state.path(), "alice", ws.path(), hybrid_config(&server)).unwrap();
    index.sync().await.unwrap();
    let db = state.path().join("memory/alice.sqlite");
    assert_eq!(index.db_path(), db);
    drop(index);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('meta','files','chunks','embedding_cache','chunks_fts','chunks_vec')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "chunks",
            "chunks_fts",
            "chunks_vec",
            "embedding_cache",
            "files",
            "meta"
        ]
    );
    let meta: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'memory_index_meta_v1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["model"], "text-embedding-3-small");
    assert_eq!(meta["provider"], "openai");
    assert_eq!(
        (meta["chunkTokens"].as_u64(), meta["chunkOverlap"].as_u64()),
        (Some(400), Some(80))
    );
    assert_eq!(
        meta["vectorDims"].as_u64(),
        Some(tests::fake_embeddings::DIMS as u64)
    );
    let (files, chunks): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM chunks)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((files, chunks), (NOTES.len() as i64, NOTES.len() as i64));
    let embedding: String = conn
        .query_row("SELECT embedding FROM chunks LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<f32>>(&embedding).unwrap().len(),
        tests::fake_embeddings::DIMS
    );
    let cached: i64 = conn
        .query_row("SELECT count(*) FROM embedding_cache", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cached, NOTES.len() as i64);
}
