//! Log-linear latency buckets in nanoseconds: below 2^10 ns (about 1 µs) is one bucket; each
//! power of two from 2^10 to 2^37 ns (about 137 s) is split into 8 equal buckets (each at most
//! 12.5% wide relative to its lower edge); 2^37 ns and above is the last bucket. The bucket of
//! a value is a few integer instructions (leading zeros, a shift, a mask).

/// Buckets per power of two, as a bit count (8 = 2^3).
const SUB_BITS: u32 = 3;
const SUB: u32 = 1 << SUB_BITS;
/// Below 2^MIN_EXP ns everything shares bucket 0.
pub const MIN_EXP: u32 = 10;
/// From 2^MAX_EXP ns on everything shares the last bucket.
pub const MAX_EXP: u32 = 37;
/// Number of buckets.
pub const BUCKETS: usize = 1 + ((MAX_EXP - MIN_EXP) * SUB) as usize + 1;

/// The bucket of a latency of `ns` nanoseconds.
#[inline]
pub fn bucket(ns: u64) -> usize {
    if ns < 1 << MIN_EXP {
        return 0;
    }
    let e = 63 - ns.leading_zeros();
    if e >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (ns >> (e - SUB_BITS)) as u32 & (SUB - 1);
    (1 + (e - MIN_EXP) * SUB + sub) as usize
}

/// The first value (ns) past bucket `i`; `u64::MAX` for the last bucket (unbounded).
pub fn upper(i: usize) -> u64 {
    if i == 0 {
        return 1 << MIN_EXP;
    }
    if i >= BUCKETS - 1 {
        return u64::MAX;
    }
    let e = MIN_EXP + (i as u32 - 1) / SUB;
    let s = (i as u64 - 1) % SUB as u64;
    (1u64 << e) + (s + 1) * (1u64 << (e - SUB_BITS))
}

/// The first value (ns) of bucket `i`.
pub fn lower(i: usize) -> u64 {
    if i == 0 { 0 } else { upper(i - 1) }
}

/// The value (ns) at quantile `q` (0..=1) of `counts` (one count per bucket): the upper edge
/// of the bucket holding that rank (the last bucket reports its lower edge), `None` if empty.
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank-th smallest value, 1-based; q = 0 asks for the smallest.
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(if i == BUCKETS - 1 { lower(i) } else { upper(i) });
        }
    }
    None
}

/// Buckets whose upper edge is a power of two (2^MIN_EXP ..= 2^MAX_EXP ns): the coarser
/// ladder Prometheus gets, each with the index of the last internal bucket it covers.
pub fn power_of_two_edges() -> impl Iterator<Item = (u64, usize)> {
    (MIN_EXP..=MAX_EXP).map(|e| (1u64 << e, ((e - MIN_EXP) * SUB) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_contiguous_and_each_value_lands_inside_its_bucket() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(lower(i + 1), upper(i), "bucket {i}");
            assert!(lower(i) < upper(i));
            assert_eq!(bucket(lower(i)), i);
            assert_eq!(bucket(upper(i) - 1), i);
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1023), 0);
        assert_eq!(bucket(1024), 1);
        assert_eq!(bucket(1024 + 127), 1);
        assert_eq!(bucket(1024 + 128), 2);
        assert_eq!(bucket(2047), 8);
        assert_eq!(bucket(2048), 9);
        assert_eq!(bucket((1 << MAX_EXP) - 1), BUCKETS - 2);
        assert_eq!(bucket(1 << MAX_EXP), BUCKETS - 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(BUCKETS, 218);
    }

    #[test]
    fn buckets_are_at_most_an_eighth_wide() {
        for i in 1..BUCKETS - 1 {
            let w = upper(i) - lower(i);
            assert!(w * 8 <= lower(i), "bucket {i}: {}..{}", lower(i), upper(i));
        }
    }

    #[test]
    fn power_of_two_edges_cover_the_buckets_below_them() {
        for (edge, last) in power_of_two_edges() {
            assert_eq!(upper(last), edge);
            assert_eq!(bucket(edge), last + 1);
        }
        assert_eq!(
            power_of_two_edges().count(),
            (MAX_EXP - MIN_EXP + 1) as usize
        );
    }

    fn counts_of(values: &[u64]) -> Vec<u64> {
        let mut c = vec![0; BUCKETS];
        for &v in values {
            c[bucket(v)] += 1;
        }
        c
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        // 1..=100_000 µs: the q-quantile is q * 100 ms.
        let values: Vec<u64> = (1..=100_000u64).map(|us| us * 1000).collect();
        let c = counts_of(&values);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let truth = (q * 100_000.0) as u64 * 1000;
            let got = quantile(&c, q).unwrap();
            assert!(got >= truth, "q {q}: {got} < {truth}");
            assert!(got <= truth + truth / 8 + 1, "q {q}: {got} vs {truth}");
        }
        assert_eq!(quantile(&c, 0.0), Some(upper(bucket(1000))));
        assert_eq!(quantile(&c, 1.0), Some(upper(bucket(100_000_000))));
    }

    #[test]
    fn quantiles_of_a_skewed_mix_and_of_nothing() {
        // 990 fast requests and 10 slow ones: p50 and p99 are fast, p99.9 is slow.
        let mut v = vec![5_000u64; 990];
        v.extend([2_000_000u64; 10]);
        let c = counts_of(&v);
        assert_eq!(quantile(&c, 0.5), Some(upper(bucket(5_000))));
        assert_eq!(quantile(&c, 0.99), Some(upper(bucket(5_000))));
        assert_eq!(quantile(&c, 0.999), Some(upper(bucket(2_000_000))));
        assert_eq!(quantile(&vec![0; BUCKETS], 0.5), None);
        // Past the last edge: its lower edge, not u64::MAX.
        assert_eq!(quantile(&counts_of(&[u64::MAX]), 0.5), Some(1 << MAX_EXP));
    }
}
