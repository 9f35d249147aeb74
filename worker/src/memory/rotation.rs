//! A fixed pseudo-random orthogonal transform (random sign flips, block Walsh–Hadamard, permutation; two rounds)
//! applied to every vector before quantisation. It preserves cosine similarity exactly and spreads a sparse
//! vector's energy over all dimensions, so one sign bit per dimension estimates the angle between any two
//! vectors (SimHash), whatever the embedding model's distribution.

/// The transform for one width; deterministic (fixed seed), so stored and query vectors agree.
#[derive(Debug)]
pub(crate) struct Rotation {
    /// Largest power of two dividing the width: the Hadamard block size.
    block: usize,
    rounds: [Round; 2],
}

#[derive(Debug)]
struct Round {
    flip: Vec<bool>,
    /// `out[perm[i]] = in[i]`.
    perm: Vec<usize>,
}

/// xorshift64*: deterministic and dependency-free.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn round(dims: usize, seed: &mut u64) -> Round {
    let flip = (0..dims).map(|_| next(seed) >> 63 == 1).collect();
    let mut perm: Vec<usize> = (0..dims).collect();
    for i in (1..dims).rev() {
        let j = usize::try_from(next(seed) % (i as u64 + 1)).unwrap_or(0);
        perm.swap(i, j);
    }
    Round { flip, perm }
}

/// In-place unnormalised fast Walsh–Hadamard transform of a power-of-two-long slice.
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            let (lo, hi) = x[start..start + 2 * h].split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (s, d) = (*a + *b, *a - *b);
                *a = s;
                *b = d;
            }
        }
        h *= 2;
    }
}

impl Rotation {
    pub(crate) fn new(dims: usize) -> Self {
        let block = if dims == 0 {
            1
        } else {
            1 << dims.trailing_zeros()
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15 ^ dims as u64;
        Rotation {
            block,
            rounds: [round(dims, &mut seed), round(dims, &mut seed)],
        }
    }

    /// `out` = the rotated `x` (same length), scaled by a constant factor per width (irrelevant for cosines).
    pub(crate) fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        let mut cur: Vec<f32> = x.to_vec();
        out.clear();
        out.resize(x.len(), 0.0);
        for r in &self.rounds {
            for (v, f) in cur.iter_mut().zip(&r.flip) {
                if *f {
                    *v = -*v;
                }
            }
            for block in cur.chunks_exact_mut(self.block) {
                fwht(block);
            }
            for (v, p) in cur.iter().zip(&r.perm) {
                out[*p] = *v;
            }
            std::mem::swap(&mut cur, out);
        }
        std::mem::swap(&mut cur, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn rotation_preserves_cosines_and_densifies_sparse_vectors() {
        for dims in [8, 96, 256, 1536] {
            let rot = Rotation::new(dims);
            let mut a = vec![0.0; dims];
            let mut b = vec![0.0; dims];
            a[1] = 1.0;
            a[dims - 1] = 2.0;
            b[1] = 1.0;
            b[dims / 2] = -1.0;
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            rot.apply(&a, &mut ra);
            rot.apply(&b, &mut rb);
            let cos = |x: &[f32], y: &[f32]| dot(x, y) / (dot(x, x) * dot(y, y)).sqrt();
            assert!((cos(&a, &b) - cos(&ra, &rb)).abs() < 1e-5, "dims {dims}");
            if dims == 256 {
                // A 2-sparse vector becomes (almost) fully dense.
                assert!(ra.iter().filter(|x| x.abs() > 1e-6).count() > dims * 9 / 10);
            }
        }
    }
}
