//! The in-memory dataset type, batching and shuffling (the contract the engine codes against).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// CIFAR-10 class names in label order 0..9.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Labelled images held in memory as bytes, NHWC (row-major height, width, channel; RGB).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dataset {
    /// Pixel bytes, `len() * height * width * channels` of them, image after image, NHWC.
    pub images: Vec<u8>,
    /// One label per image, each `< class_names.len()`.
    pub labels: Vec<u8>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Channels per pixel (3 for RGB).
    pub channels: usize,
    /// Class names in label order.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`height * width * channels`).
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Pixel bytes of image `i` (NHWC). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// A new dataset holding the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            height: self.height,
            width: self.width,
            channels: self.channels,
            class_names: self.class_names.clone(),
        }
    }

    /// Writes the images at `indices` into `x` as f32 scaled by 1/255 (NHWC) and their labels
    /// into `y`. `x` must hold `indices.len() * image_len()` values and `y` `indices.len()`.
    pub fn fill_batch(&self, indices: &[usize], x: &mut [f32], y: &mut [u8]) {
        let n = self.image_len();
        assert_eq!(x.len(), indices.len() * n, "batch buffer length");
        assert_eq!(y.len(), indices.len(), "label buffer length");
        for (k, &i) in indices.iter().enumerate() {
            for (dst, &src) in x[k * n..(k + 1) * n].iter_mut().zip(self.image(i)) {
                *dst = src as f32 / 255.0;
            }
            y[k] = self.labels[i];
        }
    }
}

/// The order in which epoch `epoch` visits `n` examples: a permutation that depends only on
/// `(seed, epoch, n)`, so that a resumed run replays exactly the same batches.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_depends_on_seed_and_epoch_only() {
        let a = epoch_permutation(7, 3, 100);
        assert_eq!(a, epoch_permutation(7, 3, 100));
        assert_ne!(a, epoch_permutation(7, 4, 100));
        assert_ne!(a, epoch_permutation(8, 3, 100));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn fill_batch_scales_pixels() {
        let ds = Dataset {
            images: vec![0, 255, 51, 102],
            labels: vec![3, 7],
            height: 1,
            width: 1,
            channels: 2,
            class_names: vec![],
        };
        let mut x = vec![0.0; 4];
        let mut y = vec![0; 2];
        ds.fill_batch(&[1, 0], &mut x, &mut y);
        assert_eq!(x, vec![0.2, 0.4, 0.0, 1.0]);
        assert_eq!(y, vec![7, 3]);
    }
}
