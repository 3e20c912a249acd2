//! A latency histogram in microseconds with a bounded relative error (log-linear buckets: exact
//! below 128 µs, then 64 buckets per power of two, so a bucket is at most 1.6 % wide).
//! Histograms add and subtract bucket by bucket, which is how a measurement window is cut out of
//! running totals.

/// Values at or above this (about 16.8 s) land in the last bucket.
const MAX_EXPONENT: u32 = 24;
const LINEAR: u64 = 128;
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = LINEAR as usize + (MAX_EXPONENT as usize - 7 + 1) * SUB as usize;

#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Histogram {{ n: {}, p50: {:?}, p99: {:?} }}",
            self.total,
            self.quantile(0.5),
            self.quantile(0.99)
        )
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = (63 - v.leading_zeros()).min(MAX_EXPONENT);
    if e == MAX_EXPONENT && v >= (1 << (MAX_EXPONENT + 1)) {
        return BUCKETS - 1;
    }
    let shift = e - SUB_BITS;
    let m = (v >> shift) - SUB; // 0..SUB
    LINEAR as usize + (e as usize - 7) * SUB as usize + m as usize
}

/// The middle of bucket `i`, in µs.
fn value(i: usize) -> f64 {
    if (i as u64) < LINEAR {
        return i as f64;
    }
    let j = i - LINEAR as usize;
    let e = (j / SUB as usize) as u32 + 7;
    let m = (j % SUB as usize) as u64 + SUB;
    let shift = e - SUB_BITS;
    let low = m << shift;
    low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// `self − earlier`, where `earlier` is a previous snapshot of the same running histogram.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let counts: Box<[u64]> = self
            .counts
            .iter()
            .zip(earlier.counts.iter())
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total = counts.iter().sum();
        Histogram { counts, total }
    }

    /// The `q` quantile (0..=1) in µs, `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value(i));
            }
        }
        Some(value(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..200_000u64).chain([1 << 20, (1 << 24) + 5, u64::MAX]) {
            let i = index(v);
            assert!(i >= last, "index({v}) = {i} < {last}");
            assert!(i < BUCKETS);
            last = i;
            if v < (1 << MAX_EXPONENT) {
                let mid = value(i);
                let err = (mid - v as f64).abs() / (v as f64).max(1.0);
                assert!(err <= 0.016, "v={v} mid={mid} err={err}");
            }
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((p50 - 500.0).abs() < 10.0, "{p50}");
        assert!((p99 - 990.0).abs() < 16.0, "{p99}");
        assert!(h.quantile(1.0).unwrap() >= 990.0);
    }

    #[test]
    fn windows_subtract() {
        let mut h = Histogram::default();
        h.record(10);
        let snap = h.clone();
        h.record(5000);
        h.record(5000);
        let w = h.since(&snap);
        assert_eq!(w.count(), 2);
        assert!((w.quantile(0.5).unwrap() - 5000.0).abs() < 80.0);
        let mut sum = Histogram::default();
        sum.add(&w);
        sum.add(&snap);
        assert_eq!(sum, h);
    }
}
