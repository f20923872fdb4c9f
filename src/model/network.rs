//! InceptionResNet-v1 in inference form: the trunk of facenet-pytorch's `InceptionResnetV1` (the
//! EchoNet backbone) with every BatchNorm folded into its convolution at load time, the 1x1
//! convolutions that share an input stacked into one, and residual scales folded into the
//! up-projection. Parameter names are those of facenet-pytorch, so its state dicts load unchanged.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use super::arch::{
    Architecture, Channels, BLOCK17_REPEATS, BLOCK17_SCALE, BLOCK35_REPEATS, BLOCK35_SCALE,
    BLOCK8_REPEATS, BLOCK8_SCALE,
};
use super::conv::{
    fold_conv_bn, place, stack_outputs, BatchNormParams, ConvKernel, FoldedConv, FoldedLinear,
    Geometry,
};
use super::error::Result;
use super::weights::WeightStore;

/// Reads parameters out of a [`WeightStore`] and places them on the run device.
struct Loader<'a> {
    store: &'a WeightStore,
    device: &'a Device,
    dtype: DType,
}

impl Loader<'_> {
    fn bn(&self, prefix: &str, channels: usize) -> Result<BatchNormParams> {
        let num_batches = format!("{prefix}.num_batches_tracked");
        if self.store.contains(&num_batches) {
            // A training counter with no effect on inference; accepted so state dicts load as saved.
            self.store.take(&num_batches, &[])?;
        }
        Ok(BatchNormParams {
            gamma: self.store.take(&format!("{prefix}.weight"), &[channels])?,
            beta: self.store.take(&format!("{prefix}.bias"), &[channels])?,
            mean: self
                .store
                .take(&format!("{prefix}.running_mean"), &[channels])?,
            var: self
                .store
                .take(&format!("{prefix}.running_var"), &[channels])?,
        })
    }

    /// A facenet `BasicConv2d` (bias-free conv + BatchNorm) folded to (weight, bias), f32 on the CPU.
    fn basic(
        &self,
        prefix: &str,
        cin: usize,
        cout: usize,
        kh: usize,
        kw: usize,
    ) -> Result<(Tensor, Tensor)> {
        let w = self
            .store
            .take(&format!("{prefix}.conv.weight"), &[cout, cin, kh, kw])?;
        let bn = self.bn(&format!("{prefix}.bn"), cout)?;
        Ok(fold_conv_bn(&w, &bn)?)
    }

    /// A plain biased conv (the residual up-projection), multiplied by the block's residual scale.
    fn scaled_up(
        &self,
        prefix: &str,
        cin: usize,
        cout: usize,
        scale: f32,
    ) -> Result<(Tensor, Tensor)> {
        let w = self
            .store
            .take(&format!("{prefix}.weight"), &[cout, cin, 1, 1])?;
        let b = self.store.take(&format!("{prefix}.bias"), &[cout])?;
        Ok(((w * scale as f64)?, (b * scale as f64)?))
    }

    fn place(&self, wb: (Tensor, Tensor), geometry: Geometry, relu: bool) -> Result<FoldedConv> {
        Ok(place(wb, geometry, relu, self.device, self.dtype)?)
    }

    fn conv(
        &self,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: (usize, usize),
        g: Geometry,
    ) -> Result<FoldedConv> {
        let wb = self.basic(prefix, cin, cout, k.0, k.1)?;
        self.place(wb, g, true)
    }
}

/// Splits the stacked entry convolution's output back into its branches.
fn split_channels(x: &Tensor, sizes: &[usize]) -> candle_core::Result<Vec<Tensor>> {
    let mut start = 0;
    let mut parts = Vec::with_capacity(sizes.len());
    for &n in sizes {
        parts.push(x.narrow(1, start, n)?);
        start += n;
    }
    Ok(parts)
}

fn max_pool_3s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride(3, 2)
}

/// 35x35 residual block (`repeat_1.*`).
#[derive(Debug)]
pub struct Block35 {
    pub(crate) entry: FoldedConv,
    pub(crate) branch1_1: FoldedConv,
    pub(crate) branch2_1: FoldedConv,
    pub(crate) branch2_2: FoldedConv,
    pub(crate) up: FoldedConv,
    pub(crate) width: usize,
}

impl Block35 {
    fn load(l: &Loader, p: &str, c: &Channels) -> Result<Self> {
        let b = c.b35;
        let entry = stack_outputs(&[
            l.basic(&format!("{p}.branch0"), c.c4b, b, 1, 1)?,
            l.basic(&format!("{p}.branch1.0"), c.c4b, b, 1, 1)?,
            l.basic(&format!("{p}.branch2.0"), c.c4b, b, 1, 1)?,
        ])?;
        Ok(Self {
            entry: l.place(entry, Geometry::unit(), true)?,
            branch1_1: l.conv(&format!("{p}.branch1.1"), b, b, (3, 3), Geometry::pad(1, 1))?,
            branch2_1: l.conv(&format!("{p}.branch2.1"), b, b, (3, 3), Geometry::pad(1, 1))?,
            branch2_2: l.conv(&format!("{p}.branch2.2"), b, b, (3, 3), Geometry::pad(1, 1))?,
            up: l.place(
                l.scaled_up(&format!("{p}.conv2d"), 3 * b, c.c4b, BLOCK35_SCALE)?,
                Geometry::unit(),
                false,
            )?,
            width: b,
        })
    }

    fn forward(&self, k: &dyn ConvKernel, x: &Tensor) -> candle_core::Result<Tensor> {
        let e = k.forward(x, &self.entry)?;
        let [b0, b1, b2]: [Tensor; 3] = split_channels(&e, &[self.width; 3])?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("block35 split".into()))?;
        let b1 = k.forward(&b1, &self.branch1_1)?;
        let b2 = k.forward(&k.forward(&b2, &self.branch2_1)?, &self.branch2_2)?;
        k.forward_residual(&[&b0, &b1, &b2], &self.up, x, true)
    }
}

/// The residual block with a factorised branch: branch0 is a 1x1 convolution, branch1 a 1x1 then
/// a 1xk and a kx1 convolution. Block17 (`repeat_2.*`, k = 7) and Block8 (`repeat_3.*` and the
/// final `block8`, k = 3, the last without ReLU and with scale 1) are this block.
#[derive(Debug)]
pub struct FactorisedBlock {
    pub(crate) entry: FoldedConv,
    pub(crate) branch1_1: FoldedConv,
    pub(crate) branch1_2: FoldedConv,
    pub(crate) up: FoldedConv,
    pub(crate) width: usize,
    pub(crate) relu: bool,
}

/// How one kind of factorised block is shaped.
struct FactorisedShape {
    /// Channels in and out of the block.
    channels: usize,
    /// Channels of each branch.
    branch: usize,
    /// Length of the 1xk / kx1 kernels.
    k: usize,
    scale: f32,
    relu: bool,
}

impl FactorisedBlock {
    fn load(l: &Loader, p: &str, s: &FactorisedShape) -> Result<Self> {
        let (c, b, k) = (s.channels, s.branch, s.k);
        let entry = stack_outputs(&[
            l.basic(&format!("{p}.branch0"), c, b, 1, 1)?,
            l.basic(&format!("{p}.branch1.0"), c, b, 1, 1)?,
        ])?;
        Ok(Self {
            entry: l.place(entry, Geometry::unit(), true)?,
            branch1_1: l.conv(
                &format!("{p}.branch1.1"),
                b,
                b,
                (1, k),
                Geometry::pad(0, k / 2),
            )?,
            branch1_2: l.conv(
                &format!("{p}.branch1.2"),
                b,
                b,
                (k, 1),
                Geometry::pad(k / 2, 0),
            )?,
            up: l.place(
                l.scaled_up(&format!("{p}.conv2d"), 2 * b, c, s.scale)?,
                Geometry::unit(),
                false,
            )?,
            width: b,
            relu: s.relu,
        })
    }

    fn forward(&self, k: &dyn ConvKernel, x: &Tensor) -> candle_core::Result<Tensor> {
        let e = k.forward(x, &self.entry)?;
        let b0 = e.narrow(1, 0, self.width)?;
        let b1 = e.narrow(1, self.width, self.width)?;
        let b1 = k.forward(&k.forward(&b1, &self.branch1_1)?, &self.branch1_2)?;
        k.forward_residual(&[&b0, &b1], &self.up, x, self.relu)
    }
}

/// Reduction 35 -> 17 (`mixed_6a`).
#[derive(Debug)]
pub struct Mixed6a {
    pub(crate) branch0: FoldedConv,
    pub(crate) branch1_0: FoldedConv,
    pub(crate) branch1_1: FoldedConv,
    pub(crate) branch1_2: FoldedConv,
}

impl Mixed6a {
    fn load(l: &Loader, c: &Channels) -> Result<Self> {
        Ok(Self {
            branch0: l.conv(
                "mixed_6a.branch0",
                c.c4b,
                c.m6a_b0,
                (3, 3),
                Geometry::stride(2),
            )?,
            branch1_0: l.conv(
                "mixed_6a.branch1.0",
                c.c4b,
                c.m6a_b1_mid,
                (1, 1),
                Geometry::unit(),
            )?,
            branch1_1: l.conv(
                "mixed_6a.branch1.1",
                c.m6a_b1_mid,
                c.m6a_b1_mid,
                (3, 3),
                Geometry::pad(1, 1),
            )?,
            branch1_2: l.conv(
                "mixed_6a.branch1.2",
                c.m6a_b1_mid,
                c.m6a_b1_out,
                (3, 3),
                Geometry::stride(2),
            )?,
        })
    }

    fn forward(&self, k: &dyn ConvKernel, x: &Tensor) -> candle_core::Result<Tensor> {
        let b0 = k.forward(x, &self.branch0)?;
        let b1 = k.forward(x, &self.branch1_0)?;
        let b1 = k.forward(&k.forward(&b1, &self.branch1_1)?, &self.branch1_2)?;
        let b2 = max_pool_3s2(x)?;
        Tensor::cat(&[&b0, &b1, &b2], 1)
    }
}

/// Reduction 17 -> 8 (`mixed_7a`).
#[derive(Debug)]
pub struct Mixed7a {
    pub(crate) entry: FoldedConv,
    pub(crate) branch0_1: FoldedConv,
    pub(crate) branch1_1: FoldedConv,
    pub(crate) branch2_1: FoldedConv,
    pub(crate) branch2_2: FoldedConv,
    pub(crate) mid: usize,
}

impl Mixed7a {
    fn load(l: &Loader, c: &Channels) -> Result<Self> {
        let m = c.m7a_mid;
        let entry = stack_outputs(&[
            l.basic("mixed_7a.branch0.0", c.c6, m, 1, 1)?,
            l.basic("mixed_7a.branch1.0", c.c6, m, 1, 1)?,
            l.basic("mixed_7a.branch2.0", c.c6, m, 1, 1)?,
        ])?;
        Ok(Self {
            entry: l.place(entry, Geometry::unit(), true)?,
            branch0_1: l.conv(
                "mixed_7a.branch0.1",
                m,
                c.m7a_b0_out,
                (3, 3),
                Geometry::stride(2),
            )?,
            branch1_1: l.conv(
                "mixed_7a.branch1.1",
                m,
                c.m7a_b1_out,
                (3, 3),
                Geometry::stride(2),
            )?,
            branch2_1: l.conv("mixed_7a.branch2.1", m, m, (3, 3), Geometry::pad(1, 1))?,
            branch2_2: l.conv(
                "mixed_7a.branch2.2",
                m,
                c.m7a_b2_out,
                (3, 3),
                Geometry::stride(2),
            )?,
            mid: m,
        })
    }

    fn forward(&self, k: &dyn ConvKernel, x: &Tensor) -> candle_core::Result<Tensor> {
        let e = k.forward(x, &self.entry)?;
        let m = self.mid;
        let b0 = k.forward(&e.narrow(1, 0, m)?, &self.branch0_1)?;
        let b1 = k.forward(&e.narrow(1, m, m)?, &self.branch1_1)?;
        let b2 = k.forward(
            &k.forward(&e.narrow(1, 2 * m, m)?, &self.branch2_1)?,
            &self.branch2_2,
        )?;
        let b3 = max_pool_3s2(x)?;
        Tensor::cat(&[&b0, &b1, &b2, &b3], 1)
    }
}

/// The trunk up to the pooled features, plus the optional `last_linear` + `last_bn` bottleneck.
#[derive(Debug)]
pub struct InceptionResnetV1 {
    pub(crate) arch: Architecture,
    pub(crate) channels: Channels,
    pub(crate) input_channels: usize,
    pub(crate) conv2d_1a: FoldedConv,
    /// `conv2d_1a` with its weights summed over input channels: the exact response of the RGB stem
    /// to a grey frame replicated into every channel (conv2d_1a has no padding, so no border term).
    pub(crate) conv2d_1a_grey: Option<FoldedConv>,
    pub(crate) conv2d_2a: FoldedConv,
    pub(crate) conv2d_2b: FoldedConv,
    pub(crate) conv2d_3b: FoldedConv,
    pub(crate) conv2d_4a: FoldedConv,
    pub(crate) conv2d_4b: FoldedConv,
    pub(crate) repeat_1: Vec<Block35>,
    pub(crate) mixed_6a: Mixed6a,
    pub(crate) repeat_2: Vec<FactorisedBlock>,
    pub(crate) mixed_7a: Mixed7a,
    pub(crate) repeat_3: Vec<FactorisedBlock>,
    pub(crate) block8: FactorisedBlock,
    pub(crate) bottleneck: Option<FoldedLinear>,
    pub(crate) kernel: Arc<dyn ConvKernel>,
}

impl InceptionResnetV1 {
    /// Builds the network from `store`, taking every parameter it needs (by facenet name and shape).
    pub fn load(
        arch: &Architecture,
        input_channels: usize,
        store: &WeightStore,
        device: &Device,
        dtype: DType,
        kernel: Arc<dyn ConvKernel>,
    ) -> Result<Self> {
        let c = arch.channels();
        let l = Loader {
            store,
            device,
            dtype,
        };
        let stem = l.basic("conv2d_1a", input_channels, c.c1a, 3, 3)?;
        let conv2d_1a_grey = if input_channels > 1 {
            let w = stem.0.sum_keepdim(1)?;
            Some(l.place((w, stem.1.clone()), Geometry::stride(2), true)?)
        } else {
            None
        };
        let block17 = FactorisedShape {
            channels: c.c6,
            branch: c.b17,
            k: 7,
            scale: BLOCK17_SCALE,
            relu: true,
        };
        let block8 = FactorisedShape {
            channels: c.c7,
            branch: c.b8,
            k: 3,
            scale: BLOCK8_SCALE,
            relu: true,
        };
        let net = Self {
            arch: arch.clone(),
            channels: c,
            input_channels,
            conv2d_1a: l.place(stem, Geometry::stride(2), true)?,
            conv2d_1a_grey,
            conv2d_2a: l.conv("conv2d_2a", c.c1a, c.c2a, (3, 3), Geometry::unit())?,
            conv2d_2b: l.conv("conv2d_2b", c.c2a, c.c2b, (3, 3), Geometry::pad(1, 1))?,
            conv2d_3b: l.conv("conv2d_3b", c.c2b, c.c3b, (1, 1), Geometry::unit())?,
            conv2d_4a: l.conv("conv2d_4a", c.c3b, c.c4a, (3, 3), Geometry::unit())?,
            conv2d_4b: l.conv("conv2d_4b", c.c4a, c.c4b, (3, 3), Geometry::stride(2))?,
            repeat_1: (0..BLOCK35_REPEATS)
                .map(|i| Block35::load(&l, &format!("repeat_1.{i}"), &c))
                .collect::<Result<_>>()?,
            mixed_6a: Mixed6a::load(&l, &c)?,
            repeat_2: (0..BLOCK17_REPEATS)
                .map(|i| FactorisedBlock::load(&l, &format!("repeat_2.{i}"), &block17))
                .collect::<Result<_>>()?,
            mixed_7a: Mixed7a::load(&l, &c)?,
            repeat_3: (0..BLOCK8_REPEATS)
                .map(|i| FactorisedBlock::load(&l, &format!("repeat_3.{i}"), &block8))
                .collect::<Result<_>>()?,
            block8: FactorisedBlock::load(
                &l,
                "block8",
                &FactorisedShape {
                    scale: 1.0,
                    relu: false,
                    ..block8
                },
            )?,
            bottleneck: match arch.embedding {
                None => None,
                Some(e) => {
                    let w = store.take("last_linear.weight", &[e, c.c7])?;
                    let (scale, shift) = l.bn("last_bn", e)?.scale_shift()?;
                    let w = w.broadcast_mul(&scale.reshape((e, 1))?)?;
                    Some(FoldedLinear::new(&w, &shift, device, dtype)?)
                }
            },
            kernel,
        };
        Ok(net)
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    pub fn input_channels(&self) -> usize {
        self.input_channels
    }

    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name()
    }

    /// Pooled features `[N, c7]` of a normalised batch `[N, C, H, W]`; C is the stem's channel
    /// count, or 1 for a grey frame fed to an RGB stem.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.kernel.as_ref();
        let stem = match (x.dim(1)?, &self.conv2d_1a_grey) {
            (1, Some(grey)) => grey,
            _ => &self.conv2d_1a,
        };
        let mut x = k.forward(x, stem)?;
        x = k.forward(&x, &self.conv2d_2a)?;
        x = k.forward(&x, &self.conv2d_2b)?;
        x = max_pool_3s2(&x)?;
        x = k.forward(&x, &self.conv2d_3b)?;
        x = k.forward(&x, &self.conv2d_4a)?;
        x = k.forward(&x, &self.conv2d_4b)?;
        for b in &self.repeat_1 {
            x = b.forward(k, &x)?;
        }
        x = self.mixed_6a.forward(k, &x)?;
        for b in &self.repeat_2 {
            x = b.forward(k, &x)?;
        }
        x = self.mixed_7a.forward(k, &x)?;
        for b in &self.repeat_3 {
            x = b.forward(k, &x)?;
        }
        x = self.block8.forward(k, &x)?;
        x.flatten_from(2)?.mean(2)
    }

    /// What the task heads read: the bottleneck output when present (no L2 normalisation, unlike
    /// facenet's embedding mode), else the pooled features themselves.
    pub fn head_input(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match &self.bottleneck {
            Some(b) => b.forward(features),
            None => Ok(features.clone()),
        }
    }
}
