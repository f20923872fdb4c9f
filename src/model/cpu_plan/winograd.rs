//! Winograd convolution for the trunk's 3x3 stride-1 layers: F(m x m, 3x3) computes an m x m
//! output tile from an (m+2) x (m+2) input tile with (m+2)^2 multiplications per channel pair
//! instead of 9 m^2, i.e. 2.25x fewer for m = 2 and 4x fewer for m = 4. Those layers are a third
//! of the network's arithmetic. Per block of tiles:
//!
//! 1. input transform `V = B^T d B` of every tile, written as (m+2)^2 matrices (tiles x cin),
//! 2. (m+2)^2 GEMMs `M = V U` against the weights transformed at load (`U = G g G^T`), packed in
//!    the micro-kernel's panels,
//! 3. output transform `Y = A^T M A`, plus bias and ReLU, stored into the NHWC output.
//!
//! The transforms run over NHWC channel vectors (the compiler vectorises the inner loops), so
//! they cost a few percent of the GEMMs. F(2x2) uses only 0, +-1, +-0.5 and is accurate to f32
//! rounding; F(4x4) (points 0, +-1, +-2) loses about a decimal digit, which is why the plan picks it
//! only where the tolerances allow (see `pick_tile`).

use super::exec::{Scratch, Tiling, View};
use super::gemm::{self, MicroKernel, PackedWeights, Pass, MR, NR};

/// The transform matrices of F(m x m, 3x3), row-major: `bt` is alpha x alpha, `g` alpha x 3, `at`
/// m x alpha (alpha = m + 2).
struct Transform {
    m: usize,
    bt: &'static [f64],
    g: &'static [f64],
    at: &'static [f64],
}

#[rustfmt::skip]
const F2: Transform = Transform {
    m: 2,
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

#[rustfmt::skip]
const F4: Transform = Transform {
    m: 4,
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

/// Nonzero coefficients of a row-major matrix, per row: (column, value).
fn sparse(mat: &[f64], rows: usize, cols: usize) -> Vec<Vec<(usize, f32)>> {
    (0..rows)
        .map(|r| {
            (0..cols)
                .filter(|&c| mat[r * cols + c] != 0.0)
                .map(|c| (c, mat[r * cols + c] as f32))
                .collect()
        })
        .collect()
}

/// A 3x3 stride-1 convolution prepared for Winograd.
#[derive(Debug)]
pub struct WinogradConv {
    /// Output tile side.
    pub m: usize,
    pub alpha: usize,
    pub cin: usize,
    pub cout: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    /// One packed `cin x cout` matrix per transformed position, bias zero.
    u: Vec<PackedWeights>,
    bias: Vec<f32>,
    bt: Vec<Vec<(usize, f32)>>,
    at: Vec<Vec<(usize, f32)>>,
}

/// Output tile side for a layer: 4 where the output is wide enough for its larger tiles to pay
/// (at 17x17 a 4-tile grid pads the output to 20x20 and the 2-tile one does better), else 2.
pub fn pick_tile(out_h: usize, out_w: usize, m4_allowed: bool) -> usize {
    if m4_allowed && out_h.min(out_w) >= 32 {
        4
    } else {
        2
    }
}

impl WinogradConv {
    /// From OIHW weights `w` (3x3) and the bias, for output tile side `m` (2 or 4).
    pub fn new(
        w: &[f32],
        bias: &[f32],
        cout: usize,
        cin: usize,
        pad: (usize, usize),
        m: usize,
    ) -> Self {
        let t = if m == 4 { &F4 } else { &F2 };
        let alpha = t.m + 2;
        // U = G g G^T per (co, ci), in f64 so the transform adds no rounding of its own.
        let mut u = vec![0f32; alpha * alpha * cout * cin];
        for co in 0..cout {
            for ci in 0..cin {
                let g = &w[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
                let mut gg = vec![0f64; alpha * 3];
                for i in 0..alpha {
                    for j in 0..3 {
                        gg[i * 3 + j] = (0..3).map(|k| t.g[i * 3 + k] * g[k * 3 + j] as f64).sum();
                    }
                }
                for i in 0..alpha {
                    for j in 0..alpha {
                        let v: f64 = (0..3).map(|k| gg[i * 3 + k] * t.g[j * 3 + k]).sum();
                        u[((i * alpha + j) * cout + co) * cin + ci] = v as f32;
                    }
                }
            }
        }
        let zero = vec![0f32; cout];
        let u = (0..alpha * alpha)
            .map(|xi| {
                let base = xi * cout * cin;
                PackedWeights::pack(cin, cout, |row, col| u[base + col * cin + row], &zero)
            })
            .collect();
        Self {
            m: t.m,
            alpha,
            cin,
            cout,
            pad_h: pad.0,
            pad_w: pad.1,
            u,
            bias: bias[..cout].to_vec(),
            bt: sparse(t.bt, alpha, alpha),
            at: sparse(t.at, t.m, alpha),
        }
    }

    fn tiles(&self, oh: usize, ow: usize) -> (usize, usize) {
        (oh.div_ceil(self.m), ow.div_ceil(self.m))
    }

    /// Floats of scratch for a block of `tiles` tiles: V and M for the block, plus one tile's
    /// partial transform.
    fn scratch_floats(&self, tiles: usize) -> usize {
        let a2 = self.alpha * self.alpha;
        a2 * tiles * (self.cin + self.cout) + a2 * self.cin.max(self.cout)
    }
}

/// Bytes of a block's transformed input and GEMM output: twice the L2, the rest streams from L3.
const BLOCK_BYTES: usize = 1024 * 1024;

/// Work items (blocks of tiles, dealt out evenly in strips of [`MR`] tiles) for `threads` threads.
pub fn tiling(w: &WinogradConv, n: usize, oh: usize, ow: usize, threads: usize) -> Tiling {
    let (th, tw) = w.tiles(oh, ow);
    let tiles = n * th * tw;
    let strips = tiles.div_ceil(MR).max(1);
    let per_tile = w.alpha * w.alpha * (w.cin + w.cout) * 4;
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
            // The transforms are plain loops over channel vectors: compiled for AVX2 here they
            // run 8 lanes wide instead of the baseline's 4.
            #[cfg(target_arch = "x86_64")]
            MicroKernel::Avx2Fma => block_avx2(kernel, w, src, dst, ep, (t0, t1), (th, tw), buf),
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
    let (th, tw) = grid;
    let nt = t1 - t0;
    let a2 = w.alpha * w.alpha;
    let (cin, cout) = (w.cin, w.cout);
    let (v, rest) = buf.split_at_mut(a2 * nt * cin);
    let (mm, tmp) = rest.split_at_mut(a2 * nt * cout);
    for (i, tile) in (t0..t1).enumerate() {
        input_transform(w, src, tile, th, tw, v, nt, i, tmp);
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
        output_transform(w, dst, tile, th, tw, mm, nt, i, tmp, ep);
    }
}

/// `V[.., i, ..] = B^T d B` of tile `tile` (zero outside the input), into block row `i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    w: &WinogradConv,
    src: View,
    tile: usize,
    th: usize,
    tw: usize,
    v: &mut [f32],
    nt: usize,
    i: usize,
    tmp: &mut [f32],
) {
    let (alpha, cin) = (w.alpha, w.cin);
    let (img, rest) = (tile / (th * tw), tile % (th * tw));
    let y0 = (rest / tw * w.m) as isize - w.pad_h as isize;
    let x0 = (rest % tw * w.m) as isize - w.pad_w as isize;
    let pixel = |dy: usize, dx: usize| -> Option<&[f32]> {
        let (y, x) = (y0 + dy as isize, x0 + dx as isize);
        if y < 0 || x < 0 || y as usize >= src.h || x as usize >= src.w {
            return None;
        }
        let p = (img * src.h + y as usize) * src.w + x as usize;
        Some(std::slice::from_raw_parts(src.ptr.add(p * src.ld), cin))
    };
    // tmp[r][col] = sum_k B^T[r][k] d[k][col]
    for r in 0..alpha {
        for col in 0..alpha {
            let out = &mut tmp[(r * alpha + col) * cin..(r * alpha + col + 1) * cin];
            out.fill(0.0);
            for &(k, b) in &w.bt[r] {
                if let Some(d) = pixel(k, col) {
                    for (o, &x) in out.iter_mut().zip(d) {
                        *o += b * x;
                    }
                }
            }
        }
    }
    // V[r][s] = sum_k tmp[r][k] B^T[s][k]
    for r in 0..alpha {
        for s in 0..alpha {
            let xi = r * alpha + s;
            let out = &mut v[(xi * nt + i) * cin..(xi * nt + i + 1) * cin];
            out.fill(0.0);
            for &(k, b) in &w.bt[s] {
                let d = &tmp[(r * alpha + k) * cin..(r * alpha + k + 1) * cin];
                for (o, &x) in out.iter_mut().zip(d) {
                    *o += b * x;
                }
            }
        }
    }
}

/// `Y = A^T M A + bias` (+ what `dst` holds, ReLU, as `ep` says) of block row `i`, stored where
/// it lies inside the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    w: &WinogradConv,
    dst: View,
    tile: usize,
    th: usize,
    tw: usize,
    mm: &[f32],
    nt: usize,
    i: usize,
    tmp: &mut [f32],
    ep: gemm::Epilogue,
) {
    let (alpha, m, cout) = (w.alpha, w.m, w.cout);
    let (img, rest) = (tile / (th * tw), tile % (th * tw));
    let (oy0, ox0) = (rest / tw * m, rest % tw * m);
    // tmp[r][col] = sum_k A^T[r][k] M[k][col]
    for r in 0..m {
        for col in 0..alpha {
            let out = &mut tmp[(r * alpha + col) * cout..(r * alpha + col + 1) * cout];
            out.fill(0.0);
            for &(k, a) in &w.at[r] {
                let xi = k * alpha + col;
                let src = &mm[(xi * nt + i) * cout..(xi * nt + i + 1) * cout];
                for (o, &x) in out.iter_mut().zip(src) {
                    *o += a * x;
                }
            }
        }
    }
    for r in 0..m {
        let oy = oy0 + r;
        if oy >= dst.h {
            break;
        }
        for s in 0..m {
            let ox = ox0 + s;
            if ox >= dst.w {
                break;
            }
            let p = (img * dst.h + oy) * dst.w + ox;
            let out = std::slice::from_raw_parts_mut(dst.ptr.add(p * dst.ld), cout);
            if ep.accumulate {
                for (o, &b) in out.iter_mut().zip(&w.bias) {
                    *o += b;
                }
            } else {
                out.copy_from_slice(&w.bias);
            }
            for &(k, a) in &w.at[s] {
                let src = &tmp[(r * alpha + k) * cout..(r * alpha + k + 1) * cout];
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
