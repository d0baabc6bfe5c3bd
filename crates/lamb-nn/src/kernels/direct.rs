//! The direct convolution kernels (AVX-512): no im2col. Each kernel register-blocks a few
//! output positions (or window rows, or input pixels) times up to four vectors of 16 filters
//! (or channels), about 24 accumulators, and reads the NHWC images, the HWIO weights and the
//! output gradients where they lie. Positions run in (image, row, column) order across the
//! rows and images of a chunk, so a block is never cut short at the end of an image row.
//!
//! Every reduction runs in a fixed order that depends only on the geometry, never on the
//! thread count.

use std::arch::x86_64::*;
use std::sync::{Arc, Mutex};

use super::ConvGeom;

/// What the forward kernel adds after the window sum.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Fuse {
    /// Nothing (the caller applies bias and activation).
    Nothing,
    /// The bias.
    Bias,
    /// The bias, then max(x, 0).
    BiasRelu,
}

/// Vectors of 16 per block of filters (or channels): at most 4 (64 values).
const MAX_V: usize = 4;

/// Positions (or rows) per register block for `v` vectors: about 24 accumulators.
const fn block_len(v: usize) -> usize {
    match v {
        1 | 2 => 12,
        3 => 8,
        _ => 6,
    }
}

/// Runs `$body` with the const `$P` bound to the runtime `$r` (1 to 12).
macro_rules! with_len {
    ($r:expr, $P:ident => $body:expr) => {
        match $r {
            1 => {
                const $P: usize = 1;
                $body
            }
            2 => {
                const $P: usize = 2;
                $body
            }
            3 => {
                const $P: usize = 3;
                $body
            }
            4 => {
                const $P: usize = 4;
                $body
            }
            5 => {
                const $P: usize = 5;
                $body
            }
            6 => {
                const $P: usize = 6;
                $body
            }
            7 => {
                const $P: usize = 7;
                $body
            }
            8 => {
                const $P: usize = 8;
                $body
            }
            9 => {
                const $P: usize = 9;
                $body
            }
            10 => {
                const $P: usize = 10;
                $body
            }
            11 => {
                const $P: usize = 11;
                $body
            }
            12 => {
                const $P: usize = 12;
                $body
            }
            r => unreachable!("block of {r}"),
        }
    };
}

/// Runs `$body` with the const `$V` bound to the runtime `$v` (1 to 4).
macro_rules! with_v {
    ($v:expr, $V:ident => $body:expr) => {
        match $v {
            1 => {
                const $V: usize = 1;
                $body
            }
            2 => {
                const $V: usize = 2;
                $body
            }
            3 => {
                const $V: usize = 3;
                $body
            }
            4 => {
                const $V: usize = 4;
                $body
            }
            v => unreachable!("{v} vectors"),
        }
    };
}

/// Offsets, for every flattened position (image, row, column) of `n` images, of the first
/// value of its window in the input images (computed once per call: no divisions in the
/// kernels).
fn window_offsets(g: &ConvGeom, n: usize) -> Vec<usize> {
    let mut offs = Vec::with_capacity(n * g.positions());
    for img in 0..n {
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                offs.push(img * g.in_len() + (oh * g.s * g.w + ow * g.s) * g.c);
            }
        }
    }
    offs
}

/// Offset tables built so far, keyed by geometry and image count, shared by all threads
/// (whichever thread first needs a table builds it, so once every geometry of a model has run
/// no step builds one, whatever thread runs which chunk).
static OFFSETS: Mutex<Vec<OffsetTable>> = Mutex::new(Vec::new());

/// A window-offset table with its geometry and image count.
type OffsetTable = (ConvGeom, usize, Arc<[usize]>);

/// Tables kept: enough for every (geometry, chunk size) of a ResNet-20 step (8 padded
/// geometries, full and last chunks).
const OFFSET_TABLES: usize = 32;

/// Runs `f` with [`window_offsets`] of `g` for `n` images, built once and kept (at most
/// [`OFFSET_TABLES`] geometries).
pub(super) fn with_window_offsets<R>(g: &ConvGeom, n: usize, f: impl FnOnce(&[usize]) -> R) -> R {
    let table = {
        let mut cache = OFFSETS.lock().unwrap_or_else(|e| e.into_inner());
        match cache.iter().find(|(cg, cn, _)| cg == g && *cn == n) {
            Some((_, _, t)) => t.clone(),
            None => {
                let t: Arc<[usize]> = window_offsets(g, n).into();
                if cache.len() >= OFFSET_TABLES {
                    cache.remove(0);
                }
                cache.push((*g, n, t.clone()));
                t
            }
        }
    };
    f(&table)
}

/// Forward of `P` positions from `pi0`, filters `fb..fb + 16 V`, kernel rows `kh0..kh1`:
/// starts from the bias (or zero) when `kh0 == 0`, else from the partial sums in `out`, and
/// applies the fused activation when `kh1 == k`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn fwd_block<const V: usize, const P: usize>(
    g: &ConvGeom,
    f: usize,
    w: *const f32,
    b: *const f32,
    x: *const f32,
    offs: &[usize],
    out: *mut f32,
    pi0: usize,
    fb: usize,
    (kh0, kh1): (usize, usize),
    fuse: Fuse,
) {
    let kc = g.k * g.c;
    let row = g.w * g.c;
    let mut xs = [x; P];
    for (q, p) in xs.iter_mut().enumerate() {
        *p = x.add(offs[pi0 + q]);
    }
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    if kh0 > 0 {
        for (q, a) in acc.iter_mut().enumerate() {
            let o = out.add((pi0 + q) * f + fb);
            for (v, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(o.add(16 * v));
            }
        }
    } else if fuse != Fuse::Nothing {
        for a in acc.iter_mut() {
            for (v, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(b.add(fb + 16 * v));
            }
        }
    }
    for kh in kh0..kh1 {
        let wk = w.add(kh * kc * f + fb);
        let xo = kh * row;
        for j in 0..kc {
            let wp = wk.add(j * f);
            let mut wv = [_mm512_setzero_ps(); V];
            for (v, x) in wv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(wp.add(16 * v));
            }
            for (q, a) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*xs[q].add(xo + j));
                for (a, wv) in a.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xb, *wv, *a);
                }
            }
        }
    }
    let zero = _mm512_setzero_ps();
    let relu = fuse == Fuse::BiasRelu && kh1 == g.k;
    for (q, a) in acc.iter().enumerate() {
        let o = out.add((pi0 + q) * f + fb);
        for (v, a) in a.iter().enumerate() {
            let r = if relu { _mm512_max_ps(*a, zero) } else { *a };
            _mm512_storeu_ps(o.add(16 * v), r);
        }
    }
}

/// Forward of `n` images `x` into `out` (`n x positions x f`, overwritten). When one filter
/// block's weights exceed about 32 KiB, the kernel rows run in groups that fit L1, each pass
/// over all positions adding to the partial sums in `out` (same order of summation).
///
/// # Safety
/// AVX-512F available; every window inside its image (no padding); `x` (`n` images), `w`
/// (`k*k*c x f`), `b` (`f`) and `out` long enough; `f` a multiple of 16.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn forward(
    g: &ConvGeom,
    f: usize,
    w: &[f32],
    b: &[f32],
    x: &[f32],
    n: usize,
    out: &mut [f32],
    fuse: Fuse,
) {
    with_window_offsets(g, n, |offs| {
        forward_offs(
            g,
            f,
            w.as_ptr(),
            b.as_ptr(),
            x.as_ptr(),
            offs,
            out.as_mut_ptr(),
            fuse,
        )
    });
}

/// [`forward`] of the positions whose windows start at `offs` (offsets into `x`) into `out`
/// (`offs.len() x f`, overwritten).
///
/// # Safety
/// As [`forward`]; every window at `offs` inside `x`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn forward_offs(
    g: &ConvGeom,
    f: usize,
    w: *const f32,
    b: *const f32,
    x: *const f32,
    offs: &[usize],
    out: *mut f32,
    fuse: Fuse,
) {
    let total = offs.len();
    let kc = g.k * g.c;
    let mut fb = 0;
    while fb < f {
        let v = ((f - fb) / 16).min(MAX_V);
        let rows_per_group = (8192 / (kc * 16 * v)).max(1);
        let mut kh0 = 0;
        while kh0 < g.k {
            let kh1 = (kh0 + rows_per_group).min(g.k);
            with_v!(v, V => {
                let mut pi = 0;
                while pi < total {
                    let r = (total - pi).min(block_len(V));
                    with_len!(r, P => fwd_block::<V, P>(
                        g, f, w, b, x, offs, out, pi, fb, (kh0, kh1), fuse
                    ));
                    pi += r;
                }
            });
            kh0 = kh1;
        }
        fb += 16 * v;
    }
}

/// Weight-gradient rows `j0..j0 + R` of kernel row `kh` (window values `kh*k*c + j0..`),
/// filters `fb..fb + 16 V`: adds the sum over output rows `oh0..oh1` of image `img` into `dw`
/// (`drow0`: the gradient of row `oh0`, the rows following).
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<const V: usize, const R: usize>(
    g: &ConvGeom,
    f: usize,
    img: *const f32,
    drow0: *const f32,
    oh0: usize,
    oh1: usize,
    kh: usize,
    j0: usize,
    fb: usize,
    dw: *mut f32,
) {
    let kc = g.k * g.c;
    let step = g.s * g.c;
    let d0 = dw.add((kh * kc + j0) * f + fb);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        for (v, a) in a.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(d0.add(r * f + 16 * v));
        }
    }
    for oh in oh0..oh1 {
        let xrow = img.add((oh * g.s + kh) * g.w * g.c + j0);
        let drow = drow0.add((oh - oh0) * g.wo * f + fb);
        for ow in 0..g.wo {
            let dp = drow.add(ow * f);
            let mut d = [_mm512_setzero_ps(); V];
            for (v, d) in d.iter_mut().enumerate() {
                *d = _mm512_loadu_ps(dp.add(16 * v));
            }
            let xp = xrow.add(ow * step);
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*xp.add(r));
                for (a, d) in a.iter_mut().zip(&d) {
                    *a = _mm512_fmadd_ps(xb, *d, *a);
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (v, a) in a.iter().enumerate() {
            _mm512_storeu_ps(d0.add(r * f + 16 * v), *a);
        }
    }
}

/// Weight gradient of `n` images `x` against `dy` (`n x positions x f`) into `dw`
/// (`k*k*c x f`, overwritten). Each weight's sum runs over the images, then the output rows,
/// then the columns, in order.
///
/// # Safety
/// As [`forward`], for `n` images; `dy` and `dw` long enough.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_grad(
    g: &ConvGeom,
    f: usize,
    x: &[f32],
    dy: &[f32],
    n: usize,
    dw: &mut [f32],
) {
    dw[..g.kkc() * f].fill(0.0);
    let (x, dy, dw) = (x.as_ptr(), dy.as_ptr(), dw.as_mut_ptr());
    // Output rows per tile: at most about 16 KiB of `dy`, which stays in L1 while every
    // weight row block runs over it; tiles of (nearly) equal height.
    let tiles = g.ho.div_ceil((4096 / (g.wo * f)).max(1));
    let tile = g.ho.div_ceil(tiles.max(1));
    for im in 0..n {
        let img = x.add(im * g.in_len());
        let dyi = dy.add(im * g.positions() * f);
        let mut oh0 = 0;
        while oh0 < g.ho {
            let oh1 = (oh0 + tile).min(g.ho);
            weight_grad_rows(g, f, img, dyi.add(oh0 * g.wo * f), (oh0, oh1), dw);
            oh0 = oh1;
        }
    }
}

/// Adds into `dw` (`k*k*c x f`) the weight gradient of output rows `oh0..oh1` of the image
/// `img`, whose gradient (`(oh1 - oh0) x wo x f`) starts at `drow0`.
///
/// # Safety
/// As [`forward`]; `drow0` and `dw` long enough.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_grad_rows(
    g: &ConvGeom,
    f: usize,
    img: *const f32,
    drow0: *const f32,
    (oh0, oh1): (usize, usize),
    dw: *mut f32,
) {
    let kc = g.k * g.c;
    for kh in 0..g.k {
        let mut fb = 0;
        while fb < f {
            let v = ((f - fb) / 16).min(MAX_V);
            with_v!(v, V => {
                let mut j0 = 0;
                while j0 < kc {
                    let r = (kc - j0).min(block_len(V));
                    with_len!(r, R => dw_block::<V, R>(
                        g, f, img, drow0, oh0, oh1, kh, j0, fb, dw
                    ));
                    j0 += r;
                }
            });
            fb += 16 * v;
        }
    }
}

/// Input gradient of `P` positions from `pi0`, channels `cb..cb + 16 V`, window offset
/// `(kh, kw)`: adds `dy[pi] . wt[kh * k + kw]` into each position's window pixel there.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn dx_block<const V: usize, const P: usize>(
    g: &ConvGeom,
    f: usize,
    wt: *const f32,
    dy: *const f32,
    dx: *mut f32,
    offs: &[usize],
    pi0: usize,
    cb: usize,
    (kh, kw): (usize, usize),
) {
    let c = g.c;
    let off = (kh * g.w + kw) * c + cb;
    let mut ds = [dx; P];
    for (q, p) in ds.iter_mut().enumerate() {
        *p = dx.add(offs[pi0 + q] + off);
    }
    let d0 = dy.add(pi0 * f);
    let wk = wt.add((kh * g.k + kw) * f * c + cb);
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    for oc in 0..f {
        let wp = wk.add(oc * c);
        let mut wv = [_mm512_setzero_ps(); V];
        for (v, x) in wv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(wp.add(16 * v));
        }
        for (q, a) in acc.iter_mut().enumerate() {
            let db = _mm512_set1_ps(*d0.add(q * f + oc));
            for (a, wv) in a.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(db, *wv, *a);
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        for (v, a) in a.iter().enumerate() {
            let pv = ds[q].add(16 * v);
            _mm512_storeu_ps(pv, _mm512_add_ps(_mm512_loadu_ps(pv), *a));
        }
    }
}

/// Input gradient of `n` images into `dx` (`n` images, overwritten) from the pre-activation
/// gradient `dy` (`n x positions x f`) and the transposed weights `wt` (`k*k` blocks of
/// `f x c`: `wt[(kk * f + o) * c + ch] = w[(kk * c + ch) * f + o]`). Window offsets run in the
/// outer loop (one `f x c` block of `wt`, in L1, per pass over the positions), so each input
/// value sums, in order of window offset, then position, the contributions of the windows
/// that hold it.
///
/// # Safety
/// AVX-512F available; every window inside its image (no padding); `c` a multiple of 16;
/// `wt` (`k*k*f*c`), `dy` and `dx` long enough.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_grad(
    g: &ConvGeom,
    f: usize,
    wt: &[f32],
    dy: &[f32],
    n: usize,
    dx: &mut [f32],
) {
    dx[..n * g.in_len()].fill(0.0);
    with_window_offsets(g, n, |offs| {
        input_grad_offs(g, f, wt.as_ptr(), dy.as_ptr(), offs, dx.as_mut_ptr())
    });
}

/// Adds into `dx` the input gradient of the positions whose windows start at `offs` (offsets
/// into `dx`), from their gradient `dy` (`offs.len() x f`), as [`input_grad`].
///
/// # Safety
/// As [`input_grad`]; every window at `offs` inside `dx`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_grad_offs(
    g: &ConvGeom,
    f: usize,
    wt: *const f32,
    dy: *const f32,
    offs: &[usize],
    dx: *mut f32,
) {
    let total = offs.len();
    let mut cb = 0;
    while cb < g.c {
        let v = ((g.c - cb) / 16).min(MAX_V);
        for kh in 0..g.k {
            for kw in 0..g.k {
                with_v!(v, V => {
                    let mut pi = 0;
                    while pi < total {
                        let r = (total - pi).min(block_len(V));
                        with_len!(r, P => dx_block::<V, P>(
                            g, f, wt, dy, dx, offs, pi, cb, (kh, kw)
                        ));
                        pi += r;
                    }
                });
            }
        }
        cb += 16 * v;
    }
}

/// Adds the column sums of `dy` (`rows x f`) into `db` (`f`): per 16 filters, two
/// accumulators (even and odd rows, added together, then to `db`), a fixed order.
///
/// # Safety
/// AVX-512F available; `f` a multiple of 16; `dy` holds `rows * f` and `db` `f` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn bias_add(dy: &[f32], rows: usize, f: usize, db: &mut [f32]) {
    assert!(dy.len() >= rows * f && db.len() >= f);
    let (dy, db) = (dy.as_ptr(), db.as_mut_ptr());
    let mut fb = 0;
    while fb < f {
        let v = ((f - fb) / 16).min(MAX_V);
        with_v!(v, V => bias_block::<V>(dy, rows, f, fb, db));
        fb += 16 * v;
    }
}

/// [`bias_add`] of filters `fb..fb + 16 V`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bias_block<const V: usize>(
    dy: *const f32,
    rows: usize,
    f: usize,
    fb: usize,
    db: *mut f32,
) {
    let mut even = [_mm512_setzero_ps(); V];
    let mut odd = [_mm512_setzero_ps(); V];
    let mut r = 0;
    while r + 2 <= rows {
        let p = dy.add(r * f + fb);
        for (i, (e, o)) in even.iter_mut().zip(odd.iter_mut()).enumerate() {
            *e = _mm512_add_ps(*e, _mm512_loadu_ps(p.add(16 * i)));
            *o = _mm512_add_ps(*o, _mm512_loadu_ps(p.add(f + 16 * i)));
        }
        r += 2;
    }
    if r < rows {
        let p = dy.add(r * f + fb);
        for (i, e) in even.iter_mut().enumerate() {
            *e = _mm512_add_ps(*e, _mm512_loadu_ps(p.add(16 * i)));
        }
    }
    for (i, (e, o)) in even.iter().zip(&odd).enumerate() {
        let d = db.add(fb + 16 * i);
        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), _mm512_add_ps(*e, *o)));
    }
}
