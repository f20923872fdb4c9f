//! SmoothGrad (Smilkov et al. 2017): the mean, over N copies of the input with Gaussian noise
//! (sigma = noise level x (input max - input min)), of the absolute gradient of one task's raw
//! head output with respect to the input; summed over channels when the input has three.
//! Gradients come from [`TrainableIrv1`] in evaluation mode (BatchNorm's running statistics, so
//! exactly the function the inference model computes), loaded from a bundle's tensors.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use super::{task_index, ExplainError, Map2d, Result};
use crate::model::{Bundle, InputSpec};
use crate::preprocess::PreparedInput;
use crate::train::TrainableIrv1;

/// SmoothGrad settings. The defaults are the paper's: 50 samples, noise 15 % of the input range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothGrad {
    pub samples: usize,
    /// Noise sigma as a fraction of (input max - input min).
    pub noise: f64,
    pub seed: u64,
    /// Noisy copies per backward pass (memory grows with it).
    pub batch: usize,
}

impl Default for SmoothGrad {
    fn default() -> Self {
        Self {
            samples: 50,
            noise: 0.15,
            seed: 0,
            batch: 10,
        }
    }
}

/// Standard normal values from a seed (SplitMix64 + Box-Muller): the same seed, the same noise.
pub(crate) struct Gaussian {
    state: u64,
    spare: Option<f64>,
}

impl Gaussian {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x534d_4f4f_5448_4752,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        // (0, 1]: never 0, so the logarithm below is finite.
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub(crate) fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let a = std::f64::consts::TAU * self.uniform();
        self.spare = Some(r * a.sin());
        r * a.cos()
    }
}

/// The trainable network in evaluation mode, with the input specification of its bundle.
#[derive(Debug)]
pub struct Explainer {
    net: TrainableIrv1,
    spec: InputSpec,
    dtype: DType,
}

impl Explainer {
    /// Loads a bundle's tensors (as f32, on the CPU) into the trainable network.
    pub fn from_bundle(bundle: &Bundle) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, t) in bundle.store.snapshot() {
            tensors.insert(name, t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
        }
        let m = &bundle.manifest;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net = TrainableIrv1::build(&m.architecture, m.input.channels, &m.tasks, vb)?;
        Ok(Self::new(net, m.input.clone(), DType::F32))
    }

    /// A network built elsewhere (tests use f64 for finite differences).
    pub fn new(net: TrainableIrv1, spec: InputSpec, dtype: DType) -> Self {
        Self { net, spec, dtype }
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    pub fn task_names(&self) -> &[String] {
        self.net.task_names()
    }

    pub fn task_index(&self, task: &str) -> Result<usize> {
        task_index(self.net.task_names(), task)
    }

    /// A prepared input as a `[1, C, H, W]` tensor of the network's dtype.
    pub fn tensor(&self, input: &PreparedInput) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &input.data,
            (1, input.channels, input.height, input.width),
            &Device::Cpu,
        )?
        .to_dtype(self.dtype)?)
    }

    /// Feeds one grey channel to an RGB stem by repeating it (differentiably).
    fn to_stem(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        let stem = self.net.input_channels();
        if c == stem {
            Ok(x.clone())
        } else if c == 1 && stem == 3 {
            Ok(Tensor::cat(&[x, x, x], 1)?)
        } else {
            Err(ExplainError::Invalid(format!(
                "{c} input channels, the stem takes {stem}"
            )))
        }
    }

    /// Raw head outputs `[N, T]` for a batch `[N, C, H, W]`.
    pub fn outputs(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.to_stem(&x.to_dtype(self.dtype)?)?;
        Ok(self.net.forward_t(&x, false)?.1)
    }

    /// d output[task] / d input for every frame of the batch: `[N, C, H, W]`, detached.
    pub fn gradients(&self, x: &Tensor, task: usize) -> Result<Tensor> {
        let var = Var::from_tensor(&x.to_dtype(self.dtype)?)?;
        // Frames do not interact in evaluation mode: the gradient of the sum is each frame's own.
        let out = self
            .outputs(var.as_tensor())?
            .narrow(1, task, 1)?
            .sum_all()?;
        let grads = out.backward()?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| ExplainError::Invalid("no gradient reached the input".into()))?;
        Ok(g.detach())
    }

    /// The SmoothGrad map of `task` over the prepared input.
    ///
    /// `inside` is each input pixel's share inside the scan sector (0..1, `[H, W]`:
    /// [`super::sector_inside`]), or `None` to treat every pixel as image. Preprocessing replaces
    /// everything outside the sector with black, so the function being explained is the model of
    /// the *masked* input: `x -> f(inside * x + (1 - inside) * black)`. Its gradient is the
    /// model's scaled by `inside`, and noise added outside the sector never reaches the model, so
    /// the map has no mass outside the fan (before, about a third of a map lay there, on pixels
    /// no frame can change).
    pub fn smoothgrad(
        &self,
        input: &PreparedInput,
        inside: Option<&[f32]>,
        task: usize,
        cfg: &SmoothGrad,
    ) -> Result<Map2d> {
        let (c, h, w) = (input.channels, input.height, input.width);
        let n = c * h * w;
        if input.data.len() != n || n == 0 {
            return Err(ExplainError::Invalid(format!(
                "{} values for a {c}x{h}x{w} input",
                input.data.len()
            )));
        }
        if let Some(m) = inside {
            if m.len() != h * w || m.iter().any(|v| !(0.0..=1.0).contains(v)) {
                return Err(ExplainError::Invalid(format!(
                    "the sector mask has {} values (expected {h}x{w}, each 0 to 1)",
                    m.len()
                )));
            }
        }
        // Per input value (channel-major like the input): how much of it the sector lets through.
        let share = |i: usize| inside.map_or(1.0, |m| m[i % (h * w)] as f64);
        if cfg.samples == 0 || !(cfg.noise >= 0.0 && cfg.noise.is_finite()) {
            return Err(ExplainError::Invalid(format!(
                "SmoothGrad needs samples >= 1 and a finite noise level >= 0 (got {} and {})",
                cfg.samples, cfg.noise
            )));
        }
        let (lo, hi) = input
            .data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let sigma = cfg.noise * (hi - lo) as f64;
        let mut rng = Gaussian::new(cfg.seed);
        let mut acc = vec![0f64; h * w];
        let mut done = 0;
        while done < cfg.samples {
            let b = cfg.batch.max(1).min(cfg.samples - done);
            let mut data = Vec::with_capacity(b * n);
            for _ in 0..b {
                data.extend(input.data.iter().enumerate().map(|(i, &v)| {
                    if sigma > 0.0 {
                        (v as f64 + share(i) * sigma * rng.sample()) as f32
                    } else {
                        v
                    }
                }));
            }
            let x = Tensor::from_vec(data, (b, c, h, w), &Device::Cpu)?;
            let g: Vec<f64> = self
                .gradients(&x, task)?
                .abs()?
                .sum(1)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1()?;
            for frame in g.chunks_exact(h * w) {
                for (i, (a, v)) in acc.iter_mut().zip(frame).enumerate() {
                    *a += share(i) * v;
                }
            }
            done += b;
        }
        Ok(Map2d {
            width: w,
            height: h,
            data: acc
                .into_iter()
                .map(|v| (v / cfg.samples as f64) as f32)
                .collect(),
        })
    }
}
