//! An in-memory copy of the index's vectors for nearest-neighbour search in Rust. Every vector is first put
//! through a fixed random rotation (`rotation.rs`, cosine-preserving), then kept twice: as int8 (N × dims bytes,
//! per-vector scale) for exact-enough cosines, and as one sign bit per dimension (N × dims/8 bytes, a contiguous
//! bit matrix). Up to `EXACT_LIMIT` vectors every query is scored on the int8 copy; above it a popcount Hamming
//! scan of the bit matrix (SimHash: the distance estimates the angle) keeps `RERANK` candidates, which are then
//! rescored on the int8 copy. sqlite-vec's `vec0` scan reads every float from SQLite pages per query instead.
//! Rebuilt lazily from `chunks_vec` after a sync.

use rusqlite::Connection;

use super::hamming;
use super::rotation::Rotation;

/// Rotated, quantised vectors, row-major, with their chunk ids.
#[derive(Debug, Default)]
pub(crate) struct VectorCache {
    /// The index generation this copy was loaded at.
    pub(crate) generation: u64,
    dims: usize,
    /// u64 words of sign bits per vector.
    words: usize,
    rotation: Option<Rotation>,
    /// Chunk ids end to end; `id_ends[i]` is where the `i`-th ends (one allocation instead of N strings).
    id_text: String,
    id_ends: Vec<usize>,
    data: Vec<i8>,
    norms: Vec<f32>,
    bits: Vec<u64>,
}

/// Below this many vectors every query is scored exactly (on the int8 copy).
const EXACT_LIMIT: usize = 8_192;
/// Candidates kept by the Hamming prefilter for rescoring (at least; 32 × k when k is larger).
const RERANK: usize = 1_024;

fn sign_bits(v: &[f32], out: &mut Vec<u64>) {
    for chunk in v.chunks(64) {
        let mut word = 0u64;
        for (i, x) in chunk.iter().enumerate() {
            if *x > 0.0 {
                word |= 1 << i;
            }
        }
        out.push(word);
    }
}

#[allow(clippy::cast_possible_truncation)] // the value is clamped to [-127, 127] first
fn quantize_one(x: f32) -> i8 {
    x.round().clamp(-127.0, 127.0) as i8
}

/// Appends `v` scaled so its largest component is ±127; returns the quantised vector's norm (0 for a zero vector).
fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
    let start = out.len();
    out.extend(v.iter().map(|x| quantize_one(x * scale)));
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

/// Indices of the `keep` smallest distances (ties at the cut broken by position), from a histogram of the
/// distances instead of a sort: two linear passes.
fn nearest_by_hamming(dist: &[u16], max_distance: usize, keep: usize) -> Vec<u32> {
    let mut histogram = vec![0usize; max_distance + 1];
    for d in dist {
        histogram[usize::from(*d).min(max_distance)] += 1;
    }
    let (mut below, mut threshold) = (0usize, max_distance);
    for (t, count) in histogram.iter().enumerate() {
        if below + count >= keep {
            threshold = t;
            break;
        }
        below += count;
    }
    let threshold = u16::try_from(threshold).unwrap_or(u16::MAX);
    let mut room = keep.saturating_sub(below);
    let mut out = Vec::with_capacity(keep);
    for (i, d) in dist.iter().enumerate() {
        let take = *d < threshold
            || (*d == threshold && room > 0 && {
                room -= 1;
                true
            });
        if take {
            out.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
    }
    out
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
        let mut rotated = Vec::new();
        while let Some(row) = rows.next()? {
            let id = row.get_ref(0)?.as_str()?;
            let blob = row.get_ref(1)?.as_blob()?;
            floats.clear();
            floats.extend(
                blob.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            cache.push(id, &floats, &mut rotated);
        }
        cache.id_text.shrink_to_fit();
        cache.id_ends.shrink_to_fit();
        cache.data.shrink_to_fit();
        cache.norms.shrink_to_fit();
        cache.bits.shrink_to_fit();
        Ok(cache)
    }

    fn push(&mut self, id: &str, floats: &[f32], rotated: &mut Vec<f32>) {
        if self.dims == 0 {
            self.dims = floats.len();
            self.words = self.dims.div_ceil(64);
            self.rotation = Some(Rotation::new(self.dims));
        }
        let Some(rotation) = &self.rotation else {
            return;
        };
        if floats.len() != self.dims || self.dims == 0 {
            return;
        }
        rotation.apply(floats, rotated);
        let norm = quantize(rotated, &mut self.data);
        sign_bits(rotated, &mut self.bits);
        self.norms.push(norm);
        self.id_text.push_str(id);
        self.id_ends.push(self.id_text.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.norms.len()
    }

    fn id(&self, i: usize) -> Option<&str> {
        let end = *self.id_ends.get(i)?;
        let start = if i == 0 { 0 } else { self.id_ends[i - 1] };
        self.id_text.get(start..end)
    }

    /// Bytes held (for status and benchmarks).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.id_text.capacity()
            + self.id_ends.capacity() * std::mem::size_of::<usize>()
            + self.data.capacity()
            + self.norms.capacity() * 4
            + self.bits.capacity() * 8
    }

    /// The `k` ids most similar to `query` (a vector of the same width) with their cosine similarity, best
    /// first. Empty when the widths differ.
    pub(crate) fn top_k(&self, query: &[f32], k: usize) -> Vec<(String, f64)> {
        let Some(rotation) = &self.rotation else {
            return Vec::new();
        };
        if self.dims == 0 || query.len() != self.dims || k == 0 {
            return Vec::new();
        }
        let mut rotated = Vec::with_capacity(self.dims);
        rotation.apply(query, &mut rotated);
        let mut q = Vec::with_capacity(self.dims);
        let q_norm = quantize(&rotated, &mut q);
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
        let n = self.len();
        let mut scored: Vec<(f32, u32)> = if n <= EXACT_LIMIT {
            (0..n)
                .map(|i| (score(i), u32::try_from(i).unwrap_or(u32::MAX)))
                .collect()
        } else {
            let mut qbits = Vec::with_capacity(self.words);
            sign_bits(&rotated, &mut qbits);
            let mut dist = Vec::new();
            hamming::distances(&self.bits, &qbits, &mut dist);
            let keep = RERANK.max(k.saturating_mul(32)).min(n);
            nearest_by_hamming(&dist, self.words * 64, keep)
                .into_iter()
                .filter_map(|i| Some((score(usize::try_from(i).ok()?), i)))
                .collect()
        };
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(k);
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .filter_map(|(cos, i)| {
                self.id(usize::try_from(i).ok()?)
                    .map(|id| (id.to_owned(), f64::from(cos)))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test sizes
mod tests {
    use super::*;

    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn unit(mut v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    fn random_unit(seed: &mut u64, dims: usize) -> Vec<f32> {
        unit(
            (0..dims)
                .map(|_| (next(seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect(),
        )
    }

    /// A hashed bag of `words` words out of a small vocabulary: sparse, like a keyword embedding.
    fn sparse_unit(seed: &mut u64, dims: usize, words: usize) -> Vec<f32> {
        let mut v = vec![0.0; dims];
        for _ in 0..words {
            let w = next(seed) % 2_000;
            v[(w.wrapping_mul(0x9e37_79b9) % dims as u64) as usize] +=
                if w.is_multiple_of(2) { 1.0 } else { -1.0 };
        }
        unit(v)
    }

    fn cache_of(vectors: &[Vec<f32>]) -> VectorCache {
        let mut cache = VectorCache::default();
        let mut scratch = Vec::new();
        for (i, v) in vectors.iter().enumerate() {
            cache.push(&format!("c{i}"), v, &mut scratch);
        }
        cache
    }

    /// The exact top `k` (with cosine similarity, `q` a unit vector).
    fn exact_top(vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<(f32, usize)> {
        let mut all: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.truncate(k);
        all
    }

    #[test]
    fn exact_and_prefiltered_scans_find_the_nearest_vector() {
        for count in [500, EXACT_LIMIT + 5_000] {
            let mut seed = 0x9e37_79b9_7f4a_7c15;
            let vectors: Vec<Vec<f32>> = (0..count).map(|_| random_unit(&mut seed, 64)).collect();
            let cache = cache_of(&vectors);
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
            assert!(cache.top_k(&[0.0; 64], 6).is_empty());
        }
    }

    #[test]
    fn prefilter_keeps_the_exact_top_6_of_sparse_vectors() {
        // Sparse keyword-like vectors: the case plain sign bits get wrong (most components are zero). After the
        // rotation the prefilter must still let through the exact top 6 that clear the default minScore region
        // (cosine >= 0.5, as the benchmark counts; below it near-ties make any top 6 arbitrary).
        let (dims, count) = (256, 40_000);
        let mut seed = 7;
        let vectors: Vec<Vec<f32>> = (0..count)
            .map(|_| sparse_unit(&mut seed, dims, 30))
            .collect();
        let cache = cache_of(&vectors);
        let (mut expected, mut found) = (0, 0);
        for _ in 0..30 {
            // Queries built from a stored chunk's words, like a user recalling a note.
            let target = (next(&mut seed) % count as u64) as usize;
            let q: Vec<f32> = vectors[target]
                .iter()
                .enumerate()
                .map(|(i, x)| if i % 2 == 0 { *x } else { 0.0 })
                .collect();
            if q.iter().all(|x| *x == 0.0) {
                continue;
            }
            let q = unit(q);
            let got: Vec<String> = cache.top_k(&q, 6).into_iter().map(|e| e.0).collect();
            for (_, i) in exact_top(&vectors, &q, 6)
                .into_iter()
                .filter(|e| e.0 >= 0.5)
            {
                expected += 1;
                found += usize::from(got.contains(&format!("c{i}")));
            }
        }
        assert!(expected >= 30, "the queries have close neighbours");
        assert!(found * 100 >= expected * 95, "recall {found}/{expected}");
    }

    #[test]
    fn hamming_selection_keeps_exactly_the_nearest() {
        let dist = [5u16, 1, 9, 1, 3, 0, 3];
        assert_eq!(nearest_by_hamming(&dist, 16, 3), [1, 3, 5]);
        assert_eq!(nearest_by_hamming(&dist, 16, 4), [1, 3, 4, 5]);
        assert_eq!(nearest_by_hamming(&dist, 16, 7).len(), 7);
    }
}
