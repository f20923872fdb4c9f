//! Winograd convolution for the trunk's stride-1 convolutions with a 3-tap or 7-tap axis: F(m, r)
//! computes m outputs along an axis from m + r - 1 inputs with m + r - 1 multiplications per
//! channel pair instead of m r. The 3x3 layers use it on both axes (F(2x2, 3x3): 2.25x fewer
//! multiplications, F(4x4, 3x3): 4x), the factorised 1x7 / 7x1 and 1x3 / 3x1 layers of Block17 and
//! Block8 on their one long axis (F(4, 7): 2.8x, F(4, 3): 2x); together those are about half of
//! the network's arithmetic. Per block of tiles:
//!
//! 1. input transform `V = B_h^T d B_w` of every tile, written as alpha_h x alpha_w matrices
//!    (tiles x cin),
//! 2. one GEMM `M = V U` per transformed position against the weights transformed at load
//!    (`U = G_h g G_w^T`), packed in the micro-kernel's panels,
//! 3. output transform `Y = A_h^T M A_w`, plus bias, residual and ReLU, stored into the NHWC output.
//!
//! The one-axis transforms work on 32 channels at a time (four AVX vectors), all of a tile's
//! alpha vectors at once in an L1-resident block, so each value is read and written once per tile
//! rather than once per coefficient; the 3x3 ones make one pass over whole channel vectors per
//! coefficient, which measured faster for them (see `run_block`). F(2, 3) uses only 0, +-1 and +-1/2
//! and is accurate to f32 rounding; F(4, 3) (points 0, +-1, +-2) and F(4, 7) (0, +-1, +-2, +-1/2,
//! +-3/2; coefficients up to 17) lose about a decimal digit each, which is why the plan picks them
//! per layer and the tests hold them to a looser tolerance.

use super::exec::{Scratch, Tiling, View};
use super::gemm::{self, MicroKernel, PackedWeights, Pass, MR, NR};

/// One axis of F(m, r): `bt` is alpha x alpha, `g` alpha x r, `at` m x alpha, row-major, exact
/// (alpha = m + r - 1). Derived by Cook-Toom interpolation at the points named per constant.
struct Axis {
    m: usize,
    r: usize,
    bt: &'static [f64],
    g: &'static [f64],
    at: &'static [f64],
}

impl Axis {
    const fn alpha(&self) -> usize {
        self.m + self.r - 1
    }
}

/// The axis of a 1-tap kernel (a 1x7 convolution's height): nothing to transform.
const IDENTITY: Axis = Axis {
    m: 1,
    r: 1,
    bt: &[1.0],
    g: &[1.0],
    at: &[1.0],
};

/// F(2, 3), points 0, +-1.
#[rustfmt::skip]
const F2_3: Axis = Axis {
    m: 2,
    r: 3,
    bt: &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ],
    g: &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ],
};

/// F(4, 3), points 0, +-1, +-2.
#[rustfmt::skip]
const F4_3: Axis = Axis {
    m: 4,
    r: 3,
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// F(4, 7), points 0, +-1, +-2, +-1/2, +-3/2 (of the 9-point sets tried in f32, the one with the
/// smallest coefficients and error: about 2e-6 relative per output against 3e-7 for F(4, 3)).
#[rustfmt::skip]
const F4_7: Axis = Axis {
    m: 4,
    r: 7,
    bt: &[
        2.25, 0.0, -205.0 / 16.0, 0.0, 273.0 / 16.0, 0.0, -7.5, 0.0, 1.0, 0.0,
        0.0, -2.25, -2.25, 169.0 / 16.0, 169.0 / 16.0, -6.5, -6.5, 1.0, 1.0, 0.0,
        0.0, 2.25, -2.25, -169.0 / 16.0, 169.0 / 16.0, 6.5, -6.5, -1.0, 1.0, 0.0,
        0.0, -1.125, -9.0 / 16.0, 6.125, 49.0 / 16.0, -7.0, -3.5, 2.0, 1.0, 0.0,
        0.0, 1.125, -9.0 / 16.0, -6.125, 49.0 / 16.0, 7.0, -3.5, -2.0, 1.0, 0.0,
        0.0, -4.5, -9.0, 7.625, 15.25, -3.625, -7.25, 0.5, 1.0, 0.0,
        0.0, 4.5, -9.0, -7.625, 15.25, 3.625, -7.25, -0.5, 1.0, 0.0,
        0.0, -1.5, -1.0, 7.875, 5.25, -7.875, -5.25, 1.5, 1.0, 0.0,
        0.0, 1.5, -1.0, -7.875, 5.25, 7.875, -5.25, -1.5, 1.0, 0.0,
        0.0, 2.25, 0.0, -205.0 / 16.0, 0.0, 273.0 / 16.0, 0.0, -7.5, 0.0, 1.0,
    ],
    g: &[
        4.0 / 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        8.0 / 45.0, 8.0 / 45.0, 8.0 / 45.0, 8.0 / 45.0, 8.0 / 45.0, 8.0 / 45.0, 8.0 / 45.0,
        8.0 / 45.0, -8.0 / 45.0, 8.0 / 45.0, -8.0 / 45.0, 8.0 / 45.0, -8.0 / 45.0, 8.0 / 45.0,
        2.0 / 315.0, 4.0 / 315.0, 8.0 / 315.0, 16.0 / 315.0, 32.0 / 315.0, 64.0 / 315.0, 128.0 / 315.0,
        2.0 / 315.0, -4.0 / 315.0, 8.0 / 315.0, -16.0 / 315.0, 32.0 / 315.0, -64.0 / 315.0, 128.0 / 315.0,
        -16.0 / 45.0, -8.0 / 45.0, -4.0 / 45.0, -2.0 / 45.0, -1.0 / 45.0, -1.0 / 90.0, -1.0 / 180.0,
        -16.0 / 45.0, 8.0 / 45.0, -4.0 / 45.0, 2.0 / 45.0, -1.0 / 45.0, 1.0 / 90.0, -1.0 / 180.0,
        -16.0 / 315.0, -8.0 / 105.0, -4.0 / 35.0, -6.0 / 35.0, -9.0 / 35.0, -27.0 / 70.0, -81.0 / 140.0,
        -16.0 / 315.0, 8.0 / 105.0, -4.0 / 35.0, 6.0 / 35.0, -9.0 / 35.0, 27.0 / 70.0, -81.0 / 140.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 1.5, -1.5, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 2.25, 2.25, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 3.375, -3.375, 1.0,
    ],
};

/// The axis transform for `r` kernel taps and output tiles of `m`, if there is one.
fn axis(r: usize, m: usize) -> Option<&'static Axis> {
    match (r, m) {
        (1, _) => Some(&IDENTITY),
        (3, 2) => Some(&F2_3),
        (3, 4) => Some(&F4_3),
        (7, 4) => Some(&F4_7),
        _ => None,
    }
}

/// Channels transformed together: four AVX registers of f32, so each coefficient's multiply-add
/// runs on four independent accumulators and the transform is not bound by the add latency.
const LANES: usize = 32;
type Lanes = [f32; LANES];
/// Most transformed positions per tile (6 x 6 for F(4x4, 3x3)).
const MAX_POSITIONS: usize = 36;

/// A transform matrix as its nonzero coefficients per row: (column, value).
type SparseRows = Vec<Vec<(usize, f32)>>;

/// Nonzero coefficients of a row-major matrix, per row: (column, value).
fn sparse(mat: &[f64], rows: usize, cols: usize) -> SparseRows {
    (0..rows)
        .map(|r| {
            (0..cols)
                .filter(|&c| mat[r * cols + c] != 0.0)
                .map(|c| (c, mat[r * cols + c] as f32))
                .collect()
        })
        .collect()
}

/// `sum (coefficient * x[index])` over a sparse row, [`LANES`] channels at a time.
#[inline(always)]
fn combine(row: &[(usize, f32)], x: &[Lanes], stride: usize, offset: usize) -> Lanes {
    let mut acc = [0f32; LANES];
    for &(k, b) in row {
        let v = &x[k * stride + offset];
        for (a, &v) in acc.iter_mut().zip(v) {
            *a += b * v;
        }
    }
    acc
}

/// The first `lanes` floats at `p`, zero beyond.
///
/// # Safety
/// `p` is valid for `lanes` (at most [`LANES`]) reads.
#[inline(always)]
unsafe fn load(p: *const f32, lanes: usize) -> Lanes {
    if lanes == LANES {
        std::ptr::read_unaligned(p as *const Lanes)
    } else {
        let mut x = [0f32; LANES];
        x[..lanes].copy_from_slice(std::slice::from_raw_parts(p, lanes));
        x
    }
}

/// Stores the first `lanes` values of `x` at `p`.
///
/// # Safety
/// `p` is valid for `lanes` (at most [`LANES`]) writes.
#[inline(always)]
unsafe fn store(p: *mut f32, x: &Lanes, lanes: usize) {
    if lanes == LANES {
        std::ptr::write_unaligned(p as *mut Lanes, *x);
    } else {
        std::slice::from_raw_parts_mut(p, lanes).copy_from_slice(&x[..lanes]);
    }
}

/// A stride-1 convolution prepared for Winograd.
#[derive(Debug)]
pub struct WinogradConv {
    /// Output tile sides (rows, columns).
    pub m: (usize, usize),
    /// Transformed positions per tile side (rows, columns).
    pub alpha: (usize, usize),
    pub cin: usize,
    pub cout: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    /// One packed `cin x cout` matrix per transformed position (row-major over alpha), bias zero.
    u: Vec<PackedWeights>,
    /// The bias, zero-padded to whole [`LANES`].
    bias: Vec<f32>,
    /// B^T of the row axis and of the column axis.
    bt: (SparseRows, SparseRows),
    /// A^T of the row axis and of the column axis.
    at: (SparseRows, SparseRows),
}

/// Output tile side for a 3x3 layer: 4 where the output is wide enough for its larger tiles to pay
/// (at 17x17 a 4-tile grid pads the output to 20x20 and the 2-tile one does better), else 2.
pub fn pick_tile(out_h: usize, out_w: usize, m4_allowed: bool) -> usize {
    if m4_allowed && out_h.min(out_w) >= 32 {
        4
    } else {
        2
    }
}

impl WinogradConv {
    /// From OIHW weights `w` (`kh` x `kw`) and the bias, for output tiles of `m` along every axis
    /// with more than one tap; None when there is no transform for that kernel and tile (a 1x1
    /// kernel, a 5-tap axis, F(2, 7)).
    pub fn new(
        w: &[f32],
        bias: &[f32],
        cout: usize,
        cin: usize,
        kernel: (usize, usize),
        pad: (usize, usize),
        m: usize,
    ) -> Option<Self> {
        let (kh, kw) = kernel;
        if kh * kw <= 1 || w.len() < cout * cin * kh * kw || bias.len() < cout {
            return None;
        }
        let (th, tw) = (axis(kh, m)?, axis(kw, m)?);
        let (ah, aw) = (th.alpha(), tw.alpha());
        if ah * aw > MAX_POSITIONS {
            return None;
        }
        // U = G_h g G_w^T per (co, ci), in f64 so the transform adds no rounding of its own.
        let mut u = vec![0f32; ah * aw * cout * cin];
        let mut gg = vec![0f64; ah * kw];
        for co in 0..cout {
            for ci in 0..cin {
                let g = &w[(co * cin + ci) * kh * kw..(co * cin + ci + 1) * kh * kw];
                for i in 0..ah {
                    for j in 0..kw {
                        gg[i * kw + j] = (0..kh)
                            .map(|k| th.g[i * kh + k] * g[k * kw + j] as f64)
                            .sum();
                    }
                }
                for i in 0..ah {
                    for j in 0..aw {
                        let v: f64 = (0..kw).map(|k| gg[i * kw + k] * tw.g[j * kw + k]).sum();
                        u[((i * aw + j) * cout + co) * cin + ci] = v as f32;
                    }
                }
            }
        }
        let zero = vec![0f32; cout];
        let u = (0..ah * aw)
            .map(|xi| {
                let base = xi * cout * cin;
                PackedWeights::pack(cin, cout, |row, col| u[base + col * cin + row], &zero)
            })
            .collect();
        let mut padded = bias[..cout].to_vec();
        padded.resize(cout.div_ceil(LANES) * LANES, 0.0);
        Some(Self {
            m: (th.m, tw.m),
            alpha: (ah, aw),
            cin,
            cout,
            pad_h: pad.0,
            pad_w: pad.1,
            u,
            bias: padded,
            bt: (sparse(th.bt, ah, ah), sparse(tw.bt, aw, aw)),
            at: (sparse(th.at, th.m, ah), sparse(tw.at, tw.m, aw)),
        })
    }

    fn tiles(&self, oh: usize, ow: usize) -> (usize, usize) {
        (oh.div_ceil(self.m.0), ow.div_ceil(self.m.1))
    }

    fn positions(&self) -> usize {
        self.alpha.0 * self.alpha.1
    }

    /// Floats of scratch for a block of `tiles` tiles: V and M for the block, plus one tile's
    /// partial transform (for the two-axis transforms).
    fn scratch_floats(&self, tiles: usize) -> usize {
        self.positions() * (tiles * (self.cin + self.cout) + self.cin.max(self.cout))
    }

    /// Whether both axes are transformed (a 3x3 kernel).
    fn two_axes(&self) -> bool {
        self.alpha.0 > 1 && self.alpha.1 > 1
    }
}

/// Bytes of a block's transformed input and GEMM output: twice the L2, the rest streams from L3.
const BLOCK_BYTES: usize = 1024 * 1024;

/// Work items (blocks of tiles, dealt out evenly in strips of [`MR`] tiles) for `threads` threads.
pub fn tiling(w: &WinogradConv, n: usize, oh: usize, ow: usize, threads: usize) -> Tiling {
    let (th, tw) = w.tiles(oh, ow);
    let tiles = n * th * tw;
    let strips = tiles.div_ceil(MR).max(1);
    let per_tile = w.positions() * (w.cin + w.cout) * 4;
    let cap_strips = (BLOCK_BYTES / per_tile / MR).max(1);
    let threads = threads.max(1);
    let mut blocks = strips.div_ceil(cap_strips);
    if threads > 1 {
        blocks = blocks.max(2 * threads).min(strips);
        while blocks < strips && !blocks.is_multiple_of(threads) {
            blocks += 1;
        }
    }
    let max_tiles = (strips.div_ceil(blocks) * MR).min(tiles.max(1));
    Tiling {
        rows: tiles,
        strips,
        row_tiles: blocks,
        panels: 1,
        panel_chunks: 1,
        scratch: w.scratch_floats(max_tiles),
    }
}

/// `dst = epilogue(conv(src))` through Winograd; `dst` has the output size and `w.cout` channels
/// (with `ep.accumulate` it holds the residual, updated in place).
///
/// # Safety
/// As [`super::exec::conv`]: valid, non-overlapping views; `t` planned by [`tiling`] for this
/// output; nothing else touches `dst` during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv(
    kernel: MicroKernel,
    w: &WinogradConv,
    src: View,
    dst: View,
    ep: gemm::Epilogue,
    t: Tiling,
    scratch: &Scratch,
    threads: usize,
) {
    let (th, tw) = w.tiles(dst.h, dst.w);
    if t.rows != dst.n * th * tw {
        return; // cannot happen: the tiling was planned for this output
    }
    scratch.for_each(t.row_tiles, threads, |block, buf| {
        let (t0, t1) = t.row_range(block);
        if t1 == t0 || buf.len() < w.scratch_floats(t1 - t0) {
            return;
        }
        match kernel {
            // The transforms are plain loops over channel arrays: compiled for AVX2 here they run
            // 8 lanes per instruction instead of the baseline's 4.
            #[cfg(target_arch = "x86_64")]
            MicroKernel::Avx2Fma | MicroKernel::Avx512Vnni => {
                block_avx2(kernel, w, src, dst, ep, (t0, t1), (th, tw), buf)
            }
            _ => run_block(kernel, w, src, dst, ep, (t0, t1), (th, tw), buf),
        }
    });
}

/// [`run_block`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// As [`run_block`]; the CPU supports AVX2 and FMA (the kernel was detected).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2(
    kernel: MicroKernel,
    w: &WinogradConv,
    src: View,
    dst: View,
    ep: gemm::Epilogue,
    tiles: (usize, usize),
    grid: (usize, usize),
    buf: &mut [f32],
) {
    run_block(kernel, w, src, dst, ep, tiles, grid, buf)
}

/// Tiles `tiles.0..tiles.1` of a `grid` (tile rows x tile columns per image): transform, GEMMs,
/// inverse transform.
///
/// # Safety
/// As [`conv`]; `buf` holds `w.scratch_floats` of the block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    kernel: MicroKernel,
    w: &WinogradConv,
    src: View,
    dst: View,
    ep: gemm::Epilogue,
    tiles: (usize, usize),
    grid: (usize, usize),
    buf: &mut [f32],
) {
    let (t0, t1) = tiles;
    let nt = t1 - t0;
    let (cin, cout) = (w.cin, w.cout);
    let (v, rest) = buf.split_at_mut(w.positions() * nt * cin);
    let (mm, tmp) = rest.split_at_mut(w.positions() * nt * cout);
    // Measured per layer (`echonet bench --profile --threads 1`, least of 3 rounds): the 3x3
    // layers run their transforms faster as whole-channel-vector passes (conv2d_4a 8.8 ms against
    // 12.6 ms in 32-channel blocks), the one-axis ones in 32-channel blocks.
    let two_axes = w.two_axes();
    for (i, tile) in (t0..t1).enumerate() {
        if two_axes {
            input_transform_2d(w, src, tile, grid, v, nt, i, tmp);
        } else {
            input_transform(w, src, tile, grid, v.as_mut_ptr(), nt, i);
        }
    }
    // One GEMM per transformed position: V[xi] (nt x cin) . U[xi] -> M[xi] (nt x cout).
    let gemm_ep = gemm::Epilogue {
        accumulate: false,
        relu: false,
    };
    for (xi, u) in w.u.iter().enumerate() {
        let a = v.as_ptr().add(xi * nt * cin);
        let c = mm.as_mut_ptr().add(xi * nt * cout);
        for pass in Pass::over(cin, gemm_ep) {
            for j in 0..u.panels() {
                let mut r = 0;
                while r < nt {
                    let rows = MR.min(nt - r);
                    // A panel's first strip fetches the next panel's weights.
                    let pass = Pass {
                        prefetch_next: r == 0,
                        ..pass
                    };
                    gemm::strip(
                        kernel,
                        u,
                        j,
                        a.add(r * cin + pass.k0),
                        cin,
                        rows,
                        c.add(r * cout + j * NR),
                        cout,
                        pass,
                    );
                    r += rows;
                }
            }
        }
    }
    for (i, tile) in (t0..t1).enumerate() {
        if two_axes {
            output_transform_2d(w, dst, tile, grid, mm, nt, i, tmp, ep);
        } else {
            output_transform(w, dst, tile, grid, mm.as_ptr(), nt, i, ep);
        }
    }
}

/// `V[.., i, ..] = B_h^T d B_w` of tile `tile` (zero outside the input) into block row `i`, one
/// whole channel vector per coefficient (the 3x3 layers' form).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform_2d(
    w: &WinogradConv,
    src: View,
    tile: usize,
    grid: (usize, usize),
    v: &mut [f32],
    nt: usize,
    i: usize,
    tmp: &mut [f32],
) {
    let (th, tw) = grid;
    let (ah, aw) = w.alpha;
    let cin = w.cin;
    let (img, rest) = (tile / (th * tw), tile % (th * tw));
    let y0 = (rest / tw * w.m.0) as isize - w.pad_h as isize;
    let x0 = (rest % tw * w.m.1) as isize - w.pad_w as isize;
    let pixel = |dy: usize, dx: usize| -> Option<&[f32]> {
        let (y, x) = (y0 + dy as isize, x0 + dx as isize);
        if y < 0 || x < 0 || y as usize >= src.h || x as usize >= src.w {
            return None;
        }
        let p = (img * src.h + y as usize) * src.w + x as usize;
        Some(std::slice::from_raw_parts(src.ptr.add(p * src.ld), cin))
    };
    // tmp[r][col] = sum_k B_h^T[r][k] d[k][col]
    for (r, row) in w.bt.0.iter().enumerate() {
        for col in 0..aw {
            let out = &mut tmp[(r * aw + col) * cin..(r * aw + col + 1) * cin];
            out.fill(0.0);
            for &(k, b) in row {
                if let Some(d) = pixel(k, col) {
                    for (o, &x) in out.iter_mut().zip(d) {
                        *o += b * x;
                    }
                }
            }
        }
    }
    // V[r][s] = sum_k tmp[r][k] B_w^T[s][k]
    for r in 0..ah {
        for (s, row) in w.bt.1.iter().enumerate() {
            let xi = r * aw + s;
            let out = &mut v[(xi * nt + i) * cin..(xi * nt + i + 1) * cin];
            out.fill(0.0);
            for &(k, b) in row {
                let d = &tmp[(r * aw + k) * cin..(r * aw + k + 1) * cin];
                for (o, &x) in out.iter_mut().zip(d) {
                    *o += b * x;
                }
            }
        }
    }
}

/// `Y = A_h^T M A_w + bias` (+ what `dst` holds, ReLU, as `ep` says) of block row `i`, one whole
/// channel vector per coefficient (the 3x3 layers' form), stored where it lies inside the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_2d(
    w: &WinogradConv,
    dst: View,
    tile: usize,
    grid: (usize, usize),
    mm: &[f32],
    nt: usize,
    i: usize,
    tmp: &mut [f32],
    ep: gemm::Epilogue,
) {
    let (th, tw) = grid;
    let aw = w.alpha.1;
    let (mh, mw) = w.m;
    let cout = w.cout;
    let (img, rest) = (tile / (th * tw), tile % (th * tw));
    let (oy0, ox0) = (rest / tw * mh, rest % tw * mw);
    // tmp[r][col] = sum_k A_h^T[r][k] M[k][col]
    for (r, row) in w.at.0.iter().enumerate() {
        for col in 0..aw {
            let out = &mut tmp[(r * aw + col) * cout..(r * aw + col + 1) * cout];
            out.fill(0.0);
            for &(k, a) in row {
                let xi = k * aw + col;
                let src = &mm[(xi * nt + i) * cout..(xi * nt + i + 1) * cout];
                for (o, &x) in out.iter_mut().zip(src) {
                    *o += a * x;
                }
            }
        }
    }
    let bias = &w.bias[..cout];
    for r in 0..mh {
        let oy = oy0 + r;
        if oy >= dst.h {
            break;
        }
        for (s, row) in w.at.1.iter().enumerate() {
            let ox = ox0 + s;
            if ox >= dst.w {
                break;
            }
            let p = (img * dst.h + oy) * dst.w + ox;
            let out = std::slice::from_raw_parts_mut(dst.ptr.add(p * dst.ld), cout);
            if ep.accumulate {
                for (o, &b) in out.iter_mut().zip(bias) {
                    *o += b;
                }
            } else {
                out.copy_from_slice(bias);
            }
            for &(k, a) in row {
                let src = &tmp[(r * aw + k) * cout..(r * aw + k + 1) * cout];
                for (o, &x) in out.iter_mut().zip(src) {
                    *o += a * x;
                }
            }
            if ep.relu {
                for o in out.iter_mut() {
                    *o = o.max(0.0);
                }
            }
        }
    }
}

/// `V[.., i, ..] = B_h^T d B_w` of tile `tile` (zero outside the input), into block row `i` of
/// the `nt`-row matrices at `v`, [`LANES`] channels at a time.
///
/// # Safety
/// `src` is a valid view with `w.cin` channels; `v` holds `positions x nt x cin` floats.
#[inline(always)]
unsafe fn input_transform(
    w: &WinogradConv,
    src: View,
    tile: usize,
    grid: (usize, usize),
    v: *mut f32,
    nt: usize,
    i: usize,
) {
    let (th, tw) = grid;
    let (ah, aw) = w.alpha;
    let cin = w.cin;
    let (img, rest) = (tile / (th * tw), tile % (th * tw));
    let y0 = (rest / tw * w.m.0) as isize - w.pad_h as isize;
    let x0 = (rest % tw * w.m.1) as isize - w.pad_w as isize;
    // The tile's input pixels (null outside the image), found once for all channel groups.
    let mut pixels = [std::ptr::null::<f32>(); MAX_POSITIONS];
    for dy in 0..ah {
        for dx in 0..aw {
            let (y, x) = (y0 + dy as isize, x0 + dx as isize);
            if y >= 0 && x >= 0 && (y as usize) < src.h && (x as usize) < src.w {
                let p = (img * src.h + y as usize) * src.w + x as usize;
                pixels[dy * aw + dx] = src.ptr.add(p * src.ld);
            }
        }
    }
    let mut d = [[0f32; LANES]; MAX_POSITIONS];
    let mut t = [[0f32; LANES]; MAX_POSITIONS];
    for c0 in (0..cin).step_by(LANES) {
        let lanes = LANES.min(cin - c0);
        for (x, &p) in d.iter_mut().zip(&pixels).take(ah * aw) {
            *x = if p.is_null() {
                [0.0; LANES]
            } else {
                load(p.add(c0), lanes)
            };
        }
        // Along the rows: t[j][x] = sum_k B_h^T[j][k] d[k][x].
        for (j, row) in w.bt.0.iter().enumerate() {
            for x in 0..aw {
                t[j * aw + x] = combine(row, &d, aw, x);
            }
        }
        // Along the columns: V[j][s] = sum_k B_w^T[s][k] t[j][k].
        for j in 0..ah {
            for (s, row) in w.bt.1.iter().enumerate() {
                let y = combine(row, &t[j * aw..(j + 1) * aw], 1, 0);
                store(v.add(((j * aw + s) * nt + i) * cin + c0), &y, lanes);
            }
        }
    }
}

/// `Y = A_h^T M A_w + bias` (+ what `dst` holds, ReLU, as `ep` says) of block row `i` of the
/// GEMM outputs at `mm`, stored where it lies inside the output, [`LANES`] channels at a time.
///
/// # Safety
/// `dst` is a valid view with `w.cout` channels; `mm` holds `positions x nt x cout` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    w: &WinogradConv,
    dst: View,
    tile: usize,
    grid: (usize, usize),
    mm: *const f32,
    nt: usize,
    i: usize,
    ep: gemm::Epilogue,
) {
    let (th, tw) = grid;
    let (ah, aw) = w.alpha;
    let (mh, mw) = w.m;
    let cout = w.cout;
    let (img, rest) = (tile / (th * tw), tile % (th * tw));
    let (oy0, ox0) = (rest / tw * mh, rest % tw * mw);
    // Output pixels of the tile inside the image (a border tile is cut off).
    let (rows, cols) = (mh.min(dst.h - oy0), mw.min(dst.w - ox0));
    let mut d = [[0f32; LANES]; MAX_POSITIONS];
    let mut t = [[0f32; LANES]; MAX_POSITIONS];
    for c0 in (0..cout).step_by(LANES) {
        let lanes = LANES.min(cout - c0);
        for (xi, x) in d.iter_mut().enumerate().take(ah * aw) {
            *x = load(mm.add((xi * nt + i) * cout + c0), lanes);
        }
        // Along the rows: t[r][x] = sum_k A_h^T[r][k] M[k][x].
        for (r, row) in w.at.0.iter().enumerate().take(rows) {
            for x in 0..aw {
                t[r * aw + x] = combine(row, &d, aw, x);
            }
        }
        let bias = &w.bias[c0..c0 + lanes];
        for r in 0..rows {
            for (s, row) in w.at.1.iter().enumerate().take(cols) {
                let y = combine(row, &t[r * aw..(r + 1) * aw], 1, 0);
                let p = (img * dst.h + oy0 + r) * dst.w + ox0 + s;
                let out = std::slice::from_raw_parts_mut(dst.ptr.add(p * dst.ld + c0), lanes);
                // Loops over slices, which the compiler vectorises (on the fixed-size array it
                // chose scalar adds through the stack).
                let ys = &y[..lanes];
                if ep.accumulate {
                    for ((o, &y), &b) in out.iter_mut().zip(ys).zip(bias) {
                        *o += y + b;
                    }
                } else {
                    for ((o, &y), &b) in out.iter_mut().zip(ys).zip(bias) {
                        *o = y + b;
                    }
                }
                if ep.relu {
                    for o in out.iter_mut() {
                        *o = o.max(0.0);
                    }
                }
            }
        }
    }
}
