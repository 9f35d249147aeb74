//! An in-memory copy of the index's vectors for exact nearest-neighbour search in Rust: unit vectors quantised
//! to int8 (N × dims bytes, e.g. 31 MB for 121k × 256), scanned linearly per query. sqlite-vec's `vec0` scan
//! reads every float from SQLite pages per query (~20× slower at 100k chunks); this cache is rebuilt lazily
//! from `chunks_vec` after a sync changed the index.

use rusqlite::Connection;

/// Quantised vectors, row-major, with their chunk ids.
#[derive(Debug, Default)]
pub(crate) struct VectorCache {
    /// The index generation this copy was loaded at.
    pub(crate) generation: u64,
    dims: usize,
    ids: Vec<String>,
    data: Vec<i8>,
    norms: Vec<f32>,
}

#[allow(clippy::cast_possible_truncation)] // the value is clamped to [-127, 127] first
fn quantize_one(x: f32) -> i8 {
    (x * 127.0).round().clamp(-127.0, 127.0) as i8
}

fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let start = out.len();
    out.extend(v.iter().map(|x| quantize_one(*x)));
    out[start..]
        .iter()
        .map(|q| f32::from(*q) * f32::from(*q))
        .sum::<f32>()
        .sqrt()
}

fn dot(a: &[i8], b: &[i8]) -> i32 {
    // Written so LLVM vectorises it (widening multiply-add).
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

impl VectorCache {
    /// Loads every vector of `chunks_vec` (stored as unit vectors); an empty cache when the table is absent.
    pub(crate) fn load(conn: &Connection, generation: u64) -> rusqlite::Result<Self> {
        let mut cache = VectorCache {
            generation,
            ..VectorCache::default()
        };
        if !super::schema::vec_table_exists(conn)? {
            return Ok(cache);
        }
        let mut stmt = conn.prepare("SELECT id, embedding FROM chunks_vec")?;
        let mut rows = stmt.query([])?;
        let mut floats = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let blob: Vec<u8> = row.get(1)?;
            floats.clear();
            floats.extend(
                blob.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            if cache.dims == 0 {
                cache.dims = floats.len();
            }
            if floats.len() != cache.dims || cache.dims == 0 {
                continue;
            }
            let norm = quantize(&floats, &mut cache.data);
            cache.norms.push(norm);
            cache.ids.push(id);
        }
        Ok(cache)
    }

    /// The `k` ids most similar to `query` (a unit vector of the same width) with their cosine similarity,
    /// best first. Empty when the widths differ.
    pub(crate) fn top_k(&self, query: &[f32], k: usize) -> Vec<(String, f64)> {
        if self.dims == 0 || query.len() != self.dims || k == 0 {
            return Vec::new();
        }
        let mut q = Vec::with_capacity(self.dims);
        let q_norm = quantize(query, &mut q);
        if q_norm == 0.0 {
            return Vec::new();
        }
        let mut scored: Vec<(f32, u32)> = self
            .data
            .chunks_exact(self.dims)
            .zip(&self.norms)
            .enumerate()
            .map(|(i, (v, norm))| {
                let cos = if *norm == 0.0 {
                    0.0
                } else {
                    dot(v, &q) as f32 / (norm * q_norm)
                };
                (cos, u32::try_from(i).unwrap_or(u32::MAX))
            })
            .collect();
        let k = k.min(scored.len());
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(k);
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .filter_map(|(cos, i)| {
                self.ids
                    .get(usize::try_from(i).ok()?)
                    .map(|id| (id.clone(), f64::from(cos)))
            })
            .collect()
    }
}
