//! Executes the plan's convolutions on NHWC activations (1x1 read in place, other shapes through
//! a per-tile im2col, the stem's kernel rows and int8 taps read in place; the other steps are in
//! `steps`). Work is split per layer into tiles of output rows and output-column panels so every
//! thread has work on every layer; each thread im2cols into its own scratch buffer, sized at
//! warm-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::pool::for_each_item;

use super::gemm::{self, AlignedVec, Epilogue, MicroKernel, PackedWeights, Pass, KC, MR, NR};
use super::qgemm::{self, QuantWeights};
use super::winograd::{self, WinogradConv};
use crate::model::conv::Geometry;

/// A convolution in the plan: weights packed in im2col order (ky, kx, input channel).
#[derive(Debug)]
pub struct PreparedConv {
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub geometry: Geometry,
    pub weights: PackedWeights,
    /// The same convolution prepared for Winograd (3x3 stride 1), which then runs instead.
    pub winograd: Option<WinogradConv>,
    /// The convolution in int8 (uint8 activations x 7-bit weights), which then runs instead;
    /// `weights` then holds the shape only.
    pub int8: Option<QuantWeights>,
    /// Per kernel row, its `kw * cin` rows of the weights packed alone, for an f32 convolution
    /// without padding whose kernel rows are short (the stem: 3 x 3 channels): each output
    /// pixel's window row is then a run of the input read in place, one accumulating pass per
    /// kernel row, instead of an unfolded copy ([`conv_rows_in_place`]). Empty otherwise.
    pub kernel_rows: Vec<PackedWeights>,
}

impl PreparedConv {
    pub fn cout(&self) -> usize {
        self.weights.n
    }

    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.geometry == Geometry::unit()
    }

    /// Output size for an `h` x `w` input, or None when the kernel does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let g = self.geometry;
        let (hp, wp) = (h + 2 * g.pad_h, w + 2 * g.pad_w);
        if hp < self.kh || wp < self.kw || g.stride == 0 {
            return None;
        }
        Some(((hp - self.kh) / g.stride + 1, (wp - self.kw) / g.stride + 1))
    }
}

/// An NHWC activation view: `n*h*w` pixel rows of `channels` floats, `ld` floats apart (a channel
/// slice of a wider buffer has `ld` > `channels`), starting at `ptr`.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub ptr: *mut f32,
    pub ld: usize,
    pub channels: usize,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

// SAFETY: a View is a raw window into a workspace buffer; the executor hands disjoint output
// ranges to different threads and only reads inputs while they are not written.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Pointer `i` floats in (a method, so closures capture the whole `Sync` view).
    ///
    /// # Safety
    /// `i` stays inside the view's buffer.
    pub(super) unsafe fn at(&self, i: usize) -> *mut f32 {
        self.ptr.add(i)
    }

    fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// How one convolution is split into work items for a given input size: `row_tiles` x
/// `panel_chunks` items, each a range of [`MR`]-row strips by a range of weight panels. Strips and
/// panels are dealt out evenly (sizes differ by at most one), so no thread waits on a short or long
/// last tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Output rows (pixels) in all.
    pub rows: usize,
    /// Strips of [`MR`] rows covering them.
    pub strips: usize,
    pub row_tiles: usize,
    pub panels: usize,
    pub panel_chunks: usize,
    /// Floats of im2col (or, int8, quantised-row) scratch one item needs (0 for an f32 1x1
    /// convolution, read in place).
    pub scratch: usize,
}

impl Tiling {
    /// Output rows `row0..row1` of row tile `tile`.
    pub fn row_range(&self, tile: usize) -> (usize, usize) {
        let s0 = tile * self.strips / self.row_tiles;
        let s1 = (tile + 1) * self.strips / self.row_tiles;
        ((s0 * MR).min(self.rows), (s1 * MR).min(self.rows))
    }

    /// Weight panels `j0..j1` of panel chunk `chunk`.
    pub fn panel_range(&self, chunk: usize) -> (usize, usize) {
        (
            chunk * self.panels / self.panel_chunks,
            (chunk + 1) * self.panels / self.panel_chunks,
        )
    }
}

/// Bytes of one tile's A block (rows x one pass of [`KC`] columns), kept in the core's L2.
const TILE_A_BYTES: usize = 128 * 1024;
/// Bytes of one tile's whole im2col (rows x all of K).
const TILE_IM2COL_BYTES: usize = 512 * 1024;

/// The smallest `x >= from` with `(x * times) % threads == 0`, at most `max` (then `max`): item
/// counts that are a multiple of the thread count, so every thread gets the same share.
fn even_count(from: usize, times: usize, threads: usize, max: usize) -> usize {
    let from = from.clamp(1, max.max(1));
    (from..=max)
        .find(|x| (x * times).is_multiple_of(threads))
        .unwrap_or(max.max(1))
}

/// Plans the work items of a convolution with an `n` x `oh` x `ow` output for `threads` threads.
pub fn tiling(conv: &PreparedConv, n: usize, oh: usize, ow: usize, threads: usize) -> Tiling {
    if let Some(w) = &conv.winograd {
        return winograd::tiling(w, n, oh, ow, threads);
    }
    let m = n * oh * ow;
    let k = conv.weights.k;
    let panels = conv.weights.panels();
    let mut cap = TILE_A_BYTES / 4 / k.clamp(1, KC);
    if !conv.is_pointwise() {
        cap = cap.min(TILE_IM2COL_BYTES / 4 / k.max(1));
    }
    if let Some(q) = &conv.int8 {
        // One byte per element and the whole K in one pass: the quantised tile stays in L2.
        cap = TILE_A_BYTES / q.k4.max(1);
    }
    let cap_strips = (cap / MR).max(1);
    let strips = m.div_ceil(MR).max(1);
    let threads = threads.max(1);
    // Fewest row tiles whose A block stays in L2.
    let min_tiles = strips.div_ceil(cap_strips);
    let (row_tiles, panel_chunks) = if threads == 1 {
        (min_tiles, 1)
    } else if conv.cout() >= m {
        // Few pixels, many weights (the 8x8 and 17x17 stages): read each weight panel once per
        // row tile and split the output columns between threads, 2 items per thread.
        let chunks = even_count(
            (2 * threads).div_ceil(min_tiles),
            min_tiles,
            threads,
            panels,
        );
        (min_tiles, chunks)
    } else {
        // Many pixels: about 4 row tiles per thread (slack for a thread the OS takes away),
        // a multiple of the thread count; columns split too when there are too few strips.
        let tiles = even_count(min_tiles.max(4 * threads), 1, threads, strips);
        let chunks = if tiles >= 2 * threads {
            1
        } else {
            even_count((2 * threads).div_ceil(tiles), tiles, threads, panels)
        };
        (tiles, chunks)
    };
    let max_rows = strips.div_ceil(row_tiles) * MR;
    Tiling {
        rows: m,
        strips,
        row_tiles,
        panels,
        panel_chunks,
        scratch: match &conv.int8 {
            // An int8 1x1 convolution quantises a tile of its input into scratch bytes; others
            // unfold a tile of the quantised input there (unless they read their taps in place).
            Some(q) => QUANT_TAG_FLOATS + (max_rows.min(m.max(1)) * q.k4).div_ceil(4),
            None if conv.is_pointwise() => 0,
            None => max_rows.min(m.max(1)) * k,
        },
    }
}

/// Per-thread im2col buffers: slot `i` for rayon worker `i`, the last for a caller outside the
/// pool. Sized at warm-up; a frame only locks its own slot (uncontended).
///
/// Besides, one buffer all threads share: an int8 convolution's whole input, quantised once per
/// layer (see [`int8_input_bytes`]).
#[derive(Debug, Default)]
pub struct Scratch {
    slots: Vec<Mutex<AlignedVec>>,
    shared: Mutex<AlignedVec>,
}

impl Scratch {
    pub fn new(threads: usize, floats: usize) -> Self {
        Self {
            slots: (0..threads + 1)
                .map(|_| Mutex::new(AlignedVec::zeroed(floats)))
                .collect(),
            shared: Mutex::new(AlignedVec::zeroed(0)),
        }
    }

    /// The same, with `bytes` of shared buffer for quantised layer inputs.
    pub fn with_shared(mut self, bytes: usize) -> Self {
        self.shared = Mutex::new(AlignedVec::zeroed(bytes.div_ceil(4)));
        self
    }

    /// Bytes of the shared buffer.
    pub fn shared_bytes(&self) -> usize {
        self.shared.lock().map(|v| 4 * v.len()).unwrap_or(0)
    }

    pub fn floats(&self) -> usize {
        self.slots
            .first()
            .and_then(|s| s.lock().ok().map(|v| v.len()))
            .unwrap_or(0)
    }

    fn slot(&self) -> &Mutex<AlignedVec> {
        let last = self.slots.len().saturating_sub(1);
        let i = super::pool::worker_index().unwrap_or(last).min(last);
        &self.slots[i]
    }

    /// Runs `items` work items, each with the running thread's scratch buffer.
    pub fn for_each(
        &self,
        items: usize,
        threads: usize,
        f: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) {
        for_each_item(items, threads, |item| {
            // A poisoned slot only means another item panicked; the buffer is still sound.
            let mut guard = match self.slot().lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            f(item, guard.as_mut_slice());
        });
    }
}

/// `dst = epilogue(conv(src))`; `dst` has the convolution's output size and `conv.cout()`
/// channels. With `ep.accumulate`, `dst` holds the residual and is updated in place.
///
/// # Safety
/// `src` and `dst` are valid views of the sizes stated, into buffers that do not overlap each
/// other's touched ranges; nothing else reads or writes `dst` during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv(
    kernel: MicroKernel,
    conv: &PreparedConv,
    src: View,
    dst: View,
    ep: Epilogue,
    t: Tiling,
    scratch: &Scratch,
    threads: usize,
) {
    if let Some(q) = &conv.int8 {
        return conv_int8(kernel, conv, q, src, dst, ep, t, scratch, threads);
    }
    if let Some(w) = &conv.winograd {
        return winograd::conv(kernel, w, src, dst, ep, t, scratch, threads);
    }
    if !conv.kernel_rows.is_empty() && src.ld == conv.cin && dst.rows() == t.rows {
        return conv_rows_in_place(kernel, conv, src, dst, ep, t, threads);
    }
    let (oh, ow) = (dst.h, dst.w);
    let m = dst.rows();
    let k = conv.weights.k;
    let items = t.row_tiles * t.panel_chunks;
    for_each_item(items, threads, |item| {
        let (tile, chunk) = (item / t.panel_chunks, item % t.panel_chunks);
        let (row0, row1) = t.row_range(tile);
        let rows = row1 - row0;
        let (panel0, panel1) = t.panel_range(chunk);
        if rows == 0 || m != t.rows {
            return; // cannot happen: the tiling was planned for this output
        }
        let run = |a: *const f32, lda: usize| {
            for pass in Pass::over(k, ep) {
                for j in panel0..panel1 {
                    let mut r = 0;
                    while r < rows {
                        let n = MR.min(rows - r);
                        // A panel's first strip fetches the next panel's weights.
                        let pass = gemm::Pass {
                            prefetch_next: r == 0,
                            ..pass
                        };
                        gemm::strip(
                            kernel,
                            &conv.weights,
                            j,
                            a.add(r * lda + pass.k0),
                            lda,
                            n,
                            dst.at((row0 + r) * dst.ld + j * NR),
                            dst.ld,
                            pass,
                        );
                        r += n;
                    }
                }
            }
        };
        if conv.is_pointwise() {
            run(src.at(row0 * src.ld), src.ld);
        } else {
            // A poisoned slot only means another item panicked; the buffer itself is still sound.
            let mut guard = match scratch.slot().lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let col = guard.as_mut_slice();
            if col.len() < rows * k {
                return; // cannot happen: the workspace sizes scratch from the same tiling
            }
            im2col(conv, src, oh, ow, row0, rows, &mut col[..rows * k]);
            run(col.as_ptr(), k);
        }
    });
}

/// [`conv`] for a convolution with [`PreparedConv::kernel_rows`] over a dense input (`src.ld ==
/// cin`): an output pixel's window row `ky` is `kw * cin` consecutive floats of the input, and
/// the next pixel's starts `stride * cin` further, so a strip of pixels along one output row is
/// an A block read in place with that row step. Each strip runs one pass per kernel row, the
/// first adding the bias, the later ones accumulating, the last applying the ReLU.
///
/// # Safety
/// As [`conv`]; the convolution has no padding.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_rows_in_place(
    kernel: MicroKernel,
    conv: &PreparedConv,
    src: View,
    dst: View,
    ep: Epilogue,
    t: Tiling,
    threads: usize,
) {
    let (s, cin) = (conv.geometry.stride, conv.cin);
    let (oh, ow) = (dst.h, dst.w);
    let rows_per_kernel = conv.kernel_rows.len();
    for_each_item(t.row_tiles * t.panel_chunks, threads, |item| {
        let (tile, chunk) = (item / t.panel_chunks, item % t.panel_chunks);
        let (row0, row1) = t.row_range(tile);
        let (panel0, panel1) = t.panel_range(chunk);
        let mut r = row0;
        while r < row1 {
            let (img, rest) = (r / (oh * ow), r % (oh * ow));
            let (oy, ox) = (rest / ow, rest % ow);
            // A strip stays on one output row: the next row's windows start elsewhere.
            let n = MR.min(row1 - r).min(ow - ox);
            for j in panel0..panel1 {
                for (ky, w) in conv.kernel_rows.iter().enumerate() {
                    let a = src.at(((img * src.h + oy * s + ky) * src.w + ox * s) * cin);
                    let pass = gemm::Pass {
                        k0: 0,
                        kc: w.k,
                        load_c: ky > 0 || ep.accumulate,
                        bias: ky == 0,
                        relu: ky + 1 == rows_per_kernel && ep.relu,
                        prefetch_next: false,
                    };
                    gemm::strip(
                        kernel,
                        w,
                        j,
                        a,
                        s * cin,
                        n,
                        dst.at(r * dst.ld + j * NR),
                        dst.ld,
                        pass,
                    );
                }
            }
            r += n;
        }
    });
}

/// Bytes of an int8 convolution's quantised input for an `n` x `h` x `w` input (0 for an f32
/// one): every pixel's channels, padded to a multiple of 4 (the kernel reads 4 at a time), and for
/// a convolution that is not 1x1 the padding ring too (see [`reads_in_place`]).
pub fn int8_input_bytes(conv: &PreparedConv, n: usize, h: usize, w: usize) -> usize {
    let g = conv.geometry;
    match conv.int8 {
        // A 1x1 quantises each work item's rows into the item's scratch instead.
        Some(_) if conv.is_pointwise() => 0,
        Some(_) => n * (h + 2 * g.pad_h) * (w + 2 * g.pad_w) * conv.cin.div_ceil(4) * 4,
        None => 0,
    }
}

/// Most kernel taps an int8 convolution reads in place (a 7x7 has 49).
const MAX_TAPS: usize = 64;

/// Whether an int8 convolution that is not 1x1 reads its taps in place from the zero-point padded
/// quantised input (no im2col): its input channels are a multiple of 4 (so each tap's bytes are a
/// whole number of the kernel's 4-byte groups, in the packed weights' K order) and `kernel` runs
/// taps ([`qgemm::runs_taps`]).
fn reads_in_place(conv: &PreparedConv, kernel: MicroKernel) -> bool {
    !conv.is_pointwise()
        && conv.cin.is_multiple_of(4)
        && conv.kh * conv.kw <= MAX_TAPS
        && qgemm::runs_taps(kernel)
}

/// A raw byte buffer shared by the threads of one layer: written in one phase (each thread its
/// own rows), read in the next.
#[derive(Clone, Copy)]
struct SharedBytes(*mut u8);

// SAFETY: as [`View`]: the executor gives each thread disjoint rows to write, and reads only
// after every write of the phase has finished (`for_each_item` returns after all items).
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// # Safety
    /// `i` stays inside the buffer.
    unsafe fn at(&self, i: usize) -> *mut u8 {
        self.0.add(i)
    }
}

/// Floats at the head of an int8 1x1 work item's scratch that say whose rows it holds (the
/// layer call and row tile, see [`conv_int8`]); 16, so the rows stay 64-byte aligned.
const QUANT_TAG_FLOATS: usize = 16;

/// Numbers int8 1x1 layer calls, for the scratch tags (one per call, never reused).
static QUANT_CALLS: AtomicU64 = AtomicU64::new(1);

/// Pixels quantised per work item of the quantisation phase (a few thousand bytes at least).
const QUANT_ITEM_BYTES: usize = 64 * 1024;

/// The int8 form of [`conv`]. A 1x1 convolution's work items each quantise their own rows into
/// scratch bytes and multiply them. Other shapes first quantise the whole input once into the
/// shared buffer (one row of `cin` rounded up to 4 bytes per pixel, the zero point in the
/// padding); then each work item runs the int8 micro-kernel over its rows and panels, reading the
/// taps in place ([`conv_int8_taps`]) or unfolding its rows from the quantised input into scratch
/// bytes (`q.k4` per row, the zero point outside the image and beyond K).
///
/// # Safety
/// As [`conv`].
#[allow(clippy::too_many_arguments)]
unsafe fn conv_int8(
    kernel: MicroKernel,
    conv: &PreparedConv,
    q: &QuantWeights,
    src: View,
    dst: View,
    ep: Epilogue,
    t: Tiling,
    scratch: &Scratch,
    threads: usize,
) {
    let m = dst.rows();
    let (k, k4) = (q.k, q.k4);
    let zp = q.act.zero_point;
    let cin = conv.cin;
    let ldq = cin.div_ceil(4) * 4;
    let pixels = src.rows();
    if m != t.rows {
        return; // cannot happen: the tiling was planned for this output
    }
    if conv.is_pointwise() {
        // Each work item quantises its own rows into its thread's scratch and multiplies them
        // while they are in cache: no pass over the whole input and no second hand-over to the
        // pool per layer. Items that share rows (their panels split between threads) quantise
        // them once each, a small cost next to the products.
        if ldq != k4 {
            return; // cannot happen: a 1x1's K is its input channels
        }
        // Where the output columns are split between items (the 17x17 and 8x8 layers with
        // 2 threads: 2 items per thread, all on the same rows), an item whose scratch already
        // holds its row tile from this call, quantised by the thread's previous item, skips the
        // quantisation: the scratch's head is tagged with the call and the row tile.
        let call = QUANT_CALLS.fetch_add(1, Ordering::Relaxed);
        return scratch.for_each(t.row_tiles * t.panel_chunks, threads, |item, buf| {
            let (tile, chunk) = (item / t.panel_chunks, item % t.panel_chunks);
            let (row0, row1) = t.row_range(tile);
            let rows = row1 - row0;
            if rows == 0 || 4 * (buf.len().saturating_sub(QUANT_TAG_FLOATS)) < rows * k4 {
                return; // cannot happen: the workspace sizes scratch from the same tiling
            }
            let (head, body) = buf.split_at_mut(QUANT_TAG_FLOATS);
            let tag = [call as u32, (call >> 32) as u32, tile as u32];
            let held = head.iter().zip(tag).all(|(h, t)| h.to_bits() == t);
            // SAFETY: `body` is this thread's scratch, at least `rows * k4` bytes (checked above).
            let a = std::slice::from_raw_parts_mut(body.as_mut_ptr() as *mut u8, rows * k4);
            if held {
                // Quantised by this thread's previous item of this call.
            } else if src.ld == cin && ldq == cin {
                let from = std::slice::from_raw_parts(src.at(row0 * cin) as *const f32, rows * cin);
                qgemm::quantize_row(from, a, q.act);
            } else {
                for (r, to) in a.chunks_exact_mut(ldq).enumerate() {
                    let from =
                        std::slice::from_raw_parts(src.at((row0 + r) * src.ld) as *const f32, cin);
                    qgemm::quantize_row(from, &mut to[..cin], q.act);
                    to[cin..].fill(zp);
                }
            }
            for (h, t) in head.iter_mut().zip(tag) {
                *h = f32::from_bits(t);
            }
            let (panel0, panel1) = t.panel_range(chunk);
            for j in panel0..panel1 {
                let mut r = 0;
                while r < rows {
                    let n = MR.min(rows - r);
                    qgemm::strip(
                        kernel,
                        q,
                        j,
                        a.as_ptr().add(r * k4),
                        k4,
                        n,
                        dst.at((row0 + r) * dst.ld + j * NR),
                        dst.ld,
                        ep,
                    );
                    r += n;
                }
            }
        });
    }
    // A poisoned lock only means another call panicked; the buffer itself is still sound.
    let mut shared = match scratch.shared.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if 4 * shared.len() < pixels * ldq {
        return; // cannot happen: the workspace sizes the buffer from the same shapes
    }
    let qin = SharedBytes(shared.as_mut_slice().as_mut_ptr() as *mut u8);
    if reads_in_place(conv, kernel) {
        return conv_int8_taps(
            kernel,
            conv,
            q,
            qin,
            4 * shared.len(),
            src,
            dst,
            ep,
            t,
            threads,
        );
    }
    let per_item = (QUANT_ITEM_BYTES / ldq.max(1)).max(1);
    for_each_item(pixels.div_ceil(per_item), threads, |item| {
        let (p0, p1) = (item * per_item, ((item + 1) * per_item).min(pixels));
        if src.ld == cin && ldq == cin {
            // Contiguous rows: one pass over the item's pixels.
            let from = std::slice::from_raw_parts(src.at(p0 * cin) as *const f32, (p1 - p0) * cin);
            let to = std::slice::from_raw_parts_mut(qin.at(p0 * ldq), (p1 - p0) * ldq);
            qgemm::quantize_row(from, to, q.act);
            return;
        }
        for p in p0..p1 {
            let from = std::slice::from_raw_parts(src.at(p * src.ld) as *const f32, cin);
            let to = std::slice::from_raw_parts_mut(qin.at(p * ldq), ldq);
            qgemm::quantize_row(from, &mut to[..cin], q.act);
            to[cin..].fill(zp);
        }
    });
    let items = t.row_tiles * t.panel_chunks;
    scratch.for_each(items, threads, |item, buf| {
        let (tile, chunk) = (item / t.panel_chunks, item % t.panel_chunks);
        let (row0, row1) = t.row_range(tile);
        let rows = row1 - row0;
        let (panel0, panel1) = t.panel_range(chunk);
        if rows == 0 || 4 * buf.len() < rows * k4 {
            return; // cannot happen: the workspace sizes scratch from the same tiling
        }
        // SAFETY: `buf` is this thread's scratch, at least `rows * k4` bytes (checked above).
        let col = std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, rows * k4);
        im2col_u8(conv, qin, ldq, src, dst, row0, k, k4, zp, col);
        let a = col.as_ptr();
        for j in panel0..panel1 {
            let mut r = 0;
            while r < rows {
                let n = MR.min(rows - r);
                qgemm::strip(
                    kernel,
                    q,
                    j,
                    a.add(r * k4),
                    k4,
                    n,
                    dst.at((row0 + r) * dst.ld + j * NR),
                    dst.ld,
                    ep,
                );
                r += n;
            }
        }
    });
}

/// [`conv_int8`] for a convolution that [`reads_in_place`]: the input is quantised into a
/// zero-point padded image (`h + 2 pad_h` x `w + 2 pad_w` pixels of `cin` bytes, the ring written
/// with the zero point, which stands for 0.0), and each output pixel's row of A is its window's
/// top-left pixel there plus one fixed offset per window row, so the kernel reads the taps in
/// place.
///
/// # Safety
/// As [`conv`]; `qin` holds `qin_bytes` writable bytes no other thread uses during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_int8_taps(
    kernel: MicroKernel,
    conv: &PreparedConv,
    q: &QuantWeights,
    qin: SharedBytes,
    qin_bytes: usize,
    src: View,
    dst: View,
    ep: Epilogue,
    t: Tiling,
    threads: usize,
) {
    let g = conv.geometry;
    let cin = conv.cin;
    let zp = q.act.zero_point;
    let (hp, wp) = (src.h + 2 * g.pad_h, src.w + 2 * g.pad_w);
    let lines = src.n * hp;
    let taps_count = conv.kh * conv.kw;
    if qin_bytes < lines * wp * cin || taps_count * cin != q.k4 || taps_count > MAX_TAPS {
        return; // cannot happen: the workspace sizes the buffer from the same shapes
    }
    // Phase 1: quantise, one padded line of pixels at a time.
    let per_item = (QUANT_ITEM_BYTES / (wp * cin).max(1)).max(1);
    for_each_item(lines.div_ceil(per_item), threads, |item| {
        for line in item * per_item..((item + 1) * per_item).min(lines) {
            let to = std::slice::from_raw_parts_mut(qin.at(line * wp * cin), wp * cin);
            let (img, y) = (line / hp, line % hp);
            if y < g.pad_h || y >= g.pad_h + src.h {
                to.fill(zp);
                continue;
            }
            let (left, rest) = to.split_at_mut(g.pad_w * cin);
            let (inner, right) = rest.split_at_mut(src.w * cin);
            left.fill(zp);
            right.fill(zp);
            let first = (img * src.h + y - g.pad_h) * src.w;
            if src.ld == cin {
                let from =
                    std::slice::from_raw_parts(src.at(first * cin) as *const f32, src.w * cin);
                qgemm::quantize_row(from, inner, q.act);
            } else {
                for (x, to) in inner.chunks_exact_mut(cin).enumerate() {
                    let from =
                        std::slice::from_raw_parts(src.at((first + x) * src.ld) as *const f32, cin);
                    qgemm::quantize_row(from, to, q.act);
                }
            }
        }
    });
    // Phase 2: the GEMM, each output row's A read at its window's taps. A window row's `kw` taps
    // are consecutive pixels of the padded input and consecutive in K, so the kernel reads them
    // as one run of `kw * cin` bytes (a 3x3 over 32 channels: 3 runs of 96 bytes, not 9 of 32).
    let mut taps = [0usize; MAX_TAPS];
    for (ky, tap) in taps.iter_mut().enumerate().take(conv.kh) {
        *tap = ky * wp * cin;
    }
    let taps = &taps[..conv.kh];
    let run = conv.kw * cin;
    let (oh, ow) = (dst.h, dst.w);
    let s = g.stride;
    let items = t.row_tiles * t.panel_chunks;
    for_each_item(items, threads, |item| {
        let (tile, chunk) = (item / t.panel_chunks, item % t.panel_chunks);
        let (row0, row1) = t.row_range(tile);
        let (panel0, panel1) = t.panel_range(chunk);
        for j in panel0..panel1 {
            // The output pixel of row `row0` as (image, y, x), stepped along with the rows.
            let (img, rest) = (row0 / (oh * ow), row0 % (oh * ow));
            let (mut img, mut oy, mut ox) = (img, rest / ow, rest % ow);
            let mut r = row0;
            while r < row1 {
                let n = MR.min(row1 - r);
                let mut rp = [qin.at(0) as *const u8; MR];
                for p in rp.iter_mut().take(n) {
                    *p = qin.at(((img * hp + oy * s) * wp + ox * s) * cin);
                    ox += 1;
                    if ox == ow {
                        ox = 0;
                        oy += 1;
                        if oy == oh {
                            oy = 0;
                            img += 1;
                        }
                    }
                }
                qgemm::strip_taps(
                    kernel,
                    q,
                    j,
                    &rp,
                    n,
                    taps,
                    run,
                    dst.at(r * dst.ld + j * NR),
                    dst.ld,
                    ep,
                );
                r += n;
            }
        }
    });
}

/// Unfolds output rows `row0..row0 + col.len() / k4` of the quantised input `qin` (`ldq` bytes
/// per pixel, `src`'s size) into `col`, `k4` bytes per row: the `k` bytes (ky, kx, input
/// channel), the zero point outside the input and beyond `k`.
#[allow(clippy::too_many_arguments)]
unsafe fn im2col_u8(
    conv: &PreparedConv,
    qin: SharedBytes,
    ldq: usize,
    src: View,
    dst: View,
    row0: usize,
    k: usize,
    k4: usize,
    zp: u8,
    col: &mut [u8],
) {
    let g = conv.geometry;
    let cin = conv.cin;
    let (oh, ow) = (dst.h, dst.w);
    for (r, line) in col.chunks_exact_mut(k4).enumerate() {
        let p = row0 + r;
        let (img, rest) = (p / (oh * ow), p % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        for ky in 0..conv.kh {
            let iy = (oy * g.stride + ky) as isize - g.pad_h as isize;
            for kx in 0..conv.kw {
                let ix = (ox * g.stride + kx) as isize - g.pad_w as isize;
                let tap = ky * conv.kw + kx;
                let out = &mut line[tap * cin..(tap + 1) * cin];
                if iy < 0 || ix < 0 || iy as usize >= src.h || ix as usize >= src.w {
                    out.fill(zp);
                } else {
                    let pix = (img * src.h + iy as usize) * src.w + ix as usize;
                    out.copy_from_slice(std::slice::from_raw_parts(qin.at(pix * ldq), cin));
                }
            }
        }
        line[k..].fill(zp);
    }
}

/// Unfolds output rows `row0..row0+rows` into `col` (`rows` x `kh*kw*cin`), zero outside the input.
unsafe fn im2col(
    conv: &PreparedConv,
    src: View,
    oh: usize,
    ow: usize,
    row0: usize,
    rows: usize,
    col: &mut [f32],
) {
    let g = conv.geometry;
    let cin = conv.cin;
    let k = conv.weights.k;
    for r in 0..rows {
        let p = row0 + r;
        let (img, rest) = (p / (oh * ow), p % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let line = &mut col[r * k..(r + 1) * k];
        let ix0 = (ox * g.stride) as isize - g.pad_w as isize;
        // A window row wholly inside the image, in a buffer of `cin` floats per pixel: its taps'
        // pixels are `kw * cin` consecutive floats, one copy (the stem, with 3 channels, made
        // 9 copies of 3 floats per output pixel).
        let whole_rows = src.ld == cin && ix0 >= 0 && ix0 as usize + conv.kw <= src.w;
        for ky in 0..conv.kh {
            let iy = (oy * g.stride + ky) as isize - g.pad_h as isize;
            if whole_rows && iy >= 0 && (iy as usize) < src.h {
                let pix = (img * src.h + iy as usize) * src.w + ix0 as usize;
                let from = std::slice::from_raw_parts(src.at(pix * cin), conv.kw * cin);
                line[ky * conv.kw * cin..(ky + 1) * conv.kw * cin].copy_from_slice(from);
                continue;
            }
            for kx in 0..conv.kw {
                let ix = (ox * g.stride + kx) as isize - g.pad_w as isize;
                let out = &mut line[(ky * conv.kw + kx) * cin..(ky * conv.kw + kx + 1) * cin];
                if iy < 0 || ix < 0 || iy as usize >= src.h || ix as usize >= src.w {
                    out.fill(0.0);
                } else {
                    let pix = (img * src.h + iy as usize) * src.w + ix as usize;
                    let from = std::slice::from_raw_parts(src.at(pix * src.ld), cin);
                    out.copy_from_slice(from);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointwise(cin: usize, cout: usize, kh: usize) -> PreparedConv {
        PreparedConv {
            cin,
            kh,
            kw: 1,
            geometry: Geometry::unit(),
            weights: PackedWeights::pack(kh * cin, cout, |_, _| 0.0, &vec![0.0; cout]),
            winograd: None,
            int8: None,
            kernel_rows: Vec::new(),
        }
    }

    /// Every output row and panel is covered exactly once, tiles differ by at most one strip,
    /// and with several threads the items divide evenly between them where the shape allows.
    #[test]
    fn tiling_covers_everything_evenly() {
        for &(cin, cout, kh) in &[(896, 256, 1), (256, 896, 1), (128, 128, 7), (32, 32, 3)] {
            let conv = pointwise(cin, cout, kh);
            for m in [1, 5, 6, 7, 64, 289, 1225, 5329] {
                for threads in 1..4 {
                    let t = tiling(&conv, 1, m, 1, threads);
                    let mut next = 0;
                    let mut sizes = Vec::new();
                    for tile in 0..t.row_tiles {
                        let (a, b) = t.row_range(tile);
                        assert_eq!(a, next, "{cin}->{cout} m {m} threads {threads}");
                        next = b;
                        sizes.push(b - a);
                    }
                    assert_eq!(next, m);
                    let mut next = 0;
                    for chunk in 0..t.panel_chunks {
                        let (a, b) = t.panel_range(chunk);
                        assert_eq!(a, next);
                        assert!(b > a, "empty panel chunk");
                        next = b;
                    }
                    assert_eq!(next, conv.weights.panels());
                    let full: Vec<_> = sizes.iter().filter(|&&s| s > 0).collect();
                    let (lo, hi) = (full.iter().min(), full.iter().max());
                    if let (Some(&&lo), Some(&&hi)) = (lo, hi) {
                        assert!(hi - lo < 2 * MR, "uneven tiles {sizes:?}");
                    }
                    assert!(
                        t.scratch == 0
                            || t.scratch >= sizes.iter().max().unwrap_or(&0) * conv.weights.k
                    );
                    let items = t.row_tiles * t.panel_chunks;
                    if threads > 1 && m >= 6 * 4 * threads {
                        assert_eq!(items % threads, 0, "{cin}->{cout} m {m} threads {threads}");
                    }
                }
            }
        }
    }
}
