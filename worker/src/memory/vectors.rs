//! An in-memory copy of the index's vectors for nearest-neighbour search in Rust: unit vectors quantised to
//! int8 (N × dims bytes) plus their ternary signs (N × dims/4 bytes). Up to `EXACT_LIMIT` vectors are scanned
//! exactly (int8 cosine); above it a popcount scan over the signs picks `RERANK` candidates that are then
//! scored exactly (ties at the cut are all kept; when they exceed `EXACT_LIMIT` the scan is exact), trading a
//! little recall on dense embeddings for ~4× less memory traffic per query. sqlite-vec's `vec0` scan
//! reads every float from SQLite pages per query instead. Rebuilt lazily from `chunks_vec` after a sync.

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
    /// Ternary sign bits, `2 × words` u64 per vector (positive, negative).
    bits: Vec<u64>,
    words: usize,
}

/// Below this many vectors every query is scored exactly.
const EXACT_LIMIT: usize = 20_000;
/// Candidates kept by the sign-bit prefilter (at least; 16 × k when k is larger).
const RERANK: usize = 1_024;

fn sign_bits(v: &[i8], out: &mut Vec<u64>) {
    // Ternary signs: per 64 dimensions one word of positive and one of negative components; zeros set
    // neither, so sparse vectors keep their support (plain sign bits would not).
    for chunk in v.chunks(64) {
        let (mut pos, mut neg) = (0u64, 0u64);
        for (i, x) in chunk.iter().enumerate() {
            if *x > 0 {
                pos |= 1 << i;
            } else if *x < 0 {
                neg |= 1 << i;
            }
        }
        out.push(pos);
        out.push(neg);
    }
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
            cache.push(id, &floats);
        }
        Ok(cache)
    }

    fn push(&mut self, id: String, floats: &[f32]) {
        if self.dims == 0 {
            self.dims = floats.len();
            self.words = self.dims.div_ceil(64);
        }
        if floats.len() != self.dims || self.dims == 0 {
            return;
        }
        let start = self.data.len();
        let norm = quantize(floats, &mut self.data);
        sign_bits(&self.data[start..], &mut self.bits);
        self.norms.push(norm);
        self.ids.push(id);
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
        let score = |i: usize| -> f32 {
            let norm = self.norms[i];
            if norm == 0.0 {
                return 0.0;
            }
            dot(&self.data[i * self.dims..(i + 1) * self.dims], &q) as f32 / (norm * q_norm)
        };
        let as_u32 = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let mut scored: Vec<(f32, u32)> = if self.ids.len() <= EXACT_LIMIT {
            (0..self.ids.len()).map(|i| (score(i), as_u32(i))).collect()
        } else {
            let mut qbits = Vec::with_capacity(2 * self.words);
            sign_bits(&q, &mut qbits);
            // Agreeing signs minus disagreeing signs: a sign-only estimate of the dot product.
            let mut near: Vec<(i32, u32)> = self
                .bits
                .chunks_exact(2 * self.words)
                .enumerate()
                .map(|(i, b)| {
                    let mut agree = 0i32;
                    for (d, qw) in b.chunks_exact(2).zip(qbits.chunks_exact(2)) {
                        let same = (d[0] & qw[0]).count_ones() + (d[1] & qw[1]).count_ones();
                        let diff = (d[0] & qw[1]).count_ones() + (d[1] & qw[0]).count_ones();
                        agree +=
                            i32::try_from(same).unwrap_or(0) - i32::try_from(diff).unwrap_or(0);
                    }
                    (agree, as_u32(i))
                })
                .collect();
            let keep = RERANK.max(k.saturating_mul(16)).min(near.len());
            near.select_nth_unstable_by_key(keep - 1, |e| std::cmp::Reverse(e.0));
            let threshold = near[keep - 1].0;
            // Keep every vector tied with the last candidate: cutting a tie would drop arbitrary, possibly
            // better, vectors. Sparse queries tie massively; then the estimate is useless and we scan exactly.
            let tied: Vec<u32> = near
                .iter()
                .filter(|e| e.0 >= threshold)
                .map(|e| e.1)
                .collect();
            if tied.len() > EXACT_LIMIT {
                (0..self.ids.len()).map(|i| (score(i), as_u32(i))).collect()
            } else {
                tied.into_iter()
                    .filter_map(|i| usize::try_from(i).ok())
                    .map(|i| (score(i), as_u32(i)))
                    .collect()
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit(seed: &mut u64, dims: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    #[test]
    fn exact_and_prefiltered_scans_find_the_nearest_vector() {
        for count in [500, EXACT_LIMIT + 5_000] {
            let mut seed = 0x9e37_79b9_7f4a_7c15;
            let mut cache = VectorCache::default();
            let vectors: Vec<Vec<f32>> = (0..count).map(|_| random_unit(&mut seed, 64)).collect();
            for (i, v) in vectors.iter().enumerate() {
                cache.push(format!("c{i}"), v);
            }
            for target in [0, count / 2, count - 1] {
                // A slightly perturbed copy of a stored vector finds it first, with cosine close to 1.
                let mut q = vectors[target].clone();
                q[0] += 0.05;
                let top = cache.top_k(&q, 6);
                assert_eq!(top.len(), 6);
                assert_eq!(top[0].0, format!("c{target}"), "count {count}");
                assert!(top[0].1 > 0.97 && top[0].1 >= top[1].1);
            }
            assert!(cache.top_k(&[1.0; 3], 6).is_empty());
        }
    }
}
