//! Executes the plan's steps on NHWC activations: a prepared convolution (1x1 read in place,
//! other shapes through a per-tile im2col), 3x3/2 max-pooling, and the global mean. Work is split
//! per layer into tiles of output rows and output-column panels so every thread has work on
//! every layer; each thread im2cols into its own scratch buffer, sized at warm-up.

use std::sync::Mutex;

use rayon::prelude::*;

use super::gemm::{self, AlignedVec, Epilogue, MicroKernel, PackedWeights, Pass, KC, MR, NR};
use crate::model::conv::Geometry;

/// A convolution in the plan: weights packed in im2col order (ky, kx, input channel).
#[derive(Debug)]
pub struct PreparedConv {
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub geometry: Geometry,
    pub weights: PackedWeights,
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
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.ptr.add(i)
    }

    fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// How one convolution is split into work items for a given input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Output rows (pixels) per tile, a multiple of [`MR`] unless it covers them all.
    pub rows_per_tile: usize,
    pub row_tiles: usize,
    /// Output-column panels per work item.
    pub panels_per_item: usize,
    pub panel_chunks: usize,
    /// Floats of im2col scratch one item needs (0 for a 1x1 convolution read in place).
    pub scratch: usize,
}

/// Bytes of one tile's A block (rows x one pass of [`KC`] columns), kept in the core's L2.
const TILE_A_BYTES: usize = 128 * 1024;
/// Bytes of one tile's whole im2col (rows x all of K).
const TILE_IM2COL_BYTES: usize = 512 * 1024;

/// Plans the work items of a convolution with `m` output rows for `threads` threads.
pub fn tiling(conv: &PreparedConv, m: usize, threads: usize) -> Tiling {
    let k = conv.weights.k;
    let panels = conv.weights.panels();
    let mut cap = TILE_A_BYTES / 4 / k.clamp(1, KC);
    if !conv.is_pointwise() {
        cap = cap.min(TILE_IM2COL_BYTES / 4 / k.max(1));
    }
    let cap = (cap / MR * MR).max(MR);
    let threads = threads.max(1);
    let weight_heavy = conv.cout() >= m;
    let (rows_per_tile, panel_chunks) = if weight_heavy {
        // Few pixels, many weights (the 8x8 and 17x17 stages): read each weight panel once,
        // split the output columns between threads.
        let rows = m.min(cap).max(1);
        let row_tiles = m.div_ceil(rows);
        let want = (4 * threads).div_ceil(row_tiles);
        (rows, want.clamp(1, panels))
    } else {
        let per_item = m.div_ceil(4 * threads).div_ceil(MR) * MR;
        let rows = per_item.min(cap).max(MR).min(m.max(1));
        let row_tiles = m.div_ceil(rows);
        let chunks = if row_tiles >= 2 * threads {
            1
        } else {
            (2 * threads).div_ceil(row_tiles).clamp(1, panels)
        };
        (rows, chunks)
    };
    let panels_per_item = panels.div_ceil(panel_chunks);
    Tiling {
        rows_per_tile,
        row_tiles: m.div_ceil(rows_per_tile),
        panels_per_item,
        panel_chunks: panels.div_ceil(panels_per_item),
        scratch: if conv.is_pointwise() {
            0
        } else {
            rows_per_tile * k
        },
    }
}

/// Per-thread im2col buffers: slot `i` for rayon worker `i`, the last for a caller outside the
/// pool. Sized at warm-up; a frame only locks its own slot (uncontended).
#[derive(Debug, Default)]
pub struct Scratch {
    slots: Vec<Mutex<AlignedVec>>,
}

impl Scratch {
    pub fn new(threads: usize, floats: usize) -> Self {
        Self {
            slots: (0..threads + 1)
                .map(|_| Mutex::new(AlignedVec::zeroed(floats)))
                .collect(),
        }
    }

    pub fn floats(&self) -> usize {
        self.slots
            .first()
            .and_then(|s| s.lock().ok().map(|v| v.len()))
            .unwrap_or(0)
    }

    fn slot(&self) -> &Mutex<AlignedVec> {
        let last = self.slots.len().saturating_sub(1);
        let i = rayon::current_thread_index().unwrap_or(last).min(last);
        &self.slots[i]
    }
}

/// Runs `items` work items on the pool (or inline for one thread or one item).
fn for_each_item(items: usize, threads: usize, f: impl Fn(usize) + Sync + Send) {
    if threads <= 1 || items <= 1 {
        (0..items).for_each(f);
    } else {
        (0..items).into_par_iter().for_each(f);
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
    let (oh, ow) = (dst.h, dst.w);
    let m = dst.rows();
    let k = conv.weights.k;
    let items = t.row_tiles * t.panel_chunks;
    for_each_item(items, threads, |item| {
        let (tile, chunk) = (item / t.panel_chunks, item % t.panel_chunks);
        let row0 = tile * t.rows_per_tile;
        let rows = t.rows_per_tile.min(m - row0);
        let panel0 = chunk * t.panels_per_item;
        let panel1 = (panel0 + t.panels_per_item).min(conv.weights.panels());
        let run = |a: *const f32, lda: usize| {
            for pass in Pass::over(k, ep) {
                for j in panel0..panel1 {
                    let mut r = 0;
                    while r < rows {
                        let n = MR.min(rows - r);
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
        for ky in 0..conv.kh {
            let iy = (oy * g.stride + ky) as isize - g.pad_h as isize;
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

/// Output size of a 3x3 stride-2 unpadded max-pool.
pub fn pool_output_size(h: usize, w: usize) -> Option<(usize, usize)> {
    if h < 3 || w < 3 {
        None
    } else {
        Some(((h - 3) / 2 + 1, (w - 3) / 2 + 1))
    }
}

/// 3x3 stride-2 max-pool without padding, channel by channel.
///
/// # Safety
/// As [`conv`]: valid, non-overlapping views; `dst` is the pooled size with `src.channels`.
pub unsafe fn max_pool_3s2(src: View, dst: View, threads: usize) {
    let c = src.channels;
    let lines = dst.n * dst.h;
    let per_item = lines.div_ceil(4 * threads.max(1)).max(1);
    for_each_item(lines.div_ceil(per_item), threads, |item| {
        for line in item * per_item..((item + 1) * per_item).min(lines) {
            let (img, oy) = (line / dst.h, line % dst.h);
            for ox in 0..dst.w {
                let out = std::slice::from_raw_parts_mut(
                    dst.at(((img * dst.h + oy) * dst.w + ox) * dst.ld),
                    c,
                );
                let at = |ky: usize, kx: usize| {
                    let pix = (img * src.h + 2 * oy + ky) * src.w + 2 * ox + kx;
                    std::slice::from_raw_parts(src.at(pix * src.ld) as *const f32, c)
                };
                out.copy_from_slice(at(0, 0));
                for ky in 0..3 {
                    for kx in 0..3 {
                        if ky + kx > 0 {
                            for (o, &v) in out.iter_mut().zip(at(ky, kx)) {
                                *o = o.max(v);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Mean over each image's pixels into `out` (`n` x `channels`).
///
/// # Safety
/// `src` is a valid view; `out` holds `src.n * src.channels` floats.
pub unsafe fn global_mean(src: View, out: &mut [f32]) {
    let c = src.channels;
    let hw = src.h * src.w;
    for (img, dst) in out.chunks_exact_mut(c).enumerate().take(src.n) {
        dst.fill(0.0);
        for p in 0..hw {
            let row = std::slice::from_raw_parts(src.at((img * hw + p) * src.ld), c);
            for (d, &v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        }
        let inv = 1.0 / hw as f32;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
}

/// NCHW `input` into the NHWC view `dst` (same n, c, h, w).
///
/// # Safety
/// `dst` is a valid view with `dst.channels` = c; `input` holds n*c*h*w floats.
pub unsafe fn nchw_to_nhwc(input: &[f32], dst: View) {
    let (c, hw) = (dst.channels, dst.h * dst.w);
    for img in 0..dst.n {
        let frame = &input[img * c * hw..(img + 1) * c * hw];
        for p in 0..hw {
            let row = std::slice::from_raw_parts_mut(dst.at((img * hw + p) * dst.ld), c);
            for (ch, v) in row.iter_mut().enumerate() {
                *v = frame[ch * hw + p];
            }
        }
    }
}
