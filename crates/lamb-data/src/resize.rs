//! Resampling images to one size (`--resize HxW`): bilinear, see [`crate::Resize`].

use image::imageops::{resize, FilterType};
use image::{ImageBuffer, Luma, Rgb};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::options::Resize;

/// Resizes one NHWC image of `w`x`h` with `channels` channels to `to` (bilinear, each channel
/// alike). `pixels` must hold `w * h * channels` bytes.
pub fn resize_pixels(pixels: &[u8], w: u32, h: u32, channels: usize, to: Resize) -> Vec<u8> {
    assert_eq!(
        pixels.len(),
        w as usize * h as usize * channels,
        "image length"
    );
    if (w, h) == (to.width, to.height) {
        return pixels.to_vec();
    }
    let filter = FilterType::Triangle;
    let gray = |plane: &[u8]| {
        let img: ImageBuffer<Luma<u8>, &[u8]> =
            ImageBuffer::from_raw(w, h, plane).expect("length checked");
        resize(&img, to.width, to.height, filter).into_raw()
    };
    match channels {
        1 => gray(pixels),
        3 => {
            let img: ImageBuffer<Rgb<u8>, &[u8]> =
                ImageBuffer::from_raw(w, h, pixels).expect("length checked");
            resize(&img, to.width, to.height, filter).into_raw()
        }
        c => {
            let out_px = to.width as usize * to.height as usize;
            let mut out = vec![0u8; out_px * c];
            for k in 0..c {
                let plane: Vec<u8> = pixels.iter().skip(k).step_by(c).copied().collect();
                for (p, v) in gray(&plane).into_iter().enumerate() {
                    out[p * c + k] = v;
                }
            }
            out
        }
    }
}

/// `ds` with every image resized to `to` (a no-op when it already has that size).
pub fn resize_dataset(ds: Dataset, to: Resize) -> Dataset {
    if (ds.height, ds.width) == (to.height as usize, to.width as usize) || ds.is_empty() {
        return ds;
    }
    let out_len = to.height as usize * to.width as usize * ds.channels;
    let mut images = vec![0u8; ds.len() * out_len];
    images
        .par_chunks_mut(out_len)
        .enumerate()
        .for_each(|(i, out)| {
            let px = resize_pixels(
                ds.image(i),
                ds.width as u32,
                ds.height as u32,
                ds.channels,
                to,
            );
            out.copy_from_slice(&px);
        });
    Dataset {
        images,
        height: to.height as usize,
        width: to.width as usize,
        ..ds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant_and_sizes_follow() {
        let px = vec![77u8; 4 * 6];
        let to = Resize {
            height: 3,
            width: 2,
        };
        assert_eq!(resize_pixels(&px, 6, 4, 1, to), vec![77u8; 6]);
        let rgb: Vec<u8> = (0..4 * 4).flat_map(|_| [10u8, 20, 30]).collect();
        assert_eq!(resize_pixels(&rgb, 4, 4, 3, to), [10u8, 20, 30].repeat(6));
        let two: Vec<u8> = (0..4 * 4).flat_map(|_| [5u8, 250]).collect();
        assert_eq!(resize_pixels(&two, 4, 4, 2, to), [5u8, 250].repeat(6));
    }

    #[test]
    fn same_size_is_kept_exactly() {
        let px: Vec<u8> = (0..12).collect();
        let to = Resize {
            height: 2,
            width: 2,
        };
        assert_eq!(resize_pixels(&px, 2, 2, 3, to), px);
    }
}
