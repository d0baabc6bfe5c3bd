//! Small synthetic data sets for tests and benchmarks (no files needed): images whose
//! brightness pattern depends on the label, plus noise, so that training makes progress.

use lamb_data::Dataset;
use lamb_nn::{Activation, Model, NnError, Padding, Sequential};
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

/// A small CNN over 8x8x3 images with the classic model's layer kinds (Conv2D same and valid,
/// MaxPool, Flatten, Dense), fast enough for multi-rank tests; initialised from `seed`.
pub fn small_cnn(seed: u64) -> Result<Model, NnError> {
    Sequential::new([8, 8, 3])
        .conv2d(6, 3, 1, Padding::Same, Activation::Relu)
        .max_pool2d(2)
        .conv2d(8, 3, 1, Padding::Valid, Activation::Relu)
        .flatten()
        .dense(16, Activation::Relu)
        .dense(10, Activation::Softmax)
        .build(seed)
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
