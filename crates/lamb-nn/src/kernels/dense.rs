//! Dense (fully connected) layer kernels for the small shapes of a classifier head (a batch of
//! rows of a few thousand inputs, a few units): row blocks (or input blocks) in parallel over
//! fixed chunks, AVX-512 where available (a plain loop elsewhere), and every sum in an order
//! fixed by the shapes alone, so no bit depends on the thread count. The kernel is read
//! transposed (`units x inp`, see [`transpose`]) so that each unit's weights are contiguous.

use rayon::prelude::*;

use super::bias_act_rows;
use crate::Activation;

/// Rows per parallel task of [`forward`] and [`input_grad`].
const ROWS: usize = 25;

/// Inputs per parallel task of [`weight_grad`] (a multiple of 16).
const INPUTS: usize = 400;

/// `wt` (`units x inp`, overwritten) = the transpose of the kernel `w` (`inp x units`).
pub fn transpose(w: &[f32], inp: usize, units: usize, wt: &mut [f32]) {
    super::transpose_blocks(&w[..inp * units], inp, units, &mut wt[..inp * units]);
}

/// `out` (`rows x units`) = `act(x W + bias)` for `x` (`rows x inp`) and the kernel `W`, read
/// from its transpose `wt`; rows in parallel.
pub fn forward(x: &[f32], wt: &[f32], bias: &[f32], act: Activation, inp: usize, out: &mut [f32]) {
    let units = bias.len();
    let rows = out.len() / units;
    out.par_chunks_mut(ROWS * units)
        .zip(x[..rows * inp].par_chunks(ROWS * inp))
        .for_each(|(o, x)| {
            forward_rows(x, wt, inp, o);
            bias_act_rows(o, bias, act);
        });
}

/// The products of [`forward`] for a block of rows on the calling thread.
fn forward_rows(x: &[f32], wt: &[f32], inp: usize, out: &mut [f32]) {
    let units = wt.len() / inp;
    let rows = out.len() / units;
    assert!(x.len() >= rows * inp && wt.len() >= units * inp);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; lengths checked above.
        return unsafe { avx512::forward_rows(x, wt, inp, units, out) };
    }
    for (xr, orow) in x.chunks_exact(inp).zip(out.chunks_exact_mut(units)) {
        for (u, o) in orow.iter_mut().enumerate() {
            *o = xr
                .iter()
                .zip(&wt[u * inp..][..inp])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
}

/// `dx` (`rows x inp`, overwritten) = `dy` (`rows x units`) times the kernel's transpose, from
/// `wt` (`units x inp`); rows in parallel.
pub fn input_grad(dy: &[f32], wt: &[f32], units: usize, inp: usize, dx: &mut [f32]) {
    let rows = dx.len() / inp;
    dx.par_chunks_mut(ROWS * inp)
        .zip(dy[..rows * units].par_chunks(ROWS * units))
        .for_each(|(dx, dy)| input_grad_rows(dy, wt, units, inp, dx));
}

/// [`input_grad`] of a block of rows on the calling thread: each input sums the units in order.
fn input_grad_rows(dy: &[f32], wt: &[f32], units: usize, inp: usize, dx: &mut [f32]) {
    let rows = dx.len() / inp;
    assert!(dy.len() >= rows * units && wt.len() >= units * inp);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; lengths checked above.
        return unsafe { avx512::input_grad_rows(dy, wt, units, inp, dx) };
    }
    for (dyr, dxr) in dy.chunks_exact(units).zip(dx.chunks_exact_mut(inp)) {
        for (i, v) in dxr.iter_mut().enumerate() {
            *v = dyr
                .iter()
                .enumerate()
                .fold(0.0, |s, (u, d)| s + d * wt[u * inp + i]);
        }
    }
}

/// `dw` (`inp x units`, overwritten) = `x^T dy` over the `rows` rows of `x` (`rows x inp`) and
/// `dy` (`rows x units`): each weight sums the rows in order; blocks of inputs in parallel.
pub fn weight_grad(x: &[f32], dy: &[f32], inp: usize, units: usize, dw: &mut [f32]) {
    let rows = dy.len() / units;
    dw[..inp * units]
        .par_chunks_mut(INPUTS * units)
        .enumerate()
        .for_each(|(k, dw)| {
            weight_grad_block(&x[..rows * inp], &dy[..rows * units], inp, k * INPUTS, dw)
        });
}

/// [`weight_grad`] of the inputs `i0..` (as many as `dw` holds rows) on the calling thread.
fn weight_grad_block(x: &[f32], dy: &[f32], inp: usize, i0: usize, dw: &mut [f32]) {
    let rows = x.len() / inp;
    let units = dy.len() / rows.max(1);
    let n = dw.len() / units;
    assert!(i0 + n <= inp && dy.len() >= rows * units);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; lengths checked above.
        return unsafe { avx512::weight_grad_block(x, dy, inp, units, i0, dw) };
    }
    for (i, row) in dw.chunks_exact_mut(units).enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            *v = x
                .chunks_exact(inp)
                .zip(dy.chunks_exact(units))
                .fold(0.0, |s, (xr, dyr)| s + xr[i0 + i] * dyr[u]);
        }
    }
}

/// The AVX-512 bodies of the dense kernels: inputs in vectors of 16 (the last one masked),
/// four independent accumulators sharing each load.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Mask of the first `n` (at most 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// `R` rows of [`super::forward_rows`] from row `r0`, unit `u`: each a 16-lane sum over
    /// the input vectors, then reduced.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dot_rows<const R: usize>(
        x: *const f32,
        wt: *const f32,
        inp: usize,
        units: usize,
        out: *mut f32,
        r0: usize,
        u: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        let w = wt.add(u * inp);
        let mut i = 0;
        while i < inp {
            let m = lanes(inp - i);
            let wv = _mm512_maskz_loadu_ps(m, w.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(m, x.add((r0 + r) * inp + i));
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
            i += 16;
        }
        for (r, a) in acc.iter().enumerate() {
            *out.add((r0 + r) * units + u) = _mm512_reduce_add_ps(*a);
        }
    }

    /// [`super::forward_rows`]: rows four at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_rows(
        x: &[f32],
        wt: &[f32],
        inp: usize,
        units: usize,
        out: &mut [f32],
    ) {
        let rows = out.len() / units;
        let (x, wt, o) = (x.as_ptr(), wt.as_ptr(), out.as_mut_ptr());
        let mut r0 = 0;
        while r0 < rows {
            let n = (rows - r0).min(4);
            for u in 0..units {
                match n {
                    4 => dot_rows::<4>(x, wt, inp, units, o, r0, u),
                    3 => dot_rows::<3>(x, wt, inp, units, o, r0, u),
                    2 => dot_rows::<2>(x, wt, inp, units, o, r0, u),
                    _ => dot_rows::<1>(x, wt, inp, units, o, r0, u),
                }
            }
            r0 += n;
        }
    }

    /// `R` rows of [`super::input_grad_rows`] from row `r0`, inputs `i..i + 16` (mask `m`):
    /// the units summed in order.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dx_rows<const R: usize>(
        dy: *const f32,
        wt: *const f32,
        units: usize,
        inp: usize,
        dx: *mut f32,
        r0: usize,
        i: usize,
        m: __mmask16,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        for u in 0..units {
            let wv = _mm512_maskz_loadu_ps(m, wt.add(u * inp + i));
            for (r, a) in acc.iter_mut().enumerate() {
                let d = _mm512_set1_ps(*dy.add((r0 + r) * units + u));
                *a = _mm512_fmadd_ps(d, wv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(dx.add((r0 + r) * inp + i), m, *a);
        }
    }

    /// [`super::input_grad_rows`]: rows four at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_grad_rows(
        dy: &[f32],
        wt: &[f32],
        units: usize,
        inp: usize,
        dx: &mut [f32],
    ) {
        let rows = dx.len() / inp;
        let (dy, wt, d) = (dy.as_ptr(), wt.as_ptr(), dx.as_mut_ptr());
        let mut r0 = 0;
        while r0 < rows {
            let n = (rows - r0).min(4);
            let mut i = 0;
            while i < inp {
                let m = lanes(inp - i);
                match n {
                    4 => dx_rows::<4>(dy, wt, units, inp, d, r0, i, m),
                    3 => dx_rows::<3>(dy, wt, units, inp, d, r0, i, m),
                    2 => dx_rows::<2>(dy, wt, units, inp, d, r0, i, m),
                    _ => dx_rows::<1>(dy, wt, units, inp, d, r0, i, m),
                }
                i += 16;
            }
            r0 += n;
        }
    }

    /// [`super::weight_grad_block`]: per vector of 16 inputs, units four at a time, the rows
    /// summed in order, then written to the `inp x units` layout.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad_block(
        x: &[f32],
        dy: &[f32],
        inp: usize,
        units: usize,
        i0: usize,
        dw: &mut [f32],
    ) {
        let rows = x.len() / inp;
        let n = dw.len() / units;
        let (xp, dyp) = (x.as_ptr(), dy.as_ptr());
        let mut ib = 0;
        while ib < n {
            let m = lanes(n - ib);
            let mut ub = 0;
            while ub < units {
                let nu = (units - ub).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                for r in 0..rows {
                    let xv = _mm512_maskz_loadu_ps(m, xp.add(r * inp + i0 + ib));
                    for (q, a) in acc.iter_mut().enumerate().take(nu) {
                        let d = _mm512_set1_ps(*dyp.add(r * units + ub + q));
                        *a = _mm512_fmadd_ps(d, xv, *a);
                    }
                }
                let mut t = [0.0f32; 16];
                for (q, a) in acc.iter().enumerate().take(nu) {
                    _mm512_storeu_ps(t.as_mut_ptr(), *a);
                    for (l, v) in t.iter().enumerate().take((n - ib).min(16)) {
                        dw[(ib + l) * units + ub + q] = *v;
                    }
                }
                ub += nu;
            }
            ib += 16;
        }
    }
}

/// `db` (overwritten) = the column sums of `dy` (rows of `db.len()` values), rows in order.
pub fn bias_grad(dy: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    super::col_sums(dy, db);
}
