//! Runtime selection of the instruction set for the element loops.
//!
//! The loops are plain f32 code written so that the compiler vectorises them (fixed lane
//! counts, no fused multiply-add, no re-association). `multiversion!` compiles each kernel inside a
//! function compiled with AVX-512 or AVX2 enabled when the CPU has them, so builds without
//! `target-cpu=native` still get wide vectors. Because the arithmetic is the same IEEE
//! operations in the same order, every level gives bit-identical results; only speed differs.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level for the element loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// Whatever the build target allows (SSE2 on plain x86-64).
    Baseline,
    /// AVX2 + FMA (FMA is enabled but never used for contraction; results do not change).
    Avx2,
    /// AVX-512F.
    Avx512,
}

static LEVEL: AtomicU8 = AtomicU8::new(0); // 0 = not detected yet

fn encode(l: SimdLevel) -> u8 {
    match l {
        SimdLevel::Baseline => 1,
        SimdLevel::Avx2 => 2,
        SimdLevel::Avx512 => 3,
    }
}

fn detect() -> SimdLevel {
    let forced = std::env::var("LAMB_OPTIM_SIMD").ok();
    let best = best_available();
    match forced.as_deref() {
        Some("baseline") | Some("scalar") => SimdLevel::Baseline,
        Some("avx2") if best != SimdLevel::Baseline => SimdLevel::Avx2,
        _ => best,
    }
}

/// The best level this CPU supports.
pub fn best_available() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// The level in use (detected once; the environment variable `LAMB_OPTIM_SIMD` = `baseline` or
/// `avx2` forces a lower one).
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        1 => SimdLevel::Baseline,
        2 => SimdLevel::Avx2,
        3 => SimdLevel::Avx512,
        _ => {
            let l = detect();
            LEVEL.store(encode(l), Ordering::Relaxed);
            l
        }
    }
}

/// Forces a level (lowered to what the CPU supports). For tests and benchmarks comparing levels.
pub fn set_simd_level(level: SimdLevel) {
    let best = best_available();
    let l = match (level, best) {
        (SimdLevel::Avx512, b) => b,
        (SimdLevel::Avx2, SimdLevel::Baseline) => SimdLevel::Baseline,
        (l, _) => l,
    };
    LEVEL.store(encode(l), Ordering::Relaxed);
}

/// Defines `fn $name(args) -> R` that calls the `#[inline(always)]` kernel `$imp` compiled
/// with AVX-512, AVX2 or the baseline, according to [`simd_level`]. The kernel is inlined into
/// each feature-enabled copy, so its loops are vectorised for that level.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $imp:expr;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                match $crate::simd::simd_level() {
                    // SAFETY: a level is only selected when the CPU reports its features.
                    $crate::simd::SimdLevel::Avx512 => return unsafe { v4($($a),*) },
                    $crate::simd::SimdLevel::Avx2 => return unsafe { v3($($a),*) },
                    $crate::simd::SimdLevel::Baseline => {}
                }
            }
            $imp($($a),*)
        }
    };
}
pub(crate) use multiversion;

/// How far ahead (in f32 elements, 512 bytes) the streaming passes prefetch their inputs.
/// The hardware prefetchers alone left the LAMB staging pass (four read streams, three
/// streamed writes) ~10% slower on the BERT-base set here.
pub(crate) const PREFETCH_AHEAD: usize = 128;

/// Hints the cache to fetch `s[i]`'s line (no effect past the end of `s`).
#[inline(always)]
pub(crate) fn prefetch(s: &[f32], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < s.len() {
        // SAFETY: the address is inside `s`; a prefetch reads and changes nothing.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                s.as_ptr().add(i).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, i);
}
