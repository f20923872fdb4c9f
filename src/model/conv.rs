//! The convolution seam. Every convolution of the network is a [`FoldedConv`] (BatchNorm already
//! folded into weight and bias, optional ReLU) and runs through a [`ConvKernel`]. The default
//! kernel is candle's own `conv2d`; a faster implementation (a direct CPU kernel, cuDNN, ...) plugs
//! in by implementing the trait, and is checked against [`CandleConv`] by the property tests.

use std::fmt::Debug;

use candle_core::{DType, Device, Module, Tensor, D};

use super::arch::BN_EPS;

/// Where a convolution's window goes: one stride for both axes, separate zero padding per axis
/// (Block17's 1x7/7x1 and Block8's 1x3/3x1 convolutions pad only one axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
}

impl Geometry {
    pub const fn unit() -> Self {
        Self {
            stride: 1,
            pad_h: 0,
            pad_w: 0,
        }
    }
    pub const fn stride(stride: usize) -> Self {
        Self {
            stride,
            pad_h: 0,
            pad_w: 0,
        }
    }
    pub const fn pad(pad_h: usize, pad_w: usize) -> Self {
        Self {
            stride: 1,
            pad_h,
            pad_w,
        }
    }
}

/// A convolution with bias and optional ReLU, in inference form.
#[derive(Debug, Clone)]
pub struct FoldedConv {
    /// `[out, in, kh, kw]`, in the run dtype, on the run device.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Tensor,
    pub geometry: Geometry,
    pub relu: bool,
}

impl FoldedConv {
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// Computes a [`FoldedConv`] on an NCHW tensor.
pub trait ConvKernel: Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn forward(&self, x: &Tensor, conv: &FoldedConv) -> candle_core::Result<Tensor>;

    /// True when the model should run the whole trunk through the prepared CPU plan
    /// (`crate::model::cpu_plan`) wherever it applies (f32 on the CPU); this kernel then serves
    /// only the other cases. Decided once, at load.
    fn prefers_cpu_plan(&self) -> bool {
        false
    }

    /// A residual block's closing step, `relu?(residual + conv(cat(parts, channels)))`, with
    /// `conv` a 1x1 up-projection. This default concatenates and adds with candle ops; a kernel
    /// may fuse the concatenation, the addition and the ReLU into its GEMM.
    fn forward_residual(
        &self,
        parts: &[&Tensor],
        conv: &FoldedConv,
        residual: &Tensor,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let mixed = Tensor::cat(parts, 1)?;
        let y = (self.forward(&mixed, conv)? + residual)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// candle's `conv2d` (im2col + gemm on the CPU, cuBLAS/kernels on CUDA), bias and ReLU added after.
#[derive(Debug, Default, Clone, Copy)]
pub struct CandleConv;

impl ConvKernel for CandleConv {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn forward(&self, x: &Tensor, conv: &FoldedConv) -> candle_core::Result<Tensor> {
        let g = conv.geometry;
        // candle pads both axes alike; one-axis padding is done explicitly.
        let (x, padding) = if g.pad_h == g.pad_w {
            (x.clone(), g.pad_h)
        } else {
            (
                x.pad_with_zeros(D::Minus2, g.pad_h, g.pad_h)?
                    .pad_with_zeros(D::Minus1, g.pad_w, g.pad_w)?,
                0,
            )
        };
        let y = x.conv2d(&conv.weight, padding, g.stride, 1, 1)?;
        let y = y.broadcast_add(&conv.bias.reshape((1, conv.out_channels(), 1, 1))?)?;
        if conv.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// BatchNorm parameters of one layer (f32, CPU).
pub struct BatchNormParams {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
}

impl BatchNormParams {
    /// Per-channel (scale, shift) such that bn(y) = y*scale + shift.
    pub fn scale_shift(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let scale = self.gamma.div(&(self.var.clone() + BN_EPS)?.sqrt()?)?;
        let shift = self.beta.sub(&self.mean.mul(&scale)?)?;
        Ok((scale, shift))
    }
}

/// A bias-free convolution followed by BatchNorm, as one weight and bias (f32, CPU).
pub fn fold_conv_bn(
    weight: &Tensor,
    bn: &BatchNormParams,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (scale, shift) = bn.scale_shift()?;
    let out = weight.dims()[0];
    let w = weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
    Ok((w, shift))
}

/// Several convolutions that read the same input stacked into one (outputs concatenated in order).
pub fn stack_outputs(parts: &[(Tensor, Tensor)]) -> candle_core::Result<(Tensor, Tensor)> {
    let ws: Vec<&Tensor> = parts.iter().map(|(w, _)| w).collect();
    let bs: Vec<&Tensor> = parts.iter().map(|(_, b)| b).collect();
    Ok((Tensor::cat(&ws, 0)?, Tensor::cat(&bs, 0)?))
}

/// Moves folded f32 parameters to the run device and dtype.
pub fn place(
    (w, b): (Tensor, Tensor),
    geometry: Geometry,
    relu: bool,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<FoldedConv> {
    Ok(FoldedConv {
        weight: w.to_dtype(dtype)?.to_device(device)?,
        bias: b.to_dtype(dtype)?.to_device(device)?,
        geometry,
        relu,
    })
}

/// A dense layer `y = x W^T + b` in inference form (the bottleneck with its BatchNorm folded in, or
/// the stacked task heads).
#[derive(Debug, Clone)]
pub struct FoldedLinear {
    /// `[in, out]`, already transposed for a plain matmul.
    pub weight_t: Tensor,
    /// `[out]`.
    pub bias: Tensor,
}

impl FoldedLinear {
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            weight_t: weight
                .t()?
                .contiguous()?
                .to_dtype(dtype)?
                .to_device(device)?,
            bias: bias.to_dtype(dtype)?.to_device(device)?,
        })
    }
}

impl Module for FoldedLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}
