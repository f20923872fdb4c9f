//! A CPU convolution kernel for f32 NCHW tensors: 1x1 stride-1 convolutions read the input in
//! place as the GEMM's right-hand matrix (no copy at all, channel slices of a stacked entry
//! convolution included); other shapes go through an explicit im2col. Bias and ReLU are applied
//! in one pass over the output. Anything else (other dtypes, CUDA) falls back to [`CandleConv`].

use candle_core::{DType, Device, Layout, Storage, Tensor};
use rayon::prelude::*;

use super::conv::{CandleConv, ConvKernel, FoldedConv};

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuGemmConv;

/// Rows of im2col (or of output) handled per rayon task; small enough to split work over cores,
/// large enough that task overhead stays negligible.
const ROWS_PER_TASK: usize = 8;

fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
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

        let mut out = vec![0f32; n * cout * ohw];
        let mut col = if direct {
            Vec::new()
        } else {
            vec![0f32; k * ohw]
        };
        for (b, dst) in out.chunks_exact_mut(cout * ohw).enumerate() {
            let src = &xs[b * batch_stride..b * batch_stride + cin * h * w];
            let rhs: &[f32] = if direct {
                src
            } else {
                im2col(
                    src, &mut col, cin, h, w, kh, kw, g.stride, g.pad_h, g.pad_w, oh, ow,
                );
                &col
            };
            // SAFETY: dst is cout x ohw (row-major), weight cout x k, rhs k x ohw, all dense and
            // in bounds as sized above; gemm writes only dst.
            unsafe {
                gemm::gemm(
                    cout,
                    ohw,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    ohw as isize,
                    false,
                    ws.as_ptr(),
                    1,
                    k as isize,
                    rhs.as_ptr(),
                    1,
                    ohw as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    if threads > 1 {
                        gemm::Parallelism::Rayon(threads)
                    } else {
                        gemm::Parallelism::None
                    },
                );
            }
            let relu = conv.relu;
            dst.par_chunks_mut(ohw * ROWS_PER_TASK)
                .enumerate()
                .for_each(|(chunk, rows)| {
                    for (r, row) in rows.chunks_exact_mut(ohw).enumerate() {
                        let bias = bias[chunk * ROWS_PER_TASK + r];
                        if relu {
                            row.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
                        } else {
                            row.iter_mut().for_each(|v| *v += bias);
                        }
                    }
                });
        }
        drop(x_storage);
        drop(w_storage);
        Tensor::from_vec(out, (n, cout, oh, ow), &Device::Cpu)
    }
}

/// Unfolds one frame `[C, H, W]` into `[C*kh*kw, oh*ow]` with zero padding.
#[allow(clippy::too_many_arguments)]
fn im2col(
    src: &[f32],
    col: &mut [f32],
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
    oh: usize,
    ow: usize,
) {
    let ohw = oh * ow;
    col.par_chunks_mut(ohw * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (r, row) in rows.chunks_exact_mut(ohw).enumerate() {
                let idx = chunk * ROWS_PER_TASK + r;
                let (c, ky, kx) = (idx / (kh * kw), (idx / kw) % kh, idx % kw);
                debug_assert!(c < cin);
                let plane = &src[c * h * w..(c + 1) * h * w];
                for oy in 0..oh {
                    let out = &mut row[oy * ow..(oy + 1) * ow];
                    let iy = (oy * stride + ky) as isize - pad_h as isize;
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                    if stride == 1 {
                        // Output columns whose input column ox + kx - pad_w lies inside the row.
                        let lo = pad_w.saturating_sub(kx).min(ow);
                        let hi = (w + pad_w).saturating_sub(kx).min(ow).max(lo);
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        let start = lo + kx - pad_w;
                        out[lo..hi].copy_from_slice(&line[start..start + (hi - lo)]);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * stride + kx) as isize - pad_w as isize;
                            *o = if ix >= 0 && (ix as usize) < w {
                                line[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        });
}
