//! `TrainableIrv1`: InceptionResNet-v1 (facenet-pytorch's `InceptionResnetV1` trunk, optional
//! `last_linear` + `last_bn` bottleneck, EchoNet task heads) in training form. Every convolution is
//! candle-nn's `Conv2d` followed by a live `BatchNorm` (batch statistics in training, running
//! statistics in evaluation), so the whole network has a backward pass, both to its parameters
//! (training) and to its input (saliency). Layers, channel counts and parameter names come from
//! the architecture table ([`Architecture::trunk`], the same list the inference network is built
//! from), so [`TrainableIrv1::export`] yields a bundle's tensors unchanged.

use std::cell::RefCell;
use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var, D};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Init, VarBuilder, VarMap};

use super::init::SeededVarMap;
use super::pool::max_pool_3s2;
use super::{Result, TrainError};
use crate::model::arch::{
    Architecture, BlockSpec, ConvSpec, JoinSpec, StageSpec, BN_EPS, MIN_INPUT_SIZE,
};
use crate::model::heads::TaskSpec;

/// facenet-pytorch's BatchNorm momentum (PyTorch convention: weight of the new batch statistic).
pub const BN_MOMENTUM: f64 = 0.1;

/// Hands out parameters under the current name prefix and records every full name, in creation
/// order: the list `export` writes, so it cannot drift from what the network uses.
struct Builder<'a, 'b> {
    vb: VarBuilder<'a>,
    names: &'b RefCell<Vec<String>>,
}

impl Builder<'_, '_> {
    fn pp(&self, segment: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(segment),
            names: self.names,
        }
    }

    fn record(&self, name: &str) {
        let prefix = self.vb.prefix();
        self.names.borrow_mut().push(if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        });
    }

    fn get(&self, shape: &[usize], name: &str, init: Init) -> candle_core::Result<Tensor> {
        let t = self.vb.get_with_hints(shape, name, init)?;
        self.record(name);
        Ok(t)
    }

    fn batch_norm(&self, channels: usize) -> candle_core::Result<BatchNorm> {
        let config = BatchNormConfig {
            eps: BN_EPS,
            remove_mean: true,
            affine: true,
            momentum: BN_MOMENTUM,
        };
        let bn = candle_nn::batch_norm(channels, config, self.vb.clone())?;
        for name in ["weight", "bias", "running_mean", "running_var"] {
            self.record(name);
        }
        Ok(bn)
    }
}

/// PyTorch's default initialisation of conv and linear layers (weights and biases uniform in
/// ±1/sqrt(fan_in)), so a network trained from scratch here starts as facenet-pytorch's would.
fn torch_default(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// facenet's `BasicConv2d`: bias-free conv, BatchNorm, ReLU.
#[derive(Debug)]
struct BasicConv {
    conv: Conv2d,
    bn: BatchNorm,
    /// Set when only one axis is padded (Block17's 1x7/7x1, Block8's 1x3/3x1): candle's conv pads
    /// both axes alike, so these are padded explicitly before the convolution.
    one_axis_pad: Option<(usize, usize)>,
}

impl BasicConv {
    /// The convolution `spec` names, its parameters under `spec.name` (`conv.weight`, `bn.*`).
    fn new(b: &Builder, spec: &ConvSpec) -> Result<Self> {
        let b = b.pp(&spec.name);
        let (cin, cout, (kh, kw), stride, (ph, pw)) =
            (spec.cin, spec.cout, spec.kernel, spec.stride, spec.pad);
        let weight =
            b.pp("conv")
                .get(&[cout, cin, kh, kw], "weight", torch_default(cin * kh * kw))?;
        let same = ph == pw;
        let config = Conv2dConfig {
            padding: if same { ph } else { 0 },
            stride,
            ..Default::default()
        };
        Ok(Self {
            conv: Conv2d::new(weight, None, config),
            bn: b.pp("bn").batch_norm(cout)?,
            one_axis_pad: if same { None } else { Some((ph, pw)) },
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = match self.one_axis_pad {
            Some((ph, pw)) => {
                self.conv
                    .forward(&x.pad_with_zeros(D::Minus2, ph, ph)?.pad_with_zeros(
                        D::Minus1,
                        pw,
                        pw,
                    )?)?
            }
            None => self.conv.forward(x)?,
        };
        self.bn.forward_t(&y, train)?.relu()
    }
}

/// One branch: a single `BasicConv2d` (facenet names it `branchK`) or an `nn.Sequential` of them
/// (`branchK.0`, `branchK.1`, ...).
#[derive(Debug)]
struct Branch(Vec<BasicConv>);

impl Branch {
    fn new(b: &Builder, specs: &[ConvSpec]) -> Result<Self> {
        Ok(Self(
            specs
                .iter()
                .map(|s| BasicConv::new(b, s))
                .collect::<Result<_>>()?,
        ))
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        for c in &self.0 {
            y = c.forward_t(&y, train)?;
        }
        Ok(y)
    }
}

fn cat_branches(branches: &[Branch], x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
    let outs = branches
        .iter()
        .map(|br| br.forward_t(x, train))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&outs, 1)
}

/// Block35 / Block17 / Block8: branches concatenated, a biased 1x1 up-projection (`conv2d`) scaled
/// and added to the input, then ReLU (except the final `block8`).
#[derive(Debug)]
struct Residual {
    branches: Vec<Branch>,
    up: Conv2d,
    scale: f64,
    relu: bool,
}

impl Residual {
    fn new(b: &Builder, spec: &BlockSpec, up: &crate::model::arch::UpSpec) -> Result<Self> {
        let branches = spec
            .branches
            .iter()
            .map(|br| Branch::new(b, br))
            .collect::<Result<_>>()?;
        let u = b.pp(&up.name);
        let weight = u.get(&[up.cout, up.cin, 1, 1], "weight", torch_default(up.cin))?;
        let bias = u.get(&[up.cout], "bias", torch_default(up.cin))?;
        Ok(Self {
            branches,
            up: Conv2d::new(weight, Some(bias), Conv2dConfig::default()),
            scale: up.scale as f64,
            relu: up.relu,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mixed = cat_branches(&self.branches, x, train)?;
        let y = ((self.up.forward(&mixed)? * self.scale)? + x)?;
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// Mixed_6a / Mixed_7a: conv branches and a 3x3/2 max-pool branch (last), concatenated.
#[derive(Debug)]
struct Reduction {
    branches: Vec<Branch>,
}

impl Reduction {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut outs = self
            .branches
            .iter()
            .map(|br| br.forward_t(x, train))
            .collect::<candle_core::Result<Vec<_>>>()?;
        outs.push(max_pool_3s2(x)?);
        Tensor::cat(&outs, 1)
    }
}

/// One stage of the trunk.
#[derive(Debug)]
enum Stage {
    Conv(BasicConv),
    MaxPool,
    Residual(Residual),
    Reduction(Reduction),
}

impl Stage {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Stage::Conv(c) => c.forward_t(x, train),
            Stage::MaxPool => max_pool_3s2(x),
            Stage::Residual(r) => r.forward_t(x, train),
            Stage::Reduction(r) => r.forward_t(x, train),
        }
    }
}

/// The `last_linear` (bias-free) + `last_bn` (BatchNorm1d) bottleneck.
#[derive(Debug)]
struct Bottleneck {
    weight: Tensor,
    bn: BatchNorm,
}

/// One linear output per task: `heads.<task>.weight` `[1, D]`, `heads.<task>.bias` `[1]`.
#[derive(Debug)]
struct Head {
    weight: Tensor,
    bias: Tensor,
}

#[derive(Debug)]
pub struct TrainableIrv1 {
    arch: Architecture,
    input_channels: usize,
    tasks: Vec<String>,
    /// The trunk, stage by stage as the architecture table gives it.
    stages: Vec<Stage>,
    bottleneck: Option<Bottleneck>,
    heads: Vec<Head>,
    /// Every parameter and BatchNorm statistic, by facenet name, in creation order.
    names: Vec<String>,
}

impl TrainableIrv1 {
    /// Builds the network on `varmap`: parameters already there are used as they are (resuming a
    /// run), missing ones are created deterministically from `seed` and added to the map.
    pub fn new(
        arch: &Architecture,
        input_channels: usize,
        tasks: &[TaskSpec],
        varmap: &VarMap,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let vb = VarBuilder::from_backend(
            Box::new(SeededVarMap::new(varmap, seed)),
            dtype,
            device.clone(),
        );
        Self::build(arch, input_channels, tasks, vb)
    }

    /// Builds the network from any `VarBuilder` (facenet names, relative to its prefix).
    pub fn build(
        arch: &Architecture,
        input_channels: usize,
        tasks: &[TaskSpec],
        vb: VarBuilder,
    ) -> Result<Self> {
        arch.check().map_err(TrainError::Unsupported)?;
        if input_channels != 1 && input_channels != 3 {
            return Err(TrainError::Unsupported(format!(
                "{input_channels} input channels: the stem takes 1 (grey) or 3 (RGB)"
            )));
        }
        for t in tasks {
            t.check().map_err(TrainError::Unsupported)?;
        }
        let names = RefCell::new(Vec::new());
        let b = Builder { vb, names: &names };
        let specs = arch.trunk(input_channels);
        let features = crate::model::arch::trunk_channels(&specs);
        let stages = specs
            .iter()
            .map(|spec| {
                Ok(match spec {
                    StageSpec::Conv(c) => Stage::Conv(BasicConv::new(&b, c)?),
                    StageSpec::MaxPool { .. } => Stage::MaxPool,
                    StageSpec::Block(blk) => match &blk.join {
                        JoinSpec::Residual(up) => Stage::Residual(Residual::new(&b, blk, up)?),
                        JoinSpec::Pool => Stage::Reduction(Reduction {
                            branches: blk
                                .branches
                                .iter()
                                .map(|br| Branch::new(&b, br))
                                .collect::<Result<_>>()?,
                        }),
                    },
                })
            })
            .collect::<Result<_>>()?;
        let bottleneck = match arch.embedding {
            None => None,
            Some(e) => Some(Bottleneck {
                weight: b.pp("last_linear").get(
                    &[e, features],
                    "weight",
                    torch_default(features),
                )?,
                bn: b.pp("last_bn").batch_norm(e)?,
            }),
        };
        let d = arch.head_input_dim();
        let heads = tasks
            .iter()
            .map(|t| {
                let h = b.pp("heads").pp(&t.name);
                Ok(Head {
                    weight: h.get(&[1, d], "weight", torch_default(d))?,
                    bias: h.get(&[1], "bias", torch_default(d))?,
                })
            })
            .collect::<Result<_>>()?;
        drop(b);
        Ok(Self {
            arch: arch.clone(),
            input_channels,
            tasks: tasks.iter().map(|t| t.name.clone()).collect(),
            stages,
            bottleneck,
            heads,
            names: names.into_inner(),
        })
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    pub fn input_channels(&self) -> usize {
        self.input_channels
    }

    /// Task names, in the order of the head output columns.
    pub fn task_names(&self) -> &[String] {
        &self.tasks
    }

    /// Every tensor name the network uses (parameters and BatchNorm running statistics).
    pub fn parameter_names(&self) -> &[String] {
        &self.names
    }

    /// Pooled features `[N, c7]` and raw head outputs `[N, T]` of a normalised batch
    /// `[N, C, H, W]`. `train` selects BatchNorm's batch statistics (and updates the running ones,
    /// in place in the variable map) or its running statistics (the inference model's behaviour).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.input_channels {
            candle_core::bail!("{c} input channels, the stem takes {}", self.input_channels);
        }
        if h < MIN_INPUT_SIZE || w < MIN_INPUT_SIZE {
            candle_core::bail!(
                "frames of {h}x{w} are below the network's minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}"
            );
        }
        if train && n < 2 {
            // The last blocks can be 1x1 and the bottleneck is per frame: one frame would make
            // BatchNorm's batch variance 0/0.
            candle_core::bail!("training mode needs at least 2 frames per batch, got {n}");
        }
        let mut y = x.clone();
        for stage in &self.stages {
            y = stage.forward_t(&y, train)?;
        }
        let features = y.flatten_from(2)?.mean(2)?;
        let head_input = match &self.bottleneck {
            Some(b) => b.bn.forward_t(&features.matmul(&b.weight.t()?)?, train)?,
            None => features.clone(),
        };
        let outputs = if self.heads.is_empty() {
            Tensor::zeros((n, 0), features.dtype(), features.device())?
        } else {
            let ws: Vec<&Tensor> = self.heads.iter().map(|h| &h.weight).collect();
            let bs: Vec<&Tensor> = self.heads.iter().map(|h| &h.bias).collect();
            let w = Tensor::cat(&ws, 0)?;
            let b = Tensor::cat(&bs, 0)?;
            head_input.matmul(&w.t()?)?.broadcast_add(&b)?
        };
        Ok((features, outputs))
    }

    /// The variables an optimiser should train: everything but BatchNorm's running statistics,
    /// which the forward pass itself updates.
    pub fn trainable_vars(&self, varmap: &VarMap) -> Result<Vec<Var>> {
        let vars = lock(varmap)?;
        self.names
            .iter()
            .filter(|n| !is_running_stat(n))
            .map(|n| {
                vars.get(n)
                    .cloned()
                    .ok_or_else(|| TrainError::MissingParameter { name: n.clone() })
            })
            .collect()
    }

    /// Exactly the tensors a bundle of this network holds, by facenet name: f32 copies on the CPU
    /// (later training steps do not change them), running statistics as last updated.
    pub fn export(&self, varmap: &VarMap) -> Result<BTreeMap<String, Tensor>> {
        let vars = lock(varmap)?;
        let mut out = BTreeMap::new();
        for name in &self.names {
            let var = vars
                .get(name)
                .ok_or_else(|| TrainError::MissingParameter { name: name.clone() })?;
            let t = var
                .as_tensor()
                .detach()
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                // to_dtype of an f32 CPU tensor shares the variable's storage: copy it.
                .copy()?;
            out.insert(name.clone(), t);
        }
        Ok(out)
    }
}

fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

fn lock(
    varmap: &VarMap,
) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Var>>> {
    varmap.data().lock().map_err(|_| TrainError::Parameter {
        name: "<variable map>".into(),
        reason: "lock poisoned by a panicked thread".into(),
    })
}
