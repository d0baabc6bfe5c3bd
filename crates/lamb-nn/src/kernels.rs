//! Hot loops over contiguous NHWC f32 buffers: GEMM wrapper, im2col/col2im, direct AVX-512
//! convolution kernels (forward, weight and input gradients, no im2col; `direct.rs`), Winograd
//! F(2x2, 3x3) kernels for 3 x 3 stride-1 convolutions (forward, weight and input gradients;
//! `winograd.rs`), a fused convolution + max pooling for
//! small kernels, fused bias and activation, activation derivatives, bias gradients, max
//! pooling (re-finding the maximum, or with a stored one-byte argmax; `pool.rs`), dense-layer
//! kernels (`dense.rs`) and the softmax cross-entropy. Every parallel loop writes disjoint
//! per-image chunks, and every reduction uses a fixed chunking and order, so results do not
//! depend on the thread count.

use rayon::prelude::*;

use crate::Activation;

/// Defines `fn $name(args)` that runs `$body` compiled for AVX-512 or AVX2+FMA when the CPU
/// has them (detected at run time), else for the baseline target. Same arithmetic either way:
/// only the vector width of element-wise loops changes, never the order of a reduction.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi1,bmi2")]
                unsafe fn v4($($arg: $ty),*) { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { imp($($arg),*) }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("bmi2")
                {
                    // SAFETY: the features were detected on this CPU.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected on this CPU.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// Copies a short run of floats without a `memmove` call for small lengths.
#[inline(always)]
fn small_copy(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    if n > 64 {
        dst.copy_from_slice(src);
        return;
    }
    let src = &src[..n];
    let mut i = 0;
    while i + 8 <= n {
        let d: &mut [f32; 8] = (&mut dst[i..i + 8]).try_into().unwrap();
        let s: &[f32; 8] = (&src[i..i + 8]).try_into().unwrap();
        *d = *s;
        i += 8;
    }
    while i < n {
        dst[i] = src[i];
        i += 1;
    }
}

#[inline(always)]
fn small_add(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// SELU alpha, as Keras.
pub const SELU_ALPHA: f32 = 1.673_263_2;
/// SELU scale, as Keras.
pub const SELU_SCALE: f32 = 1.050_701;

/// How GEMMs are threaded: through the current rayon pool when it has more than one thread.
fn parallelism() -> gemm::Parallelism {
    if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// A read-only matrix view: `data[r * rs + c * cs]` is element (r, c).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// Backing values.
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
    fn check(&self, r: usize, c: usize, what: &str) {
        if r > 0 && c > 0 {
            let last = (r - 1) * self.rs + (c - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{what}: view {r}x{c} exceeds buffer of {}",
                self.data.len()
            );
        }
    }
}

/// `dst[m, n] (row-major, n columns) = a[m, k] * b[k, n]`, or `+=` when `accumulate`; threaded
/// through the current rayon pool (gemm splits only m and n, so results do not depend on the
/// thread count).
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
) {
    matmul_with(parallelism(), m, n, k, dst, a, b, accumulate)
}

/// [`matmul`] on the calling thread only (for use inside parallel loops).
pub fn matmul_st(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
) {
    matmul_with(gemm::Parallelism::None, m, n, k, dst, a, b, accumulate)
}

#[allow(clippy::too_many_arguments)]
fn matmul_with(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
) {
    assert!(
        dst.len() >= m * n,
        "matmul: dst holds {} < {}",
        dst.len(),
        m * n
    );
    a.check(m, k, "matmul lhs");
    b.check(k, n, "matmul rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the bounds of every view were checked above; dst does not alias a or b (a `&mut`
    // and two `&` cannot overlap).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Geometry of a 2-D convolution on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input height, width, channels.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Kernel size (square).
    pub k: usize,
    /// Stride.
    pub s: usize,
    /// Padding rows above (TF SAME puts the extra one below).
    pub pad_top: usize,
    /// Padding columns on the left.
    pub pad_left: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl ConvGeom {
    /// Values per im2col row (`k * k * c`).
    pub fn kkc(&self) -> usize {
        self.k * self.k * self.c
    }
    /// Input values per image.
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Output positions per image.
    pub fn positions(&self) -> usize {
        self.ho * self.wo
    }
}

/// im2col of a batch: `cols[b, oh, ow, (kh, kw, c)]`, zero where the window leaves the image.
pub fn im2col(g: &ConvGeom, input: &[f32], cols: &mut [f32]) {
    let per_in = g.in_len();
    let per_col = g.positions() * g.kkc();
    let batch = input.len() / per_in;
    cols[..batch * per_col]
        .par_chunks_mut(per_col)
        .zip(input.par_chunks(per_in))
        .for_each(|(col, img)| im2col_one(g, img, col));
}

simd_fn! {
fn im2col_one(g: &ConvGeom, img: &[f32], col: &mut [f32]) {
    let (k, c, kc, kkc) = (g.k, g.c, g.k * g.c, g.kkc());
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let row = &mut col[(oh * g.wo + ow) * kkc..][..kkc];
            let iw0 = (ow * g.s) as isize - g.pad_left as isize;
            for kh in 0..k {
                let ih = (oh * g.s + kh) as isize - g.pad_top as isize;
                let dst = &mut row[kh * kc..][..kc];
                if ih < 0 || ih >= g.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let base = ih as usize * g.w;
                if iw0 >= 0 && iw0 as usize + k <= g.w {
                    let start = (base + iw0 as usize) * c;
                    small_copy(dst, &img[start..start + kc]);
                } else {
                    for kw in 0..k {
                        let iw = iw0 + kw as isize;
                        let d = &mut dst[kw * c..][..c];
                        if iw < 0 || iw >= g.w as isize {
                            d.fill(0.0);
                        } else {
                            let start = (base + iw as usize) * c;
                            small_copy(d, &img[start..start + c]);
                        }
                    }
                }
            }
        }
    }
}
}

/// col2im of a batch: `dx` (overwritten) receives the sum of every column entry that came from it.
pub fn col2im(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
    let per_in = g.in_len();
    let per_col = g.positions() * g.kkc();
    let batch = dx.len() / per_in;
    dx.par_chunks_mut(per_in)
        .zip(cols[..batch * per_col].par_chunks(per_col))
        .for_each(|(img, col)| col2im_one(g, col, img));
}

simd_fn! {
fn col2im_one(g: &ConvGeom, col: &[f32], img: &mut [f32]) {
    img.fill(0.0);
    let (k, c, kc, kkc) = (g.k, g.c, g.k * g.c, g.kkc());
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let row = &col[(oh * g.wo + ow) * kkc..][..kkc];
            let iw0 = (ow * g.s) as isize - g.pad_left as isize;
            for kh in 0..k {
                let ih = (oh * g.s + kh) as isize - g.pad_top as isize;
                if ih < 0 || ih >= g.h as isize {
                    continue;
                }
                let src = &row[kh * kc..][..kc];
                let base = ih as usize * g.w;
                if iw0 >= 0 && iw0 as usize + k <= g.w {
                    let start = (base + iw0 as usize) * c;
                    small_add(&mut img[start..start + kc], src);
                } else {
                    for kw in 0..k {
                        let iw = iw0 + kw as isize;
                        if iw < 0 || iw >= g.w as isize {
                            continue;
                        }
                        let start = (base + iw as usize) * c;
                        small_add(&mut img[start..start + c], &src[kw * c..][..c]);
                    }
                }
            }
        }
    }
}
}

/// SELU of `x`, branch-free so that loops over it vectorise (`f32::exp_m1` is a scalar libm
/// call: it made a SELU model train several times slower than a ReLU one). `expm1` by
/// Cody-Waite reduction `x = n*ln2 + r`, `|r| <= ln2/2`, and its degree-7 Taylor polynomial
/// (truncation below 2e-8 relative), combined as `2^n*expm1(r) + (2^n - 1)` so that small
/// `|x|` keep full relative precision. NaN stays NaN.
#[inline(always)]
pub(crate) fn selu(x: f32) -> f32 {
    // Below -87 expm1 is -1 in f32; the clamp keeps 2^n a normal number.
    let t = x.clamp(-87.0, 0.0);
    // Round to nearest by the 1.5*2^23 shift, exact for |t*log2(e)| < 2^22.
    const SHIFT: f32 = 12_582_912.0;
    let n = (t * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    // ln2 = C1 - C2 with C1 short enough that n*C1 is exact (Cephes' split).
    let r = t - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = r + r
        * r
        * (0.5
            + r * (1.0 / 6.0
                + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0))))));
    let s = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let y = if x > 0.0 {
        SELU_SCALE * x
    } else {
        SELU_SCALE * SELU_ALPHA * (s * p + (s - 1.0))
    };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Adds `bias` to every row of `y` (rows of `bias.len()` values) and applies `act` in place.
/// `Softmax` is left to the loss (the values stay logits).
pub fn bias_act(y: &mut [f32], bias: &[f32], act: Activation, rows_per_chunk: usize) {
    let n = bias.len();
    y.par_chunks_mut(rows_per_chunk.max(1) * n)
        .for_each(|chunk| bias_act_rows(chunk, bias, act));
}

simd_fn! {
/// [`bias_act`] on the calling thread.
fn bias_act_rows(o: &mut [f32], bias: &[f32], act: Activation) {
    for row in o.chunks_exact_mut(bias.len()) {
        match act {
            Activation::Relu => {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = (*v + b).max(0.0);
                }
            }
            Activation::Selu => {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = selu(*v + b);
                }
            }
            Activation::Linear | Activation::Softmax => {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        }
    }
}
}

/// The bias and activation the direct and Winograd kernels apply as they store: none for
/// SELU, which the caller applies afterwards with [`bias_act_rows`] (vectorised there).
#[cfg(target_arch = "x86_64")]
fn epilogue(act: Activation) -> direct::Fuse {
    match act {
        Activation::Relu => direct::Fuse::BiasRelu,
        Activation::Linear | Activation::Softmax => direct::Fuse::Bias,
        Activation::Selu => direct::Fuse::Nothing,
    }
}

/// Whether a convolution that feeds a max-pool applies `act` after the pooling, to the pooled
/// quarter of its outputs: SELU (like adding a channel's bias) is increasing, so it commutes
/// with the max. ReLU stays in the kernels' [`epilogue`], where it costs nothing.
pub(crate) fn act_after_pool(act: Activation) -> bool {
    act == Activation::Selu
}

/// Applies `act` in place to values that already hold their bias (`Softmax`: left as logits).
pub(crate) fn act_rows(o: &mut [f32], act: Activation) {
    act_rows_st(o, act);
}

simd_fn! {
/// [`act_rows`], vectorised.
fn act_rows_st(o: &mut [f32], act: Activation) {
    match act {
        Activation::Relu => o.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Selu => o.iter_mut().for_each(|v| *v = selu(*v)),
        Activation::Linear | Activation::Softmax => {}
    }
}
}

/// Multiplies the gradient `dy` by the activation's derivative, computed from the output `y`.
pub fn act_backward(dy: &mut [f32], y: &[f32], act: Activation) {
    const CHUNK: usize = 1 << 14;
    if matches!(act, Activation::Linear | Activation::Softmax) {
        return;
    }
    dy.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(d, y)| act_backward_st(d, y, act));
}

simd_fn! {
fn act_backward_st(dy: &mut [f32], y: &[f32], act: Activation) {
    match act {
        Activation::Relu => {
            for (d, y) in dy.iter_mut().zip(y) {
                *d = if *y > 0.0 { *d } else { 0.0 };
            }
        }
        Activation::Selu => {
            for (d, y) in dy.iter_mut().zip(y) {
                *d *= if *y > 0.0 {
                    SELU_SCALE
                } else {
                    y + SELU_SCALE * SELU_ALPHA
                };
            }
        }
        Activation::Linear | Activation::Softmax => {}
    }
}
}

simd_fn! {
/// Adds the rows of `chunk` (rows of `acc.len()` values) into `acc`, in order.
fn col_sums(chunk: &[f32], acc: &mut [f32]) {
    for row in chunk.chunks_exact(acc.len()) {
        small_add(acc, row);
    }
}
}

/// Geometry of a max pooling on one image (pool = stride, floor like Keras `valid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Pool size and stride.
    pub p: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl PoolGeom {
    /// Input values per image.
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Output values per image.
    pub fn out_len(&self) -> usize {
        self.ho * self.wo * self.c
    }
}

/// Max pooling of a batch: each output is the maximum of its window (the first maximum in
/// window order, `v > max` comparisons, so a NaN is taken only in a window's first position).
pub fn maxpool_forward(g: &PoolGeom, input: &[f32], out: &mut [f32]) {
    let per_in = g.in_len();
    let per_out = g.out_len();
    out.par_chunks_mut(per_out)
        .zip(input.par_chunks(per_in))
        .for_each(|(o, img)| maxpool_one(g, img, o));
}

/// [`maxpool_forward`] of the images in `input` on the calling thread.
pub(crate) fn maxpool_forward_chunk(g: &PoolGeom, input: &[f32], out: &mut [f32]) {
    let per_in = g.in_len();
    let per_out = g.out_len();
    for (o, img) in out.chunks_mut(per_out).zip(input.chunks(per_in)) {
        maxpool_one(g, img, o);
    }
}

/// [`maxpool_backward`] of the images in `input` on the calling thread.
pub(crate) fn maxpool_backward_chunk(
    g: &PoolGeom,
    input: &[f32],
    output: &[f32],
    dy: &[f32],
    below: Option<Activation>,
    dx: &mut [f32],
) {
    let per_in = g.in_len();
    let per_out = g.out_len();
    for (((dx, x), y), dy) in dx
        .chunks_mut(per_in)
        .zip(input.chunks(per_in))
        .zip(output.chunks(per_out))
        .zip(dy.chunks(per_out))
    {
        maxpool_back_one(g, x, y, dy, below, dx);
    }
}

simd_fn! {
fn maxpool_one(g: &PoolGeom, img: &[f32], o: &mut [f32]) {
    let (c, p) = (g.c, g.p);
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let o = &mut o[(oh * g.wo + ow) * c..][..c];
            let first = ((oh * p) * g.w + ow * p) * c;
            small_copy(o, &img[first..first + c]);
            for ph in 0..p {
                for pw in 0..p {
                    if ph == 0 && pw == 0 {
                        continue;
                    }
                    let base = ((oh * p + ph) * g.w + ow * p + pw) * c;
                    for (o, &v) in o.iter_mut().zip(&img[base..base + c]) {
                        *o = if v > *o { v } else { *o };
                    }
                }
            }
        }
    }
}
}

/// Backward of max pooling: `dx` (overwritten) gets each output gradient at its window's
/// first maximum, found again from the pooling's `input` and `output` (no stored argmax), and
/// zero elsewhere. With `below = Some(act)`, where `input` is the output of the layer below
/// activated by `act`, the gradient is also multiplied by `act`'s derivative there (what
/// [`act_backward`] would do next, fused).
pub fn maxpool_backward(
    g: &PoolGeom,
    input: &[f32],
    output: &[f32],
    dy: &[f32],
    below: Option<Activation>,
    dx: &mut [f32],
) {
    let per_in = g.in_len();
    let per_out = g.out_len();
    dx.par_chunks_mut(per_in)
        .zip(input.par_chunks(per_in))
        .zip(output.par_chunks(per_out))
        .zip(dy.par_chunks(per_out))
        .for_each(|(((dx, x), y), dy)| maxpool_back_one(g, x, y, dy, below, dx));
}

/// The derivative of `act` at its output `y`.
#[inline(always)]
fn act_deriv(act: Activation, y: f32) -> f32 {
    match act {
        Activation::Relu => {
            if y > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Selu => {
            if y > 0.0 {
                SELU_SCALE
            } else {
                y + SELU_SCALE * SELU_ALPHA
            }
        }
        Activation::Linear | Activation::Softmax => 1.0,
    }
}

simd_fn! {
fn maxpool_back_one(g: &PoolGeom, x: &[f32], y: &[f32], dy: &[f32], below: Option<Activation>, dx: &mut [f32]) {
    if g.ho * g.p < g.h || g.wo * g.p < g.w {
        dx.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if g.c.is_multiple_of(16) && std::is_x86_feature_detected!("avx512f") {
            let (per_in, per_out) = (g.in_len(), g.out_len());
            assert!(x.len() >= per_in && dx.len() >= per_in);
            assert!(y.len() >= per_out && dy.len() >= per_out);
            // SAFETY: AVX-512F detected; lengths checked above.
            unsafe { pool_simd::backward(g, x, y, dy, below, dx) };
            return;
        }
    }
    let (c, p) = (g.c, g.p);
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            for ch in 0..c {
                let o = (oh * g.wo + ow) * c + ch;
                let m = y[o];
                let gv = match below {
                    Some(act) => dy[o] * act_deriv(act, m),
                    None => dy[o],
                };
                let mut taken = false;
                for ph in 0..p {
                    for pw in 0..p {
                        let i = ((oh * p + ph) * g.w + ow * p + pw) * c + ch;
                        let v = x[i];
                        // The forward keeps the first value that no later one exceeds: the
                        // first equal to the maximum, or the first position when it is NaN.
                        let hit = !taken && (v == m || (ph == 0 && pw == 0 && v.is_nan()));
                        dx[i] = if hit { gv } else { 0.0 };
                        taken |= hit;
                    }
                }
            }
        }
    }
}
}

/// AVX-512 max-pool backward for channel counts that are a multiple of 16.
#[cfg(target_arch = "x86_64")]
mod pool_simd {
    use std::arch::x86_64::*;

    use super::{PoolGeom, SELU_ALPHA, SELU_SCALE};
    use crate::Activation;

    /// `d` times the derivative of the activation `below` at its output `m` (16 lanes): the
    /// vector form of `act_deriv`, shared by the max-pool backward kernels.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn act_grad(below: Option<Activation>, m: __m512, d: __m512) -> __m512 {
        let zero = _mm512_setzero_ps();
        let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, zero);
        match below {
            None | Some(Activation::Linear | Activation::Softmax) => d,
            Some(Activation::Relu) => {
                _mm512_mul_ps(d, _mm512_mask_blend_ps(pos, zero, _mm512_set1_ps(1.0)))
            }
            Some(Activation::Selu) => {
                let sa = _mm512_set1_ps(SELU_SCALE * SELU_ALPHA);
                let scale = _mm512_set1_ps(SELU_SCALE);
                _mm512_mul_ps(d, _mm512_mask_blend_ps(pos, _mm512_add_ps(m, sa), scale))
            }
        }
    }

    /// As the scalar path of `maxpool_back_one`, 16 channels at a time.
    ///
    /// # Safety
    /// AVX-512F available; `g.c` a multiple of 16; buffers of one image's sizes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(
        g: &PoolGeom,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        below: Option<Activation>,
        dx: &mut [f32],
    ) {
        let (c, p) = (g.c, g.p);
        let (x, y, dy, dx) = (x.as_ptr(), y.as_ptr(), dy.as_ptr(), dx.as_mut_ptr());
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                for c0 in (0..c).step_by(16) {
                    let o = (oh * g.wo + ow) * c + c0;
                    let m = _mm512_loadu_ps(y.add(o));
                    let d = _mm512_loadu_ps(dy.add(o));
                    let gv = act_grad(below, m, d);
                    let mut taken: __mmask16 = 0;
                    for ph in 0..p {
                        for pw in 0..p {
                            let i = ((oh * p + ph) * g.w + ow * p + pw) * c + c0;
                            let v = _mm512_loadu_ps(x.add(i));
                            let mut hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, m);
                            if ph == 0 && pw == 0 {
                                hit |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                            }
                            hit &= !taken;
                            _mm512_storeu_ps(dx.add(i), _mm512_maskz_mov_ps(hit, gv));
                            taken |= hit;
                        }
                    }
                }
            }
        }
    }
}

/// Softmax cross-entropy of logits (rows of `classes` values) against integer labels, computed
/// with log-sum-exp. Writes the gradient of the batch-mean loss into `dlogits` and returns
/// (sum of per-sample losses, number of rows whose first arg-max equals the label).
pub fn softmax_xent(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
    dlogits: &mut [f32],
) -> (f64, usize) {
    let batch = labels.len();
    let inv = 1.0 / batch as f32;
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    for ((z, d), &y) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels)
    {
        let (l, arg) = softmax_row(z, d);
        loss += l - z[y as usize] as f64;
        if arg == y as usize {
            correct += 1;
        }
        for v in d.iter_mut() {
            *v *= inv;
        }
        d[y as usize] -= inv;
    }
    (loss, correct)
}

/// Writes softmax(z) into `p`; returns (log-sum-exp of z in f64, first arg-max).
pub fn softmax_row(z: &[f32], p: &mut [f32]) -> (f64, usize) {
    let mut arg = 0;
    for (i, v) in z.iter().enumerate() {
        if *v > z[arg] {
            arg = i;
        }
    }
    let m = z[arg];
    let mut sum = 0.0f32;
    for (p, v) in p.iter_mut().zip(z) {
        *p = (v - m).exp();
        sum += *p;
    }
    for p in p.iter_mut() {
        *p /= sum;
    }
    (m as f64 + (sum as f64).ln(), arg)
}

/// Images per parallel task of the convolution kernels. Fixed (not derived from the thread
/// count) so that the order of every reduction, and therefore every bit, is the same for any
/// number of threads. Five images keep a task's activations and gradients (or its
/// im2col/`dcols` block, 5 x 169 x 288 floats for the seed CNN's second convolution, under
/// 1 MiB) in L2, and split batch 100 evenly in 20 (10 images measured no faster).
pub const CONV_CHUNK: usize = 5;

/// Largest `k * k * c` for which the direct (no im2col) convolution kernels are used: a
/// register block then streams at most `1024 x 64` weights (256 KiB, in L2) per block of
/// outputs. Measured on the seed CNN (`k*k*c` 27 and 288), the direct kernels beat im2col +
/// GEMM in forward, weight gradient and input gradient.
pub const DIRECT_MAX_KKC: usize = 1024;

/// Whether [`conv_forward`] and [`conv_backward`] use the direct kernels for this geometry on
/// this CPU (no im2col; broadcast-FMA over the input, register blocks of up to 64 filters):
/// `k * k * c` at most [`DIRECT_MAX_KKC`], no padding, a multiple of 16 filters, and AVX-512.
/// The input gradient also goes direct when [`conv_direct_dx`]. Depends only on the geometry
/// and the CPU, so the choice, and every result, is the same for any thread count.
pub fn conv_direct(g: &ConvGeom, filters: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        g.kkc() <= DIRECT_MAX_KKC
            && filters > 0
            && filters.is_multiple_of(16)
            && g.pad_top == 0
            && g.pad_left == 0
            && g.ho > 0
            && g.wo > 0
            && (g.ho - 1) * g.s + g.k <= g.h
            && (g.wo - 1) * g.s + g.k <= g.w
            && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, filters);
        false
    }
}

/// Convolution forward over a batch, parallel over chunks of [`CONV_CHUNK`] images, with bias
/// and activation fused into `out` (NHWC): direct kernels when [`conv_direct`] (then `cols` is
/// not touched and may be empty), else im2col into the scratch `cols` (at least
/// `batch * positions * k*k*c`) and a GEMM with the HWIO kernel `w`.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    conv_forward_buffered(
        g,
        filters,
        act,
        w,
        b,
        input,
        cols,
        out,
        &mut ConvBuffers::default(),
    )
}

/// Work buffers of [`conv_forward_buffered`] and [`conv_backward_buffered`] (transformed
/// weights, per-chunk partial gradients), kept by a caller that runs the same convolution
/// step after step so that no step allocates.
#[derive(Debug, Default)]
pub struct ConvBuffers {
    u: Vec<f32>,
    wt: Vec<f32>,
    parts: Vec<f32>,
    du: Vec<f32>,
}

/// [`conv_forward`] with its work buffers in `bufs` (reused; same results).
#[allow(clippy::too_many_arguments)]
pub fn conv_forward_buffered(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
    bufs: &mut ConvBuffers,
) {
    let direct = conv_direct(g, filters);
    winograd_weights_into(g, filters, w, &mut bufs.u);
    conv_forward_with(direct, g, filters, act, w, &bufs.u, b, input, cols, out)
}

#[allow(clippy::too_many_arguments)]
fn conv_forward_with(
    direct: bool,
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    u: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    let (p, kkc, f) = (g.positions(), g.kkc(), filters);
    let batch = input.len() / g.in_len();
    let out = &mut out[..batch * p * f];
    if direct {
        out.par_chunks_mut(CONV_CHUNK * p * f)
            .zip(input.par_chunks(CONV_CHUNK * g.in_len()))
            .for_each(|(o, x)| conv_forward_chunk_with(true, g, f, act, w, u, b, x, &mut [], o));
        return;
    }
    out.par_chunks_mut(CONV_CHUNK * p * f)
        .zip(cols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
        .zip(input.par_chunks(CONV_CHUNK * g.in_len()))
        .for_each(|((o, c), x)| conv_forward_chunk_with(false, g, f, act, w, &[], b, x, c, o));
}

/// Whether a direct convolution ([`conv_direct`]) runs in the Winograd F(2x2, 3x3) domain
/// (forward, weight and input gradients; 2.25 times fewer multiplications; rounding differs
/// from the direct sum by a few units in the last place): 3 x 3 kernel, stride 1, no padding,
/// even output height and width, channels and filters multiples of 16.
pub fn conv_winograd(g: &ConvGeom, filters: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        conv_direct(g, filters) && winograd::applies(g, filters)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, filters);
        false
    }
}

/// The HWIO weights `w` transformed for the Winograd forward (`16 x c x f` values); empty
/// unless [`conv_winograd`] (with empty weights the forward runs the direct kernels).
pub fn winograd_weights(g: &ConvGeom, filters: usize, w: &[f32]) -> Vec<f32> {
    let mut u = Vec::new();
    winograd_weights_into(g, filters, w, &mut u);
    u
}

/// [`winograd_weights`] into `u` (overwritten, its allocation reused).
pub fn winograd_weights_into(g: &ConvGeom, filters: usize, w: &[f32], u: &mut Vec<f32>) {
    u.clear();
    #[cfg(target_arch = "x86_64")]
    if conv_winograd(g, filters) {
        winograd::weights_into(g.c, filters, &w[..g.kkc() * filters], u);
    }
    let _ = (g, filters, w);
}

/// [`conv_forward`] of the images in `input` on the calling thread (`cols`: their im2col
/// block, unused by the direct kernels; `u`: [`winograd_weights`], the Winograd forward when
/// not empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_forward_chunk(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    u: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    let direct = conv_direct(g, filters);
    conv_forward_chunk_with(direct, g, filters, act, w, u, b, input, cols, out)
}

#[allow(clippy::too_many_arguments)]
fn conv_forward_chunk_with(
    direct: bool,
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
    u: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    let (p, kkc) = (g.positions(), g.kkc());
    let n = input.len() / g.in_len();
    let out = &mut out[..n * p * f];
    if direct {
        #[cfg(target_arch = "x86_64")]
        if !u.is_empty() && conv_winograd(g, f) {
            assert!(
                u.len() >= 16 * g.c * f && b.len() >= f && input.len() >= n * g.in_len(),
                "conv_forward: Winograd weights, bias or input too short"
            );
            let mode = epilogue(act);
            // SAFETY: `conv_winograd` checked AVX-512 and the geometry; lengths checked
            // above and `out` sliced to `n` images.
            unsafe { winograd::forward(g, f, u, b, input, n, out, mode) };
            if mode == direct::Fuse::Nothing {
                bias_act_rows(out, b, act);
            }
            return;
        }
        let _ = u;
        direct_forward(g, f, act, w, b, input, n, out);
        return;
    }
    let c = &mut cols[..n * p * kkc];
    for (col, img) in c.chunks_mut(p * kkc).zip(input.chunks(g.in_len())) {
        im2col_one(g, img, col);
    }
    matmul_st(
        n * p,
        f,
        kkc,
        out,
        Mat::rows(c, kkc),
        Mat::rows(w, f),
        false,
    );
    bias_act_rows(out, b, act);
}

/// Direct forward of the `n` images in `x` into `out` (only called when [`conv_direct`]
/// holds), bias and activation fused.
#[allow(clippy::too_many_arguments)]
fn direct_forward(
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    assert!(
        w.len() >= g.kkc() * f
            && b.len() >= f
            && x.len() >= n * g.in_len()
            && out.len() >= n * g.positions() * f,
        "conv_forward: buffers too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let mode = epilogue(act);
        // SAFETY: `conv_direct` checked AVX-512, `f % 16 == 0` and that every window lies
        // inside the image; the buffer lengths were checked above.
        unsafe { direct::forward(g, f, w, b, x, n, out, mode) };
        if mode == direct::Fuse::Nothing {
            bias_act_rows(&mut out[..n * g.positions() * f], b, act);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (f, act, w, b, x, n, out);
        unreachable!("conv_direct is false off x86_64");
    }
}

/// Weight gradient `dw` (overwritten, `k*k*c` x `f`) of the images `x` against the
/// pre-activation gradient `dy` of their outputs, by the direct kernel.
fn direct_weight_grad(g: &ConvGeom, f: usize, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let n = dy.len() / (g.positions() * f);
    assert!(x.len() >= n * g.in_len() && dw.len() >= g.kkc() * f);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `direct_forward`; lengths checked above.
        unsafe { direct::weight_grad(g, f, x, dy, n, dw) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, dw);
        unreachable!("conv_direct is false off x86_64");
    }
}

/// Whether the input gradient of a direct convolution ([`conv_direct`]) is computed by the
/// direct kernel too (no `dcols`, no col2im): when its channels are a multiple of 16.
pub fn conv_direct_dx(g: &ConvGeom, filters: usize) -> bool {
    conv_direct(g, filters) && g.c.is_multiple_of(16)
}

/// The HWIO weights `w` (`k*k*c x f`) rearranged for the direct input gradient: per window
/// offset, the `c x f` block transposed to `f x c` (`k*k*f*c` values); when [`conv_winograd`],
/// for the Winograd input gradient instead (per tile element, the `f x c` transposed
/// transformed weights, `16*f*c` values). Empty unless [`conv_direct_dx`] (nothing else reads
/// it).
pub fn dx_weights(g: &ConvGeom, f: usize, w: &[f32]) -> Vec<f32> {
    let mut wt = Vec::new();
    dx_weights_into(g, f, w, &winograd_weights(g, f, w), &mut wt);
    wt
}

/// [`dx_weights`] into `wt` (overwritten, its allocation reused), from the weights `w` or,
/// where Winograd applies, their transform `u` from [`winograd_weights`] (the forward pass's,
/// so the backward pass does not transform them again).
pub fn dx_weights_into(g: &ConvGeom, f: usize, w: &[f32], u: &[f32], wt: &mut Vec<f32>) {
    wt.clear();
    if !conv_direct_dx(g, f) {
        return;
    }
    // Per kernel position (or Winograd element), a `c x f` block to transpose to `f x c`.
    let (src, blocks) = if conv_winograd(g, f) {
        (u, 16)
    } else {
        (w, g.k * g.k)
    };
    let len = blocks * g.c * f;
    assert!(src.len() >= len, "dx_weights: weights too short");
    wt.resize(len, 0.0);
    transpose_blocks(&src[..len], g.c, f, wt);
}

/// Transposes each `rows x cols` block of `src` (row-major, blocks one after another) into
/// the same block of `dst` as `cols x rows`: `dst[b][o][r]` = `src[b][r][o]`.
pub(crate) fn transpose_blocks(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    for (s, d) in src
        .chunks_exact(rows * cols)
        .zip(dst.chunks_exact_mut(rows * cols))
    {
        for (r, row) in s.chunks_exact(cols).enumerate() {
            for (o, v) in row.iter().enumerate() {
                d[o * rows + r] = *v;
            }
        }
    }
}

/// Input gradient `dx` (overwritten, the images of `dy`) from the pre-activation gradient
/// `dy` and the weights `wt` from [`dx_weights`], by the direct kernel (only when
/// [`conv_direct_dx`]).
fn direct_input_grad(g: &ConvGeom, f: usize, wt: &[f32], dy: &[f32], dx: &mut [f32]) {
    let n = dy.len() / (g.positions() * f);
    assert!(
        wt.len() >= g.kkc() * f && dx.len() >= n * g.in_len(),
        "conv_backward: transposed weights or dx too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `conv_direct_dx` checked AVX-512, `c % 16 == 0` and that every window lies
        // inside the image; lengths checked above.
        unsafe { direct::input_grad(g, f, wt, dy, n, dx) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dx;
        unreachable!("conv_direct is false off x86_64");
    }
}

simd_fn! {
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}
}

/// Convolution backward over a batch, parallel over the same chunks of [`CONV_CHUNK`] images
/// as the forward. `dy` (gradient w.r.t. the output) is overwritten with the pre-activation
/// gradient, using the output `y` (unless `act_done`: `dy` already holds it). Each chunk
/// computes its partial bias and weight gradients (`cols^T * dy`, with the chunk's im2col
/// recomputed from `input` into its block of the scratch `cols`, which is cheaper than keeping
/// it from the forward pass in memory; or the direct kernel over `input` when [`conv_direct`],
/// and then `cols` is not touched and may be empty) and, when `dx` is given, its input gradient
/// through its own block of `dcols` (`dy * w^T`, then col2im, while the block is in cache;
/// or the direct kernel when [`conv_direct_dx`], and then `dcols` is not touched).
/// `dw` and `db` are the sums of the partials in chunk order, so no bit depends on the thread
/// count.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    input: &[f32],
    y: &[f32],
    dy: &mut [f32],
    cols: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<(&mut [f32], &mut [f32])>,
    act_done: bool,
) {
    conv_backward_buffered(
        g,
        filters,
        act,
        w,
        input,
        y,
        dy,
        cols,
        dw,
        db,
        dx,
        act_done,
        &mut ConvBuffers::default(),
    )
}

/// [`conv_backward`] with its work buffers in `bufs` (reused; same results).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward_buffered(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    input: &[f32],
    y: &[f32],
    dy: &mut [f32],
    cols: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<(&mut [f32], &mut [f32])>,
    act_done: bool,
    bufs: &mut ConvBuffers,
) {
    let direct = conv_direct(g, filters);
    conv_backward_buffered_with(
        direct, g, filters, act, w, input, y, dy, cols, dw, db, dx, act_done, bufs,
    )
}

#[allow(clippy::too_many_arguments)]
fn conv_backward_buffered_with(
    direct: bool,
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    input: &[f32],
    y: &[f32],
    dy: &mut [f32],
    cols: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<(&mut [f32], &mut [f32])>,
    act_done: bool,
    bufs: &mut ConvBuffers,
) {
    let (p, kkc, f, in_len) = (g.positions(), g.kkc(), filters, g.in_len());
    let batch = y.len() / (p * f);
    let chunks = batch.div_ceil(CONV_CHUNK);
    let per = part_w_len(direct, g, f) + f;
    let ConvBuffers { u, wt, parts, du } = bufs;
    parts.clear();
    parts.resize(chunks * per, 0.0);
    wt.clear();
    if direct && dx.is_some() {
        winograd_weights_into(g, f, w, u);
        dx_weights_into(g, f, w, u, wt);
    }
    let wt = &wt[..];
    let work = |c: usize,
                part: &mut [f32],
                dyc: &mut [f32],
                colc: &mut [f32],
                dxp: Option<(&mut [f32], &mut [f32])>| {
        let imgs = dyc.len() / (p * f);
        let first = c * CONV_CHUNK;
        conv_backward_chunk_with(
            direct,
            g,
            f,
            act,
            w,
            wt,
            &input[first * in_len..][..imgs * in_len],
            &y[first * p * f..][..imgs * p * f],
            dyc,
            colc,
            part,
            dxp,
            act_done,
        );
    };
    let dy = &mut dy[..batch * p * f];
    let parts_it = parts.par_chunks_mut(per);
    let dy_it = dy.par_chunks_mut(CONV_CHUNK * p * f);
    match (direct, dx) {
        (false, Some((dx, dcols))) => parts_it
            .zip(dy_it)
            .zip(cols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
            .zip(dx[..batch * in_len].par_chunks_mut(CONV_CHUNK * in_len))
            .zip(dcols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
            .enumerate()
            .for_each(|(c, ((((part, dyc), colc), dxc), dcc))| {
                work(c, part, dyc, colc, Some((dxc, dcc)))
            }),
        (true, Some((dx, dcols))) => parts_it
            .zip(dy_it)
            .zip(dx[..batch * in_len].par_chunks_mut(CONV_CHUNK * in_len))
            .zip(dcols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
            .enumerate()
            .for_each(|(c, (((part, dyc), dxc), dcc))| {
                work(c, part, dyc, &mut [], Some((dxc, dcc)))
            }),
        (false, None) => parts_it
            .zip(dy_it)
            .zip(cols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
            .enumerate()
            .for_each(|(c, ((part, dyc), colc))| work(c, part, dyc, colc, None)),
        (true, None) => parts_it
            .zip(dy_it)
            .enumerate()
            .for_each(|(c, (part, dyc))| work(c, part, dyc, &mut [], None)),
    }
    sum_partials_with(direct, g, f, parts, du, dw, db);
}

/// Largest `k*k*c*filters` for which a convolution and the pooling above it run fused
/// ([`conv_pool_fused`]): the weights (32 KiB) stay in L1 for the whole pass.
const FUSED_MAX_WEIGHTS: usize = 8192;

/// Whether a convolution (geometry `g`, run with the outputs its pooling covers) and the
/// max pooling `pg` right above it (stored argmax, reading exactly those outputs) run fused,
/// one band of `pg.p` output rows at a time in L1 ([`conv_pool_forward_chunk`],
/// [`conv_pool_backward_chunk`]): when the direct kernels apply, the weights are small
/// (`k*k*c*filters` at most 8192), and, when the convolution's input gradient is needed
/// (`need_dx`), the direct input gradient applies too.
pub fn conv_pool_fused(g: &ConvGeom, filters: usize, pg: &PoolGeom, need_dx: bool) -> bool {
    conv_direct(g, filters)
        && !conv_winograd(g, filters)
        && (!need_dx || conv_direct_dx(g, filters))
        && g.kkc() * filters <= FUSED_MAX_WEIGHTS
        && pg.p <= MAX_ARG_POOL
        && pg.c == filters
        && pg.h == g.ho
        && pg.w == g.wo
        && pg.ho * pg.p == g.ho
        && pg.wo * pg.p == g.wo
}

/// The pooling geometry of one band of `pg.p` convolution output rows (what the fused
/// convolution + pooling kernels pool at a time).
fn band_geom(g: &ConvGeom, f: usize, pg: &PoolGeom) -> PoolGeom {
    PoolGeom {
        h: pg.p,
        w: g.wo,
        c: f,
        p: pg.p,
        ho: 1,
        wo: pg.wo,
    }
}

thread_local! {
    /// Per-thread band buffer of the fused convolution + pooling kernels, reused across calls
    /// (a step calls them once per chunk and must not allocate).
    static BAND: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's band buffer sized to `len` (grown, never shrunk).
fn with_band<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    BAND.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

/// Convolution then max pooling with argmax of the images in `input`, fused (only when
/// [`conv_pool_fused`]): each band of `pg.p` convolution output rows is computed into a small
/// buffer (bias and activation fused) and pooled into `out` and `arg` (`ho x wo x filters`
/// per image) at once. The same values as [`conv_forward_chunk`] then
/// [`maxpool_forward_arg`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_pool_forward_chunk(
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    input: &[f32],
    pg: &PoolGeom,
    out: &mut [f32],
    arg: &mut [u8],
) {
    let n = input.len() / g.in_len();
    let band_pos = pg.p * g.wo;
    let per_row = pg.wo * f;
    assert!(
        w.len() >= g.kkc() * f
            && b.len() >= f
            && out.len() >= n * pg.ho * per_row
            && arg.len() >= n * pg.ho * per_row,
        "conv_pool_forward: buffers too short"
    );
    let bg = band_geom(g, f, pg);
    with_band(band_pos * f, |band| {
        #[cfg(target_arch = "x86_64")]
        {
            let mode = if act_after_pool(act) {
                direct::Fuse::Nothing
            } else {
                epilogue(act)
            };
            direct::with_window_offsets(g, n, |offs| {
                for img in 0..n {
                    for r in 0..pg.ho {
                        let start = img * g.positions() + r * band_pos;
                        // SAFETY: `conv_pool_fused` checked AVX-512, `f % 16 == 0` and that every
                        // window lies inside the image; `offs` come from the geometry of the `n`
                        // images of `input`; `band` holds `band_pos` outputs.
                        unsafe {
                            direct::forward_offs(
                                g,
                                f,
                                w.as_ptr(),
                                b.as_ptr(),
                                input.as_ptr(),
                                &offs[start..start + band_pos],
                                band.as_mut_ptr(),
                                mode,
                            )
                        };
                        let o = (img * pg.ho + r) * per_row;
                        maxpool_forward_arg(
                            &bg,
                            band,
                            &mut out[o..o + per_row],
                            &mut arg[o..o + per_row],
                        );
                        if act_after_pool(act) {
                            bias_act_rows(&mut out[o..o + per_row], b, act);
                        }
                    }
                }
            });
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (act, band, bg);
            unreachable!("conv_direct is false off x86_64");
        }
    })
}

/// Backward of [`conv_pool_forward_chunk`] for the images of `dy` (the gradient w.r.t. the
/// pooled output `pooled`, with its argmax `arg`): band by band, the pooling's backward fused
/// with the activation derivative into a small buffer, then the bias, weight and (when `dx`
/// is given, overwritten) input gradients of that band. `part` (overwritten) receives the
/// chunk's weight then bias gradient, as [`conv_backward_chunk`]; `wt` comes from
/// [`dx_weights`] (used only with `dx`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_pool_backward_chunk(
    g: &ConvGeom,
    f: usize,
    act: Activation,
    wt: &[f32],
    input: &[f32],
    pg: &PoolGeom,
    pooled: &[f32],
    arg: &[u8],
    dy: &[f32],
    part: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let per_row = pg.wo * f;
    let n = dy.len() / (pg.ho * per_row);
    let (kkc, in_len, band_pos) = (g.kkc(), g.in_len(), pg.p * g.wo);
    assert!(
        input.len() >= n * in_len
            && pooled.len() >= n * pg.ho * per_row
            && arg.len() >= n * pg.ho * per_row
            && part.len() >= kkc * f + f,
        "conv_pool_backward: buffers too short"
    );
    let (pw, pb) = part[..kkc * f + f].split_at_mut(kkc * f);
    pw.fill(0.0);
    pb.fill(0.0);
    if let Some(dx) = dx.as_deref_mut() {
        assert!(
            dx.len() >= n * in_len && wt.len() >= kkc * f,
            "conv_pool_backward: dx or transposed weights too short"
        );
        dx[..n * in_len].fill(0.0);
    }
    let bg = band_geom(g, f, pg);
    with_band(band_pos * f, |band| {
        #[cfg(target_arch = "x86_64")]
        {
            direct::with_window_offsets(g, n, |offs| {
                for img in 0..n {
                    for r in 0..pg.ho {
                        let o = (img * pg.ho + r) * per_row;
                        maxpool_backward_arg(
                            &bg,
                            &arg[o..o + per_row],
                            &pooled[o..o + per_row],
                            &dy[o..o + per_row],
                            Some(act),
                            band,
                        );
                        let start = img * g.positions() + r * band_pos;
                        // SAFETY: `conv_pool_fused` checked AVX-512, `f % 16 == 0`, that every window
                        // lies inside the image and, with `dx`, `c % 16 == 0`; lengths checked above;
                        // `offs` come from the geometry of the `n` images.
                        unsafe {
                            direct::bias_add(band, band_pos, f, pb);
                            direct::weight_grad_rows(
                                g,
                                f,
                                input.as_ptr().add(img * in_len),
                                band.as_ptr(),
                                (r * pg.p, (r + 1) * pg.p),
                                pw.as_mut_ptr(),
                            );
                            if let Some(dx) = dx.as_deref_mut() {
                                direct::input_grad_offs(
                                    g,
                                    f,
                                    wt.as_ptr(),
                                    band.as_ptr(),
                                    &offs[start..start + band_pos],
                                    dx.as_mut_ptr(),
                                );
                            }
                        }
                    }
                }
            });
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (act, wt, band, bg, band_pos);
            unreachable!("conv_direct is false off x86_64");
        }
    })
}

/// Whether the weight gradient of a convolution run with the direct kernels (`direct`) is
/// computed in the Winograd domain ([`conv_winograd`]): then each chunk's partial holds the
/// `16 x c x f` transformed gradient, turned into the HWIO one after the chunks are summed.
fn winograd_dw(direct: bool, g: &ConvGeom, f: usize) -> bool {
    direct && conv_winograd(g, f)
}

/// Values of one chunk's partial weight gradient for [`conv_backward_chunk`] (the bias
/// gradient's `f` values follow them).
fn part_w_len(direct: bool, g: &ConvGeom, f: usize) -> usize {
    if winograd_dw(direct, g, f) {
        16 * g.c * f
    } else {
        g.kkc() * f
    }
}

/// Values of one chunk's partial weight and bias gradients written by
/// [`conv_backward_chunk`] and [`conv_pool_backward_chunk`] (`k*k*c*f + f`, or `16*c*f + f`
/// when the weight gradient is computed in the Winograd domain).
pub fn conv_part_len(g: &ConvGeom, filters: usize) -> usize {
    part_w_len(conv_direct(g, filters), g, filters) + filters
}

/// `dw` and `db` (overwritten) as the sums, in order, of the per-chunk partials written by
/// [`conv_backward_chunk`] (each [`conv_part_len`] values: weights then bias); a
/// Winograd-domain weight gradient is summed in `du` (a scratch, its allocation reused) and
/// transformed after the sum.
pub(crate) fn sum_conv_partials(
    g: &ConvGeom,
    filters: usize,
    parts: &[f32],
    du: &mut Vec<f32>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    sum_partials_with(conv_direct(g, filters), g, filters, parts, du, dw, db)
}

fn sum_partials_with(
    direct: bool,
    g: &ConvGeom,
    f: usize,
    parts: &[f32],
    du: &mut Vec<f32>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let nw = part_w_len(direct, g, f);
    du.clear();
    if winograd_dw(direct, g, f) {
        du.resize(nw, 0.0);
    }
    let acc: &mut [f32] = if du.is_empty() { &mut *dw } else { &mut du[..] };
    // Blocks of weights in parallel; each value still sums the chunks in order.
    const BLOCK: usize = 4096;
    acc[..nw]
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(bi, blk)| {
            blk.fill(0.0);
            for part in parts.chunks_exact(nw + f) {
                add_into(blk, &part[bi * BLOCK..][..blk.len()]);
            }
        });
    db.fill(0.0);
    for part in parts.chunks_exact(nw + f) {
        add_into(db, &part[nw..]);
    }
    #[cfg(target_arch = "x86_64")]
    if !du.is_empty() {
        winograd::weights_from_u(g.c, f, du, dw);
    }
}

/// [`conv_backward`] of the images in `input` on the calling thread: `part` (overwritten)
/// receives this chunk's weight gradient then its bias gradient ([`conv_part_len`] values,
/// summed by [`sum_conv_partials`]); `cols`
/// is a scratch for the chunk's im2col (unused by the direct kernels); `dx`, when given, comes
/// with a `dcols` scratch (unused by the direct input gradient, which reads `wt`, the
/// weights from [`dx_weights`]); both scratches of at least the chunk's im2col size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_backward_chunk(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    wt: &[f32],
    input: &[f32],
    y: &[f32],
    dy: &mut [f32],
    cols: &mut [f32],
    part: &mut [f32],
    dx: Option<(&mut [f32], &mut [f32])>,
    act_done: bool,
) {
    let direct = conv_direct(g, filters);
    conv_backward_chunk_with(
        direct, g, filters, act, w, wt, input, y, dy, cols, part, dx, act_done,
    )
}

#[allow(clippy::too_many_arguments)]
fn conv_backward_chunk_with(
    direct: bool,
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
    wt: &[f32],
    input: &[f32],
    y: &[f32],
    dy: &mut [f32],
    cols: &mut [f32],
    part: &mut [f32],
    dx: Option<(&mut [f32], &mut [f32])>,
    act_done: bool,
) {
    let (p, kkc, in_len) = (g.positions(), g.kkc(), g.in_len());
    let rows = dy.len() / f;
    let imgs = rows / p;
    if !act_done {
        act_backward_st(dy, &y[..rows * f], act);
    }
    let nw = part_w_len(direct, g, f);
    let (pw, pb) = part[..nw + f].split_at_mut(nw);
    pb.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if direct {
        // SAFETY: `conv_direct` checked AVX-512 and `f % 16 == 0`; the kernel checks lengths.
        unsafe { direct::bias_add(dy, rows, f, pb) };
    } else {
        col_sums(dy, pb);
    }
    #[cfg(not(target_arch = "x86_64"))]
    col_sums(dy, pb);
    if direct {
        #[cfg(target_arch = "x86_64")]
        if winograd_dw(direct, g, f) {
            // Both gradients in the Winograd domain (`conv_winograd` implies `c % 16 == 0`).
            let dx = dx.map(|(dxc, _)| (wt, &mut dxc[..imgs * in_len]));
            let x = &input[..imgs * in_len];
            // SAFETY: `conv_winograd` checked AVX-512 and the geometry; the kernel checks the
            // lengths of the `imgs` images, their gradient, `pw` (16 c f values), `wt` and
            // `dx`.
            unsafe { winograd::backward(g, f, x, dy, imgs, pw, dx) };
            return;
        }
        direct_weight_grad(g, f, &input[..imgs * in_len], dy, pw);
    } else {
        let cols = &mut cols[..rows * kkc];
        for (col, img) in cols
            .chunks_mut(p * kkc)
            .zip(input[..imgs * in_len].chunks(in_len))
        {
            im2col_one(g, img, col);
        }
        matmul_st(
            kkc,
            f,
            rows,
            pw,
            Mat::rows_t(cols, kkc),
            Mat::rows(dy, f),
            false,
        );
    }
    if let Some((dxc, dcc)) = dx {
        if direct && g.c.is_multiple_of(16) {
            direct_input_grad(g, f, wt, dy, &mut dxc[..imgs * in_len]);
            return;
        }
        let dcc = &mut dcc[..rows * kkc];
        matmul_st(
            rows,
            kkc,
            f,
            dcc,
            Mat::rows(dy, f),
            Mat::rows_t(w, f),
            false,
        );
        for (img, col) in dxc[..imgs * in_len]
            .chunks_mut(in_len)
            .zip(dcc.chunks(p * kkc))
        {
            col2im_one(g, col, img);
        }
    }
}

pub mod dense;
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod direct;
mod pool;
#[cfg(target_arch = "x86_64")]
mod winograd;

pub use pool::{maxpool_backward_arg, maxpool_forward_arg, MAX_ARG_POOL};

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn selu_matches_the_f64_formula_within_a_few_ulp() {
        let exact = |x: f32| {
            let x = x as f64;
            let (s, a) = (SELU_SCALE as f64, SELU_ALPHA as f64);
            if x > 0.0 {
                s * x
            } else {
                s * a * x.exp_m1()
            }
        };
        // Dense near 0 (relative precision of expm1), then out to the saturated tail.
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 1e-6).collect();
        xs.extend((-20000..=2000).map(|i| i as f32 * 5e-3));
        xs.extend([
            -87.5,
            -88.0,
            -1e30,
            f32::MIN,
            1e30,
            1e-40,
            -1e-40,
            0.0,
            -0.0,
        ]);
        for x in xs {
            let (got, want) = (selu(x) as f64, exact(x));
            let tol = 4.0 * f32::EPSILON as f64 * want.abs().max(f32::MIN_POSITIVE as f64);
            assert!((got - want).abs() <= tol, "selu({x}) = {got}, want {want}");
        }
        assert!(selu(f32::NAN).is_nan());
        assert_eq!(selu(f32::NEG_INFINITY), -SELU_SCALE * SELU_ALPHA);
        assert_eq!(selu(f32::INFINITY), f32::INFINITY);
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "{what}[{i}]: direct {x} vs im2col {y}"
            );
        }
    }

    fn avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    fn geom(h: usize, w: usize, c: usize, k: usize, s: usize) -> ConvGeom {
        ConvGeom {
            h,
            w,
            c,
            k,
            s,
            pad_top: 0,
            pad_left: 0,
            ho: (h - k) / s + 1,
            wo: (w - k) / s + 1,
        }
    }

    #[test]
    fn direct_convolution_matches_im2col_gemm() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Filter counts 16..80 (1 to 4 vectors per block, and a 4 + 1 split), channel counts
        // with (16, 32, 48) and without a direct input gradient, strides 1 and 2, odd sizes,
        // batches that leave a partial chunk, and the seed CNN's second convolution.
        let cases = [
            (geom(9, 8, 3, 3, 1), 32, Activation::Relu, 7),
            (geom(10, 11, 2, 3, 2), 16, Activation::Selu, 3),
            (geom(7, 30, 4, 2, 1), 48, Activation::Linear, 6),
            (geom(15, 15, 32, 3, 1), 64, Activation::Relu, 7),
            (geom(9, 11, 16, 2, 2), 48, Activation::Selu, 6),
            (geom(8, 7, 48, 3, 1), 16, Activation::Linear, 3),
            (geom(6, 9, 16, 3, 1), 80, Activation::Relu, 5),
            (geom(7, 5, 32, 1, 1), 32, Activation::Relu, 2),
            (geom(10, 8, 16, 3, 1), 32, Activation::Selu, 6),
            (
                ConvGeom {
                    ho: 12,
                    wo: 12,
                    ..geom(15, 15, 32, 3, 1)
                },
                64,
                Activation::Relu,
                7,
            ),
        ];
        for (g, f, act, batch) in cases {
            if !avx512() {
                eprintln!("no AVX-512 on this CPU: the direct kernels are never used here");
                return;
            }
            let (p, kkc) = (g.positions(), g.kkc());
            let x = random(batch * g.in_len(), &mut rng);
            let w = random(kkc * f, &mut rng);
            let b = random(f, &mut rng);
            let mut cols = vec![0.0; batch * p * kkc];
            let (mut o1, mut o2) = (vec![0.0; batch * p * f], vec![0.0; batch * p * f]);
            let u = winograd_weights(&g, f, &w);
            conv_forward_with(true, &g, f, act, &w, &u, &b, &x, &mut [], &mut o1);
            conv_forward_with(false, &g, f, act, &w, &[], &b, &x, &mut cols, &mut o2);
            assert_close("forward", &o1, &o2);
            let dy = random(batch * p * f, &mut rng);
            let mut res = Vec::new();
            for direct in [true, false] {
                let mut dy = dy.clone();
                let (mut dw, mut db) = (vec![0.0; kkc * f], vec![0.0; f]);
                let mut dx = vec![0.0; batch * g.in_len()];
                let mut dcols = vec![0.0; batch * p * kkc];
                conv_backward_buffered_with(
                    direct,
                    &g,
                    f,
                    act,
                    &w,
                    &x,
                    &o2,
                    &mut dy,
                    &mut cols,
                    &mut dw,
                    &mut db,
                    Some((&mut dx, &mut dcols)),
                    false,
                    &mut ConvBuffers::default(),
                );
                res.push((dy, dw, db, dx));
            }
            assert_close("pre-activation gradient", &res[0].0, &res[1].0);
            assert_close("weight gradient", &res[0].1, &res[1].1);
            assert_close("bias gradient", &res[0].2, &res[1].2);
            assert_close("input gradient", &res[0].3, &res[1].3);
        }
    }

    /// The Winograd F(2x2, 3x3) forward against im2col + GEMM: 1 to 4 vectors of filters (and
    /// a 4 + 1 split), 16 to 64 channels, each activation, the seed CNN's cropped second
    /// convolution (15x15x32 -> 12x12x64), cropped odd sizes, partial chunks.
    #[test]
    fn winograd_forward_matches_im2col_gemm() {
        if !avx512() {
            eprintln!("no AVX-512 on this CPU: the Winograd forward is never used here");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let crop = |g: ConvGeom, ho: usize, wo: usize| ConvGeom { ho, wo, ..g };
        let cases = [
            (
                crop(geom(15, 15, 32, 3, 1), 12, 12),
                64,
                Activation::Relu,
                7,
            ),
            (geom(10, 8, 16, 3, 1), 48, Activation::Selu, 3),
            (geom(6, 6, 16, 3, 1), 16, Activation::Linear, 2),
            (geom(8, 10, 48, 3, 1), 80, Activation::Relu, 1),
            (geom(6, 8, 32, 3, 1), 32, Activation::Relu, 6),
            (crop(geom(11, 13, 16, 3, 1), 8, 4), 48, Activation::Selu, 3),
            (crop(geom(7, 10, 64, 3, 1), 4, 8), 80, Activation::Linear, 2),
        ];
        for (g, f, act, n) in cases {
            assert!(conv_winograd(&g, f), "{g:?}");
            let (p, kkc) = (g.positions(), g.kkc());
            let x = random(n * g.in_len(), &mut rng);
            let w = random(kkc * f, &mut rng);
            let b = random(f, &mut rng);
            let u = winograd_weights(&g, f, &w);
            let mut cols = vec![0.0; n * p * kkc];
            let (mut o1, mut o2) = (vec![0.0; n * p * f], vec![0.0; n * p * f]);
            conv_forward_chunk_with(true, &g, f, act, &w, &u, &b, &x, &mut [], &mut o1);
            conv_forward_chunk_with(false, &g, f, act, &w, &[], &b, &x, &mut cols, &mut o2);
            assert_close("winograd forward", &o1, &o2);
            let mut o3 = vec![0.0; n * p * f];
            conv_forward(&g, f, act, &w, &b, &x, &mut [], &mut o3);
            assert_eq!(o1, o3, "batch and chunk forward");
        }
    }

    /// The Winograd F(2x2, 3x3) backward (weight and input gradients in the Winograd domain)
    /// against im2col + GEMM: the seed CNN's cropped second convolution (15x15x32 -> 12x12x64,
    /// the last input row and column get zero), odd input sizes with cropped outputs, 1 to 4
    /// vectors of channels and filters (and 4 + 1 splits), partial chunks; then geometries the
    /// Winograd kernels do not take (channels or filters not multiples of 16, odd outputs,
    /// stride 2, same padding) must still match through their fallbacks.
    #[test]
    fn winograd_backward_matches_im2col_gemm() {
        if !avx512() {
            eprintln!("no AVX-512 on this CPU: the Winograd backward is never used here");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        let crop = |g: ConvGeom, ho: usize, wo: usize| ConvGeom { ho, wo, ..g };
        // Same padding (stride 1): one row and column of zeros on each side.
        let same = |g: ConvGeom| ConvGeom {
            pad_top: 1,
            pad_left: 1,
            ho: g.h,
            wo: g.w,
            ..g
        };
        let cases = [
            (
                crop(geom(15, 15, 32, 3, 1), 12, 12),
                64,
                Activation::Relu,
                7,
                true,
            ),
            (
                crop(geom(11, 9, 16, 3, 1), 8, 6),
                48,
                Activation::Selu,
                3,
                true,
            ),
            (
                crop(geom(7, 13, 48, 3, 1), 4, 10),
                80,
                Activation::Linear,
                2,
                true,
            ),
            (geom(6, 8, 80, 3, 1), 16, Activation::Relu, 6, true),
            (geom(10, 10, 64, 3, 1), 32, Activation::Relu, 1, true),
            (
                crop(geom(11, 13, 16, 3, 1), 8, 8),
                48,
                Activation::Selu,
                3,
                true,
            ),
            (
                crop(geom(9, 7, 32, 3, 1), 4, 4),
                64,
                Activation::Relu,
                6,
                true,
            ),
            (geom(9, 9, 24, 3, 1), 32, Activation::Relu, 3, false),
            (geom(10, 10, 16, 3, 1), 40, Activation::Relu, 2, false),
            (geom(9, 9, 16, 3, 1), 32, Activation::Relu, 2, false),
            (geom(11, 11, 16, 3, 2), 32, Activation::Relu, 2, false),
            (same(geom(8, 8, 16, 3, 1)), 32, Activation::Relu, 2, false),
        ];
        for (g, f, act, n, wino) in cases {
            assert_eq!(conv_winograd(&g, f), wino, "{g:?} f {f}");
            let (p, kkc) = (g.positions(), g.kkc());
            let x = random(n * g.in_len(), &mut rng);
            let w = random(kkc * f, &mut rng);
            let y: Vec<f32> = random(n * p * f, &mut rng)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let dy0 = random(n * p * f, &mut rng);
            let mut res = Vec::new();
            for direct in [conv_direct(&g, f), false] {
                let mut dy = dy0.clone();
                let (mut dw, mut db) = (vec![0.0; kkc * f], vec![0.0; f]);
                let mut dx = vec![f32::NAN; n * g.in_len()];
                let mut cols = vec![0.0; n * p * kkc];
                let mut dcols = vec![0.0; n * p * kkc];
                conv_backward_buffered_with(
                    direct,
                    &g,
                    f,
                    act,
                    &w,
                    &x,
                    &y,
                    &mut dy,
                    &mut cols,
                    &mut dw,
                    &mut db,
                    Some((&mut dx, &mut dcols)),
                    false,
                    &mut ConvBuffers::default(),
                );
                res.push((dw, db, dx));
            }
            assert_close("winograd weight gradient", &res[0].0, &res[1].0);
            assert_close("winograd bias gradient", &res[0].1, &res[1].1);
            assert_close("winograd input gradient", &res[0].2, &res[1].2);
        }
    }

    /// The dense kernels against the GEMM: forward (with bias and activation), weight, bias
    /// and input gradients, on the seed CNN's head (100 x 2304 by 2304 x 10), sizes that are
    /// not multiples of 16 or of the row and input blocks, one row, and thread counts 1 and 3
    /// (bit-identical).
    #[test]
    fn dense_kernels_match_gemm() {
        let mut rng = ChaCha8Rng::seed_from_u64(29);
        for (rows, inp, units, act) in [
            (100, 2304, 10, Activation::Softmax),
            (37, 413, 7, Activation::Relu),
            (1, 20, 3, Activation::Selu),
            (51, 16, 17, Activation::Linear),
        ] {
            let x = random(rows * inp, &mut rng);
            let w = random(inp * units, &mut rng);
            let b = random(units, &mut rng);
            let dy = random(rows * units, &mut rng);
            let mut want = vec![0.0; rows * units];
            matmul_st(
                rows,
                units,
                inp,
                &mut want,
                Mat::rows(&x, inp),
                Mat::rows(&w, units),
                false,
            );
            bias_act_rows(&mut want, &b, act);
            let mut want_dw = vec![0.0; inp * units];
            let (dyv, xt) = (Mat::rows(&dy, units), Mat::rows_t(&x, inp));
            matmul_st(inp, units, rows, &mut want_dw, xt, dyv, false);
            let mut want_dx = vec![0.0; rows * inp];
            matmul_st(
                rows,
                inp,
                units,
                &mut want_dx,
                dyv,
                Mat::rows_t(&w, units),
                false,
            );
            let mut want_db = vec![0.0; units];
            col_sums(&dy, &mut want_db);
            let mut runs = Vec::new();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                runs.push(pool.install(|| {
                    let mut wt = vec![0.0; inp * units];
                    dense::transpose(&w, inp, units, &mut wt);
                    let mut out = vec![f32::NAN; rows * units];
                    dense::forward(&x, &wt, &b, act, inp, &mut out);
                    let mut dw = vec![f32::NAN; inp * units];
                    dense::weight_grad(&x, &dy, inp, units, &mut dw);
                    let mut dx = vec![f32::NAN; rows * inp];
                    dense::input_grad(&dy, &wt, units, inp, &mut dx);
                    let mut db = vec![f32::NAN; units];
                    dense::bias_grad(&dy, &mut db);
                    (out, dw, dx, db)
                }));
            }
            let (out, dw, dx, db) = &runs[0];
            assert_close("dense forward", out, &want);
            assert_close("dense weight gradient", dw, &want_dw);
            assert_close("dense input gradient", dx, &want_dx);
            assert_close("dense bias gradient", db, &want_db);
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            let (o3, dw3, dx3, db3) = &runs[1];
            assert!(same(out, o3) && same(dw, dw3) && same(dx, dx3) && same(db, db3));
        }
    }

    /// Fused convolution + pooling (band by band) against the separate kernels: forward
    /// outputs and argmax, then weight, bias and input gradients, on cropped geometries (the
    /// pool's cover), 1 to 3 vectors of filters, with and without an input gradient.
    #[test]
    fn fused_conv_pool_matches_separate_kernels() {
        if !avx512() {
            eprintln!("no AVX-512 on this CPU: the fused kernels are never used here");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let cases = [
            (geom(9, 8, 16, 2, 1), 32, Activation::Relu, 3, true),
            (geom(10, 10, 3, 3, 1), 16, Activation::Selu, 2, false),
            (geom(7, 9, 16, 2, 1), 48, Activation::Linear, 3, true),
            (geom(11, 11, 32, 2, 2), 16, Activation::Relu, 1, true),
        ];
        for (full, f, act, n, with_dx) in cases {
            let pg = PoolGeom {
                h: full.ho,
                w: full.wo,
                c: f,
                p: 2,
                ho: full.ho / 2,
                wo: full.wo / 2,
            };
            let g = ConvGeom {
                ho: pg.ho * 2,
                wo: pg.wo * 2,
                ..full
            };
            let pg = PoolGeom {
                h: g.ho,
                w: g.wo,
                ..pg
            };
            assert!(conv_pool_fused(&g, f, &pg, with_dx));
            let (p, kkc, per_out) = (g.positions(), g.kkc(), pg.ho * pg.wo * f);
            let x = random(n * g.in_len(), &mut rng);
            let w = random(kkc * f, &mut rng);
            let b = random(f, &mut rng);
            let (mut y1, mut a1) = (vec![0.0; n * per_out], vec![0u8; n * per_out]);
            conv_pool_forward_chunk(&g, f, act, &w, &b, &x, &pg, &mut y1, &mut a1);
            let mut conv = vec![0.0; n * p * f];
            conv_forward_chunk(&g, f, act, &w, &[], &b, &x, &mut [], &mut conv);
            let (mut y2, mut a2) = (vec![0.0; n * per_out], vec![0u8; n * per_out]);
            maxpool_forward_arg(&pg, &conv, &mut y2, &mut a2);
            assert_close("pooled output", &y1, &y2);
            assert_eq!(a1, a2, "argmax");
            let dy = random(n * per_out, &mut rng);
            let wt = dx_weights(&g, f, &w);
            let per = kkc * f + f;
            let (mut part1, mut part2) = (vec![1.0; per], vec![2.0; per]);
            let (mut dx1, mut dx2) = (vec![1.0; n * g.in_len()], vec![2.0; n * g.in_len()]);
            conv_pool_backward_chunk(
                &g,
                f,
                act,
                &wt,
                &x,
                &pg,
                &y1,
                &a1,
                &dy,
                &mut part1,
                with_dx.then_some(&mut dx1[..]),
            );
            let mut dconv = vec![0.0; n * p * f];
            maxpool_backward_arg(&pg, &a2, &y2, &dy, Some(act), &mut dconv);
            let mut dcols = vec![0.0; n * p * kkc];
            conv_backward_chunk(
                &g,
                f,
                act,
                &w,
                &wt,
                &x,
                &[],
                &mut dconv,
                &mut [],
                &mut part2,
                with_dx.then_some((&mut dx2[..], &mut dcols[..])),
                true,
            );
            assert_close("weight and bias gradients", &part1, &part2);
            if with_dx {
                assert_close("input gradient", &dx1, &dx2);
            }
        }
    }

    /// The stored-argmax pooling kernels against the re-finding ones: bit-identical outputs
    /// and input gradients, on the vector (c = 32) and scalar (c = 3) paths, pool 2 and 3 with
    /// uncovered rows and columns, ties and NaNs.
    #[test]
    fn maxpool_argmax_kernels_match_refinding_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (c, p, h, w, n) in [
            (32, 2, 5, 7, 3),
            (3, 2, 6, 6, 2),
            (16, 3, 8, 7, 2),
            (5, 3, 7, 9, 1),
        ] {
            let g = PoolGeom {
                h,
                w,
                c,
                p,
                ho: h / p,
                wo: w / p,
            };
            let (per_in, per_out) = (h * w * c, g.ho * g.wo * c);
            let mut x: Vec<f32> = (0..n * per_in)
                .map(|_| rng.gen_range(-2i32..3) as f32 * 0.5)
                .collect();
            x[0] = f32::NAN;
            x[(w + 1) * c + 1] = f32::NAN;
            x[(n - 1) * per_in + c + 2] = f32::NAN;
            let (mut y1, mut y2) = (vec![0.0; n * per_out], vec![0.0; n * per_out]);
            let mut arg = vec![0u8; n * per_out];
            maxpool_forward(&g, &x, &mut y1);
            maxpool_forward_arg(&g, &x, &mut y2, &mut arg);
            for (i, (a, b)) in y1.iter().zip(&y2).enumerate() {
                assert!(a.to_bits() == b.to_bits(), "c {c} p {p} y[{i}]: {a} vs {b}");
            }
            assert!(arg.iter().all(|&a| (a as usize) < p * p));
            let dy = random(n * per_out, &mut rng);
            for below in [None, Some(Activation::Relu), Some(Activation::Selu)] {
                let (mut d1, mut d2) = (vec![1.0f32; n * per_in], vec![2.0f32; n * per_in]);
                maxpool_backward(&g, &x, &y1, &dy, below, &mut d1);
                maxpool_backward_arg(&g, &arg, &y2, &dy, below, &mut d2);
                for (i, (a, b)) in d1.iter().zip(&d2).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "c {c} p {p} {below:?} dx[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Max-pool backward against a stored-argmax reference (first maximum, `>` comparisons),
    /// on the 16-channel vector path and the scalar path, with ties and a NaN.
    #[test]
    fn maxpool_backward_routes_to_the_first_maximum() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for c in [32, 3] {
            let g = PoolGeom {
                h: 5,
                w: 7,
                c,
                p: 2,
                ho: 2,
                wo: 3,
            };
            let (per_in, per_out) = (g.in_len(), g.out_len());
            // Values on a coarse grid so that windows hold ties; one NaN first in a window and
            // one NaN elsewhere in another.
            let mut x: Vec<f32> = (0..per_in)
                .map(|_| rng.gen_range(-2i32..3) as f32 * 0.5)
                .collect();
            x[0] = f32::NAN;
            x[(g.w + 3) * c + 1] = f32::NAN;
            let mut y = vec![0.0; per_out];
            maxpool_forward(&g, &x, &mut y);
            let dy = random(per_out, &mut rng);
            for below in [None, Some(Activation::Relu), Some(Activation::Selu)] {
                let mut want = vec![0.0f32; per_in];
                for oh in 0..g.ho {
                    for ow in 0..g.wo {
                        for ch in 0..c {
                            let first = ((oh * 2) * g.w + ow * 2) * c + ch;
                            let (mut m, mut arg) = (x[first], first);
                            for (ph, pw) in [(0, 1), (1, 0), (1, 1)] {
                                let i = ((oh * 2 + ph) * g.w + ow * 2 + pw) * c + ch;
                                if x[i] > m {
                                    (m, arg) = (x[i], i);
                                }
                            }
                            let o = (oh * g.wo + ow) * c + ch;
                            assert!(y[o] == m || (y[o].is_nan() && m.is_nan()));
                            want[arg] = match below {
                                Some(a) => dy[o] * act_deriv(a, m),
                                None => dy[o],
                            };
                        }
                    }
                }
                let mut dx = vec![1.0f32; per_in];
                maxpool_backward(&g, &x, &y, &dy, below, &mut dx);
                for (i, (a, b)) in dx.iter().zip(&want).enumerate() {
                    assert!(
                        a == b || (a.is_nan() && b.is_nan()),
                        "c {c} {below:?} dx[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
