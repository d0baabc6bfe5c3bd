//! Max pooling with a stored argmax: the forward writes, beside each output, the index of its
//! window's first maximum (one byte, `ph * p + pw`), and the backward routes each gradient
//! there without reading the pooling's input. Same choice of maximum as
//! [`super::maxpool_forward`] and [`super::maxpool_backward`] (`v > max` comparisons in window
//! order: the first maximum, a NaN only when it is a window's first value), so the results are
//! bit-identical to theirs.

use super::{act_deriv, PoolGeom};
use crate::Activation;

/// Largest pool size whose window indices fit the one-byte argmax.
pub const MAX_ARG_POOL: usize = 15;

/// Whether the AVX-512 paths apply: `c` a multiple of 16 and the CPU has AVX-512 F/BW/VL.
fn vector_path(g: &PoolGeom) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        g.c.is_multiple_of(16)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = g;
        false
    }
}

/// Max pooling of the images in `input` into `out` (`ho x wo x c` per image), with each
/// output's window index into `arg` (same length as `out`).
///
/// # Panics
/// When `g.p` exceeds [`MAX_ARG_POOL`] or a buffer is shorter than its images need.
pub fn maxpool_forward_arg(g: &PoolGeom, input: &[f32], out: &mut [f32], arg: &mut [u8]) {
    assert!(g.p <= MAX_ARG_POOL, "pool {} over {MAX_ARG_POOL}", g.p);
    let per_in = g.in_len();
    let per_out = g.out_len();
    let n = input.len() / per_in;
    assert!(out.len() >= n * per_out && arg.len() >= n * per_out);
    let vector = vector_path(g);
    for ((o, a), img) in out
        .chunks_mut(per_out)
        .zip(arg.chunks_mut(per_out))
        .zip(input.chunks_exact(per_in))
    {
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: AVX-512 F/BW/VL detected, c % 16 == 0; lengths per image checked.
            unsafe {
                if g.p == 2 {
                    simd::forward::<2>(g, img, o, a)
                } else {
                    simd::forward::<0>(g, img, o, a)
                }
            };
            continue;
        }
        let _ = vector;
        forward_scalar(g, img, o, a);
    }
}

fn forward_scalar(g: &PoolGeom, img: &[f32], o: &mut [f32], a: &mut [u8]) {
    let (c, p) = (g.c, g.p);
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let o0 = (oh * g.wo + ow) * c;
            for ch in 0..c {
                let (mut m, mut arg) = (img[((oh * p) * g.w + ow * p) * c + ch], 0u8);
                for ph in 0..p {
                    for pw in 0..p {
                        let v = img[((oh * p + ph) * g.w + ow * p + pw) * c + ch];
                        if v > m {
                            (m, arg) = (v, (ph * p + pw) as u8);
                        }
                    }
                }
                o[o0 + ch] = m;
                a[o0 + ch] = arg;
            }
        }
    }
}

/// Backward of [`maxpool_forward_arg`] for the images of `dy`: `dx` (overwritten, the
/// pooling's input shape) gets each output gradient at its window's stored argmax and zero
/// elsewhere. With `below = Some(act)`, where the pooling's input is the output of the layer
/// below activated by `act`, the gradient is also multiplied by `act`'s derivative there,
/// computed from the pooled maximum `output` (the value at the argmax).
///
/// # Panics
/// When a buffer is shorter than the images of `dy` need.
pub fn maxpool_backward_arg(
    g: &PoolGeom,
    arg: &[u8],
    output: &[f32],
    dy: &[f32],
    below: Option<Activation>,
    dx: &mut [f32],
) {
    let per_in = g.in_len();
    let per_out = g.out_len();
    let n = dy.len() / per_out;
    assert!(arg.len() >= n * per_out && output.len() >= n * per_out && dx.len() >= n * per_in);
    let vector = vector_path(g);
    for (((dx, a), y), dy) in dx
        .chunks_mut(per_in)
        .zip(arg.chunks(per_out))
        .zip(output.chunks(per_out))
        .zip(dy.chunks_exact(per_out))
    {
        zero_uncovered(g, dx);
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: AVX-512 F/BW/VL detected, c % 16 == 0; lengths per image checked.
            unsafe {
                if g.p == 2 {
                    simd::backward::<2>(g, a, y, dy, below, dx)
                } else {
                    simd::backward::<0>(g, a, y, dy, below, dx)
                }
            };
            continue;
        }
        let _ = vector;
        backward_scalar(g, a, y, dy, below, dx);
    }
}

/// Zeroes the input values of one image that no window covers (the rows below and the
/// columns right of the last window, when the pool does not divide the size).
fn zero_uncovered(g: &PoolGeom, dx: &mut [f32]) {
    let (rows, cols) = (g.ho * g.p, g.wo * g.p);
    if cols < g.w {
        for r in 0..rows {
            dx[(r * g.w + cols) * g.c..(r + 1) * g.w * g.c].fill(0.0);
        }
    }
    if rows < g.h {
        dx[rows * g.w * g.c..g.in_len()].fill(0.0);
    }
}

fn backward_scalar(
    g: &PoolGeom,
    a: &[u8],
    y: &[f32],
    dy: &[f32],
    below: Option<Activation>,
    dx: &mut [f32],
) {
    let (c, p) = (g.c, g.p);
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            for ch in 0..c {
                let o = (oh * g.wo + ow) * c + ch;
                let gv = match below {
                    Some(act) => dy[o] * act_deriv(act, y[o]),
                    None => dy[o],
                };
                for ph in 0..p {
                    for pw in 0..p {
                        let i = ((oh * p + ph) * g.w + ow * p + pw) * c + ch;
                        dx[i] = if a[o] as usize == ph * p + pw {
                            gv
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::super::PoolGeom;
    use crate::Activation;

    /// [`super::forward_scalar`], 16 channels at a time.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL available; `g.c` a multiple of 16; buffers of one image's sizes;
    /// `P` is 0 or `g.p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn forward<const P: usize>(
        g: &PoolGeom,
        img: &[f32],
        o: &mut [f32],
        a: &mut [u8],
    ) {
        // `P` > 0: the pool size, known at compile time (loops unrolled); 0: `g.p`.
        let (c, p) = (g.c, if P > 0 { P } else { g.p });
        assert!(img.len() >= g.h * g.w * c && o.len() >= g.ho * g.wo * c && a.len() >= o.len());
        let (x, o, a) = (img.as_ptr(), o.as_mut_ptr(), a.as_mut_ptr());
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let base = ((oh * p) * g.w + ow * p) * c;
                let o0 = (oh * g.wo + ow) * c;
                for c0 in (0..c).step_by(16) {
                    let mut m = _mm512_loadu_ps(x.add(base + c0));
                    let mut arg = _mm_setzero_si128();
                    let mut t = 0i8;
                    for ph in 0..p {
                        let row = x.add(base + ph * g.w * c + c0);
                        for pw in 0..p {
                            if ph + pw > 0 {
                                let v = _mm512_loadu_ps(row.add(pw * c));
                                let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m);
                                m = _mm512_mask_mov_ps(m, gt, v);
                                arg = _mm_mask_mov_epi8(arg, gt, _mm_set1_epi8(t));
                            }
                            t += 1;
                        }
                    }
                    _mm512_storeu_ps(o.add(o0 + c0), m);
                    _mm_storeu_si128(a.add(o0 + c0) as *mut __m128i, arg);
                }
            }
        }
    }

    /// [`super::backward_scalar`], 16 channels at a time.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL available; `g.c` a multiple of 16; buffers of one image's sizes;
    /// `P` is 0 or `g.p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn backward<const P: usize>(
        g: &PoolGeom,
        a: &[u8],
        y: &[f32],
        dy: &[f32],
        below: Option<Activation>,
        dx: &mut [f32],
    ) {
        // `P` > 0: the pool size, known at compile time (loops unrolled); 0: `g.p`.
        let (c, p) = (g.c, if P > 0 { P } else { g.p });
        let per_out = g.ho * g.wo * c;
        assert!(a.len() >= per_out && y.len() >= per_out && dy.len() >= per_out);
        assert!(dx.len() >= g.h * g.w * c);
        let (a, y, dy, dx) = (a.as_ptr(), y.as_ptr(), dy.as_ptr(), dx.as_mut_ptr());
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let base = ((oh * p) * g.w + ow * p) * c;
                for c0 in (0..c).step_by(16) {
                    let o = (oh * g.wo + ow) * c + c0;
                    let m = _mm512_loadu_ps(y.add(o));
                    let d = _mm512_loadu_ps(dy.add(o));
                    let gv = crate::kernels::pool_simd::act_grad(below, m, d);
                    let arg = _mm_loadu_si128(a.add(o) as *const __m128i);
                    let mut t = 0i8;
                    for ph in 0..p {
                        let row = dx.add(base + ph * g.w * c + c0);
                        for pw in 0..p {
                            let hit = _mm_cmpeq_epi8_mask(arg, _mm_set1_epi8(t));
                            _mm512_storeu_ps(row.add(pw * c), _mm512_maskz_mov_ps(hit, gv));
                            t += 1;
                        }
                    }
                }
            }
        }
    }
}
