//! Hot loops over contiguous NHWC f32 buffers: GEMM wrapper, im2col/col2im, fused bias and
//! activation, activation derivatives, bias gradients, max pooling with stored argmax and the
//! softmax cross-entropy. Every parallel loop writes disjoint per-image chunks, and every
//! reduction uses a fixed chunking and order, so results do not depend on the thread count.

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

/// Rows per chunk of the bias-gradient reduction (fixed, thread-count independent).
const BIAS_CHUNK_ROWS: usize = 2048;

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
                    let x = *v + b;
                    *v = if x > 0.0 {
                        SELU_SCALE * x
                    } else {
                        SELU_SCALE * SELU_ALPHA * x.exp_m1()
                    };
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

/// Column sums of `dz` (rows of `db.len()` values) into `db`, with a fixed chunking.
pub fn bias_grad(dz: &[f32], db: &mut [f32]) {
    let n = db.len();
    let partials: Vec<Vec<f32>> = dz
        .par_chunks(BIAS_CHUNK_ROWS * n)
        .map(|chunk| {
            let mut acc = vec![0.0f32; n];
            col_sums(chunk, &mut acc);
            acc
        })
        .collect();
    db.fill(0.0);
    for p in &partials {
        small_add(db, p);
    }
}

simd_fn! {
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

/// Max pooling of a batch: each output is the maximum of its window (the first maximum in
/// window order, `v > max` comparisons, so a NaN is taken only in a window's first position).
pub fn maxpool_forward(g: &PoolGeom, input: &[f32], out: &mut [f32]) {
    let per_in = g.h * g.w * g.c;
    let per_out = g.ho * g.wo * g.c;
    out.par_chunks_mut(per_out)
        .zip(input.par_chunks(per_in))
        .for_each(|(o, img)| maxpool_one(g, img, o));
}

/// [`maxpool_forward`] of the images in `input` on the calling thread.
pub(crate) fn maxpool_forward_chunk(g: &PoolGeom, input: &[f32], out: &mut [f32]) {
    let per_in = g.h * g.w * g.c;
    let per_out = g.ho * g.wo * g.c;
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
    let per_in = g.h * g.w * g.c;
    let per_out = g.ho * g.wo * g.c;
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
    let per_in = g.h * g.w * g.c;
    let per_out = g.ho * g.wo * g.c;
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
            let (per_in, per_out) = (g.h * g.w * g.c, g.ho * g.wo * g.c);
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
        let zero = _mm512_setzero_ps();
        let one = _mm512_set1_ps(1.0);
        let scale = _mm512_set1_ps(SELU_SCALE);
        let sa = _mm512_set1_ps(SELU_SCALE * SELU_ALPHA);
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                for c0 in (0..c).step_by(16) {
                    let o = (oh * g.wo + ow) * c + c0;
                    let m = _mm512_loadu_ps(y.add(o));
                    let d = _mm512_loadu_ps(dy.add(o));
                    let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, zero);
                    let gv = match below {
                        None => d,
                        Some(Activation::Relu) => {
                            _mm512_mul_ps(d, _mm512_mask_blend_ps(pos, zero, one))
                        }
                        Some(Activation::Selu) => {
                            _mm512_mul_ps(d, _mm512_mask_blend_ps(pos, _mm512_add_ps(m, sa), scale))
                        }
                        Some(Activation::Linear | Activation::Softmax) => d,
                    };
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
/// number of threads. Five images keep a task's im2col/`dcols` block (5 x 169 x 288 floats for
/// the seed CNN's second convolution, under 1 MiB) in L2, and split batch 100 evenly in 20.
pub const CONV_CHUNK: usize = 5;

/// Largest `k * k * c` for which the direct (no im2col) convolution kernels are used.
pub const DIRECT_MAX_KKC: usize = 64;

/// Whether [`conv_forward`] and [`conv_backward`] use the direct kernels for this geometry on
/// this CPU (no im2col; broadcast-FMA over the input): small windows (`k * k * c` at most
/// [`DIRECT_MAX_KKC`], where a GEMM with so short a reduction runs poorly), no padding, a
/// multiple of 16 filters, and AVX-512. Depends only on the geometry and the CPU, so the
/// choice, and every result, is the same for any thread count.
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
    let direct = conv_direct(g, filters);
    conv_forward_with(direct, g, filters, act, w, b, input, cols, out)
}

#[allow(clippy::too_many_arguments)]
fn conv_forward_with(
    direct: bool,
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
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
            .for_each(|(o, x)| conv_forward_chunk_with(true, g, f, act, w, b, x, &mut [], o));
        return;
    }
    out.par_chunks_mut(CONV_CHUNK * p * f)
        .zip(cols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
        .zip(input.par_chunks(CONV_CHUNK * g.in_len()))
        .for_each(|((o, c), x)| conv_forward_chunk_with(false, g, f, act, w, b, x, c, o));
}

/// [`conv_forward`] of the images in `input` on the calling thread (`cols`: their im2col
/// block, unused by the direct kernels).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_forward_chunk(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    let direct = conv_direct(g, filters);
    conv_forward_chunk_with(direct, g, filters, act, w, b, input, cols, out)
}

#[allow(clippy::too_many_arguments)]
fn conv_forward_chunk_with(
    direct: bool,
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    input: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    let (p, kkc) = (g.positions(), g.kkc());
    let n = input.len() / g.in_len();
    let out = &mut out[..n * p * f];
    if direct {
        assert!(
            w.len() >= kkc * f && b.len() >= f,
            "conv_forward: weights too short"
        );
        for (o, img) in out.chunks_mut(p * f).zip(input.chunks(g.in_len())) {
            direct_forward_img(g, f, act, w, b, img, o);
        }
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

/// Direct forward of one image (only called when [`conv_direct`] holds).
#[allow(clippy::too_many_arguments)]
fn direct_forward_img(
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
    b: &[f32],
    img: &[f32],
    out: &mut [f32],
) {
    assert!(img.len() >= g.in_len() && out.len() >= g.positions() * f);
    #[cfg(target_arch = "x86_64")]
    {
        let mode = match act {
            Activation::Relu => direct::Fuse::BiasRelu,
            Activation::Linear | Activation::Softmax => direct::Fuse::Bias,
            Activation::Selu => direct::Fuse::Nothing,
        };
        // SAFETY: `conv_direct` checked AVX-512 and that every window lies inside the image;
        // the buffer lengths were checked above.
        unsafe { direct::forward_img(g, f, w, b, img, out, mode) };
        if mode == direct::Fuse::Nothing {
            bias_act_rows(&mut out[..g.positions() * f], b, act);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (f, act, w, b);
    }
}

/// Weight gradient `dw` (overwritten, `k*k*c` x `f`) of the images `x` against the
/// pre-activation gradient `dy` of their outputs, by the direct kernel.
fn direct_weight_grad(g: &ConvGeom, f: usize, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let n = dy.len() / (g.positions() * f);
    assert!(x.len() >= n * g.in_len() && dw.len() >= g.kkc() * f);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `direct_forward_img`; lengths checked above.
        unsafe { direct::weight_grad(g, f, x, dy, n, dw) };
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
/// through its own block of `dcols` (`dy * w^T`, then col2im, while the block is in cache).
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
    let direct = conv_direct(g, filters);
    conv_backward_with(
        direct, g, filters, act, w, input, y, dy, cols, dw, db, dx, act_done,
    )
}

#[allow(clippy::too_many_arguments)]
fn conv_backward_with(
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
) {
    let (p, kkc, f, in_len) = (g.positions(), g.kkc(), filters, g.in_len());
    let batch = y.len() / (p * f);
    let chunks = batch.div_ceil(CONV_CHUNK);
    let per = kkc * f + f;
    let mut parts = vec![0.0f32; chunks * per];
    let mut col_blocks: Vec<&mut [f32]> = if direct {
        (0..chunks).map(|_| <&mut [f32]>::default()).collect()
    } else {
        cols[..batch * p * kkc]
            .chunks_mut(CONV_CHUNK * p * kkc)
            .collect()
    };
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
    match dx {
        Some((dx, dcols)) => parts
            .par_chunks_mut(per)
            .zip(dy.par_chunks_mut(CONV_CHUNK * p * f))
            .zip(col_blocks.par_iter_mut())
            .zip(dx[..batch * in_len].par_chunks_mut(CONV_CHUNK * in_len))
            .zip(dcols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
            .enumerate()
            .for_each(|(c, ((((part, dyc), colc), dxc), dcc))| {
                work(c, part, dyc, colc, Some((dxc, dcc)))
            }),
        None => parts
            .par_chunks_mut(per)
            .zip(dy.par_chunks_mut(CONV_CHUNK * p * f))
            .zip(col_blocks.par_iter_mut())
            .enumerate()
            .for_each(|(c, ((part, dyc), colc))| work(c, part, dyc, colc, None)),
    }
    sum_partials(&parts, dw, db);
}

/// `dw` and `db` (overwritten) as the sums, in order, of the per-chunk partials written by
/// [`conv_backward_chunk`] (each `dw.len() + db.len()` values: weights then bias).
pub(crate) fn sum_partials(parts: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let (nw, nb) = (dw.len(), db.len());
    dw.fill(0.0);
    db.fill(0.0);
    for part in parts.chunks_exact(nw + nb) {
        add_into(dw, &part[..nw]);
        add_into(db, &part[nw..]);
    }
}

/// [`conv_backward`] of the images in `input` on the calling thread: `part` (overwritten)
/// receives this chunk's weight gradient then its bias gradient (`k*k*c*f + f` values); `cols`
/// is a scratch for the chunk's im2col (unused by the direct kernels); `dx`, when given, comes
/// with a `dcols` scratch; both scratches of at least the chunk's im2col size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_backward_chunk(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
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
        direct, g, filters, act, w, input, y, dy, cols, part, dx, act_done,
    )
}

#[allow(clippy::too_many_arguments)]
fn conv_backward_chunk_with(
    direct: bool,
    g: &ConvGeom,
    f: usize,
    act: Activation,
    w: &[f32],
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
    let (pw, pb) = part[..kkc * f + f].split_at_mut(kkc * f);
    col_sums(dy, pb);
    if direct {
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

/// The direct convolution kernels (AVX-512): every output is a broadcast-FMA sum over the
/// window read straight from the NHWC image, 16 filters per vector.
#[cfg(target_arch = "x86_64")]
mod direct {
    use std::arch::x86_64::*;

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

    /// `P` adjacent output positions of row `oh` from column `ow`, filters `fb..fb + 16`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fwd_block<const P: usize>(
        g: &ConvGeom,
        f: usize,
        w: *const f32,
        img: *const f32,
        out: *mut f32,
        oh: usize,
        ow: usize,
        fb: usize,
        init: __m512,
        relu: bool,
    ) {
        let kc = g.k * g.c;
        let step = g.s * g.c;
        let mut acc = [init; P];
        for kh in 0..g.k {
            let xrow = img.add(((oh * g.s + kh) * g.w + ow * g.s) * g.c);
            let wrow = w.add(kh * kc * f + fb);
            for j in 0..kc {
                let wv = _mm512_loadu_ps(wrow.add(j * f));
                for (q, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xrow.add(q * step + j));
                    *a = _mm512_fmadd_ps(xv, wv, *a);
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let v = if relu {
                _mm512_max_ps(*a, _mm512_setzero_ps())
            } else {
                *a
            };
            _mm512_storeu_ps(out.add((oh * g.wo + ow + q) * f + fb), v);
        }
    }

    /// Forward of one image into `out` (`positions x f`).
    ///
    /// # Safety
    /// AVX-512F available; every window inside the image; `img`, `w` (`k*k*c x f`), `b` (`f`)
    /// and `out` long enough; `f` a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_img(
        g: &ConvGeom,
        f: usize,
        w: &[f32],
        b: &[f32],
        img: &[f32],
        out: &mut [f32],
        fuse: Fuse,
    ) {
        let (w, img, out) = (w.as_ptr(), img.as_ptr(), out.as_mut_ptr());
        for fb in (0..f).step_by(16) {
            let init = if fuse == Fuse::Nothing {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(b.as_ptr().add(fb))
            };
            let relu = fuse == Fuse::BiasRelu;
            for oh in 0..g.ho {
                let mut ow = 0;
                while ow + 12 <= g.wo {
                    fwd_block::<12>(g, f, w, img, out, oh, ow, fb, init, relu);
                    ow += 12;
                }
                while ow + 6 <= g.wo {
                    fwd_block::<6>(g, f, w, img, out, oh, ow, fb, init, relu);
                    ow += 6;
                }
                while ow + 3 <= g.wo {
                    fwd_block::<3>(g, f, w, img, out, oh, ow, fb, init, relu);
                    ow += 3;
                }
                while ow < g.wo {
                    fwd_block::<1>(g, f, w, img, out, oh, ow, fb, init, relu);
                    ow += 1;
                }
            }
        }
    }

    /// Window values `j0..j0 + R` of kernel row `kh`, filters `fb..fb + 16`: the sum over the
    /// `n` images and every position, stored into `dw`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dw_block<const R: usize>(
        g: &ConvGeom,
        f: usize,
        x: *const f32,
        dy: *const f32,
        n: usize,
        kh: usize,
        j0: usize,
        fb: usize,
        dw: *mut f32,
    ) {
        let kc = g.k * g.c;
        let step = g.s * g.c;
        let mut acc = [_mm512_setzero_ps(); R];
        for im in 0..n {
            let img = x.add(im * g.in_len());
            let dyi = dy.add(im * g.positions() * f);
            for oh in 0..g.ho {
                let xrow = img.add((oh * g.s + kh) * g.w * g.c + j0);
                let drow = dyi.add(oh * g.wo * f + fb);
                for ow in 0..g.wo {
                    let d = _mm512_loadu_ps(drow.add(ow * f));
                    let xp = xrow.add(ow * step);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(r)), d, *a);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(dw.add((kh * kc + j0 + r) * f + fb), *a);
        }
    }

    /// Weight gradient of `n` images `x` against `dy` (`n x positions x f`) into `dw`
    /// (`k*k*c x f`, overwritten).
    ///
    /// # Safety
    /// As [`forward_img`], for `n` images.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad(
        g: &ConvGeom,
        f: usize,
        x: &[f32],
        dy: &[f32],
        n: usize,
        dw: &mut [f32],
    ) {
        let (x, dy, dw) = (x.as_ptr(), dy.as_ptr(), dw.as_mut_ptr());
        let kc = g.k * g.c;
        for fb in (0..f).step_by(16) {
            for kh in 0..g.k {
                let mut j0 = 0;
                while j0 < kc {
                    let r = (kc - j0).min(12);
                    macro_rules! go {
                        ($($n:literal)*) => {
                            match r {
                                $($n => dw_block::<$n>(g, f, x, dy, n, kh, j0, fb, dw),)*
                                _ => unreachable!("block of {r} rows"),
                            }
                        };
                    }
                    go!(1 2 3 4 5 6 7 8 9 10 11 12);
                    j0 += r;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
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
        let cases = [
            (geom(9, 8, 3, 3, 1), 32, Activation::Relu, 7),
            (geom(10, 11, 2, 3, 2), 16, Activation::Selu, 3),
            (geom(7, 30, 4, 2, 1), 48, Activation::Linear, 6),
        ];
        for (g, f, act, batch) in cases {
            if !conv_direct(&g, f) {
                eprintln!("no AVX-512 on this CPU: the direct kernels are never used here");
                return;
            }
            let (p, kkc) = (g.positions(), g.kkc());
            let x = random(batch * g.in_len(), &mut rng);
            let w = random(kkc * f, &mut rng);
            let b = random(f, &mut rng);
            let mut cols = vec![0.0; batch * p * kkc];
            let (mut o1, mut o2) = (vec![0.0; batch * p * f], vec![0.0; batch * p * f]);
            conv_forward_with(true, &g, f, act, &w, &b, &x, &mut [], &mut o1);
            conv_forward_with(false, &g, f, act, &w, &b, &x, &mut cols, &mut o2);
            assert_close("forward", &o1, &o2);
            let dy = random(batch * p * f, &mut rng);
            let mut res = Vec::new();
            for direct in [true, false] {
                let mut dy = dy.clone();
                let (mut dw, mut db) = (vec![0.0; kkc * f], vec![0.0; f]);
                let mut dx = vec![0.0; batch * g.in_len()];
                let mut dcols = vec![0.0; batch * p * kkc];
                conv_backward_with(
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
                );
                res.push((dy, dw, db, dx));
            }
            assert_close("pre-activation gradient", &res[0].0, &res[1].0);
            assert_close("weight gradient", &res[0].1, &res[1].1);
            assert_close("bias gradient", &res[0].2, &res[1].2);
            assert_close("input gradient", &res[0].3, &res[1].3);
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
            let (per_in, per_out) = (g.h * g.w * g.c, g.ho * g.wo * g.c);
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
