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

/// Max pooling of a batch; `arg[i]` is the index within its image of the input chosen for
/// output `i` (the first maximum in window order).
pub fn maxpool_forward(g: &PoolGeom, input: &[f32], out: &mut [f32], arg: &mut [u32]) {
    let per_in = g.h * g.w * g.c;
    let per_out = g.ho * g.wo * g.c;
    out.par_chunks_mut(per_out)
        .zip(arg.par_chunks_mut(per_out))
        .zip(input.par_chunks(per_in))
        .for_each(|((o, a), img)| maxpool_one(g, img, o, a));
}

simd_fn! {
fn maxpool_one(g: &PoolGeom, img: &[f32], o: &mut [f32], a: &mut [u32]) {
    let c = g.c;
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let ob = (oh * g.wo + ow) * c;
            let o = &mut o[ob..ob + c];
            let a = &mut a[ob..ob + c];
            let first = ((oh * g.p) * g.w + ow * g.p) * c;
            small_copy(o, &img[first..first + c]);
            for (ch, ai) in a.iter_mut().enumerate() {
                *ai = (first + ch) as u32;
            }
            for ph in 0..g.p {
                for pw in 0..g.p {
                    if ph == 0 && pw == 0 {
                        continue;
                    }
                    let base = ((oh * g.p + ph) * g.w + ow * g.p + pw) * c;
                    for (ch, ((o, a), &v)) in o.iter_mut().zip(a.iter_mut()).zip(&img[base..base + c]).enumerate() {
                        let gt = v > *o;
                        *o = if gt { v } else { *o };
                        *a = if gt { (base + ch) as u32 } else { *a };
                    }
                }
            }
        }
    }
}
}

/// Backward of max pooling: `dx` (overwritten) gets each output gradient at its argmax. With
/// `below = Some((act, y))`, where `y` is the pooled input (the output of the layer below,
/// activated by `act`), the gradient is also multiplied by `act`'s derivative at `y` (what
/// [`act_backward`] would do next, fused).
pub fn maxpool_backward(
    g: &PoolGeom,
    dy: &[f32],
    arg: &[u32],
    below: Option<(Activation, &[f32])>,
    dx: &mut [f32],
) {
    let per_in = g.h * g.w * g.c;
    let per_out = g.ho * g.wo * g.c;
    match below {
        None => dx
            .par_chunks_mut(per_in)
            .zip(dy.par_chunks(per_out))
            .zip(arg.par_chunks(per_out))
            .for_each(|((dx, dy), arg)| maxpool_back_one(dy, arg, None, Activation::Linear, dx)),
        Some((act, y)) => dx
            .par_chunks_mut(per_in)
            .zip(dy.par_chunks(per_out))
            .zip(arg.par_chunks(per_out))
            .zip(y.par_chunks(per_in))
            .for_each(|(((dx, dy), arg), y)| maxpool_back_one(dy, arg, Some(y), act, dx)),
    }
}

simd_fn! {
fn maxpool_back_one(dy: &[f32], arg: &[u32], y: Option<&[f32]>, act: Activation, dx: &mut [f32]) {
    dx.fill(0.0);
    match y {
        None => {
            for (d, &i) in dy.iter().zip(arg) {
                dx[i as usize] += d;
            }
        }
        Some(y) => {
            for (d, &i) in dy.iter().zip(arg) {
                let yv = y[i as usize];
                let deriv = match act {
                    Activation::Relu => {
                        if yv > 0.0 {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    Activation::Selu => {
                        if yv > 0.0 {
                            SELU_SCALE
                        } else {
                            yv + SELU_SCALE * SELU_ALPHA
                        }
                    }
                    Activation::Linear | Activation::Softmax => 1.0,
                };
                dx[i as usize] += d * deriv;
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
/// number of threads.
pub const CONV_CHUNK: usize = 4;

/// Convolution forward over a batch, parallel over chunks of [`CONV_CHUNK`] images: im2col
/// into `cols` (kept for the backward pass), GEMM with the HWIO kernel `w`, fused bias and
/// activation into `out` (NHWC).
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
    let (p, kkc) = (g.positions(), g.kkc());
    let batch = input.len() / g.in_len();
    out[..batch * p * filters]
        .par_chunks_mut(CONV_CHUNK * p * filters)
        .zip(cols[..batch * p * kkc].par_chunks_mut(CONV_CHUNK * p * kkc))
        .zip(input.par_chunks(CONV_CHUNK * g.in_len()))
        .for_each(|((o, c), x)| {
            let rows = o.len() / filters;
            for (col, img) in c.chunks_mut(p * kkc).zip(x.chunks(g.in_len())) {
                im2col_one(g, img, col);
            }
            matmul_st(
                rows,
                filters,
                kkc,
                o,
                Mat::rows(c, kkc),
                Mat::rows(w, filters),
                false,
            );
            bias_act_rows(o, b, act);
        });
}

/// Convolution backward over a batch. `dy` (gradient w.r.t. the output) is overwritten with
/// the pre-activation gradient, using the output `y`; `cols` comes from the forward pass.
/// Writes `dw` (`cols^T * dy`, one GEMM: gemm splits only m and n across threads, never the
/// reduction), `db` (fixed-chunk column sums) and, when given, `dx` through `dcols`
/// (`dy * w^T`, then col2im). `act_done`: `dy` already holds the pre-activation gradient.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    g: &ConvGeom,
    filters: usize,
    act: Activation,
    w: &[f32],
    y: &[f32],
    dy: &mut [f32],
    cols: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<(&mut [f32], &mut [f32])>,
    act_done: bool,
) {
    let (kkc, f) = (g.kkc(), filters);
    let m = y.len() / f;
    if !act_done {
        act_backward(dy, y, act);
    }
    bias_grad(dy, db);
    matmul(
        kkc,
        f,
        m,
        dw,
        Mat::rows_t(&cols[..m * kkc], kkc),
        Mat::rows(dy, f),
        false,
    );
    if let Some((dx, dcols)) = dx {
        let dcols = &mut dcols[..m * kkc];
        matmul(m, kkc, f, dcols, Mat::rows(dy, f), Mat::rows_t(w, f), false);
        col2im(g, dcols, dx);
    }
}
