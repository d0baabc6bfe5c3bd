//! The input pipeline between a [`Dataset`] and the engine's batch buffers: scaling by 1/255,
//! optional per-channel standardization, and optional augmentation (random crop after zero
//! padding, horizontal flip), plus a seeded, stratified validation split.
//!
//! Augmentation is a pure function of `(seed, epoch, image index)`: an image gets the same
//! crop and flip in an epoch however the epoch is cut into batches, steps, workers or threads,
//! so a resumed run replays it bit for bit. It runs after scaling and standardization, so the
//! zero padding is the value 0 the model sees (the channel mean when standardized). Filling a
//! batch allocates nothing.

use std::fmt;
use std::str::FromStr;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::Dataset;

/// Which augmentations to apply to training batches (`--augment crop=4,flip`); off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Augment {
    /// Zero padding on every side before a random crop back to the image size (0 = no crop).
    pub crop: usize,
    /// Mirror each image left-right with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// Whether any augmentation is on.
    pub fn is_active(&self) -> bool {
        self.crop > 0 || self.flip
    }
}

impl FromStr for Augment {
    type Err = String;
    /// Parses a comma-separated list of `crop=N` (N in 1..=64) and `flip`, or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut a = Augment::default();
        let bad = |item: &str| {
            format!(
                "invalid augmentation {item:?} in {s:?}: expected a comma-separated list of \
                 crop=N (N = padding in pixels, 1..=64) and flip, or none"
            )
        };
        if s.trim() == "none" {
            return Ok(a);
        }
        for item in s.split(',').map(str::trim) {
            if item == "flip" && !a.flip {
                a.flip = true;
            } else if let Some(n) = item.strip_prefix("crop=") {
                match n.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) && a.crop == 0 => a.crop = n,
                    _ => return Err(bad(item)),
                }
            } else {
                return Err(bad(item));
            }
        }
        Ok(a)
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.crop, self.flip) {
            (0, false) => write!(f, "none"),
            (0, true) => write!(f, "flip"),
            (c, false) => write!(f, "crop={c}"),
            (c, true) => write!(f, "crop={c},flip"),
        }
    }
}

/// Per-channel standardization: `(pixel / 255 - mean[c]) / std[c]`, statistics from the
/// training part only (a channel with zero deviation is divided by 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardize {
    /// Mean of each channel, pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Standard deviation of each channel, pixels scaled to [0, 1].
    pub std: Vec<f32>,
}

impl Standardize {
    /// The statistics of `train` (see [`Dataset::channel_stats`]).
    pub fn from_dataset(train: &Dataset) -> Self {
        let (mean, std) = train.channel_stats();
        Standardize {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std
                .iter()
                .map(|&s| if s > 0.0 { s as f32 } else { 1.0 })
                .collect(),
        }
    }
}

/// How batches are made from a dataset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InputPipeline {
    /// Standardization, or `None` for pixels scaled by 1/255 only (the classic experiment).
    pub standardize: Option<Standardize>,
    /// Augmentation of training batches.
    pub augment: Augment,
    /// The run's seed (augmentation draws depend on it).
    pub seed: u64,
}

/// Key separating augmentation draws from the shuffle's (both start from the run's seed).
const AUGMENT_KEY: u64 = 0x6175_676d_656e_7421;

/// Channels whose conversion goes through a per-batch lookup table (others compute it).
const TABLE_CHANNELS: usize = 4;

impl InputPipeline {
    /// Writes the images at `indices` into `x` (NHWC f32) and labels into `y`, scaled,
    /// standardized when configured, without augmentation (for evaluation). Without
    /// standardization the values equal [`Dataset::fill_batch`]'s bit for bit.
    pub fn fill_eval_batch(&self, ds: &Dataset, indices: &[usize], x: &mut [f32], y: &mut [u8]) {
        self.fill(ds, indices, None, x, y);
    }

    /// As [`InputPipeline::fill_eval_batch`], then image `k` of the batch augmented as
    /// [`augment_params`]`(augment, seed, epoch, indices[k])` says (see [`shift_flip`]), in
    /// one pass over the pixels.
    pub fn fill_train_batch(
        &self,
        ds: &Dataset,
        indices: &[usize],
        epoch: u64,
        x: &mut [f32],
        y: &mut [u8],
    ) {
        let aug = self.augment.is_active().then_some(epoch);
        self.fill(ds, indices, aug, x, y);
    }

    /// The value the model sees for byte `p` of channel `k`.
    fn convert(&self, p: u8, k: usize) -> f32 {
        let v = p as f32 / 255.0;
        match &self.standardize {
            Some(s) => (v - s.mean[k]) / s.std[k],
            None => v,
        }
    }

    fn fill(
        &self,
        ds: &Dataset,
        indices: &[usize],
        augment_epoch: Option<u64>,
        x: &mut [f32],
        y: &mut [u8],
    ) {
        let (h, w, c) = (ds.height, ds.width, ds.channels);
        let n = ds.image_len();
        assert_eq!(x.len(), indices.len() * n, "batch buffer length");
        assert_eq!(y.len(), indices.len(), "label buffer length");
        if let Some(s) = &self.standardize {
            assert!(
                s.mean.len() == c && s.std.len() == c,
                "standardization channels"
            );
        }
        let mut table = [[0.0f32; 256]; TABLE_CHANNELS];
        for (k, t) in table.iter_mut().enumerate().take(c.min(TABLE_CHANNELS)) {
            for (p, v) in t.iter_mut().enumerate() {
                *v = self.convert(p as u8, k);
            }
        }
        let conv = |p: u8, k: usize| {
            if k < TABLE_CHANNELS {
                table[k][p as usize]
            } else {
                self.convert(p, k)
            }
        };
        let row = w * c;
        for ((out, label), &i) in x.chunks_exact_mut(n).zip(y.iter_mut()).zip(indices) {
            *label = ds.labels[i];
            let src = ds.image(i);
            let (dy, dx, flip) = match augment_epoch {
                Some(e) => augment_params(&self.augment, self.seed, e, i),
                None => (0, 0, false),
            };
            // Output columns whose source column lies inside the image.
            let lo = (-dx).clamp(0, w as isize) as usize;
            let hi = (w as isize - dx).clamp(0, w as isize) as usize;
            for (r, o) in out.chunks_exact_mut(row).enumerate() {
                let sr = r as isize + dy;
                if sr < 0 || sr >= h as isize || lo >= hi {
                    o.fill(0.0);
                    continue;
                }
                let s = &src[sr as usize * row..(sr as usize + 1) * row];
                let s = &s[((lo as isize + dx) as usize) * c..((hi as isize + dx) as usize) * c];
                if flip {
                    // Output column `col` is written at `w - 1 - col`.
                    o[(w - lo) * c..].fill(0.0);
                    o[..(w - hi) * c].fill(0.0);
                    let dst = &mut o[(w - hi) * c..(w - lo) * c];
                    for (d, sp) in dst.chunks_exact_mut(c).rev().zip(s.chunks_exact(c)) {
                        for (k, (dv, &sv)) in d.iter_mut().zip(sp).enumerate() {
                            *dv = conv(sv, k);
                        }
                    }
                } else {
                    o[..lo * c].fill(0.0);
                    o[hi * c..].fill(0.0);
                    let dst = &mut o[lo * c..hi * c];
                    if self.standardize.is_none() {
                        // Plain scaling vectorises; the same arithmetic as `convert`.
                        for (dv, &sv) in dst.iter_mut().zip(s) {
                            *dv = sv as f32 / 255.0;
                        }
                    } else {
                        for (d, sp) in dst.chunks_exact_mut(c).zip(s.chunks_exact(c)) {
                            for (k, (dv, &sv)) in d.iter_mut().zip(sp).enumerate() {
                                *dv = conv(sv, k);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The crop offset `(dy, dx)` (each in `-crop..=crop`: the output pixel `(r, c)` is the input
/// pixel `(r + dy, c + dx)`, zero outside) and the flip of image `index` in `epoch`.
pub fn augment_params(a: &Augment, seed: u64, epoch: u64, index: usize) -> (isize, isize, bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ AUGMENT_KEY);
    rng.set_stream(epoch);
    rng.set_word_pos(index as u128 * 4);
    let span = 2 * a.crop as u64 + 1;
    let dy = (rng.next_u32() as u64 % span) as isize - a.crop as isize;
    let dx = (rng.next_u32() as u64 % span) as isize - a.crop as isize;
    let flip = a.flip && rng.next_u32() & 1 == 1;
    (dy, dx, flip)
}

/// In place: `img` (h x w x c) becomes its crop at offset `(dy, dx)` of the zero-padded image,
/// then mirrored left-right when `flip`. Allocates nothing.
pub fn shift_flip(img: &mut [f32], h: usize, w: usize, c: usize, dy: isize, dx: isize, flip: bool) {
    assert_eq!(img.len(), h * w * c, "image length");
    let row = w * c;
    if dy != 0 || dx != 0 {
        // Columns of the source row that land inside the output, and where they land.
        let (src0, dst0, cols) = if dx >= 0 {
            let dx = (dx as usize).min(w);
            (dx, 0, w - dx)
        } else {
            let dx = ((-dx) as usize).min(w);
            (0, dx, w - dx)
        };
        let mut one_row = |r: usize| {
            let src_r = r as isize + dy;
            let out = r * row;
            if src_r < 0 || src_r >= h as isize || cols == 0 {
                img[out..out + row].fill(0.0);
                return;
            }
            let src = src_r as usize * row + src0 * c;
            img.copy_within(src..src + cols * c, out + dst0 * c);
            img[out..out + dst0 * c].fill(0.0);
            img[out + (dst0 + cols) * c..out + row].fill(0.0);
        };
        // Read rows before they are overwritten: forward when reading below, else backward.
        if dy >= 0 {
            (0..h).for_each(&mut one_row);
        } else {
            (0..h).rev().for_each(&mut one_row);
        }
    }
    if flip {
        for r in img.chunks_exact_mut(row) {
            for j in 0..w / 2 {
                let (a, b) = (j * c, (w - 1 - j) * c);
                for k in 0..c {
                    r.swap(a + k, b + k);
                }
            }
        }
    }
}

/// A seeded split of `labels` into (training, validation) indices, each sorted: every class
/// gives `round(count * fraction)` of its images, chosen at random from `seed`, to validation
/// (stratified, so data stored class after class still gets every class in both parts).
/// Errors when `fraction` is not in (0, 1) or either part would be empty.
pub fn stratified_split(
    labels: &[u8],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), String> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(format!(
            "validation split {fraction} is not a fraction strictly between 0 and 1"
        ));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7661_6c69_6461_7465);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for members in &mut by_class {
        let k = (members.len() as f64 * fraction).round() as usize;
        rand::seq::SliceRandom::shuffle(members.as_mut_slice(), &mut rng);
        val.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    if train.is_empty() || val.is_empty() {
        return Err(format!(
            "a validation split of {fraction} of {} images leaves {} for training and {} for \
             validation; both must be non-empty",
            labels.len(),
            train.len(),
            val.len()
        ));
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: pad with `p` zeros, crop at (p + dy, p + dx), then flip.
    fn naive(
        img: &[f32],
        h: usize,
        w: usize,
        c: usize,
        dy: isize,
        dx: isize,
        flip: bool,
    ) -> Vec<f32> {
        let mut out = vec![0.0; h * w * c];
        for r in 0..h {
            for col in 0..w {
                let (sr, sc) = (r as isize + dy, col as isize + dx);
                let dc = if flip { w - 1 - col } else { col };
                if sr >= 0 && sc >= 0 && (sr as usize) < h && (sc as usize) < w {
                    for k in 0..c {
                        out[(r * w + dc) * c + k] = img[((sr as usize) * w + sc as usize) * c + k];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn shift_flip_matches_pad_crop_flip_for_every_offset() {
        let (h, w, c) = (5, 7, 3);
        let img: Vec<f32> = (0..h * w * c).map(|v| v as f32 + 1.0).collect();
        for dy in -6..=6 {
            for dx in -8..=8 {
                for flip in [false, true] {
                    let mut got = img.clone();
                    shift_flip(&mut got, h, w, c, dy, dx, flip);
                    assert_eq!(
                        got,
                        naive(&img, h, w, c, dy, dx, flip),
                        "dy {dy} dx {dx} {flip}"
                    );
                }
            }
        }
    }

    #[test]
    fn params_depend_on_seed_epoch_and_index_only() {
        let a = Augment {
            crop: 4,
            flip: true,
        };
        let all: Vec<_> = (0..200).map(|i| augment_params(&a, 7, 3, i)).collect();
        assert_eq!(
            all,
            (0..200)
                .map(|i| augment_params(&a, 7, 3, i))
                .collect::<Vec<_>>()
        );
        assert_ne!(
            all,
            (0..200)
                .map(|i| augment_params(&a, 7, 4, i))
                .collect::<Vec<_>>()
        );
        assert_ne!(
            all,
            (0..200)
                .map(|i| augment_params(&a, 8, 3, i))
                .collect::<Vec<_>>()
        );
        // Every offset and both flips occur; offsets stay in range.
        for d in -4..=4 {
            assert!(
                all.iter().any(|p| p.0 == d) && all.iter().any(|p| p.1 == d),
                "{d}"
            );
        }
        assert!(all.iter().any(|p| p.2) && all.iter().any(|p| !p.2));
        let no_flip = Augment {
            crop: 2,
            flip: false,
        };
        assert!((0..100).all(|i| !augment_params(&no_flip, 1, 0, i).2));
    }

    #[test]
    fn plain_pipeline_is_fill_batch_bit_for_bit_and_fused_equals_two_pass() {
        let ds = Dataset {
            images: (0..6 * 5 * 7 * 3).map(|v| (v * 13 % 256) as u8).collect(),
            labels: vec![0, 1, 2, 0, 1, 2],
            height: 5,
            width: 7,
            channels: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        let idx = [5, 0, 3, 1, 4, 2];
        let n = ds.image_len();
        let (mut a, mut b) = (vec![0.0f32; 6 * n], vec![0.0f32; 6 * n]);
        let (mut ya, mut yb) = (vec![0u8; 6], vec![0u8; 6]);
        ds.fill_batch(&idx, &mut a, &mut ya);
        InputPipeline::default().fill_eval_batch(&ds, &idx, &mut b, &mut yb);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(ya, yb);
        for (crop, flip) in [(1, false), (3, true), (9, true), (0, true)] {
            for standardize in [None, Some(Standardize::from_dataset(&ds))] {
                let p = InputPipeline {
                    standardize,
                    augment: Augment { crop, flip },
                    seed: 11,
                };
                for epoch in 0..4 {
                    p.fill_eval_batch(&ds, &idx, &mut a, &mut ya);
                    p.fill_train_batch(&ds, &idx, epoch, &mut b, &mut yb);
                    for (k, &i) in idx.iter().enumerate() {
                        let (dy, dx, fl) = augment_params(&p.augment, 11, epoch, i);
                        shift_flip(&mut a[k * n..(k + 1) * n], 5, 7, 3, dy, dx, fl);
                    }
                    assert_eq!(a, b, "crop {crop} flip {flip} epoch {epoch}");
                }
            }
        }
    }

    #[test]
    fn augment_parses_and_prints() {
        let a: Augment = "crop=4,flip".parse().unwrap();
        assert_eq!(
            a,
            Augment {
                crop: 4,
                flip: true
            }
        );
        assert_eq!(a.to_string(), "crop=4,flip");
        assert_eq!("none".parse::<Augment>().unwrap(), Augment::default());
        for bad in [
            "crop=0",
            "crop=65",
            "crop",
            "flip,flip",
            "rotate",
            "crop=4,crop=2",
            "",
        ] {
            assert!(bad.parse::<Augment>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stratified_split_is_seeded_disjoint_and_per_class() {
        // Stored class after class, as CIFAR's archives are.
        let labels: Vec<u8> = (0..3u8).flat_map(|c| std::iter::repeat_n(c, 50)).collect();
        let (train, val) = stratified_split(&labels, 0.1, 5).unwrap();
        assert_eq!((train.len(), val.len()), (135, 15));
        for c in 0..3u8 {
            assert_eq!(val.iter().filter(|&&i| labels[i] == c).count(), 5);
        }
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());
        assert_eq!(stratified_split(&labels, 0.1, 5).unwrap().1, val);
        assert_ne!(stratified_split(&labels, 0.1, 6).unwrap().1, val);
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(stratified_split(&labels, bad, 5).is_err(), "{bad}");
        }
        assert!(
            stratified_split(&[0, 1], 0.1, 5).is_err(),
            "nothing rounds into validation"
        );
    }

    #[test]
    fn standardized_batches_have_zero_mean_unit_std_and_eval_is_unaugmented() {
        let ds = Dataset {
            images: (0..4 * 2 * 2 * 2).map(|v| (v * 7 % 256) as u8).collect(),
            labels: vec![0, 1, 0, 1],
            height: 2,
            width: 2,
            channels: 2,
            class_names: vec!["a".into(), "b".into()],
        };
        let p = InputPipeline {
            standardize: Some(Standardize::from_dataset(&ds)),
            augment: Augment {
                crop: 1,
                flip: true,
            },
            seed: 3,
        };
        let idx = [0, 1, 2, 3];
        let (mut x, mut y) = (vec![0.0f32; 32], vec![0u8; 4]);
        p.fill_eval_batch(&ds, &idx, &mut x, &mut y);
        for k in 0..2 {
            let v: Vec<f64> = x.iter().skip(k).step_by(2).map(|&v| v as f64).collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let s = (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            assert!(
                m.abs() < 1e-5 && (s - 1.0).abs() < 1e-4,
                "channel {k}: {m} {s}"
            );
        }
        // A training batch is the eval batch, augmented image by image; halves agree with
        // the whole batch (position-independent).
        let mut t = vec![0.0f32; 32];
        p.fill_train_batch(&ds, &idx, 2, &mut t, &mut y);
        let (mut h1, mut h2) = (vec![0.0f32; 16], vec![0.0f32; 16]);
        p.fill_train_batch(&ds, &idx[..2], 2, &mut h1, &mut y[..2]);
        p.fill_train_batch(&ds, &idx[2..], 2, &mut h2, &mut y[2..]);
        assert_eq!([h1, h2].concat(), t);
        for (k, &i) in idx.iter().enumerate() {
            let (dy, dx, flip) = augment_params(&p.augment, 3, 2, i);
            let mut e = x[k * 8..(k + 1) * 8].to_vec();
            shift_flip(&mut e, 2, 2, 2, dy, dx, flip);
            assert_eq!(&t[k * 8..(k + 1) * 8], e.as_slice());
        }
    }
}
