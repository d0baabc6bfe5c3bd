//! Small synthetic data sets for tests and benchmarks (no files needed): images whose
//! brightness pattern depends on the label, plus noise, so that training makes progress.

use lamb_data::Dataset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` images of `shape` (`[h, w, c]`) over `classes` classes (at most 256), reproducible from
/// `seed`.
pub fn dataset(n: usize, shape: [usize; 3], classes: usize, seed: u64) -> Dataset {
    let classes = classes.clamp(1, 256);
    let [h, w, c] = shape;
    let len = h * w * c;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<u8> = (0..n).map(|_| rng.gen_range(0..classes) as u8).collect();
    let step = 160 / classes.max(1);
    let mut images = Vec::with_capacity(n * len);
    for &l in &labels {
        for k in 0..len {
            let base = (l as usize * step + (k * (l as usize + 1)) % 31) as u8;
            images.push(base.saturating_add(rng.gen_range(0..64u8)));
        }
    }
    Dataset {
        images,
        labels,
        height: h,
        width: w,
        channels: c,
        class_names: (0..classes).map(|k| format!("class{k}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reproducible_and_shaped() {
        let a = super::dataset(20, [4, 4, 3], 10, 1);
        assert_eq!(a.images.len(), 20 * 48);
        assert!(a.labels.iter().all(|&l| l < 10));
        assert_eq!(a, super::dataset(20, [4, 4, 3], 10, 1));
        assert_ne!(a, super::dataset(20, [4, 4, 3], 10, 2));
    }
}
