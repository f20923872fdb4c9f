//! The CPU plan's GEMM: `C = epilogue(A · B)` where A is a strided f32 row matrix (NHWC pixels or
//! an im2col tile), B a convolution's weights packed once at load into 16-column panels, and the
//! epilogue (bias, optional in-place residual, optional ReLU) is applied in registers before the
//! single store. The 6x16 micro-kernel has AVX2/FMA and AVX-512 versions chosen at run time on
//! x86-64, a NEON version on aarch64 (the Jetson's Cortex-A78AE cores), and a portable version
//! (plain arrays the compiler vectorises for the build's baseline), which the tests hold the
//! others to.

/// Rows of A per micro-kernel call.
pub const MR: usize = 6;
/// Columns of B per packed panel (two 8-lane AVX vectors).
pub const NR: usize = 16;

/// f32 storage whose first element is 64-byte aligned (one cache line), so packed panels and
/// activation rows never straddle lines needlessly.
#[derive(Debug, Default)]
pub struct AlignedVec {
    raw: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedVec {
    pub fn zeroed(len: usize) -> Self {
        let raw = vec![0f32; len + 16];
        let offset = raw.as_ptr().align_offset(64).min(15);
        Self { raw, offset, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.raw[self.offset..self.offset + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

/// A convolution's weights as GEMM panels: `k` rows (im2col order: ky, kx, input channel) by
/// `n` output columns, zero-padded to whole panels of [`NR`]. Stored pass by pass (the [`KC`]-row
/// passes of [`Pass::over`]): pass `p` holds rows `p*KC..` of panel 0, then the same rows of panel
/// 1, and so on, each a contiguous `kc x 16` slice. A pass over the panels therefore reads one
/// sequential stream, which the hardware prefetcher follows and the kernel prefetches ahead of
/// (stored panel by panel, consecutive 16 KiB slices were `k x 64` bytes apart, and the weights,
/// 92 MB a frame, come from DRAM).
#[derive(Debug)]
pub struct PackedWeights {
    pub k: usize,
    pub n: usize,
    panels: AlignedVec,
    /// `n` rounded up to whole panels, zero beyond `n`.
    bias: AlignedVec,
}

impl PackedWeights {
    /// Packs `b(row, col)` for `row < k`, `col < n`, and the bias.
    pub fn pack(k: usize, n: usize, b: impl Fn(usize, usize) -> f32, bias: &[f32]) -> Self {
        let panels_count = n.div_ceil(NR);
        let mut panels = AlignedVec::zeroed(panels_count * k * NR);
        let dst = panels.as_mut_slice();
        for j in 0..panels_count {
            for row in 0..k {
                let at = slice_offset(k, panels_count, j, row - row % KC) + (row % KC) * NR;
                for c in 0..NR {
                    let col = j * NR + c;
                    if col < n {
                        dst[at + c] = b(row, col);
                    }
                }
            }
        }
        let mut padded = AlignedVec::zeroed(panels_count * NR);
        padded.as_mut_slice()[..n].copy_from_slice(&bias[..n]);
        Self {
            k,
            n,
            panels,
            bias: padded,
        }
    }

    /// The shape only, no weights: for a convolution that runs in int8 (its panels live in
    /// [`super::qgemm::QuantWeights`]); the f32 micro-kernel never reads it.
    pub fn shape_only(k: usize, n: usize) -> Self {
        Self {
            k,
            n,
            panels: AlignedVec::zeroed(0),
            bias: AlignedVec::zeroed(0),
        }
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Rows `k0..k0 + kc` of panel `j` (`k0` a pass start: a multiple of [`KC`]), `kc x 16`
    /// floats, followed in memory by the same rows of panel `j + 1`.
    fn slice(&self, j: usize, k0: usize) -> &[f32] {
        let at = slice_offset(self.k, self.panels(), j, k0);
        let kc = KC.min(self.k.saturating_sub(k0));
        &self.panels.as_slice()[at..at + kc * NR]
    }

    fn panel_bias(&self, j: usize) -> &[f32] {
        &self.bias.as_slice()[j * NR..(j + 1) * NR]
    }
}

/// Where rows `k0..` (a pass start) of panel `j` begin in weights of `k` rows and `panels`
/// panels stored pass by pass: after the `k0` rows of every panel, and `j` slices of this pass.
fn slice_offset(k: usize, panels: usize, j: usize, k0: usize) -> usize {
    let kc = KC.min(k.saturating_sub(k0));
    (k0 * panels + j * kc) * NR
}

/// What happens to a tile of `A · B` before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epilogue {
    /// Add what `C` already holds (the residual, updated in place).
    pub accumulate: bool,
    pub relu: bool,
}

/// Rows of B (and columns of A) per pass: a 16-column panel slice of `KC` rows is 16 KiB, so it
/// stays in L1 while a tile's strips stream past it.
pub const KC: usize = 256;

/// One pass over rows `k0..k0+kc` of the weights. Passes after the first add to what the
/// previous ones stored; the last applies the ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub k0: usize,
    pub kc: usize,
    /// Add what `C` holds (an earlier pass, or the residual on the first).
    pub load_c: bool,
    /// Add the bias (first pass only).
    pub bias: bool,
    pub relu: bool,
    /// Prefetch the next slice of the weights (set by the caller for a panel's first strip).
    pub prefetch_next: bool,
}

impl Pass {
    /// The passes covering `k` rows of weights for an epilogue.
    pub fn over(k: usize, ep: Epilogue) -> impl Iterator<Item = Pass> {
        let passes = k.div_ceil(KC).max(1);
        (0..passes).map(move |i| Pass {
            k0: i * KC,
            kc: KC.min(k - i * KC),
            load_c: i > 0 || ep.accumulate,
            bias: i == 0,
            relu: i + 1 == passes && ep.relu,
            prefetch_next: false,
        })
    }
}

/// The micro-kernel implementation, chosen once (at plan load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicroKernel {
    /// Plain arrays; vectorised by the compiler for the build's baseline (SSE2, NEON).
    Portable,
    /// AVX2 + FMA intrinsics, 12 accumulator registers.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512 (F, BW, VNNI) beside AVX2 + FMA, as on AMD Zen 4 and Intel since Ice Lake: int8
    /// layers run `vpdpbusd` on 512-bit registers (see `qgemm`); f32 layers the 6x16 tile on
    /// 512-bit registers, bit for bit the AVX2 kernel's results.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// NEON intrinsics: 24 four-lane accumulators of the 32 vector registers.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl MicroKernel {
    /// The fastest implementation this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                {
                    return Self::Avx512Vnni;
                }
                return Self::Avx2Fma;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return Self::Neon;
            }
        }
        Self::Portable
    }

    /// Every implementation this CPU can run, the portable one first and [`Self::detect`]'s
    /// last: what the kernel tests hold against each other.
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        let mut all = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        if best == Self::Avx512Vnni {
            all.push(Self::Avx2Fma);
        }
        if best != Self::Portable {
            all.push(best);
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => "avx2-fma",
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => "avx512-vnni",
            #[cfg(target_arch = "aarch64")]
            Self::Neon => "neon",
        }
    }
}

/// Computes rows `rows` (at most [`MR`]) of A against rows `pass.k0..+pass.kc` of panel `j`.
///
/// # Safety
/// `a` points at row 0 of the strip, column `pass.k0`: rows `0..rows` start at `a + r*lda` and
/// hold `pass.kc` readable floats each. `c` points at the strip's output row 0, column `16j`: rows `0..rows` start at
/// `c + r*ldc` and hold `min(16, w.n - 16j)` writable (and, with `accumulate`, initialised)
/// floats. No other thread touches those output floats during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip(
    kernel: MicroKernel,
    w: &PackedWeights,
    j: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    c: *mut f32,
    ldc: usize,
    pass: Pass,
) {
    let cols = (w.n - j * NR).min(NR);
    let rp = row_pointers(a, lda, rows);
    match kernel {
        MicroKernel::Portable => portable_strip(w, j, &rp, rows, cols, c, ldc, pass),
        #[cfg(target_arch = "x86_64")]
        MicroKernel::Avx2Fma => avx2::strip(w, j, &rp, rows, cols, c, ldc, pass),
        #[cfg(target_arch = "x86_64")]
        MicroKernel::Avx512Vnni => avx512::strip(w, j, &rp, rows, cols, c, ldc, pass),
        #[cfg(target_arch = "aarch64")]
        MicroKernel::Neon => neon::strip(w, j, &rp, rows, cols, c, ldc, pass),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn portable_strip(
    w: &PackedWeights,
    j: usize,
    rp: &[*const f32; MR],
    rows: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    pass: Pass,
) {
    let panel = w.slice(j, pass.k0);
    let mut acc = [[0f32; NR]; MR];
    for p in 0..pass.kc {
        let b: &[f32; NR] = panel[p * NR..(p + 1) * NR].try_into().unwrap_or(&[0.0; NR]);
        for r in 0..MR {
            let av = *rp[r].add(p);
            for (x, &bv) in acc[r].iter_mut().zip(b) {
                *x += av * bv;
            }
        }
    }
    let bias = w.panel_bias(j);
    for (r, row) in acc.iter().enumerate().take(rows) {
        let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        for (col, o) in out.iter_mut().enumerate() {
            let mut v = row[col];
            if pass.bias {
                v += bias[col];
            }
            if pass.load_c {
                v += *o;
            }
            if pass.relu {
                v = v.max(0.0);
            }
            *o = v;
        }
    }
}

/// The A row pointers of a micro-kernel call (f32 or u8 rows `lda` apart): rows past `rows`
/// repeat row 0 (always readable); their results are never stored.
///
/// # Safety
/// `a` is valid for `rows` rows of `lda` elements.
pub(super) unsafe fn row_pointers<T>(a: *const T, lda: usize, rows: usize) -> [*const T; MR] {
    let mut rp = [a; MR];
    for (r, p) in rp.iter_mut().enumerate().take(rows) {
        *p = a.add(r * lda);
    }
    rp
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{PackedWeights, Pass, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// As [`super::strip`]; the CPU supports AVX2 and FMA (checked by `MicroKernel::detect`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        w: &PackedWeights,
        j: usize,
        rp: &[*const f32; MR],
        rows: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        pass: Pass,
    ) {
        let slice = w.slice(j, pass.k0);
        let b = slice.as_ptr();
        // The next slice (this pass's next panel) follows this one in memory: the first strip
        // of a panel fetches it, a 64-byte line per k, while its own FMAs run, so the next
        // panel's strips find it in L1 instead of waiting on DRAM. A prefetch never faults;
        // the address is only formed (wrapping), never read as a Rust reference.
        let next = b.wrapping_add(slice.len());
        let [a0, a1, a2, a3, a4, a5] = *rp;
        if pass.load_c {
            // The tile's C rows (the residual, far apart in the block's buffer and usually out
            // of L1) are fetched while the K loop runs, not waited for in the epilogue.
            for r in 0..rows {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            }
        }
        let z = _mm256_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
        let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
        for p in 0..pass.kc {
            if pass.prefetch_next {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * NR) as *const i8);
            }
            let b0 = _mm256_load_ps(b.add(p * NR));
            let b1 = _mm256_load_ps(b.add(p * NR + 8));
            let x = _mm256_broadcast_ss(&*a0.add(p));
            c00 = _mm256_fmadd_ps(x, b0, c00);
            c01 = _mm256_fmadd_ps(x, b1, c01);
            let x = _mm256_broadcast_ss(&*a1.add(p));
            c10 = _mm256_fmadd_ps(x, b0, c10);
            c11 = _mm256_fmadd_ps(x, b1, c11);
            let x = _mm256_broadcast_ss(&*a2.add(p));
            c20 = _mm256_fmadd_ps(x, b0, c20);
            c21 = _mm256_fmadd_ps(x, b1, c21);
            let x = _mm256_broadcast_ss(&*a3.add(p));
            c30 = _mm256_fmadd_ps(x, b0, c30);
            c31 = _mm256_fmadd_ps(x, b1, c31);
            let x = _mm256_broadcast_ss(&*a4.add(p));
            c40 = _mm256_fmadd_ps(x, b0, c40);
            c41 = _mm256_fmadd_ps(x, b1, c41);
            let x = _mm256_broadcast_ss(&*a5.add(p));
            c50 = _mm256_fmadd_ps(x, b0, c50);
            c51 = _mm256_fmadd_ps(x, b1, c51);
        }
        let acc = [
            (c00, c01),
            (c10, c11),
            (c20, c21),
            (c30, c31),
            (c40, c41),
            (c50, c51),
        ];
        let bias = w.panel_bias(j).as_ptr();
        let (bias0, bias1) = if pass.bias {
            (_mm256_load_ps(bias), _mm256_load_ps(bias.add(8)))
        } else {
            (z, z)
        };
        for (r, &(lo, hi)) in acc.iter().enumerate().take(rows) {
            let lo = _mm256_add_ps(lo, bias0);
            let hi = _mm256_add_ps(hi, bias1);
            store_row(c.add(r * ldc), lo, hi, cols, pass.load_c, pass.relu);
        }
    }

    /// The epilogue's tail for one tile row of 16 values (`lo`, `hi`): adds the row already in C
    /// (`accumulate`, the residual), applies ReLU, and stores the first `cols` values. Shared by
    /// the f32 kernel and the int8 one (`qgemm`), whose rows arrive here dequantised.
    ///
    /// # Safety
    /// `out` is valid for `cols` (at most 16) floats; AVX2 and FMA are present.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn store_row(
        out: *mut f32,
        mut lo: __m256,
        mut hi: __m256,
        cols: usize,
        accumulate: bool,
        relu: bool,
    ) {
        if cols == NR {
            if accumulate {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(out));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(out.add(8)));
            }
            if relu {
                let z = _mm256_setzero_ps();
                lo = _mm256_max_ps(lo, z);
                hi = _mm256_max_ps(hi, z);
            }
            _mm256_storeu_ps(out, lo);
            _mm256_storeu_ps(out.add(8), hi);
        } else {
            let mut tmp = [0f32; NR];
            _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
            for (col, &t) in tmp.iter().enumerate().take(cols) {
                let o = out.add(col);
                let mut v = t;
                if accumulate {
                    v += *o;
                }
                if relu {
                    v = v.max(0.0);
                }
                *o = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{PackedWeights, Pass, MR, NR};
    use std::arch::x86_64::*;

    /// The 6x16 tile as six 16-lane accumulators: per k one 64-byte panel row and six FMAs, each
    /// broadcasting its A value from memory (`vfmadd231ps (mem){1to16}`): 7 instructions where
    /// the AVX2 kernel issues 20 for the same work. Every output is summed in the AVX2 kernel's
    /// order (k in order, one FMA each, then the bias, then what C holds), so the two give the
    /// same bits. A 6x32 tile over two adjacent panels (12 accumulators) measured no faster on
    /// Zen 4 (benches/README.md, session 10); its two 16 KiB weight slices fill the 32 KiB L1.
    ///
    /// # Safety
    /// As [`super::strip`]; the CPU supports AVX-512 F (checked by `MicroKernel::detect`).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        w: &PackedWeights,
        j: usize,
        rp: &[*const f32; MR],
        rows: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        pass: Pass,
    ) {
        let slice = w.slice(j, pass.k0);
        let b = slice.as_ptr();
        // As the AVX2 kernel: the next panel's slice follows this one; the first strip of a
        // panel prefetches it, a line per k.
        let next = b.wrapping_add(slice.len());
        if pass.load_c {
            for r in 0..rows {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            }
        }
        let mut acc = [_mm512_setzero_ps(); MR];
        for p in 0..pass.kc {
            if pass.prefetch_next {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(p * NR) as *const i8);
            }
            let bv = _mm512_load_ps(b.add(p * NR));
            for (s, &a) in acc.iter_mut().zip(rp) {
                *s = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(p)), bv, *s);
            }
        }
        // Added even when zero, as the AVX2 kernel does (-0 + 0 is +0).
        let bias = if pass.bias {
            _mm512_load_ps(w.panel_bias(j).as_ptr())
        } else {
            _mm512_setzero_ps()
        };
        for (r, &sum) in acc.iter().enumerate().take(rows) {
            let v = _mm512_add_ps(sum, bias);
            store_row(c.add(r * ldc), v, cols, pass.load_c, pass.relu);
        }
    }

    /// Stores one tile row's 16 values, the first `cols` of them (the last panel of a layer may
    /// be partly padding): adds what the row holds first with `accumulate`, then the ReLU.
    /// Shared with the int8 VNNI kernel's epilogue.
    ///
    /// # Safety
    /// `out` is valid for `cols` (at most 16) floats; AVX-512 F is present.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn store_row(
        out: *mut f32,
        mut v: __m512,
        cols: usize,
        accumulate: bool,
        relu: bool,
    ) {
        let mask: __mmask16 = if cols >= NR { !0 } else { (1u16 << cols) - 1 };
        if accumulate {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out));
        }
        if relu {
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(out, mask, v);
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{PackedWeights, Pass, MR, NR};
    use std::arch::aarch64::*;

    /// The 6x16 tile as 24 four-lane accumulators: with the 4 B vectors and one broadcast A value
    /// that is 29 of the 32 vector registers, so nothing spills inside the K loop. A is broadcast
    /// with `ld1r` (one load per row and k) rather than loaded four k at a time and used by lane,
    /// which would need 6 more registers than there are.
    ///
    /// # Safety
    /// As [`super::strip`]; NEON is present (checked by `MicroKernel::detect`).
    #[target_feature(enable = "neon")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip(
        w: &PackedWeights,
        j: usize,
        rp: &[*const f32; MR],
        rows: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        pass: Pass,
    ) {
        let b = w.slice(j, pass.k0).as_ptr();
        let z = vdupq_n_f32(0.0);
        let mut acc = [[z; 4]; MR];
        for p in 0..pass.kc {
            let bp = b.add(p * NR);
            let bv = [
                vld1q_f32(bp),
                vld1q_f32(bp.add(4)),
                vld1q_f32(bp.add(8)),
                vld1q_f32(bp.add(12)),
            ];
            for (row, &a) in acc.iter_mut().zip(rp) {
                let x = vld1q_dup_f32(a.add(p));
                for (acc, &bq) in row.iter_mut().zip(&bv) {
                    *acc = vfmaq_f32(*acc, bq, x);
                }
            }
        }
        let bias = w.panel_bias(j).as_ptr();
        for (r, row) in acc.iter().enumerate().take(rows) {
            let out = c.add(r * ldc);
            let mut v = *row;
            for (q, x) in v.iter_mut().enumerate() {
                if pass.bias {
                    *x = vaddq_f32(*x, vld1q_f32(bias.add(4 * q)));
                }
            }
            if cols == NR {
                for (q, x) in v.iter_mut().enumerate() {
                    if pass.load_c {
                        *x = vaddq_f32(*x, vld1q_f32(out.add(4 * q)));
                    }
                    if pass.relu {
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
                    if pass.load_c {
                        v += *o;
                    }
                    if pass.relu {
                        v = v.max(0.0);
                    }
                    *o = v;
                }
            }
        }
    }
}
