//! Fixed-order reductions and the chunking that makes results independent of the thread count.
//!
//! Every tensor is cut into chunks of [`CHUNK`] elements (the boundaries depend only on the
//! length). Each chunk's sums are accumulated in [`LANES`] f32 lanes, folded into f64 every
//! [`FOLD`] elements in lane order, and the chunk partials are added in chunk order. So the
//! result is the same whichever thread handled which chunk.

/// Elements per parallel work unit (128 KiB per f32 stream).
pub const CHUNK: usize = 1 << 15;
/// f32 accumulator lanes.
pub(crate) const LANES: usize = 16;
/// Elements accumulated in f32 lanes before folding into f64.
pub(crate) const FOLD: usize = 512;

/// Sums and maxima of one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Partial {
    /// Up to three sums of squares (meaning set by the optimizer).
    pub sums: [f64; 3],
    /// Largest `abs` bit pattern of the gradient (>= 0x7f80_0000 means non-finite).
    pub gbits: u32,
    /// Largest `abs` bit pattern of a second stream (meaning set by the optimizer).
    pub xbits: u32,
}

impl Partial {
    /// Adds `o` into `self` (sums in order, maxima).
    #[inline]
    pub(crate) fn merge(&mut self, o: &Partial) {
        for k in 0..3 {
            self.sums[k] += o.sums[k];
        }
        self.gbits = self.gbits.max(o.gbits);
        self.xbits = self.xbits.max(o.xbits);
    }
}

/// Combines chunk partials in chunk order.
pub(crate) fn combine(parts: &[Partial]) -> Partial {
    let mut t = Partial::default();
    for p in parts {
        t.merge(p);
    }
    t
}

/// Fills `partials` with `f(range)` over the [`CHUNK`]-sized ranges of `0..len` (in parallel)
/// and returns their sum in chunk order: the fixed-order reduction every read pass uses.
pub(crate) fn reduce_chunks(
    partials: &mut [Partial],
    len: usize,
    f: impl Fn(std::ops::Range<usize>) -> Partial + Sync,
) -> Partial {
    use rayon::prelude::*;
    partials.par_iter_mut().enumerate().for_each(|(c, part)| {
        *part = f(c * CHUNK..((c + 1) * CHUNK).min(len));
    });
    combine(partials)
}

/// Absolute-value bit pattern: finite iff `< 0x7f80_0000`; ordered like `|x|` for non-NaN.
#[inline(always)]
pub(crate) fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// The largest finite |x| encoded by `abs_bits`, as f64 (infinite for non-finite).
pub(crate) fn bits_value(b: u32) -> f64 {
    if b >= 0x7f80_0000 {
        f64::INFINITY
    } else {
        f32::from_bits(b) as f64
    }
}

/// Whether a maximum of `abs_bits` means every value was finite.
#[inline]
pub(crate) fn bits_finite(b: u32) -> bool {
    b < 0x7f80_0000
}

/// f32 lane accumulator with periodic f64 folding, in a fixed order.
#[derive(Clone, Copy)]
pub(crate) struct Lanes<const S: usize> {
    pub acc: [[f32; LANES]; S],
    pub total: [f64; S],
    pub bits: [u32; LANES],
    pub xbits: [u32; LANES],
}

impl<const S: usize> Lanes<S> {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            acc: [[0.0; LANES]; S],
            total: [0.0; S],
            bits: [0; LANES],
            xbits: [0; LANES],
        }
    }

    /// Moves the f32 lanes into the f64 totals, lane by lane.
    #[inline(always)]
    pub(crate) fn fold(&mut self) {
        for s in 0..S {
            let mut t = 0.0f64;
            for j in 0..LANES {
                t += self.acc[s][j] as f64;
            }
            self.total[s] += t;
            self.acc[s] = [0.0; LANES];
        }
    }

    /// The finished partial.
    #[inline(always)]
    pub(crate) fn finish(mut self) -> Partial {
        self.fold();
        let mut p = Partial::default();
        for s in 0..S.min(3) {
            p.sums[s] = self.total[s];
        }
        p.gbits = self.bits.iter().copied().max().unwrap_or(0);
        p.xbits = self.xbits.iter().copied().max().unwrap_or(0);
        p
    }
}

/// Visits `n` elements in blocks of [`LANES`]: `body` with the block offset and the lanes for
/// each full block (folding every [`FOLD`] elements), then `tail` with (index, lane, lanes)
/// for each remaining element. Tail elements are accumulated into lanes 0..k in order, so the
/// order is fixed by `n` alone.
///
/// A macro rather than a function taking closures: closures are separate functions that
/// LLVM does not always inline into the AVX-512 copies `multiversion!` makes, and a
/// non-inlined body runs as scalar code (measured: 2x slower steps). Written
/// `for_blocks!(n, &mut lanes, |o, l| body, |i, j, l| tail)`.
macro_rules! for_blocks {
    ($n:expr, $lanes:expr, |$o:ident, $l:ident| $body:expr, |$i:ident, $j:ident, $lt:ident| $tail:expr $(,)?) => {{
        let n: usize = $n;
        let lanes = $lanes;
        let full = n / $crate::reduce::LANES * $crate::reduce::LANES;
        let mut off = 0;
        while off < full {
            let end = (off + $crate::reduce::FOLD).min(full);
            while off < end {
                {
                    let $o = off;
                    let $l = &mut *lanes;
                    $body;
                }
                off += $crate::reduce::LANES;
            }
            lanes.fold();
        }
        for ($j, $i) in (full..n).enumerate() {
            let $lt = &mut *lanes;
            $tail;
        }
    }};
}
pub(crate) use for_blocks;

/// Sum of squares of `x` in the fixed order, with the largest `abs_bits`.
#[inline(always)]
pub(crate) fn sum_squares(x: &[f32]) -> Partial {
    let mut l = Lanes::<1>::new();
    for_blocks!(
        x.len(),
        &mut l,
        |o, l| {
            let xb: &[f32; LANES] = x[o..o + LANES].try_into().unwrap();
            for j in 0..LANES {
                l.acc[0][j] += xb[j] * xb[j];
                l.bits[j] = l.bits[j].max(abs_bits(xb[j]));
            }
        },
        |i, j, l| {
            l.acc[0][j] += x[i] * x[i];
            l.bits[j] = l.bits[j].max(abs_bits(x[i]));
        },
    );
    l.finish()
}

/// Chunks a grouped read pass walks side by side (see [`lockstep_chunks!`]).
pub(crate) const GROUP: usize = 8;

/// Walks the full [`CHUNK`]s at the start of a group of `len` elements side by side, block by
/// block: `body` with (chunk index in the group, element offset in the group, that chunk's
/// lanes), folding every chunk's lanes every [`FOLD`] elements exactly as [`for_blocks!`]
/// does, so each chunk's partial is bit-identical to a chunk-by-chunk pass. Evaluates to the
/// number of full chunks (the caller handles a trailing partial chunk).
///
/// Why: one memory stream per thread reached ~16 GB/s on the 2-core machines, eight ~36 GB/s
/// (a core keeps more misses in flight). Written
/// `lockstep_chunks!(len, &mut [lanes; GROUP], |c, o, l| body)`.
macro_rules! lockstep_chunks {
    ($len:expr, $lanes:expr, |$c:ident, $o:ident, $l:ident| $body:expr $(,)?) => {{
        use $crate::reduce::{CHUNK, FOLD, LANES};
        let lanes = $lanes;
        let full = ($len / CHUNK).min(lanes.len());
        let mut off = 0;
        while full > 0 && off < CHUNK {
            for $c in 0..full {
                let $o = $c * CHUNK + off;
                let $l = &mut lanes[$c];
                $body;
            }
            off += LANES;
            if off % FOLD == 0 {
                for l in lanes[..full].iter_mut() {
                    l.fold();
                }
            }
        }
        full
    }};
}
pub(crate) use lockstep_chunks;

/// [`sum_squares`] of each chunk of a group of up to [`GROUP`] chunks (`x` starts at a chunk
/// boundary), into `parts`, the full chunks walked side by side.
#[inline(always)]
pub(crate) fn sum_squares_group(x: &[f32], parts: &mut [Partial]) {
    let mut ls = [Lanes::<1>::new(); GROUP];
    let full = lockstep_chunks!(x.len(), &mut ls, |c, o, l| {
        crate::simd::prefetch(x, o + crate::simd::PREFETCH_AHEAD);
        let xb: &[f32; LANES] = x[o..o + LANES].try_into().unwrap();
        for j in 0..LANES {
            l.acc[0][j] += xb[j] * xb[j];
            l.bits[j] = l.bits[j].max(abs_bits(xb[j]));
        }
    });
    for (p, l) in parts.iter_mut().zip(ls).take(full) {
        *p = l.finish();
    }
    if full < parts.len() {
        parts[full] = sum_squares(&x[full * CHUNK..]);
    }
}

/// Index and value of the first non-finite element, if any.
pub(crate) fn first_non_finite(x: &[f32]) -> Option<(usize, f32)> {
    x.iter().position(|v| !v.is_finite()).map(|i| (i, x[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_sums_equal_chunk_by_chunk_sums_bit_for_bit() {
        for len in [
            0,
            5,
            CHUNK,
            CHUNK + 17,
            3 * CHUNK,
            GROUP * CHUNK - 3,
            GROUP * CHUNK,
        ] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5)
                .collect();
            let n = len.div_ceil(CHUNK);
            let mut grouped = vec![Partial::default(); n];
            sum_squares_group(&x, &mut grouped);
            let single: Vec<Partial> = x.chunks(CHUNK).map(sum_squares).collect();
            assert_eq!(grouped, single, "len {len}");
        }
    }

    #[test]
    fn sum_squares_matches_f64() {
        let x: Vec<f32> = (0..10_007)
            .map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5)
            .collect();
        let p = sum_squares(&x);
        let exact: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        assert!(
            (p.sums[0] - exact).abs() <= 1e-5 * exact,
            "{} vs {exact}",
            p.sums[0]
        );
        assert!(bits_finite(p.gbits));
        let mut y = x.clone();
        y[10_003] = f32::NAN;
        assert!(!bits_finite(sum_squares(&y).gbits));
        assert_eq!(first_non_finite(&y).map(|t| t.0), Some(10_003));
    }
}
