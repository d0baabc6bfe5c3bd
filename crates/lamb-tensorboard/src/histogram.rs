//! Histograms as TensorBoard's `HistogramProto` holds them: equal-width buckets between the
//! smallest and largest finite value, each bucket given by its right edge.

/// A histogram of values (`HistogramProto`): bucket `i` counts the values in
/// `(bucket_limit[i - 1], bucket_limit[i]]`, the first from `min`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub num: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_squares: f64,
    /// Right edge of each bucket.
    pub bucket_limit: Vec<f64>,
    /// Count of each bucket.
    pub bucket: Vec<f64>,
}

impl Histogram {
    /// The histogram of the finite `values` in `buckets` equal-width buckets (see
    /// [`Histogram::fill`]).
    pub fn from_values(values: &[f32], buckets: usize) -> Histogram {
        let mut h = Histogram::default();
        h.fill(values, buckets);
        h
    }

    /// Recomputes this histogram from the finite `values` (NaN and infinities are left out) in
    /// `buckets` equal-width buckets (at least 1) from the smallest to the largest; when they
    /// are all equal, one bucket of width 1 centred on the value (as `tf.summary.histogram`
    /// does). Reuses its vectors: no allocation once they have held `buckets` entries.
    pub fn fill(&mut self, values: &[f32], buckets: usize) {
        let buckets = buckets.max(1);
        let (mut lo, mut hi, mut n, mut sum, mut sq) =
            (f64::INFINITY, f64::NEG_INFINITY, 0usize, 0.0f64, 0.0f64);
        for &v in values.iter().filter(|v| v.is_finite()) {
            let v = f64::from(v);
            lo = lo.min(v);
            hi = hi.max(v);
            n += 1;
            sum += v;
            sq += v * v;
        }
        self.bucket_limit.clear();
        self.bucket.clear();
        (self.num, self.sum, self.sum_squares) = (n as f64, sum, sq);
        if n == 0 {
            (self.min, self.max) = (0.0, 0.0);
            return;
        }
        (self.min, self.max) = (lo, hi);
        let (left, right, k) = if lo == hi {
            (lo - 0.5, hi + 0.5, 1)
        } else {
            (lo, hi, buckets)
        };
        let width = (right - left) / k as f64;
        self.bucket_limit.extend((1..=k).map(|i| {
            if i == k {
                right
            } else {
                left + width * i as f64
            }
        }));
        self.bucket.resize(k, 0.0);
        for &v in values.iter().filter(|v| v.is_finite()) {
            let i = (((f64::from(v) - left) / width) as usize).min(k - 1);
            self.bucket[i] += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_equal_width_buckets() {
        let h = Histogram::from_values(&[0.0, 0.1, 0.5, 0.9, 1.0, f32::NAN], 2);
        assert_eq!((h.min, h.max, h.num), (0.0, 1.0, 5.0));
        assert_eq!(h.bucket_limit, vec![0.5, 1.0]);
        assert_eq!(h.bucket, vec![2.0, 3.0]);
        assert!((h.sum - 2.5).abs() < 1e-6);
    }

    #[test]
    fn equal_values_make_one_unit_bucket() {
        let h = Histogram::from_values(&[0.0; 4], 30);
        assert_eq!(h.bucket_limit, vec![0.5]);
        assert_eq!(h.bucket, vec![4.0]);
        let e = Histogram::from_values(&[], 30);
        assert_eq!(e.num, 0.0);
        assert!(e.bucket.is_empty());
    }
}
