//! InceptionResNet-v1 in inference form, built from the architecture table
//! ([`Architecture::trunk`]): the trunk of facenet-pytorch's `InceptionResnetV1` (the EchoNet
//! backbone) with every BatchNorm folded into its convolution at load time, the 1x1 convolutions
//! that open a block's branches stacked into one (they read the same input), and residual scales
//! folded into the up-projection. Parameter names come from the table, so facenet-pytorch state
//! dicts load unchanged.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use super::arch::{Architecture, BlockSpec, ConvSpec, JoinSpec, StageSpec, UpSpec};
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
    fn basic(&self, spec: &ConvSpec) -> Result<(Tensor, Tensor)> {
        let (kh, kw) = spec.kernel;
        let w = self.store.take(
            &format!("{}.conv.weight", spec.name),
            &[spec.cout, spec.cin, kh, kw],
        )?;
        let bn = self.bn(&format!("{}.bn", spec.name), spec.cout)?;
        Ok(fold_conv_bn(&w, &bn)?)
    }

    /// The residual up-projection (a plain biased 1x1 conv), multiplied by the block's scale.
    fn scaled_up(&self, up: &UpSpec) -> Result<(Tensor, Tensor)> {
        let w = self
            .store
            .take(&format!("{}.weight", up.name), &[up.cout, up.cin, 1, 1])?;
        let b = self.store.take(&format!("{}.bias", up.name), &[up.cout])?;
        let scale = up.scale as f64;
        Ok(((w * scale)?, (b * scale)?))
    }

    fn place(&self, wb: (Tensor, Tensor), geometry: Geometry, relu: bool) -> Result<FoldedConv> {
        Ok(place(wb, geometry, relu, self.device, self.dtype)?)
    }

    /// A `BasicConv2d` with its ReLU, on the run device.
    fn conv(&self, spec: &ConvSpec) -> Result<FoldedConv> {
        let wb = self.basic(spec)?;
        self.place(wb, geometry(spec), true)
    }
}

fn geometry(spec: &ConvSpec) -> Geometry {
    Geometry {
        stride: spec.stride,
        pad_h: spec.pad.0,
        pad_w: spec.pad.1,
    }
}

fn max_pool_3s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride(3, 2)
}

/// A convolution with the facenet name it was loaded from.
#[derive(Debug)]
pub struct NamedConv {
    pub name: String,
    pub conv: FoldedConv,
}

/// One branch of a [`Block`].
#[derive(Debug)]
pub struct Branch {
    /// This branch's channels `(offset, width)` in the block's stacked entry output, when the
    /// branch opens with a 1x1 convolution (folded into the entry); None when it reads the block's
    /// input itself.
    pub entry: Option<(usize, usize)>,
    /// The branch's remaining convolutions, in order.
    pub convs: Vec<NamedConv>,
}

/// How a [`Block`] joins its branches.
#[derive(Debug)]
pub enum Join {
    /// The up-projection (scale folded in, no ReLU of its own) added to the block's input, then
    /// ReLU when `relu`.
    Residual { up: FoldedConv, relu: bool },
    /// Concatenated with a 3x3/2 max-pool of the input, last.
    Pool,
}

/// An Inception block (Block35, Block17, Block8, Mixed_6a, Mixed_7a) as the table gives it.
#[derive(Debug)]
pub struct Block {
    /// The table's short name ("block35", ...), for profiles.
    pub kind: &'static str,
    /// The 1x1 convolutions opening the branches, stacked into one (outputs in branch order).
    pub entry: Option<FoldedConv>,
    pub branches: Vec<Branch>,
    pub join: Join,
}

impl Block {
    fn load(l: &Loader, spec: &BlockSpec) -> Result<Self> {
        // Parameters are taken in the order the synthetic store draws them in: the first
        // convolution of every branch, then the rest branch by branch, then the up-projection.
        let mut entry_parts = Vec::new();
        let mut offset = 0;
        let mut firsts = Vec::with_capacity(spec.branches.len());
        for convs in &spec.branches {
            firsts.push(match convs.first() {
                Some(first) if first.is_pointwise() => {
                    entry_parts.push(l.basic(first)?);
                    offset += first.cout;
                    (Some((offset - first.cout, first.cout)), None)
                }
                Some(first) => (
                    None,
                    Some(NamedConv {
                        name: first.name.clone(),
                        conv: l.conv(first)?,
                    }),
                ),
                None => (None, None),
            });
        }
        let mut branches = Vec::with_capacity(spec.branches.len());
        for (convs, (entry, first)) in spec.branches.iter().zip(firsts) {
            let mut loaded: Vec<NamedConv> = first.into_iter().collect();
            for c in convs.iter().skip(1) {
                loaded.push(NamedConv {
                    name: c.name.clone(),
                    conv: l.conv(c)?,
                });
            }
            branches.push(Branch {
                entry,
                convs: loaded,
            });
        }
        let entry = if entry_parts.is_empty() {
            None
        } else {
            Some(l.place(stack_outputs(&entry_parts)?, Geometry::unit(), true)?)
        };
        let join = match &spec.join {
            JoinSpec::Residual(up) => Join::Residual {
                up: l.place(l.scaled_up(up)?, Geometry::unit(), false)?,
                relu: up.relu,
            },
            JoinSpec::Pool => Join::Pool,
        };
        Ok(Self {
            kind: spec.kind,
            entry,
            branches,
            join,
        })
    }

    fn forward(&self, k: &dyn ConvKernel, x: &Tensor) -> candle_core::Result<Tensor> {
        let entry = match &self.entry {
            Some(e) => Some(k.forward(x, e)?),
            None => None,
        };
        let mut outs = Vec::with_capacity(self.branches.len() + 1);
        for b in &self.branches {
            let mut y = match (b.entry, &entry) {
                (Some((offset, width)), Some(e)) => e.narrow(1, offset, width)?,
                _ => x.clone(),
            };
            for c in &b.convs {
                y = k.forward(&y, &c.conv)?;
            }
            outs.push(y);
        }
        match &self.join {
            Join::Residual { up, relu } => {
                let parts: Vec<&Tensor> = outs.iter().collect();
                k.forward_residual(&parts, up, x, *relu)
            }
            Join::Pool => {
                outs.push(max_pool_3s2(x)?);
                Tensor::cat(&outs, 1)
            }
        }
    }
}

/// One stage of the trunk after the stem convolution.
#[derive(Debug)]
pub enum Stage {
    Conv(NamedConv),
    MaxPool { name: &'static str },
    Block(Block),
}

/// The trunk up to the pooled features, plus the optional `last_linear` + `last_bn` bottleneck.
#[derive(Debug)]
pub struct InceptionResnetV1 {
    pub(crate) arch: Architecture,
    pub(crate) input_channels: usize,
    pub(crate) conv2d_1a: FoldedConv,
    /// `conv2d_1a` with its weights summed over input channels: the exact response of the RGB stem
    /// to a grey frame replicated into every channel (conv2d_1a has no padding, so no border term).
    pub(crate) conv2d_1a_grey: Option<FoldedConv>,
    /// Everything after `conv2d_1a`, in order.
    pub(crate) stages: Vec<Stage>,
    pub(crate) feature_channels: usize,
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
        let l = Loader {
            store,
            device,
            dtype,
        };
        let specs = arch.trunk(input_channels);
        let feature_channels = super::arch::trunk_channels(&specs);
        let mut specs = specs.into_iter();
        let Some(StageSpec::Conv(stem_spec)) = specs.next() else {
            return Err(super::error::ModelError::Unsupported(
                "the architecture table does not open with a convolution".into(),
            ));
        };
        let stem = l.basic(&stem_spec)?;
        let stem_geometry = geometry(&stem_spec);
        let conv2d_1a_grey = if input_channels > 1 {
            let w = stem.0.sum_keepdim(1)?;
            Some(l.place((w, stem.1.clone()), stem_geometry, true)?)
        } else {
            None
        };
        let conv2d_1a = l.place(stem, stem_geometry, true)?;
        let stages = specs
            .map(|s| {
                Ok(match s {
                    StageSpec::Conv(c) => Stage::Conv(NamedConv {
                        conv: l.conv(&c)?,
                        name: c.name,
                    }),
                    StageSpec::MaxPool { name, .. } => Stage::MaxPool { name },
                    StageSpec::Block(b) => Stage::Block(Block::load(&l, &b)?),
                })
            })
            .collect::<Result<_>>()?;
        let bottleneck = match arch.embedding {
            None => None,
            Some(e) => {
                let w = store.take("last_linear.weight", &[e, feature_channels])?;
                let (scale, shift) = l.bn("last_bn", e)?.scale_shift()?;
                let w = w.broadcast_mul(&scale.reshape((e, 1))?)?;
                Some(FoldedLinear::new(&w, &shift, device, dtype)?)
            }
        };
        Ok(Self {
            arch: arch.clone(),
            input_channels,
            conv2d_1a,
            conv2d_1a_grey,
            stages,
            feature_channels,
            bottleneck,
            kernel,
        })
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Channels of the pooled features.
    pub fn feature_channels(&self) -> usize {
        self.feature_channels
    }

    /// The stages after the stem convolution.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
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
        for stage in &self.stages {
            x = match stage {
                Stage::Conv(c) => k.forward(&x, &c.conv)?,
                Stage::MaxPool { .. } => max_pool_3s2(&x)?,
                Stage::Block(b) => b.forward(k, &x)?,
            };
        }
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
