//! An in-RAM BM25 index of `chunks_fts` that scores exactly like FTS5's `bm25()` (k1 1.2, b 0.75, FTS5's IDF
//! with its 1e-6 floor, FTS5's own document lengths from `chunks_fts_docsize`): the keyword leg then reads only
//! the postings of the query's terms, where FTS5 spends microseconds per matching row (position lists, a
//! docsize lookup). Exact only where our tokeniser and FTS5's unicode61 agree, so it is built only when no
//! chunk has a non-ASCII letter, digit or mark (FTS5 folds "José" to "jose"; we would not), and used only for
//! queries of plain ASCII letters and digits; everything else goes to FTS5. Rebuilt lazily after a sync.

use std::collections::{BinaryHeap, HashMap};

use rusqlite::Connection;

/// Postings in compressed-row form: term `t` owns `docs[starts[t]..starts[t + 1]]` (ascending) and `tfs` alike.
#[derive(Debug, Default)]
pub(crate) struct KeywordIndex {
    terms: HashMap<Box<str>, u32>,
    starts: Vec<u32>,
    docs: Vec<u32>,
    tfs: Vec<u16>,
    /// Per document: FTS5 rowid and token count.
    rowids: Vec<i64>,
    lengths: Vec<u32>,
    avgdl: f64,
}

const K1: f64 = 1.2;
const B: f64 = 0.75;

/// True for characters where FTS5's unicode61 and our ASCII tokeniser may disagree: non-ASCII letters and
/// digits, combining marks (diacritics are folded into the token), private-use characters. Non-ASCII
/// punctuation, symbols and emoji separate tokens in both.
fn ambiguous(c: char) -> bool {
    !c.is_ascii()
        && (c.is_alphanumeric()
            || matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
            || matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF)
            || (matches!(c as u32, 0xFE00..=0xFE0F | 0x200C | 0x200D)))
}

/// Lowercased runs of ASCII letters and digits (FTS5 unicode61's tokens for text without `ambiguous` chars).
fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
}

/// The first varint of an FTS5 docsize record (the `text` column's token count; the other columns are UNINDEXED).
fn first_varint(blob: &[u8]) -> u64 {
    let mut v = 0u64;
    for (i, b) in blob.iter().enumerate().take(9) {
        if i == 8 {
            return (v << 8) | u64::from(*b);
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

impl KeywordIndex {
    /// Builds the index from `chunks_fts`, or `None` when some chunk has text FTS5 may tokenise differently.
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Option<Self>> {
        let mut lengths_by_rowid: HashMap<i64, u32> = HashMap::new();
        {
            // Absent when a table was created with `columnsize=0`: then FTS5 answers.
            let Ok(mut stmt) = conn.prepare("SELECT id, sz FROM chunks_fts_docsize") else {
                return Ok(None);
            };
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let len = first_varint(row.get_ref(1)?.as_blob()?);
                lengths_by_rowid.insert(row.get(0)?, u32::try_from(len).unwrap_or(u32::MAX));
            }
        }
        let mut index = KeywordIndex::default();
        let mut postings: Vec<Vec<(u32, u16)>> = Vec::new();
        let mut counts: HashMap<String, u16> = HashMap::new();
        let mut stmt = conn.prepare("SELECT rowid, text FROM chunks_fts ORDER BY rowid")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            let text = row.get_ref(1)?.as_str()?;
            if text.chars().any(ambiguous) {
                return Ok(None);
            }
            let Some(len) = lengths_by_rowid.get(&rowid) else {
                return Ok(None);
            };
            let doc = u32::try_from(index.rowids.len()).unwrap_or(u32::MAX);
            index.rowids.push(rowid);
            index.lengths.push(*len);
            counts.clear();
            for t in tokens(text) {
                let n = counts.entry(t).or_insert(0);
                *n = n.saturating_add(1);
            }
            for (term, tf) in counts.drain() {
                let next = u32::try_from(postings.len()).unwrap_or(u32::MAX);
                let id = *index.terms.entry(term.into_boxed_str()).or_insert(next);
                if id == next {
                    postings.push(Vec::new());
                }
                postings[id as usize].push((doc, tf));
            }
        }
        let total: u64 = index.lengths.iter().map(|l| u64::from(*l)).sum();
        index.avgdl = if index.rowids.is_empty() {
            1.0
        } else {
            total as f64 / index.rowids.len() as f64
        };
        index.starts.reserve(postings.len() + 1);
        index.starts.push(0);
        for list in postings {
            for (doc, tf) in list {
                index.docs.push(doc);
                index.tfs.push(tf);
            }
            index
                .starts
                .push(u32::try_from(index.docs.len()).unwrap_or(u32::MAX));
        }
        index.terms.shrink_to_fit();
        Ok(Some(index))
    }

    pub(crate) fn len(&self) -> usize {
        self.rowids.len()
    }

    /// Bytes held (for logs and benchmarks), not counting the term strings.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.docs.capacity() * 4
            + self.tfs.capacity() * 2
            + self.starts.capacity() * 4
            + self.rowids.capacity() * 8
            + self.lengths.capacity() * 4
    }

    /// The `limit` best documents for the OR of `terms` as (FTS5 rowid, FTS5 `bm25()` value: negative, lower is
    /// better), best first; `None` when a term is not plain ASCII letters and digits (FTS5 must answer).
    pub(crate) fn search(&self, terms: &[String], limit: usize) -> Option<Vec<(i64, f64)>> {
        if terms
            .iter()
            .any(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return None;
        }
        let n = self.rowids.len() as f64;
        // Per query term (FTS5 phrase order): its postings and IDF; absent terms still count as phrases.
        let lists: Vec<(&[u32], &[u16], f64)> = terms
            .iter()
            .map(|t| {
                let (docs, tfs): (&[u32], &[u16]) =
                    match self.terms.get(t.to_ascii_lowercase().as_str()) {
                        Some(id) => {
                            let (s, e) = (
                                self.starts[*id as usize] as usize,
                                self.starts[*id as usize + 1] as usize,
                            );
                            (&self.docs[s..e], &self.tfs[s..e])
                        }
                        None => (&[], &[]),
                    };
                let hits = docs.len() as f64;
                let idf = ((n - hits + 0.5) / (hits + 0.5)).ln();
                (docs, tfs, if idf <= 0.0 { 1e-6 } else { idf })
            })
            .collect();
        let mut cursor = vec![0usize; lists.len()];
        // Min-heap on score (via Reverse ordering of the key) keeping the `limit` best.
        let mut best: BinaryHeap<std::cmp::Reverse<(OrdF64, u32)>> =
            BinaryHeap::with_capacity(limit + 1);
        loop {
            let next = lists
                .iter()
                .zip(&cursor)
                .filter_map(|((docs, _, _), c)| docs.get(*c).copied())
                .min();
            let Some(doc) = next else { break };
            let d = f64::from(self.lengths[doc as usize]);
            let mut score = 0.0;
            for ((docs, tfs, idf), c) in lists.iter().zip(cursor.iter_mut()) {
                let tf = if docs.get(*c) == Some(&doc) {
                    let tf = f64::from(tfs[*c]);
                    *c += 1;
                    tf
                } else {
                    0.0
                };
                score += idf * ((tf * (K1 + 1.0)) / (tf + K1 * (1.0 - B + B * d / self.avgdl)));
            }
            if best.len() < limit {
                best.push(std::cmp::Reverse((OrdF64(score), u32::MAX - doc)));
            } else if let Some(std::cmp::Reverse((worst, _))) = best.peek()
                && score > worst.0
            {
                best.pop();
                best.push(std::cmp::Reverse((OrdF64(score), u32::MAX - doc)));
            }
        }
        let mut out: Vec<(f64, u32)> = best
            .into_iter()
            .map(|std::cmp::Reverse((s, d))| (s.0, u32::MAX - d))
            .collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        Some(
            out.into_iter()
                .map(|(score, doc)| (self.rowids[doc as usize], -score))
                .collect(),
        )
    }
}

/// `f64` with a total order, for the heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fts(rows: &[&str]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::memory::schema::SCHEMA).unwrap();
        for (i, text) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO chunks_fts(text, id, path, source, model, start_line, end_line) VALUES (?1, ?2, 'p', 'memory', 'm', 1, 2)",
                rusqlite::params![text, format!("c{i}")],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn scores_equal_fts5_bm25_for_ascii_text() {
        let rows = [
            "Decided to price the Pro plan at 49 dollars; pricing review in March.",
            "Pricing: the Pro plan, the Team plan, and the Enterprise plan.",
            "Hired Ana as designer. Ana prefers async standups — no meetings 🙂",
            "Runway is eleven months; burn is 40k per month.",
            "plan plan plan plan plan",
            "Nothing relevant here at all, just a long note about the weather and the garden and the dog.",
        ];
        let conn = fts(&rows);
        let index = KeywordIndex::load(&conn).unwrap().unwrap();
        assert_eq!(index.len(), rows.len());
        for query in [
            &["plan"][..],
            &["pricing", "plan", "ana"],
            &["absent", "runway"],
            &["the", "plan"],
        ] {
            let terms: Vec<String> = query.iter().map(|s| (*s).to_owned()).collect();
            let fts_query = terms
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(" OR ");
            let mut stmt = conn
                .prepare("SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY s LIMIT 3")
                .unwrap();
            let expected: Vec<(i64, f64)> = stmt
                .query_map([&fts_query], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let got = index.search(&terms, 3).unwrap();
            assert_eq!(got.len(), expected.len(), "{query:?}");
            for ((gr, gs), (er, es)) in got.iter().zip(&expected) {
                assert_eq!(gr, er, "{query:?}: {got:?} vs {expected:?}");
                assert!((gs - es).abs() < 1e-9, "{query:?}: {got:?} vs {expected:?}");
            }
        }
        assert!(index.search(&["déjà".to_owned()], 3).is_none());
        assert!(index.search(&["snake_case".to_owned()], 3).is_none());
    }

    #[test]
    fn text_fts5_may_fold_differently_is_left_to_fts5() {
        let conn = fts(&["Met José at the café"]);
        assert!(KeywordIndex::load(&conn).unwrap().is_none());
        let conn = fts(&["Shipped it ✅ — “finally”"]);
        assert!(KeywordIndex::load(&conn).unwrap().is_some());
    }
}
