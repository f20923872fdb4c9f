//! The plan's int8 GEMM: `C = epilogue(A_u8 · B_i8)` with A a tile of activations quantised per
//! tensor to uint8 (scale, zero point), B a convolution's folded weights quantised per output
//! channel to signed 7-bit integers and packed once at load, and the sum kept in int32. The
//! epilogue turns the int32 sum back into f32 in registers: `acc * scale[col] + offset[col]`
//! (activation scale x weight scale; the bias minus the zero point's share), then the in-place
//! residual add and the ReLU, then one store.
//!
//! Weights use 7 bits (-63..=63), not 8: AVX2's `maddubs` adds two u8 x i8 products into a
//! saturating int16, and 255 x 63 x 2 = 32130 stays below 32767, so no sum ever saturates and every
//! kernel computes the same integers exactly. The price is one bit of weight precision per output
//! channel (the per-channel scale keeps it small).
//!
//! Kernels: a portable scalar one (the reference the tests hold the others to), AVX2
//! (`maddubs` + `madd` + `add`, 6x16 tile, 12 int32 accumulators) and, on aarch64 cores with the
//! dot-product extension (the Jetson Orin's Cortex-A78AE), `sdot` (6x16 tile, 24 int32x4
//! accumulators). On x86 CPUs with AVX-512 VNNI (AMD Zen 4, Intel since Ice Lake) `vpdpbusd`
//! does `maddubs` + `madd` + `add` in one instruction on 512-bit registers, without the int16
//! step (6x16 tile: one 64-byte weight load and six broadcasts per 6 instructions); it computes
//! the same integers. All do the epilogue with the same fused multiply-add, so their outputs are
//! bit-identical. `sdot` multiplies signed by signed bytes: it reads each activation as
//! `u8 - 128` (one `eor` per broadcast) and starts every column's sums at `128 x` the column's
//! weight sum, so it adds up exactly the integers the others do. The 256-bit AVX-VNNI encoding
//! (Intel Alder Lake without AVX-512) is not written: no development machine has it.

use super::gemm::{row_pointers, AlignedVec, Epilogue, MicroKernel, MR, NR};

/// Largest weight magnitude (7-bit symmetric); see the module note on `maddubs` saturation.
pub const WEIGHT_LEVELS: i32 = 63;

/// Per-tensor activation quantisation: `q = clamp(round(x / scale) + zero_point, 0, 255)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActQuant {
    /// The affine map covering `[lo, hi]` (widened to hold 0 exactly, as padding needs).
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let lo = if lo.is_finite() { lo.min(0.0) } else { 0.0 };
        let hi = if hi.is_finite() { hi.max(0.0) } else { 0.0 };
        let span = hi - lo;
        if span <= f32::MIN_POSITIVE {
            return Self {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let scale = span / 255.0;
        let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self {
            scale,
            zero_point: zp,
        }
    }

    /// Checks the fields a bundle supplies.
    pub fn is_valid(&self) -> bool {
        self.scale.is_finite() && self.scale > 0.0
    }

    /// The quantised value of `x` (the same arithmetic as the vector path).
    pub fn quantize(&self, x: f32) -> u8 {
        quantize_one(x, 1.0 / self.scale, self.zero_point as i32)
    }
}

/// Mirrors AVX's `max_ps`/`min_ps` (the second operand when either is NaN), `cvtps_epi32`
/// (round half to even) and the saturating packs, so scalar and vector quantisation agree.
#[inline]
fn quantize_one(x: f32, inv: f32, zp: i32) -> u8 {
    let v = x * inv;
    let v = if v > -256.0 { v } else { -256.0 };
    let v = if v < 512.0 { v } else { 512.0 };
    (v.round_ties_even() as i32 + zp).clamp(0, 255) as u8
}

/// Quantises `src` into `dst` (same length).
pub fn quantize_row(src: &[f32], dst: &mut [u8], act: ActQuant) {
    let inv = 1.0 / act.scale;
    let zp = act.zero_point as i32;
    let n = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    let done = if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; both slices hold `n` elements.
        unsafe { avx2::quantize(&src[..n], &mut dst[..n], inv, zp) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (d, &s) in dst[done..n].iter_mut().zip(&src[done..n]) {
        *d = quantize_one(s, inv, zp);
    }
}

/// Symmetric per-output-channel quantisation of `n` columns of `k` rows (`w(row, col)`): the
/// int8 values (column-major, `col * k + row`) and each column's scale.
pub fn quantize_weights(
    k: usize,
    n: usize,
    w: impl Fn(usize, usize) -> f32,
) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; k * n];
    let mut scales = vec![0f32; n];
    for col in 0..n {
        let amax = (0..k).fold(0f32, |m, row| m.max(w(row, col).abs()));
        let scale = if amax > 0.0 && amax.is_finite() {
            amax / WEIGHT_LEVELS as f32
        } else {
            1.0
        };
        scales[col] = scale;
        for row in 0..k {
            let v = (w(row, col) / scale).round();
            q[col * k + row] = v.clamp(-(WEIGHT_LEVELS as f32), WEIGHT_LEVELS as f32) as i8;
        }
    }
    (q, scales)
}

/// A convolution's int8 weights as GEMM panels, with the epilogue's per-column constants.
/// Panel `j` holds columns `16j..16j+16` over `k4` rows (K rounded up to 4, zero beyond K) as
/// groups of 4 rows: for each group, 16 columns x 4 consecutive rows (64 bytes), the order
/// `maddubs` reads.
#[derive(Debug)]
pub struct QuantWeights {
    pub k: usize,
    /// K rounded up to a multiple of 4 (a quantised A row's length).
    pub k4: usize,
    pub n: usize,
    pub act: ActQuant,
    panels: Vec<i8>,
    /// Per column (zero-padded to whole panels): activation scale x weight scale.
    scale: AlignedVec,
    /// Per column: bias - zero_point x scale x (sum of the column's int8 weights).
    offset: AlignedVec,
    /// Per column (zero-padded to whole panels): 128 x the sum of its int8 weights, where the
    /// `sdot` kernel starts its sums (see the module note).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    shifted: Vec<i32>,
}

impl QuantWeights {
    /// From int8 weights `q(row, col)` in `-63..=63` (checked: values outside are clamped and
    /// reported by `Err`), per-column weight scales, the bias and the input's quantisation.
    pub fn pack(
        k: usize,
        n: usize,
        q: impl Fn(usize, usize) -> i8,
        weight_scale: &[f32],
        bias: &[f32],
        act: ActQuant,
    ) -> Result<Self, String> {
        if weight_scale.len() < n || bias.len() < n {
            return Err(format!(
                "{} weight scales and {} biases for {n} output channels",
                weight_scale.len(),
                bias.len()
            ));
        }
        if !act.is_valid() {
            return Err(format!("activation scale {} is not positive", act.scale));
        }
        let k4 = k.div_ceil(4) * 4;
        let panels_count = n.div_ceil(NR);
        let mut panels = vec![0i8; panels_count * k4 * NR];
        let mut scale = AlignedVec::zeroed(panels_count * NR);
        let mut offset = AlignedVec::zeroed(panels_count * NR);
        let mut shifted = vec![0i32; panels_count * NR];
        for col in 0..n {
            let (j, c) = (col / NR, col % NR);
            let mut sum = 0i32;
            for row in 0..k {
                let v = q(row, col);
                if (v as i32).abs() > WEIGHT_LEVELS {
                    return Err(format!(
                        "weight {v} at row {row}, column {col} is outside -{WEIGHT_LEVELS}..={WEIGHT_LEVELS}"
                    ));
                }
                sum += v as i32;
                let (g, r) = (row / 4, row % 4);
                panels[j * k4 * NR + g * 4 * NR + c * 4 + r] = v;
            }
            let ws = weight_scale[col];
            if !(ws.is_finite() && ws > 0.0) {
                return Err(format!("weight scale {ws} of column {col} is not positive"));
            }
            let s = act.scale * ws;
            scale.as_mut_slice()[col] = s;
            offset.as_mut_slice()[col] = bias[col] - act.zero_point as f32 * s * sum as f32;
            shifted[col] = 128 * sum;
        }
        Ok(Self {
            k,
            k4,
            n,
            act,
            panels,
            scale,
            offset,
            shifted,
        })
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, j: usize) -> &[i8] {
        &self.panels[j * self.k4 * NR..(j + 1) * self.k4 * NR]
    }

    fn scale(&self, j: usize) -> &[f32] {
        &self.scale.as_slice()[j * NR..(j + 1) * NR]
    }

    fn offset(&self, j: usize) -> &[f32] {
        &self.offset.as_slice()[j * NR..(j + 1) * NR]
    }

    /// Bytes of packed weights and per-column constants.
    pub fn bytes(&self) -> usize {
        self.panels.len() + 12 * self.scale.len()
    }
}

/// Which int8 kernel [`strip`] runs for `kernel` on this CPU: `avx512-vnni`, `avx2`, `sdot` or
/// `portable`.
pub fn kernel_name(kernel: MicroKernel) -> &'static str {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        MicroKernel::Avx2Fma => "avx2",
        #[cfg(target_arch = "x86_64")]
        MicroKernel::Avx512Vnni => "avx512-vnni",
        #[cfg(target_arch = "aarch64")]
        MicroKernel::Neon if std::arch::is_aarch64_feature_detected!("dotprod") => "sdot",
        _ => "portable",
    }
}

/// Computes rows `0..rows` (at most [`MR`]) of quantised A against panel `j`, whole K, and
/// applies the epilogue.
///
/// # Safety
/// `a` points at row 0 of the strip: rows `0..rows` start at `a + r*lda` and hold `w.k4`
/// readable bytes each. `c` points at the strip's output row 0, column `16j`: rows `0..rows`
/// start at `c + r*ldc` and hold `min(16, w.n - 16j)` writable (and, with `accumulate`,
/// initialised) floats. No other thread touches those output floats during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip(
    kernel: MicroKernel,
    w: &QuantWeights,
    j: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue,
) {
    let rp = row_pointers(a, lda, rows);
    strip_taps(kernel, w, j, &rp, rows, &[0], w.k4, c, ldc, ep)
}

/// Whether [`strip_taps`] runs `kernel`'s own loop for more than one tap (`avx2`, `portable`);
/// `sdot` does not yet (it would run the portable kernel), so its callers unfold rows instead.
pub fn runs_taps(kernel: MicroKernel) -> bool {
    kernel_name(kernel) != "sdot"
}

/// [`strip`] without an unfolded A: K is `taps.len()` runs of `tap_bytes` (a multiple of 4)
/// bytes, run `t` of row `r` read at `rp[r] + taps[t]`. A convolution whose input channels are a
/// multiple of 4 thus reads each tap's pixels where they lie in the quantised (zero-point padded)
/// input, with K in the packed weights' order (tap, input channel), and needs no im2col.
///
/// # Safety
/// `taps.len() * tap_bytes == w.k4`; for every row `r < rows` and run `t`, `rp[r] + taps[t]`
/// holds `tap_bytes` readable bytes (rows `rows..MR` of `rp` too: they are read, not used); `c`,
/// `ldc` as [`strip`].
// Inlined into the callers' strip loops: a call per strip cost about 1 % of a frame.
#[inline]
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip_taps(
    kernel: MicroKernel,
    w: &QuantWeights,
    j: usize,
    rp: &[*const u8; MR],
    rows: usize,
    taps: &[usize],
    tap_bytes: usize,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue,
) {
    let cols = (w.n - j * NR).min(NR);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        MicroKernel::Avx2Fma => avx2::strip(w, j, rp, rows, taps, tap_bytes, cols, c, ldc, ep),
        #[cfg(target_arch = "x86_64")]
        MicroKernel::Avx512Vnni => vnni::strip(w, j, rp, rows, taps, tap_bytes, cols, c, ldc, ep),
        // std caches the detection: one atomic load per strip of 6 x 16 x K products. `sdot`
        // reads one run of the whole K from each row pointer (see [`runs_taps`]).
        #[cfg(target_arch = "aarch64")]
        MicroKernel::Neon
            if taps == [0]
                && tap_bytes == w.k4
                && std::arch::is_aarch64_feature_detected!("dotprod") =>
        {
            sdot::strip(w, j, rp, rows, cols, c, ldc, ep)
        }
        _ => portable_strip(w, j, rp, rows, taps, tap_bytes, cols, c, ldc, ep),
    }
}

/// The scalar reference kernel (kept out of line, so [`strip_taps`] stays small).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn portable_strip(
    w: &QuantWeights,
    j: usize,
    rp: &[*const u8; MR],
    rows: usize,
    taps: &[usize],
    tap_bytes: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue,
) {
    let panel = w.panel(j);
    let mut acc = [[0i32; NR]; MR];
    let per_tap = tap_bytes / 4;
    for (t, &off) in taps.iter().enumerate() {
        for gt in 0..per_tap {
            let g = t * per_tap + gt;
            let group = &panel[g * 4 * NR..(g + 1) * 4 * NR];
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                let a = std::slice::from_raw_parts(rp[r].add(off + 4 * gt), 4);
                for (col, x) in row.iter_mut().enumerate() {
                    let b = &group[col * 4..col * 4 + 4];
                    *x += a
                        .iter()
                        .zip(b)
                        .map(|(&av, &bv)| av as i32 * bv as i32)
                        .sum::<i32>();
                }
            }
        }
    }
    let (scale, offset) = (w.scale(j), w.offset(j));
    for (r, row) in acc.iter().enumerate().take(rows) {
        let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        for (col, o) in out.iter_mut().enumerate() {
            let mut v = (row[col] as f32).mul_add(scale[col], offset[col]);
            if ep.accumulate {
                v += *o;
            }
            if ep.relu {
                v = v.max(0.0);
            }
            *o = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QuantWeights, MR};
    use crate::model::cpu_plan::gemm::avx2::store_row;
    use crate::model::cpu_plan::gemm::Epilogue;
    use std::arch::x86_64::*;

    /// Quantises the leading multiple of 32 of `src` into `dst`; returns how many it did.
    ///
    /// # Safety
    /// AVX2 is present; `dst` is at least as long as `src`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize(src: &[f32], dst: &mut [u8], inv: f32, zp: i32) -> usize {
        let n = src.len() / 32 * 32;
        let inv = _mm256_set1_ps(inv);
        let lo = _mm256_set1_ps(-256.0);
        let hi = _mm256_set1_ps(512.0);
        let zp = _mm256_set1_epi32(zp);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut i = 0;
        while i < n {
            let q = |o: usize| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(i + o)), inv);
                let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                _mm256_add_epi32(_mm256_cvtps_epi32(v), zp)
            };
            let p01 = _mm256_packs_epi32(q(0), q(8));
            let p23 = _mm256_packs_epi32(q(16), q(24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), order);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, bytes);
            i += 32;
        }
        n
    }

    /// # Safety
    /// As [`super::strip_taps`]; the CPU supports AVX2 and FMA (checked by `MicroKernel::detect`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        w: &QuantWeights,
        j: usize,
        rp: &[*const u8; MR],
        rows: usize,
        taps: &[usize],
        tap_bytes: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        ep: Epilogue,
    ) {
        let mut b = w.panel(j).as_ptr();
        let [a0, a1, a2, a3, a4, a5] = *rp;
        if ep.accumulate {
            for r in 0..rows {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            }
        }
        let ones = _mm256_set1_epi16(1);
        let z = _mm256_setzero_si256();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
        let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
        let groups = tap_bytes / 4;
        for &off in taps.iter().filter(|_| groups > 0) {
            // The K loop as one block of assembly with the 12 accumulators pinned to ymm0-ymm11:
            // written with intrinsics, LLVM kept the two weight vectors, the ones vector, the
            // broadcast and a temporary in registers too (17 > 16) and spilled one accumulator
            // through the stack on every step. Here the weights are `maddubs`'s memory operand
            // (its signed-byte operand may be one; L1 serves the 12 loads per step), which leaves
            // 15 registers. Per group of 4 k and row: one broadcast of the row's 4 activation
            // bytes, then for each half of the 16 columns `maddubs` (16 int16 pair sums, never
            // saturating with 7-bit weights), `madd` with ones (8 int32) and `add`. The row
            // pointers run from `-4 * groups` to 0 past their ends, so one `add` sets the flags.
            // One block per tap (one for a 1x1 or an unfolded A); the accumulators stay in their
            // registers between blocks.
            let end = off + 4 * groups;
            std::arch::asm!(
                "2:",
                "vpbroadcastd ymm12, dword ptr [{a0} + {k}]",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b}]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm0, ymm0, ymm13",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b} + 32]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm1, ymm1, ymm13",
                "vpbroadcastd ymm12, dword ptr [{a1} + {k}]",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b}]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm2, ymm2, ymm13",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b} + 32]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm3, ymm3, ymm13",
                "vpbroadcastd ymm12, dword ptr [{a2} + {k}]",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b}]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm4, ymm4, ymm13",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b} + 32]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm5, ymm5, ymm13",
                "vpbroadcastd ymm12, dword ptr [{a3} + {k}]",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b}]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm6, ymm6, ymm13",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b} + 32]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm7, ymm7, ymm13",
                "vpbroadcastd ymm12, dword ptr [{a4} + {k}]",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b}]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm8, ymm8, ymm13",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b} + 32]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm9, ymm9, ymm13",
                "vpbroadcastd ymm12, dword ptr [{a5} + {k}]",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b}]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm10, ymm10, ymm13",
                "vpmaddubsw ymm13, ymm12, ymmword ptr [{b} + 32]",
                "vpmaddwd ymm13, ymm13, ymm14",
                "vpaddd ymm11, ymm11, ymm13",
                "add {b}, 64",
                "add {k}, 4",
                "jnz 2b",
                a0 = in(reg) a0.add(end),
                a1 = in(reg) a1.add(end),
                a2 = in(reg) a2.add(end),
                a3 = in(reg) a3.add(end),
                a4 = in(reg) a4.add(end),
                a5 = in(reg) a5.add(end),
                b = inout(reg) b,
                k = inout(reg) -(4 * groups as isize) => _,
                inout("ymm0") c00, inout("ymm1") c01, inout("ymm2") c10, inout("ymm3") c11,
                inout("ymm4") c20, inout("ymm5") c21, inout("ymm6") c30, inout("ymm7") c31,
                inout("ymm8") c40, inout("ymm9") c41, inout("ymm10") c50, inout("ymm11") c51,
                out("ymm12") _, out("ymm13") _, in("ymm14") ones,
                options(nostack, readonly),
            );
        }
        let acc = [
            (c00, c01),
            (c10, c11),
            (c20, c21),
            (c30, c31),
            (c40, c41),
            (c50, c51),
        ];
        let (scale, offset) = (w.scale(j).as_ptr(), w.offset(j).as_ptr());
        let (s0, s1) = (_mm256_load_ps(scale), _mm256_load_ps(scale.add(8)));
        let (o0, o1) = (_mm256_load_ps(offset), _mm256_load_ps(offset.add(8)));
        for (r, &(lo, hi)) in acc.iter().enumerate().take(rows) {
            let lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), s0, o0);
            let hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), s1, o1);
            store_row(c.add(r * ldc), lo, hi, cols, ep.accumulate, ep.relu);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{QuantWeights, MR, NR};
    use crate::model::cpu_plan::gemm::avx512::store_row;
    use crate::model::cpu_plan::gemm::Epilogue;
    use std::arch::x86_64::*;

    /// Per group of 4 k: the panel's 16 columns x 4 rows are one 64-byte vector; each of the six
    /// rows broadcasts its 4 activation bytes and adds their products with every column into its
    /// 16 int32 sums (`vpdpbusd`: unsigned activations, signed weights). Six accumulators, one
    /// weight vector and one broadcast use 8 of the 32 registers.
    ///
    /// # Safety
    /// As [`super::strip_taps`]; the CPU supports AVX-512 F, BW and VNNI (checked by
    /// `MicroKernel::detect`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        w: &QuantWeights,
        j: usize,
        rp: &[*const u8; MR],
        rows: usize,
        taps: &[usize],
        tap_bytes: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        ep: Epilogue,
    ) {
        let mut b = w.panel(j).as_ptr();
        let groups = tap_bytes / 4;
        if ep.accumulate {
            // The residual rows (far apart, usually out of L1) arrive while the products run.
            for r in 0..rows {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            }
        }
        let mut acc = [_mm512_setzero_si512(); MR];
        for &off in taps {
            let a = rp.map(|p| p.add(off));
            for g in 0..groups {
                let wv = _mm512_loadu_si512(b as *const __m512i);
                for (r, sum) in acc.iter_mut().enumerate() {
                    let x = (a[r].add(4 * g) as *const i32).read_unaligned();
                    *sum = _mm512_dpbusd_epi32(*sum, _mm512_set1_epi32(x), wv);
                }
                b = b.add(4 * NR);
            }
        }
        let (scale, offset) = (w.scale(j).as_ptr(), w.offset(j).as_ptr());
        let (scale, offset) = (_mm512_loadu_ps(scale), _mm512_loadu_ps(offset));
        for (r, sum) in acc.iter().enumerate().take(rows) {
            let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*sum), scale, offset);
            store_row(c.add(r * ldc), v, cols, ep.accumulate, ep.relu);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod sdot {
    use super::{QuantWeights, MR, NR};
    use crate::model::cpu_plan::gemm::Epilogue;
    use std::arch::aarch64::*;

    /// The 6x16 tile as 24 int32x4 accumulators (v8-v31), each lane one column; per group of 4 k
    /// the panel's 64 bytes as 4 vectors (v0-v3: 4 columns x 4 k each) and each row's 4 activation
    /// bytes broadcast (`ld1r`, v4) and flipped to `u8 - 128` (`eor` with v5). The K loop is one
    /// block of assembly: `sdot` has no stable intrinsic yet, and with one `asm!` per instruction
    /// the compiler shuffled and spilled the accumulators (35 `mov`s and 4 stack accesses per 24
    /// `sdot`s). Broadcasting rather than loading 16 bytes of a row and using `sdot`'s lane form
    /// keeps the 24 accumulators, 4 B vectors and the flip mask within the 32 registers.
    ///
    /// # Safety
    /// As [`super::strip`]; the CPU has NEON and the dot-product extension.
    #[target_feature(enable = "neon,dotprod")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        w: &QuantWeights,
        j: usize,
        rp: &[*const u8; MR],
        rows: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        ep: Epilogue,
    ) {
        let start = w.shifted[j * NR..(j + 1) * NR].as_ptr();
        let init = [
            vld1q_s32(start),
            vld1q_s32(start.add(4)),
            vld1q_s32(start.add(8)),
            vld1q_s32(start.add(12)),
        ];
        let mut acc = [init; MR];
        let groups = w.k4 / 4;
        if groups > 0 {
            let [a0, a1, a2, a3, a4, a5] = *rp;
            let [r0, r1, r2, r3, r4, r5] = &mut acc;
            std::arch::asm!(
                "movi v5.16b, #0x80",
                "2:",
                "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{b}], #64",
                "ld1r {{v4.4s}}, [{a0}], #4",
                "eor v4.16b, v4.16b, v5.16b",
                "sdot v8.4s, v0.16b, v4.16b",
                "sdot v9.4s, v1.16b, v4.16b",
                "sdot v10.4s, v2.16b, v4.16b",
                "sdot v11.4s, v3.16b, v4.16b",
                "ld1r {{v4.4s}}, [{a1}], #4",
                "eor v4.16b, v4.16b, v5.16b",
                "sdot v12.4s, v0.16b, v4.16b",
                "sdot v13.4s, v1.16b, v4.16b",
                "sdot v14.4s, v2.16b, v4.16b",
                "sdot v15.4s, v3.16b, v4.16b",
                "ld1r {{v4.4s}}, [{a2}], #4",
                "eor v4.16b, v4.16b, v5.16b",
                "sdot v16.4s, v0.16b, v4.16b",
                "sdot v17.4s, v1.16b, v4.16b",
                "sdot v18.4s, v2.16b, v4.16b",
                "sdot v19.4s, v3.16b, v4.16b",
                "ld1r {{v4.4s}}, [{a3}], #4",
                "eor v4.16b, v4.16b, v5.16b",
                "sdot v20.4s, v0.16b, v4.16b",
                "sdot v21.4s, v1.16b, v4.16b",
                "sdot v22.4s, v2.16b, v4.16b",
                "sdot v23.4s, v3.16b, v4.16b",
                "ld1r {{v4.4s}}, [{a4}], #4",
                "eor v4.16b, v4.16b, v5.16b",
                "sdot v24.4s, v0.16b, v4.16b",
                "sdot v25.4s, v1.16b, v4.16b",
                "sdot v26.4s, v2.16b, v4.16b",
                "sdot v27.4s, v3.16b, v4.16b",
                "ld1r {{v4.4s}}, [{a5}], #4",
                "eor v4.16b, v4.16b, v5.16b",
                "sdot v28.4s, v0.16b, v4.16b",
                "sdot v29.4s, v1.16b, v4.16b",
                "sdot v30.4s, v2.16b, v4.16b",
                "sdot v31.4s, v3.16b, v4.16b",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                b = inout(reg) w.panel(j).as_ptr() => _,
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a1 => _,
                a2 = inout(reg) a2 => _,
                a3 = inout(reg) a3 => _,
                a4 = inout(reg) a4 => _,
                a5 = inout(reg) a5 => _,
                n = inout(reg) groups => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                inout("v8") r0[0], inout("v9") r0[1], inout("v10") r0[2], inout("v11") r0[3],
                inout("v12") r1[0], inout("v13") r1[1], inout("v14") r1[2], inout("v15") r1[3],
                inout("v16") r2[0], inout("v17") r2[1], inout("v18") r2[2], inout("v19") r2[3],
                inout("v20") r3[0], inout("v21") r3[1], inout("v22") r3[2], inout("v23") r3[3],
                inout("v24") r4[0], inout("v25") r4[1], inout("v26") r4[2], inout("v27") r4[3],
                inout("v28") r5[0], inout("v29") r5[1], inout("v30") r5[2], inout("v31") r5[3],
                options(nostack, readonly),
            );
        }
        let (scale, offset) = (w.scale(j).as_ptr(), w.offset(j).as_ptr());
        let z = vdupq_n_f32(0.0);
        for (r, row) in acc.iter().enumerate().take(rows) {
            let out = c.add(r * ldc);
            let mut v = [z; 4];
            for (q, (x, &s)) in v.iter_mut().zip(row).enumerate() {
                *x = vfmaq_f32(
                    vld1q_f32(offset.add(4 * q)),
                    vcvtq_f32_s32(s),
                    vld1q_f32(scale.add(4 * q)),
                );
            }
            if cols == NR {
                for (q, x) in v.iter_mut().enumerate() {
                    if ep.accumulate {
                        *x = vaddq_f32(*x, vld1q_f32(out.add(4 * q)));
                    }
                    if ep.relu {
                        *x = vmaxq_f32(*x, z);
                    }
                    vst1q_f32(out.add(4 * q), *x);
                }
            } else {
                let mut tmp = [0f32; NR];
                for (q, x) in v.iter().enumerate() {
                    vst1q_f32(tmp.as_mut_ptr().add(4 * q), *x);
                }
                for (col, &t) in tmp.iter().enumerate().take(cols) {
                    let o = out.add(col);
                    let mut v = t;
                    if ep.accumulate {
                        v += *o;
                    }
                    if ep.relu {
                        v = v.max(0.0);
                    }
                    *o = v;
                }
            }
        }
    }
}
