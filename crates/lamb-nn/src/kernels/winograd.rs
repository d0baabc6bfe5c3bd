//! Winograd F(2x2, 3x3) forward convolution (AVX-512): each 2x2 block of outputs comes from a
//! 4x4 input tile through 16 element-wise products summed over the channels, 2.25 times fewer
//! multiplications than the direct sum. Per image: the input tiles are transformed
//! (`B^T d B`), then for each of the 16 tile elements one small GEMM (tiles x channels times
//! channels x filters) runs with that element's transformed weights (`G g G^T`, from
//! [`weights_into`]) in L1, and the output transform (`A^T m A`) adds the bias and the activation.
//! The backward ([`backward`]) runs in the same domain: the weight gradient as one GEMM per
//! tile element of the transformed input tiles and output gradients (`A dY A^T`), and the
//! input gradient as the transpose of the forward (`B (U^T (A dY A^T)) B^T`, each tile added
//! into its input window). The order of every sum is fixed by the geometry.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::direct::Fuse;
use super::ConvGeom;

/// Tile elements (4 x 4).
const E: usize = 16;

thread_local! {
    /// Per-thread transformed tiles and products of one image, reused across calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// G of F(2x2, 3x3) (4 x 3).
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `G[i][kh] * G[j][kw]` for tile element `e = 4 i + j` and kernel tap `t = 3 kh + kw`: the
/// weight transform `U = G g G^T` and, transposed, the gradient's `dW = G^T dU G`.
fn coef(e: usize, t: usize) -> f32 {
    G[e / 4][t / 3] * G[e % 4][t % 3]
}

/// The weights `w` (HWIO, 3 x 3 x c x f) transformed for [`forward`] into `u` (overwritten,
/// its allocation reused): `u[(e * c + ch) * f + o]` = `(G g G^T)[e]` of the 3 x 3 kernel `g`
/// of input channel `ch` and filter `o`.
pub(super) fn weights_into(c: usize, f: usize, w: &[f32], u: &mut Vec<f32>) {
    u.clear();
    u.resize(E * c * f, 0.0);
    for ch in 0..c {
        for e in 0..E {
            let dst = &mut u[(e * c + ch) * f..][..f];
            for t in 0..9 {
                let k = coef(e, t);
                if k != 0.0 {
                    let src = &w[(t * c + ch) * f..][..f];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += k * s;
                    }
                }
            }
        }
    }
}

/// Vectors of 16 filters per GEMM block, and tiles per block for that many (~24 accumulators).
fn block_tiles(v: usize) -> usize {
    match v {
        1 | 2 => 12,
        3 => 8,
        _ => 6,
    }
}

/// Tile element `e` of `P` tiles from `t0`, filters `fb..fb + 16 V`: `m[t][e]` = the sum over
/// channels of `vt[e][t][ch] * u[e][ch]`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block<const V: usize, const P: usize>(
    c: usize,
    f: usize,
    tiles: usize,
    vt: *const f32,
    u: *const f32,
    m: *mut f32,
    e: usize,
    t0: usize,
    fb: usize,
) {
    let vrow = vt.add((e * tiles + t0) * c);
    let ue = u.add(e * c * f + fb);
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    for ch in 0..c {
        let up = ue.add(ch * f);
        let mut wv = [_mm512_setzero_ps(); V];
        for (v, x) in wv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(up.add(16 * v));
        }
        for (q, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*vrow.add(q * c + ch));
            for (a, w) in a.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(b, *w, *a);
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        let mp = m.add(((t0 + q) * E + e) * f + fb);
        for (v, a) in a.iter().enumerate() {
            _mm512_storeu_ps(mp.add(16 * v), *a);
        }
    }
}

/// Whether [`forward`] applies: 3 x 3 kernel, stride 1, no padding, even output sizes, channels
/// and filters multiples of 16.
pub(super) fn applies(g: &ConvGeom, f: usize) -> bool {
    g.k == 3
        && g.s == 1
        && g.pad_top == 0
        && g.pad_left == 0
        && g.ho > 0
        && g.wo > 0
        && g.ho.is_multiple_of(2)
        && g.wo.is_multiple_of(2)
        && g.ho + 2 <= g.h
        && g.wo + 2 <= g.w
        && g.c.is_multiple_of(16)
        && f.is_multiple_of(16)
}

/// Forward of `n` images `x` into `out` (`n x ho x wo x f`, overwritten) with the transformed
/// weights `u` from [`weights_into`], bias `b` and the fused activation `fuse`.
///
/// # Safety
/// AVX-512F available; [`applies`]; `x` (`n` images), `u` (`16 c f`), `b` (`f`) and `out`
/// long enough.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn forward(
    g: &ConvGeom,
    f: usize,
    u: &[f32],
    b: &[f32],
    x: &[f32],
    n: usize,
    out: &mut [f32],
    fuse: Fuse,
) {
    let c = g.c;
    let (th, tw) = (g.ho / 2, g.wo / 2);
    let tiles = th * tw;
    SCRATCH.with(|s| {
        let (vt, m) = &mut *s.borrow_mut();
        if vt.len() < E * tiles * c {
            vt.resize(E * tiles * c, 0.0);
        }
        if m.len() < tiles * E * f {
            m.resize(tiles * E * f, 0.0);
        }
        forward_with(g, f, u, b, x, n, out, fuse, vt, m)
    })
}

/// [`forward`] with the scratch buffers `vt` (`16 x tiles x c`) and `m` (`tiles x 16 x f`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn forward_with(
    g: &ConvGeom,
    f: usize,
    u: &[f32],
    b: &[f32],
    x: &[f32],
    n: usize,
    out: &mut [f32],
    fuse: Fuse,
    vt: &mut [f32],
    m: &mut [f32],
) {
    let c = g.c;
    let (th, tw) = (g.ho / 2, g.wo / 2);
    let tiles = th * tw;
    let (u, b) = (u.as_ptr(), b.as_ptr());
    for im in 0..n {
        let img = x.as_ptr().add(im * g.in_len());
        input_transform(g, img, vt.as_mut_ptr());
        // One GEMM per tile element, its transformed weights in L1.
        let mp = m.as_mut_ptr();
        for e in 0..E {
            let mut fb = 0;
            while fb < f {
                let v = ((f - fb) / 16).min(4);
                with_v!(v, V => {
                    let mut t0 = 0;
                    while t0 < tiles {
                        let r = (tiles - t0).min(block_tiles(V));
                        with_len!(r, P => gemm_block::<V, P>(
                            c, f, tiles, vt.as_ptr(), u, mp, e, t0, fb
                        ));
                        t0 += r;
                    }
                });
                fb += 16 * v;
            }
        }
        // Output transform, bias and activation.
        let o = out.as_mut_ptr().add(im * g.positions() * f);
        let zero = _mm512_setzero_ps();
        for ty in 0..th {
            for tx in 0..tw {
                let t = ty * tw + tx;
                for fv in (0..f).step_by(16) {
                    let mut mm = [[_mm512_setzero_ps(); 4]; 4];
                    for (i, row) in mm.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = _mm512_loadu_ps(m.as_ptr().add((t * E + i * 4 + j) * f + fv));
                        }
                    }
                    let mut s = [[_mm512_setzero_ps(); 4]; 2];
                    for j in 0..4 {
                        s[0][j] = _mm512_add_ps(_mm512_add_ps(mm[0][j], mm[1][j]), mm[2][j]);
                        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(mm[1][j], mm[2][j]), mm[3][j]);
                    }
                    let bias = if fuse == Fuse::Nothing {
                        zero
                    } else {
                        _mm512_loadu_ps(b.add(fv))
                    };
                    for (r, sr) in s.iter().enumerate() {
                        let y0 = _mm512_add_ps(_mm512_add_ps(sr[0], sr[1]), sr[2]);
                        let y1 = _mm512_sub_ps(_mm512_sub_ps(sr[1], sr[2]), sr[3]);
                        for (cc, y) in [y0, y1].into_iter().enumerate() {
                            let mut y = _mm512_add_ps(y, bias);
                            if fuse == Fuse::BiasRelu {
                                y = _mm512_max_ps(y, zero);
                            }
                            let p = (2 * ty + r) * g.wo + 2 * tx + cc;
                            _mm512_storeu_ps(o.add(p * f + fv), y);
                        }
                    }
                }
            }
        }
    }
}

/// Input transform of one image: `vt[e][t][ch]` = `(B^T d B)[e]` of its tile `t` (`16 x tiles x
/// c` values at `vt`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn input_transform(g: &ConvGeom, img: *const f32, vp: *mut f32) {
    let c = g.c;
    let (th, tw) = (g.ho / 2, g.wo / 2);
    let tiles = th * tw;
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let base = img.add(((2 * ty) * g.w + 2 * tx) * c);
            for cv in (0..c).step_by(16) {
                let mut d = [[_mm512_setzero_ps(); 4]; 4];
                for (i, row) in d.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(base.add((i * g.w + j) * c + cv));
                    }
                }
                let mut s = [[_mm512_setzero_ps(); 4]; 4];
                for j in 0..4 {
                    s[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
                    s[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
                    s[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
                    s[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
                }
                for (i, r) in s.iter().enumerate() {
                    let row = [
                        _mm512_sub_ps(r[0], r[2]),
                        _mm512_add_ps(r[1], r[2]),
                        _mm512_sub_ps(r[2], r[1]),
                        _mm512_sub_ps(r[1], r[3]),
                    ];
                    for (j, v) in row.iter().enumerate() {
                        let e = i * 4 + j;
                        _mm512_storeu_ps(vp.add((e * tiles + t) * c + cv), *v);
                    }
                }
            }
        }
    }
}

/// Rows `c0..c0 + R` (channels), filters `fb..fb + 16 V` of tile element `e`: adds the sum over
/// the tiles of `vt[e][t][ch] * q[e][t][o]` into `du[e]`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn du_block<const V: usize, const R: usize>(
    c: usize,
    f: usize,
    tiles: usize,
    vt: *const f32,
    q: *const f32,
    du: *mut f32,
    e: usize,
    c0: usize,
    fb: usize,
) {
    let d0 = du.add((e * c + c0) * f + fb);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        for (v, a) in a.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(d0.add(r * f + 16 * v));
        }
    }
    let ve = vt.add(e * tiles * c + c0);
    let qe = q.add(e * tiles * f + fb);
    for t in 0..tiles {
        let qp = qe.add(t * f);
        let mut qv = [_mm512_setzero_ps(); V];
        for (v, x) in qv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(qp.add(16 * v));
        }
        let vp = ve.add(t * c);
        for (r, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*vp.add(r));
            for (a, q) in a.iter_mut().zip(&qv) {
                *a = _mm512_fmadd_ps(b, *q, *a);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (v, a) in a.iter().enumerate() {
            _mm512_storeu_ps(d0.add(r * f + 16 * v), *a);
        }
    }
}

/// The gradients of `n` images `x` from the pre-activation gradient `dy` (`n x ho x wo x f`),
/// in the Winograd domain. Weights: `du[e][ch][o]` (`16 x c x f`, overwritten) = the sum over
/// images and tiles of `(B^T d B)[e][ch] * (A dY A^T)[e][o]`; [`weights_from_u`] turns it into
/// the HWIO gradient. Input, when `dx` = `(ut, dx)` is given (`ut`: the [`weights_into`] transform transposed to `16 x f x c` by `super::dx_weights_into`, `dx`
/// the `n` images, overwritten): the transpose of [`forward`], each tile's
/// `B (U^T (A dY A^T)) B^T` added into its 4 x 4 input window, tiles in order (the input rows
/// and columns past the last window get zero).
///
/// # Safety
/// As [`forward`]; `dy`, `du`, `ut` (`16 f c`) and `dx` long enough.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn backward(
    g: &ConvGeom,
    f: usize,
    x: &[f32],
    dy: &[f32],
    n: usize,
    du: &mut [f32],
    mut dx: Option<(&[f32], &mut [f32])>,
) {
    let c = g.c;
    let tiles = (g.ho / 2) * (g.wo / 2);
    assert!(
        x.len() >= n * g.in_len() && dy.len() >= n * g.positions() * f && du.len() >= E * c * f
    );
    du[..E * c * f].fill(0.0);
    if let Some((ut, dx)) = dx.as_mut() {
        assert!(ut.len() >= E * f * c && dx.len() >= n * g.in_len());
        dx[..n * g.in_len()].fill(0.0);
    }
    SCRATCH.with(|s| {
        let (vt, q) = &mut *s.borrow_mut();
        if vt.len() < E * tiles * c {
            vt.resize(E * tiles * c, 0.0);
        }
        if q.len() < E * tiles * f {
            q.resize(E * tiles * f, 0.0);
        }
        let (vp, qp, dp) = (vt.as_mut_ptr(), q.as_mut_ptr(), du.as_mut_ptr());
        for im in 0..n {
            input_transform(g, x.as_ptr().add(im * g.in_len()), vp);
            grad_transform(g, f, dy.as_ptr().add(im * g.positions() * f), qp);
            du_gemm(c, f, tiles, vp, qp, dp);
            if let Some((ut, dx)) = dx.as_mut() {
                // The input tiles are used: `vt` now takes the transformed input gradient,
                // `dv[t][e][ch]`, as the forward's products (filters and channels swapped).
                for e in 0..E {
                    let mut cb = 0;
                    while cb < c {
                        let v = ((c - cb) / 16).min(4);
                        with_v!(v, V => {
                            let mut t0 = 0;
                            while t0 < tiles {
                                let r = (tiles - t0).min(block_tiles(V));
                                with_len!(r, P => gemm_block::<V, P>(
                                    f, c, tiles, qp, ut.as_ptr(), vp, e, t0, cb
                                ));
                                t0 += r;
                            }
                        });
                        cb += 16 * v;
                    }
                }
                input_grad_transform(g, vp, dx.as_mut_ptr().add(im * g.in_len()));
            }
        }
    });
}

/// Output-gradient transform of one image's `dy` (`ho x wo x f` at `dyi`): `q[e][t][o]` =
/// `(A dY A^T)[e]` of tile `t` (`16 x tiles x f` values at `qp`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn grad_transform(g: &ConvGeom, f: usize, dyi: *const f32, qp: *mut f32) {
    let (th, tw) = (g.ho / 2, g.wo / 2);
    let tiles = th * tw;
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            for fv in (0..f).step_by(16) {
                let at = |r: usize, cc: usize| {
                    _mm512_loadu_ps(dyi.add(((2 * ty + r) * g.wo + 2 * tx + cc) * f + fv))
                };
                let y = [[at(0, 0), at(0, 1)], [at(1, 0), at(1, 1)]];
                // A (4 x 2) times y (2 x 2): rows y0, y0 + y1, y0 - y1, -y1.
                let mut z = [[_mm512_setzero_ps(); 2]; 4];
                for cc in 0..2 {
                    z[0][cc] = y[0][cc];
                    z[1][cc] = _mm512_add_ps(y[0][cc], y[1][cc]);
                    z[2][cc] = _mm512_sub_ps(y[0][cc], y[1][cc]);
                    z[3][cc] = _mm512_sub_ps(_mm512_setzero_ps(), y[1][cc]);
                }
                for (i, zr) in z.iter().enumerate() {
                    let row = [
                        zr[0],
                        _mm512_add_ps(zr[0], zr[1]),
                        _mm512_sub_ps(zr[0], zr[1]),
                        _mm512_sub_ps(_mm512_setzero_ps(), zr[1]),
                    ];
                    for (j, v) in row.iter().enumerate() {
                        let e = i * 4 + j;
                        _mm512_storeu_ps(qp.add((e * tiles + t) * f + fv), *v);
                    }
                }
            }
        }
    }
}

/// Adds one image's weight gradient into `du` (`16 x c x f`): per tile element, the sum over
/// tiles of `vt[e][t][ch] * q[e][t][o]`.
#[target_feature(enable = "avx512f")]
unsafe fn du_gemm(c: usize, f: usize, tiles: usize, vp: *const f32, qp: *const f32, dp: *mut f32) {
    for e in 0..E {
        let mut fb = 0;
        while fb < f {
            let v = ((f - fb) / 16).min(4);
            with_v!(v, V => {
                let mut c0 = 0;
                while c0 < c {
                    let r = (c - c0).min(block_tiles(V));
                    with_len!(r, R => du_block::<V, R>(
                        c, f, tiles, vp, qp, dp, e, c0, fb
                    ));
                    c0 += r;
                }
            });
            fb += 16 * v;
        }
    }
}

/// Inverse input transform of one image's input gradient: each tile's `B dV B^T` (from
/// `dv[t][e][ch]` at `dvp`) added into its 4 x 4 window of `dx` (the image, `h x w x c`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn input_grad_transform(g: &ConvGeom, dvp: *const f32, dx: *mut f32) {
    let c = g.c;
    let (th, tw) = (g.ho / 2, g.wo / 2);
    // B (4 x 4) times the rows (or columns) r0..r3: r0, r1 - r2 + r3, r1 + r2 - r0, -r3.
    let b = |r: [__m512; 4]| {
        [
            r[0],
            _mm512_add_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
            _mm512_sub_ps(_mm512_add_ps(r[1], r[2]), r[0]),
            _mm512_sub_ps(_mm512_setzero_ps(), r[3]),
        ]
    };
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let base = dx.add(((2 * ty) * g.w + 2 * tx) * c);
            for cv in (0..c).step_by(16) {
                let mut m = [[_mm512_setzero_ps(); 4]; 4];
                for (i, row) in m.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(dvp.add((t * E + i * 4 + j) * c + cv));
                    }
                }
                let mut s = [[_mm512_setzero_ps(); 4]; 4];
                for j in 0..4 {
                    let col = b([m[0][j], m[1][j], m[2][j], m[3][j]]);
                    for i in 0..4 {
                        s[i][j] = col[i];
                    }
                }
                for (i, r) in s.iter().enumerate() {
                    for (j, v) in b(*r).iter().enumerate() {
                        let p = base.add((i * g.w + j) * c + cv);
                        _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *v));
                    }
                }
            }
        }
    }
}

/// The HWIO weight gradient `dw` (`3 x 3 x c x f`, overwritten) from its Winograd-domain form
/// `du` ([`backward`], summed over chunks): `G^T dU G` for each channel and filter.
pub(super) fn weights_from_u(c: usize, f: usize, du: &[f32], dw: &mut [f32]) {
    for ch in 0..c {
        for t in 0..9 {
            let dst = &mut dw[(t * c + ch) * f..][..f];
            dst.fill(0.0);
            for e in 0..E {
                let k = coef(e, t);
                if k != 0.0 {
                    let src = &du[(e * c + ch) * f..][..f];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += k * s;
                    }
                }
            }
        }
    }
}
