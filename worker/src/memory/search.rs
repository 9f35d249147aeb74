//! Hybrid ranking: the FTS5 query we build, BM25 normalisation, and the merge of vector and keyword candidates.
//!
//! Two deliberate differences from Clawdbot (`dist/memory/hybrid.js`):
//! - Clawdbot ANDs the quoted query tokens, so a natural-language question finds only chunks containing every
//!   word, which kills recall. We OR them (dropping common English stop words unless nothing else is left)
//!   and let BM25 rank: chunks matching more and rarer words come first.
//! - Clawdbot scores text as `1/(1+max(0,rank))`, but FTS5's `bm25()` is negative (lower is better), so every
//!   hit scores 1.0. We normalise within the candidate set instead: `text = (−bm25) / max(−bm25)`, so the best
//!   keyword hit scores 1.0 and the others score by how close they come to it.

use std::collections::HashMap;

/// One search result: a chunk of a memory file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hit {
    /// Workspace-relative path, e.g. `memory/2026-01-05.md`.
    pub path: String,
    pub start_line: usize,
    pub end_line: usize,
    /// Final score in [0, 1] (hybrid, or text only without embeddings).
    pub score: f64,
    /// The chunk text, cut to at most 700 characters.
    pub snippet: String,
}

pub(crate) const SNIPPET_MAX_CHARS: usize = 700;

const STOP_WORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at",
    "be", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could",
    "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had",
    "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in",
    "into", "is", "it", "its", "just", "me", "more", "most", "my", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own", "same", "she",
    "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very",
    "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will",
    "with", "would", "you", "your", "yours",
];

/// Query tokens: runs of letters, digits and `_`, lowercased, de-duplicated, stop words dropped unless only stop
/// words were given. (Clawdbot takes `[A-Za-z0-9_]+`; we also keep non-ASCII letters, which FTS5's tokenizer indexes.)
pub(crate) fn query_tokens(raw: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for token in raw
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
    {
        let token = token.to_lowercase();
        if !all.contains(&token) {
            all.push(token);
        }
    }
    let content: Vec<String> = all
        .iter()
        .filter(|t| !STOP_WORDS.contains(&t.as_str()))
        .cloned()
        .collect();
    if content.is_empty() { all } else { content }
}

/// The FTS5 MATCH expression: every token quoted (so no token is read as FTS syntax), OR-ed; `None` when the
/// query has no tokens at all.
pub fn build_fts_query(raw: &str) -> Option<String> {
    let tokens = query_tokens(raw);
    if tokens.is_empty() {
        return None;
    }
    Some(
        tokens
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
}

/// A candidate chunk from either side of the search.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) start_line: usize,
    pub(crate) end_line: usize,
    pub(crate) text: String,
}

/// How to combine the two sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ranking {
    pub(crate) vector_weight: f64,
    pub(crate) text_weight: f64,
    pub(crate) max_results: usize,
    pub(crate) min_score: f64,
}

/// Merges vector candidates (with cosine similarity) and keyword candidates (with raw, negative FTS5 bm25)
/// into at most `max_results` hits scoring at least `min_score`, best first. With `vector == None` (no
/// embedding provider, or it failed) the score is the text score alone.
pub(crate) fn merge(
    vector: Option<Vec<(Candidate, f64)>>,
    keyword: Vec<(Candidate, f64)>,
    ranking: Ranking,
) -> Vec<Hit> {
    let best = keyword
        .iter()
        .map(|(_, bm25)| (-bm25).max(0.0))
        .fold(0.0_f64, f64::max);
    let text_score = |bm25: f64| {
        if best > 0.0 {
            (-bm25).max(0.0) / best
        } else {
            1.0
        }
    };

    let (wv, wt) = match vector {
        Some(_) => (ranking.vector_weight, ranking.text_weight),
        None => (0.0, 1.0),
    };
    let mut by_id: HashMap<String, (Candidate, f64, f64)> = HashMap::new();
    for (candidate, similarity) in vector.into_iter().flatten() {
        by_id.insert(candidate.id.clone(), (candidate, similarity, 0.0));
    }
    for (candidate, bm25) in keyword {
        let t = text_score(bm25);
        by_id
            .entry(candidate.id.clone())
            .and_modify(|e| e.2 = t)
            .or_insert((candidate, 0.0, t));
    }
    let mut hits: Vec<Hit> = by_id
        .into_values()
        .map(|(c, v, t)| Hit {
            score: wv * v + wt * t,
            snippet: c.text.chars().take(SNIPPET_MAX_CHARS).collect(),
            path: c.path,
            start_line: c.start_line,
            end_line: c.end_line,
        })
        .filter(|h| h.score >= ranking.min_score)
        .collect();
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.start_line.cmp(&b.start_line))
    });
    hits.truncate(ranking.max_results);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> Candidate {
        Candidate {
            id: id.into(),
            path: format!("memory/{id}.md"),
            start_line: 1,
            end_line: 2,
            text: format!("text {id}"),
        }
    }
    const R: Ranking = Ranking {
        vector_weight: 0.7,
        text_weight: 0.3,
        max_results: 6,
        min_score: 0.35,
    };

    #[test]
    fn fts_query_quotes_and_ors_content_words() {
        assert_eq!(
            build_fts_query("What did I decide about the pricing?").as_deref(),
            Some("\"decide\" OR \"pricing\"")
        );
        assert_eq!(
            build_fts_query("the and").as_deref(),
            Some("\"the\" OR \"and\"")
        );
        assert_eq!(
            build_fts_query("NEAR(a b) \"x\" OR y*").as_deref(),
            Some("\"near\" OR \"b\" OR \"x\" OR \"y\"")
        );
        assert_eq!(
            build_fts_query("Café déjà_vu Café").as_deref(),
            Some("\"café\" OR \"déjà_vu\"")
        );
        assert_eq!(build_fts_query("?? !!"), None);
    }

    #[test]
    fn hybrid_score_combines_both_sides() {
        let vector = vec![(c("a"), 0.9), (c("b"), 0.5)];
        let keyword = vec![(c("b"), -4.0), (c("c"), -2.0)];
        let hits = merge(Some(vector), keyword, R);
        let scores: Vec<(&str, f64)> = hits
            .iter()
            .map(|h| (h.path.as_str(), (h.score * 1000.0).round() / 1000.0))
            .collect();
        // a: 0.7·0.9 = 0.63; b: 0.7·0.5 + 0.3·1.0 = 0.65; c: 0.3·0.5 = 0.15 < 0.35 dropped.
        assert_eq!(scores, [("memory/b.md", 0.65), ("memory/a.md", 0.63)]);
    }

    #[test]
    fn text_only_scores_relative_to_best_bm25_and_applies_min_score() {
        let keyword = vec![(c("a"), -10.0), (c("b"), -5.0), (c("c"), -3.0)];
        let hits = merge(None, keyword, R);
        let scores: Vec<f64> = hits.iter().map(|h| h.score).collect();
        assert_eq!(scores, [1.0, 0.5]);
    }

    #[test]
    fn max_results_and_snippet_length_are_enforced() {
        let mut long = c("z");
        long.text = "x".repeat(2000);
        let keyword: Vec<_> = (0..10)
            .map(|i| (c(&format!("k{i}")), -1.0))
            .chain([(long, -1.0)])
            .collect();
        let hits = merge(
            None,
            keyword,
            Ranking {
                max_results: 11,
                ..R
            },
        );
        assert_eq!(hits.len(), 11);
        assert!(
            hits.iter()
                .all(|h| h.snippet.chars().count() <= SNIPPET_MAX_CHARS)
        );
        assert_eq!(
            merge(
                None,
                vec![(c("a"), -1.0), (c("b"), -1.0)],
                Ranking {
                    max_results: 1,
                    ..R
                }
            )
            .len(),
            1
        );
    }
}
