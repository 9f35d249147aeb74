//! A local OpenAI-compatible `POST /v1/embeddings` server (port 0) for memory tests: deterministic embeddings
//! with real semantic signal (hashed bag of concepts: a synonym table plus crude stemming, with a topic
//! component), so vector search finds paraphrases that keyword search misses. Counts requests and inputs so
//! tests can assert embedding-cache hits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};

/// Embedding width.
pub const DIMS: usize = 512;

/// (words, concept, topic). Words of one row mean the same thing; a topic adds a shared direction to related rows.
const SYNONYMS: &[(&[&str], &str, Option<&str>)] = &[
    (
        &[
            "price", "prices", "pricing", "priced", "cost", "costs", "charge", "charging", "fee",
            "fees",
        ],
        "price",
        Some("pricing"),
    ),
    (
        &["plan", "plans", "tier", "tiers", "package", "subscription"],
        "plan",
        Some("pricing"),
    ),
    (
        &["discount", "discounts", "coupon", "promo"],
        "discount",
        Some("pricing"),
    ),
    (
        &["expensive", "pricey", "costly"],
        "expensive",
        Some("pricing"),
    ),
    (
        &[
            "hire",
            "hired",
            "hiring",
            "recruit",
            "recruited",
            "recruiting",
            "onboard",
            "onboarding",
        ],
        "hire",
        Some("hiring"),
    ),
    (
        &[
            "engineer",
            "engineers",
            "developer",
            "developers",
            "programmer",
            "dev",
            "coder",
        ],
        "engineer",
        Some("hiring"),
    ),
    (
        &["candidate", "candidates", "applicant", "applicants"],
        "candidate",
        Some("hiring"),
    ),
    (
        &["interview", "interviews", "interviewed"],
        "interview",
        Some("hiring"),
    ),
    (
        &[
            "start", "starts", "started", "starting", "begin", "begins", "join", "joins",
        ],
        "start",
        None,
    ),
    (
        &["salary", "compensation", "pay", "wage"],
        "salary",
        Some("hiring"),
    ),
    (
        &[
            "investor",
            "investors",
            "vc",
            "vcs",
            "angel",
            "angels",
            "backer",
            "backers",
            "invests",
        ],
        "investor",
        Some("fundraising"),
    ),
    (
        &[
            "raise",
            "raising",
            "fundraise",
            "fundraising",
            "round",
            "seed",
        ],
        "raise",
        Some("fundraising"),
    ),
    (&["pitch", "deck", "slides"], "pitch", Some("fundraising")),
    (
        &[
            "churn",
            "churned",
            "cancel",
            "cancelled",
            "canceled",
            "cancelling",
            "cancellation",
            "cancellations",
            "leave",
            "leaving",
            "quit",
            "quitting",
        ],
        "churn",
        Some("retention"),
    ),
    (
        &["retention", "retain", "retained"],
        "retention",
        Some("retention"),
    ),
    (
        &[
            "bug", "bugs", "defect", "glitch", "crash", "crashes", "broken",
        ],
        "bug",
        Some("product"),
    ),
    (
        &["slow", "slowly", "sluggish", "lag", "latency"],
        "slow",
        Some("product"),
    ),
    (
        &["mobile", "phone", "iphone", "android", "app"],
        "mobile",
        Some("product"),
    ),
    (
        &["dashboard", "dashboards", "charts"],
        "dashboard",
        Some("product"),
    ),
    (
        &["feature", "features", "functionality"],
        "feature",
        Some("product"),
    ),
    (
        &[
            "release", "released", "ship", "shipped", "launch", "launched", "deploy", "deploys",
        ],
        "release",
        None,
    ),
    (&["runway"], "runway", Some("finance")),
    (
        &["burn", "spend", "spending", "expenses"],
        "burn",
        Some("finance"),
    ),
    (
        &["money", "cash", "dollars", "budget", "funds"],
        "money",
        Some("finance"),
    ),
    (&["revenue", "mrr", "income"], "revenue", Some("finance")),
    (&["month", "months", "monthly"], "month", None),
    (
        &["pain", "ache", "aches", "hurt", "hurts", "sore"],
        "pain",
        Some("health"),
    ),
    (&["back", "spine"], "back", Some("health")),
    (
        &[
            "doctor",
            "physio",
            "physiotherapy",
            "physiotherapist",
            "therapist",
        ],
        "doctor",
        Some("health"),
    ),
    (
        &["sleep", "slept", "insomnia", "tired"],
        "sleep",
        Some("health"),
    ),
    (
        &["exercise", "running", "gym", "workout", "jogging"],
        "exercise",
        Some("health"),
    ),
    (&["office", "coworking"], "office", Some("office")),
    (
        &["lease", "rent", "rented", "renting"],
        "lease",
        Some("office"),
    ),
    (
        &["moving", "relocate", "relocating"],
        "move",
        Some("office"),
    ),
    (
        &["marketing", "ads", "advertising", "campaign"],
        "marketing",
        Some("marketing"),
    ),
    (
        &["referral", "referrals", "refer", "invite"],
        "referral",
        Some("marketing"),
    ),
    (
        &["newsletter", "subscribers", "mailing"],
        "newsletter",
        Some("marketing"),
    ),
    (
        &["blog", "article", "articles", "posts"],
        "blog",
        Some("marketing"),
    ),
    (
        &["conference", "expo", "booth", "tradeshow"],
        "conference",
        Some("marketing"),
    ),
    (
        &[
            "customer",
            "customers",
            "client",
            "clients",
            "user",
            "users",
            "account",
            "accounts",
        ],
        "customer",
        Some("customers"),
    ),
    (&["roaster", "roasters"], "customer", None),
    (&["demo", "trial"], "demo", Some("customers")),
    (&["contract", "agreement", "deal"], "contract", None),
    (
        &["lawyer", "attorney", "legal", "legally", "counsel"],
        "lawyer",
        Some("legal"),
    ),
    (
        &["trademark", "brand", "protect"],
        "trademark",
        Some("legal"),
    ),
    (&["privacy", "gdpr"], "privacy", Some("legal")),
    (&["eu", "europe", "european"], "eu", None),
    (
        &["partnership", "integration", "integrate", "bundle"],
        "partnership",
        Some("partners"),
    ),
    (
        &["family", "kids", "children", "daughter", "son", "school"],
        "family",
        Some("family"),
    ),
    (&["vacation", "holiday", "trip"], "vacation", Some("family")),
    (
        &["database", "postgres", "db"],
        "database",
        Some("infrastructure"),
    ),
    (
        &[
            "migrate",
            "migrated",
            "migration",
            "switch",
            "switched",
            "host",
            "hosting",
        ],
        "migrate",
        Some("infrastructure"),
    ),
    (
        &["downtime", "offline", "outage"],
        "downtime",
        Some("infrastructure"),
    ),
];

const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has",
    "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on",
    "or", "our", "out", "s", "she", "so", "that", "the", "their", "them", "then", "there", "they",
    "this", "to", "too", "up", "us", "was", "we", "were", "what", "when", "where", "which", "who",
    "why", "will", "with", "would", "you", "your", "new", "now", "today", "week",
];

fn lookup(word: &str) -> Option<(&'static str, Option<&'static str>)> {
    SYNONYMS
        .iter()
        .find(|(words, _, _)| words.contains(&word))
        .map(|(_, c, t)| (*c, *t))
}

fn stem(word: &str) -> String {
    for (suffix, replacement) in [("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")] {
        if word.len() > suffix.len() + 3
            && let Some(base) = word.strip_suffix(suffix)
        {
            return format!("{base}{replacement}");
        }
    }
    word.to_owned()
}

fn bucket(key: &str) -> (usize, f32) {
    // FNV-1a, 64 bit: the low bits pick the dimension, a high bit the sign.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let index = usize::try_from(h % DIMS as u64).unwrap();
    (index, if h >> 63 == 0 { 1.0 } else { -1.0 })
}

/// The deterministic embedding of `text` (unit length; all zeros for text without content words).
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIMS];
    let lower = text.to_lowercase();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if STOP_WORDS.contains(&word) {
            continue;
        }
        let (concept, topic) = lookup(word)
            .or_else(|| lookup(&stem(word)))
            .map_or_else(|| (stem(word), None), |(c, t)| (c.to_owned(), t));
        let (i, sign) = bucket(&format!("w:{concept}"));
        v[i] += sign;
        if let Some(topic) = topic {
            let (i, sign) = bucket(&format!("t:{topic}"));
            v[i] += 1.5 * sign;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicUsize,
    inputs: AtomicUsize,
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct FakeEmbeddings {
    /// `http://127.0.0.1:<port>/v1`, the value for `memorySearch.remote.baseUrl`.
    pub base_url: String,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn embeddings(
    State(counters): State<Arc<Counters>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => {
            let error = json!({"error": {"message": "'input' must be a string or an array of strings", "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, Json(error));
        }
    };
    counters.requests.fetch_add(1, Ordering::SeqCst);
    counters.inputs.fetch_add(inputs.len(), Ordering::SeqCst);
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embed(text)}))
        .collect();
    let model = body["model"]
        .as_str()
        .unwrap_or("text-embedding-3-small")
        .to_owned();
    (
        StatusCode::OK,
        Json(
            json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        ),
    )
}

impl FakeEmbeddings {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> Self {
        let counters = Arc::new(Counters::default());
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/embeddings", post(embeddings))
            .with_state(Arc::clone(&counters));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        FakeEmbeddings {
            base_url: format!("http://{addr}/v1"),
            counters,
            stop: Some(stop),
            task,
        }
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Texts embedded so far (over all requests).
    pub fn inputs(&self) -> usize {
        self.counters.inputs.load(Ordering::SeqCst)
    }
}

impl Drop for FakeEmbeddings {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn paraphrases_are_close_and_unrelated_text_is_not() {
        let note =
            embed("Hired Marta Kowalski as our first backend engineer; she starts on February 2.");
        let para = embed("When does the developer we recruited begin?");
        let other = embed("Back pain again; booked physiotherapy on Thursdays at 7am.");
        assert!(cos(&note, &para) > 0.5, "{}", cos(&note, &para));
        assert!(cos(&note, &other) < 0.2, "{}", cos(&note, &other));
        assert!((cos(&note, &note) - 1.0).abs() < 1e-5);
    }
}
