//! Helpers that build small datasets on disk for the tests.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};

/// A deterministic pseudo-random RGB image.
pub fn rand_image(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *c = (state >> 24) as u8;
        }
        image::Rgb(px)
    })
}

/// A smooth image (JPEG keeps it close to the original).
pub fn smooth_image(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 6 + seed * 20) as u8,
            (y * 6 + seed * 7) as u8,
            ((x + y) * 3 + seed) as u8,
        ])
    })
}

/// PNG encoding of `img`.
pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// JPEG encoding of `img` (quality 95).
pub fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(img)
        .unwrap();
    out
}

/// Files of a dataset tree: (relative path, bytes). Directories are implied by the paths;
/// `dirs` lists extra (possibly empty) directories.
#[derive(Clone, Default)]
pub struct Tree {
    pub files: Vec<(String, Vec<u8>)>,
    pub dirs: Vec<String>,
}

impl Tree {
    pub fn add(&mut self, path: &str, bytes: Vec<u8>) -> &mut Self {
        self.files.push((path.to_string(), bytes));
        self
    }

    /// A tree of PNGs: for each split and class, `n` distinct 32x32 images (unsorted insertion).
    pub fn pngs(classes: &[&str], n_train: usize, n_test: usize) -> Tree {
        let mut t = Tree::default();
        let mut seed = 0;
        for (split, n) in [("train", n_train), ("test", n_test)] {
            for class in classes {
                for i in (0..n).rev() {
                    seed += 1;
                    t.add(
                        &format!("{split}/{class}/{i:03}.png"),
                        png(&rand_image(32, 32, seed)),
                    );
                }
            }
        }
        t
    }

    /// Writes the tree under `root`.
    pub fn write_folder(&self, root: &Path) {
        for d in &self.dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (p, bytes) in &self.files {
            let path = root.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }

    /// The tree as a tar archive (with directory entries), optionally under `prefix/`.
    pub fn tar_bytes(&self, prefix: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = self.dirs.clone();
        for (p, _) in &self.files {
            let mut parts: Vec<&str> = p.split('/').collect();
            parts.pop();
            for k in 1..=parts.len() {
                dirs.push(parts[..k].join("/"));
            }
        }
        dirs.sort();
        dirs.dedup();
        let full = |p: &str| {
            if prefix.is_empty() {
                p.to_string()
            } else {
                format!("{prefix}/{p}")
            }
        };
        for d in &dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, full(d) + "/", std::io::empty())
                .unwrap();
        }
        for (p, bytes) in &self.files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, full(p), &bytes[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Writes the tree as `path` (.tar.gz when `gz`, else .tar).
    pub fn write_tar(&self, path: &Path, prefix: &str, gz: bool) {
        let tar = self.tar_bytes(prefix);
        fs::write(path, if gz { gzip(&tar) } else { tar }).unwrap();
    }
}

/// Gzip-compresses `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One official record: label, then R, G, B planes derived from `seed`.
pub fn record(label: u8, seed: u32) -> Vec<u8> {
    let mut r = vec![label];
    let img = rand_image(32, 32, seed);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                r.push(img.get_pixel(x, y)[c]);
            }
        }
    }
    r
}

/// Writes an official-layout directory `dir` with `counts[k]` records in data_batch_{k+1}.bin
/// (k < 5) and `counts[5]` in test_batch.bin; labels cycle through 0..10. Returns the records of
/// each file.
pub fn write_official_dir(dir: &Path, counts: [usize; 6]) -> Vec<Vec<Vec<u8>>> {
    fs::create_dir_all(dir).unwrap();
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    let mut seed = 1000;
    let mut all = Vec::new();
    for (name, &n) in names.iter().zip(&counts) {
        let recs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                seed += 1;
                record((i % 10) as u8, seed)
            })
            .collect();
        fs::write(dir.join(name), recs.concat()).unwrap();
        all.push(recs);
    }
    all
}

/// Lists the names in `dir` (to check no temporary files are left).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The shared data directory (`../shared/data` beside the workspace root), or `None` after
/// printing where it is expected; fails when `CI` is set and it is missing.
pub fn shared_archive() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10-jpeg.tar.gz");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set but the shared data is missing: expected {}",
            p.display()
        );
    }
    eprintln!("skipping: shared data not found at {}", p.display());
    None
}
