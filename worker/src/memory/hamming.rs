//! Hamming distances from one packed sign-bit code to every code of a contiguous bit matrix. One portable loop,
//! also compiled with POPCNT + AVX2 and chosen at run time when the CPU has them (the build targets baseline
//! x86-64, where `count_ones` is a dozen instructions instead of one).

/// `out[i]` = Hamming distance between `query` and the `i`-th code of `codes` (`query.len()` words each).
pub(crate) fn distances(codes: &[u64], query: &[u64], out: &mut Vec<u16>) {
    out.clear();
    if query.is_empty() {
        return;
    }
    out.resize(codes.len() / query.len(), 0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            distances_x86_v3(codes, query, out);
            return;
        }
    }
    distances_portable(codes, query, out);
}

#[inline(always)]
fn kernel(codes: &[u64], query: &[u64], out: &mut [u16]) {
    let words = query.len();
    if words == 4 {
        // 256 dimensions, the common small width: unrolled so the compiler keeps the query in registers.
        let q = [query[0], query[1], query[2], query[3]];
        for (d, o) in codes.chunks_exact(4).zip(out.iter_mut()) {
            let n = (d[0] ^ q[0]).count_ones()
                + (d[1] ^ q[1]).count_ones()
                + (d[2] ^ q[2]).count_ones()
                + (d[3] ^ q[3]).count_ones();
            *o = u16::try_from(n).unwrap_or(u16::MAX);
        }
        return;
    }
    for (d, o) in codes.chunks_exact(words).zip(out.iter_mut()) {
        let n: u32 = d.iter().zip(query).map(|(a, b)| (a ^ b).count_ones()).sum();
        *o = u16::try_from(n).unwrap_or(u16::MAX);
    }
}

fn distances_portable(codes: &[u64], query: &[u64], out: &mut [u16]) {
    kernel(codes, query, out);
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn distances_x86_v3(codes: &[u64], query: &[u64], out: &mut [u16]) {
    #[target_feature(enable = "popcnt,avx2")]
    fn with_features(codes: &[u64], query: &[u64], out: &mut [u16]) {
        kernel(codes, query, out);
    }
    // SAFETY: the only caller checked `is_x86_feature_detected!` for both features just before, so the CPU
    // executes the instructions this build of the (otherwise safe) loop uses.
    unsafe { with_features(codes, query, out) }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test sizes
mod tests {
    use super::*;

    #[test]
    fn distances_count_differing_bits_for_every_width() {
        for words in [1, 4, 24] {
            let query: Vec<u64> = (0..words as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9))
                .collect();
            let mut codes = query.clone();
            let mut other = query.clone();
            other[0] ^= 0b1011;
            codes.extend(&other);
            codes.extend(query.iter().map(|w| !w));
            let mut out = Vec::new();
            distances(&codes, &query, &mut out);
            assert_eq!(out, [0, 3, 64 * words as u16]);
            let mut portable = vec![0; 3];
            distances_portable(&codes, &query, &mut portable);
            assert_eq!(portable, out);
        }
    }
}
