//! The in-memory dataset type, batching and shuffling (the contract the engine codes against).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

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

/// Labelled images held in memory as bytes, NHWC (row-major height, width, channel; 1 channel
/// for grayscale, 3 for RGB).
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
    /// Channels per pixel (1 for grayscale, 3 for RGB).
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

impl Dataset {
    /// Images per class, indexed by label (`class_names.len()` entries).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.class_names.len().max(1)];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts.truncate(self.class_names.len());
        counts
    }

    /// Per-channel mean and standard deviation of the pixels scaled to `[0, 1]` (as the model
    /// sees them), each `channels` long; zeros for an empty dataset. Summed exactly in integers.
    pub fn channel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let c = self.channels.max(1);
        let (sum, sq) = self
            .images
            .par_chunks(c * 4096)
            .map(|chunk| {
                let mut sum = vec![0u64; c];
                let mut sq = vec![0u64; c];
                for px in chunk.chunks_exact(c) {
                    for (k, &v) in px.iter().enumerate() {
                        sum[k] += v as u64;
                        sq[k] += (v as u64) * (v as u64);
                    }
                }
                (sum, sq)
            })
            .reduce(
                || (vec![0u64; c], vec![0u64; c]),
                |(mut a, mut b), (x, y)| {
                    for k in 0..c {
                        a[k] += x[k];
                        b[k] += y[k];
                    }
                    (a, b)
                },
            );
        let n = (self.images.len() / c) as f64;
        if n == 0.0 {
            return (vec![0.0; c], vec![0.0; c]);
        }
        let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / n / 255.0).collect();
        let std: Vec<f64> = (0..c)
            .map(|k| {
                let m = sum[k] as f64 / n;
                ((sq[k] as f64 / n - m * m).max(0.0)).sqrt() / 255.0
            })
            .collect();
        (mean, std)
    }

    /// Feeds shape, class names, labels and pixels to `h` (length-prefixed, so that no two
    /// different datasets feed the same bytes).
    fn hash_into(&self, h: &mut blake3::Hasher) {
        for v in [self.height, self.width, self.channels, self.len()] {
            h.update(&(v as u64).to_le_bytes());
        }
        h.update(&(self.class_names.len() as u64).to_le_bytes());
        for name in &self.class_names {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
        }
        h.update(&self.labels);
        h.update(&(self.images.len() as u64).to_le_bytes());
        h.update_rayon(&self.images);
    }

    /// A fingerprint of the data (BLAKE3 of shape, class names, labels and pixels; 64 hex
    /// digits): equal datasets have equal fingerprints, and any change of a pixel, label, name
    /// or shape changes it. About 0.1 s for CIFAR-10's training split.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        self.hash_into(&mut h);
        h.finalize().to_hex().to_string()
    }
}

/// A dataset's training and test splits (the test split is the classic experiment's validation
/// data). Both share image size, channels and class names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// The training images.
    pub train: Dataset,
    /// The test images.
    pub test: Dataset,
}

impl Splits {
    /// A fingerprint of both splits (see [`Dataset::fingerprint`]); what a run records to refuse
    /// resuming on other data.
    pub fn fingerprint(&self) -> String {
        Self::fingerprint_of(&self.train, &self.test)
    }

    /// [`Splits::fingerprint`] of a training and a test split held apart (e.g. after subsets).
    pub fn fingerprint_of(train: &Dataset, test: &Dataset) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"lamb-data splits v1");
        train.hash_into(&mut h);
        test.hash_into(&mut h);
        h.finalize().to_hex().to_string()
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

    fn tiny() -> Dataset {
        Dataset {
            images: vec![0, 255, 51, 102, 10, 20],
            labels: vec![2, 0, 2],
            height: 1,
            width: 1,
            channels: 2,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn counts_and_channel_stats() {
        let ds = tiny();
        assert_eq!(ds.class_counts(), vec![1, 0, 2]);
        let (mean, std) = ds.channel_stats();
        let m0 = (0.0 + 51.0 + 10.0) / 3.0;
        let m1 = (255.0 + 102.0 + 20.0) / 3.0;
        assert!((mean[0] - m0 / 255.0).abs() < 1e-12 && (mean[1] - m1 / 255.0).abs() < 1e-12);
        let v0 = [0.0f64, 51.0, 10.0]
            .iter()
            .map(|x| (x - m0).powi(2))
            .sum::<f64>()
            / 3.0;
        assert!((std[0] - v0.sqrt() / 255.0).abs() < 1e-12, "{std:?}");
    }

    #[test]
    fn fingerprint_changes_with_any_part() {
        let base = tiny();
        let fp = base.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, tiny().fingerprint());
        let mut d = tiny();
        d.images[5] ^= 1;
        assert_ne!(d.fingerprint(), fp);
        let mut d = tiny();
        d.labels[1] = 1;
        assert_ne!(d.fingerprint(), fp);
        let mut d = tiny();
        d.class_names[2] = "cc".into();
        assert_ne!(d.fingerprint(), fp);
        let mut d = tiny();
        (d.height, d.width) = (1, 1);
        d.channels = 1;
        d.images.truncate(3);
        d.labels.truncate(3);
        assert_ne!(d.fingerprint(), fp);
        let s = Splits {
            train: tiny(),
            test: tiny(),
        };
        let mut t = s.clone();
        t.test.images[0] = 1;
        assert_ne!(s.fingerprint(), t.fingerprint());
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
