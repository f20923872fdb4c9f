//! Differentiable 3x3 stride-2 max-pooling without padding (`maxpool_3a`, and the pooling branches
//! of `mixed_6a` and `mixed_7a`). candle's own `max_pool2d` has a backward pass only when kernel
//! equals stride, so this one is made of ops that all have one: three strided row selections
//! (`index_select`) reduced with `maximum`, then the same over columns. The max of a 3x3 window is
//! the max over its columns of the max over its rows, and float `max` is exact, so the forward
//! equals `max_pool2d_with_stride(3, 2)` bit for bit.
//!
//! Ties: candle's `maximum` backward gives each of two equal operands half the gradient, so tied
//! window entries share it (not evenly when three tie: the pairwise reduction gives 1/4, 1/4, 1/2)
//! and the total is preserved; PyTorch instead gives all of it to the first maximum. In the network
//! every pooled input comes out of a ReLU, where ties are mostly zeros whose ReLU gradient is zero
//! anyway, so the choice does not change a trained network.

use candle_core::{Result, Tensor};

const KERNEL: usize = 3;
const STRIDE: usize = 2;

/// `max_pool2d_with_stride(3, 2)` of an `[N, C, H, W]` tensor, with a backward pass.
pub fn max_pool_3s2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h < KERNEL || w < KERNEL {
        candle_core::bail!("max-pool 3x3/2 needs at least 3x3 input, got {h}x{w}");
    }
    let rows = strided_window_max(x, 2, h)?;
    strided_window_max(&rows, 3, w)
}

/// Along `dim` (length `len`): out[i] = max(x[2i], x[2i+1], x[2i+2]).
fn strided_window_max(x: &Tensor, dim: usize, len: usize) -> Result<Tensor> {
    let out = (len - KERNEL) / STRIDE + 1;
    let tap = |offset: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..out).map(|i| (offset + STRIDE * i) as u32).collect();
        x.index_select(&Tensor::from_vec(idx, out, x.device())?, dim)
    };
    tap(0)?.maximum(&tap(1)?)?.maximum(&tap(2)?)
}
