//! A CPU convolution kernel for f32 NCHW tensors: 1x1 stride-1 convolutions read the input in
//! place as the GEMM's right-hand matrix (no copy at all, channel slices of a stacked entry
//! convolution included); other shapes go through an explicit im2col. Bias and ReLU are applied
//! in one pass over the output. Anything else (other dtypes, CUDA) falls back to [`CandleConv`].

use candle_core::{DType, Device, Layout, Storage, Tensor};
use rayon::prelude::*;

use super::conv::{CandleConv, ConvKernel, FoldedConv};

#[derive(Debug, Clone, Copy)]
pub struct CpuGemmConv {
    /// Size of one tile's im2col block; sets how many output columns a tile covers.
    tile_bytes: usize,
}

/// 128 KiB of im2col per tile: fastest of 64 KiB..2 MiB on the 2-core development machine
/// (`echonet bench`, full network, 299x299, f32).
pub const DEFAULT_TILE_BYTES: usize = 128 * 1024;

impl Default for CpuGemmConv {
    fn default() -> Self {
        Self {
            tile_bytes: DEFAULT_TILE_BYTES,
        }
    }
}

impl CpuGemmConv {
    /// A kernel with a different tile size (tests use tiny tiles to exercise the tiled path).
    pub fn with_tile_bytes(tile_bytes: usize) -> Self {
        Self {
            tile_bytes: tile_bytes.max(4),
        }
    }
}

/// A CPU f32 tensor's data from its first element, or `None` off the CPU or in another dtype.
pub(super) fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => s
            .as_slice::<f32>()
            .ok()
            .map(|d| &d[layout.start_offset()..]),
        _ => None,
    }
}

impl ConvKernel for CpuGemmConv {
    fn name(&self) -> &'static str {
        "cpu-gemm"
    }

    fn forward_residual(
        &self,
        parts: &[&Tensor],
        conv: &FoldedConv,
        residual: &Tensor,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let g = conv.geometry;
        let (cout, cin_total, kh, kw) = conv.weight.dims4()?;
        let fusable = kh == 1
            && kw == 1
            && g.stride == 1
            && g.pad_h == 0
            && g.pad_w == 0
            && !conv.relu
            && conv.weight.dtype() == DType::F32
            && matches!(residual.device(), Device::Cpu)
            && residual.dtype() == DType::F32
            && parts
                .iter()
                .all(|p| matches!(p.device(), Device::Cpu) && p.dtype() == DType::F32);
        if !fusable {
            return CandleConv.forward_residual(parts, conv, residual, relu);
        }
        let (n, rc, h, w) = residual.dims4()?;
        let hw = h * w;
        if rc != cout || parts.iter().map(|p| p.dim(1).unwrap_or(0)).sum::<usize>() != cin_total {
            candle_core::bail!(
                "residual conv: channels do not add up to the weight's {cin_total} -> {cout}"
            );
        }
        // Start from the residual, accumulate each part's GEMM into it (no concatenation), then
        // add the bias and apply the ReLU in one pass.
        let mut out = residual.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let weight = conv.weight.contiguous()?;
        let bias = conv.bias.to_vec1::<f32>()?;
        let parts: Vec<Tensor> = parts
            .iter()
            .map(|p| {
                let s = p.stride();
                if p.dims4()
                    .is_ok_and(|(pn, _, ph, pw)| pn == n && ph == h && pw == w)
                    && s[3] == 1
                    && s[2] == w
                    && s[1] == hw
                {
                    Ok((*p).clone())
                } else {
                    p.contiguous()
                }
            })
            .collect::<candle_core::Result<_>>()?;
        for p in &parts {
            if p.dims4()? != (n, p.dim(1)?, h, w) {
                candle_core::bail!(
                    "residual conv: part of shape {:?} does not match {:?}",
                    p.dims(),
                    residual.dims()
                );
            }
        }
        let (w_storage, w_layout) = weight.storage_and_layout();
        let ws = cpu_f32(&w_storage, w_layout)
            .ok_or_else(|| candle_core::Error::Msg("conv weight not on CPU".into()))?;
        let threads = rayon::current_num_threads();
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let guards: Vec<_> = parts.iter().map(|p| p.storage_and_layout()).collect();
        for (b, dst) in out.chunks_exact_mut(cout * hw).enumerate() {
            let mut offset = 0;
            for (p, (storage, layout)) in parts.iter().zip(&guards) {
                let c = p.dim(1)?;
                let data = cpu_f32(storage, layout)
                    .ok_or_else(|| candle_core::Error::Msg("conv input not on CPU".into()))?;
                let frame = &data[b * layout.stride()[0]..b * layout.stride()[0] + c * hw];
                // SAFETY: dst is cout x hw dense; the weight block is cout rows of c columns
                // starting at `offset` in rows of cin_total; frame is c x hw dense. gemm reads
                // and writes dst only.
                unsafe {
                    gemm::gemm(
                        cout,
                        hw,
                        c,
                        dst.as_mut_ptr(),
                        1,
                        hw as isize,
                        true,
                        ws[offset..].as_ptr(),
                        1,
                        cin_total as isize,
                        frame.as_ptr(),
                        1,
                        hw as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
                offset += c;
            }
            dst.par_chunks_mut(hw)
                .zip(bias.par_iter())
                .for_each(|(row, &bv)| {
                    if relu {
                        row.iter_mut().for_each(|v| *v = (*v + bv).max(0.0));
                    } else {
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                });
        }
        drop(guards);
        drop(w_storage);
        Tensor::from_vec(out, (n, cout, h, w), &Device::Cpu)
    }

    fn forward(&self, x: &Tensor, conv: &FoldedConv) -> candle_core::Result<Tensor> {
        if !matches!(x.device(), Device::Cpu)
            || x.dtype() != DType::F32
            || conv.weight.dtype() != DType::F32
        {
            return CandleConv.forward(x, conv);
        }
        let (n, cin, h, w) = x.dims4()?;
        // Each frame's [C, H, W] block must be dense; the batch stride may be anything (a channel
        // slice of a larger tensor has a larger batch stride).
        let x = {
            let s = x.stride();
            if s[3] == 1 && s[2] == w && s[1] == h * w {
                x.clone()
            } else {
                x.contiguous()?
            }
        };
        let weight = conv.weight.contiguous()?;
        let (cout, wcin, kh, kw) = weight.dims4()?;
        if wcin != cin {
            candle_core::bail!("conv: input has {cin} channels, weight expects {wcin}");
        }
        let g = conv.geometry;
        let (hp, wp) = (h + 2 * g.pad_h, w + 2 * g.pad_w);
        if hp < kh || wp < kw {
            candle_core::bail!(
                "conv: {h}x{w} input (padded {hp}x{wp}) smaller than {kh}x{kw} kernel"
            );
        }
        let oh = (hp - kh) / g.stride + 1;
        let ow = (wp - kw) / g.stride + 1;
        let (ohw, k) = (oh * ow, cin * kh * kw);
        let bias = conv.bias.to_vec1::<f32>()?;

        let (x_storage, x_layout) = x.storage_and_layout();
        let xs = cpu_f32(&x_storage, x_layout)
            .ok_or_else(|| candle_core::Error::Msg("conv input not on CPU".into()))?;
        let (w_storage, w_layout) = weight.storage_and_layout();
        let ws = cpu_f32(&w_storage, w_layout)
            .ok_or_else(|| candle_core::Error::Msg("conv weight not on CPU".into()))?;
        let batch_stride = x_layout.stride()[0];
        let direct = kh == 1 && kw == 1 && g.stride == 1 && g.pad_h == 0 && g.pad_w == 0;
        let threads = rayon::current_num_threads();
        let tile = tile_columns(self.tile_bytes, k);

        let mut out = vec![0f32; n * cout * ohw];
        for (b, dst) in out.chunks_exact_mut(cout * ohw).enumerate() {
            let job = FrameConv {
                src: &xs[b * batch_stride..b * batch_stride + cin * h * w],
                h,
                w,
                kh,
                kw,
                stride: g.stride,
                pad_h: g.pad_h,
                pad_w: g.pad_w,
                ow,
                ohw,
                k,
                cout,
                weight: &ws[..cout * k],
                bias: &bias,
                relu: conv.relu,
                direct,
            };
            let dst = OutPtr(dst.as_mut_ptr());
            let tiles = ohw.div_ceil(tile);
            if threads > 1 && tiles >= 2 * threads {
                // Many output columns: tiles in parallel, each im2col tile cache-sized and its GEMM
                // single-threaded; bias and ReLU applied while the tile is still in cache.
                (0..tiles)
                    .into_par_iter()
                    .for_each_init(Vec::new, |col, t| {
                        let start = t * tile;
                        job.run_tile(
                            col,
                            start,
                            tile.min(ohw - start),
                            dst,
                            gemm::Parallelism::None,
                        );
                    });
            } else {
                let par = if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                };
                job.run_tile(&mut Vec::new(), 0, ohw, dst, par);
            }
        }
        drop(x_storage);
        drop(w_storage);
        Tensor::from_vec(out, (n, cout, oh, ow), &Device::Cpu)
    }
}

/// Output columns per tile: `tile_bytes` of im2col rows, so a tile stays in cache while its GEMM
/// and epilogue run.
fn tile_columns(tile_bytes: usize, k: usize) -> usize {
    (tile_bytes / 4 / k.max(1)).clamp(1, 4096)
}

/// The output buffer of one frame, shared by tiles that write disjoint column ranges.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tiles write disjoint columns of the buffer (see `run_tile`), and the buffer outlives
// the parallel loop that uses it.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One frame's convolution: input `[C, H, W]` dense, weight `[cout, k]`, output `[cout, ohw]`.
struct FrameConv<'a> {
    src: &'a [f32],
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
    ow: usize,
    ohw: usize,
    k: usize,
    cout: usize,
    weight: &'a [f32],
    bias: &'a [f32],
    relu: bool,
    direct: bool,
}

impl FrameConv<'_> {
    /// Computes output columns `start..start+len` of every output channel.
    fn run_tile(
        &self,
        col: &mut Vec<f32>,
        start: usize,
        len: usize,
        dst: OutPtr,
        par: gemm::Parallelism,
    ) {
        let (rhs, rhs_rs) = if self.direct {
            // 1x1, stride 1, no padding: the input planes are the GEMM's right-hand rows.
            (self.src[start..].as_ptr(), (self.h * self.w) as isize)
        } else {
            col.resize(self.k * len, 0.0);
            self.im2col(col, start, len, matches!(par, gemm::Parallelism::Rayon(_)));
            (col.as_ptr(), len as isize)
        };
        // SAFETY: weight is cout x k dense; rhs rows are k x len within src/col (for the direct
        // case row r spans src[r*hw + start .. + len], inside the frame as start+len <= hw); dst
        // columns start..start+len of cout rows of length ohw lie inside the frame's output, and
        // no other tile writes them.
        unsafe {
            let d = dst.0.add(start);
            gemm::gemm(
                self.cout,
                len,
                self.k,
                d,
                1,
                self.ohw as isize,
                false,
                self.weight.as_ptr(),
                1,
                self.k as isize,
                rhs,
                1,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
            for (r, &b) in self.bias.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(d.add(r * self.ohw), len);
                if self.relu {
                    row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                } else {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        }
    }

    /// Unfolds output columns `start..start+len` into `col` `[k, len]`, zero-padding the border.
    fn im2col(&self, col: &mut [f32], start: usize, len: usize, parallel: bool) {
        let fill_row = |idx: usize, row: &mut [f32]| {
            let (c, ky, kx) = (
                idx / (self.kh * self.kw),
                (idx / self.kw) % self.kh,
                idx % self.kw,
            );
            let plane = &self.src[c * self.h * self.w..(c + 1) * self.h * self.w];
            let mut p = start;
            let end = start + len;
            while p < end {
                let (oy, ox0) = (p / self.ow, p % self.ow);
                let ox1 = self.ow.min(ox0 + (end - p));
                let out = &mut row[p - start..p - start + (ox1 - ox0)];
                p += ox1 - ox0;
                let iy = (oy * self.stride + ky) as isize - self.pad_h as isize;
                if iy < 0 || iy >= self.h as isize {
                    out.fill(0.0);
                    continue;
                }
                let line = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                if self.stride == 1 {
                    // Output columns ox whose input column ox + kx - pad_w lies inside the line.
                    let lo = self.pad_w.saturating_sub(kx).clamp(ox0, ox1);
                    let hi = (self.w + self.pad_w).saturating_sub(kx).clamp(lo, ox1);
                    out[..lo - ox0].fill(0.0);
                    out[hi - ox0..].fill(0.0);
                    if hi > lo {
                        let s = lo + kx - self.pad_w;
                        out[lo - ox0..hi - ox0].copy_from_slice(&line[s..s + (hi - lo)]);
                    }
                } else {
                    for (o, ox) in out.iter_mut().zip(ox0..ox1) {
                        let ix = (ox * self.stride + kx) as isize - self.pad_w as isize;
                        *o = if ix >= 0 && (ix as usize) < self.w {
                            line[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        };
        if parallel {
            col.par_chunks_mut(len)
                .enumerate()
                .for_each(|(i, row)| fill_row(i, row));
        } else {
            col.chunks_mut(len)
                .enumerate()
                .for_each(|(i, row)| fill_row(i, row));
        }
    }
}
