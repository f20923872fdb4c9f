//! The EchoNet model: an immutable, shareable plan (InceptionResNet-v1 trunk in inference form,
//! task heads, and the bundle manifest that says how to feed and read it).

pub mod arch;
pub mod bundle;
pub mod catalog;
pub mod conv;
pub mod cpu_conv;
pub mod cpu_plan;
pub mod error;
pub mod heads;
pub mod import;
pub mod network;
pub mod profile;
pub mod weights;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use arch::Architecture;
pub use bundle::{
    read_bundle, write_bundle, Bundle, InputSpec, Manifest, Provenance, StorageDtype,
};
pub use conv::{CandleConv, ConvKernel};
pub use error::{ModelError, Result};
pub use heads::{TaskKind, TaskSpec};
pub use network::InceptionResnetV1;
pub use weights::WeightStore;

/// Where and how a model runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: Device,
    /// None: the bundle's storage dtype.
    pub dtype: Option<DType>,
    pub kernel: Arc<dyn ConvKernel>,
}

impl RunOptions {
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            kernel: conv_kernel_named("auto").unwrap_or_else(|| Arc::new(CandleConv)),
        }
    }
}

/// Convolution kernels by name: `candle` (candle's own conv2d everywhere), `cpu-gemm` (the
/// NCHW im2col GEMM kernel for f32 on the CPU, candle elsewhere), `cpu-plan` (the prepared NHWC
/// plan for the whole trunk when f32 on the CPU, `cpu-gemm` otherwise), `auto` (the fastest
/// known: currently `cpu-plan`).
pub fn conv_kernel_named(name: &str) -> Option<Arc<dyn ConvKernel>> {
    match name {
        "candle" => Some(Arc::new(CandleConv)),
        "cpu-gemm" => Some(Arc::new(cpu_conv::CpuGemmConv::default())),
        "cpu-plan" | "auto" => Some(Arc::new(cpu_plan::PlanKernel::default())),
        _ => None,
    }
}

/// One frame's results.
#[derive(Debug, Clone, Serialize)]
pub struct FrameOutput {
    /// Task name -> reported value (regression in its unit, binary as a probability).
    pub outputs: BTreeMap<String, f64>,
    /// The pooled trunk features, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<f32>>,
}

#[derive(Debug)]
pub struct EchoNetModel {
    manifest: Manifest,
    network: InceptionResnetV1,
    /// The prepared CPU plan, when the kernel asks for it and the model is f32 on the CPU.
    plan: Option<cpu_plan::CpuPlan>,
    heads: heads::Heads,
    device: Device,
    dtype: DType,
    /// CUDA only, when asked for: the trunk replayed as one CUDA graph for a fixed batch shape.
    trunk_graph: Option<crate::gpu::graph::TrunkGraph>,
}

impl EchoNetModel {
    pub fn from_bundle(bundle: &Bundle, opts: &RunOptions) -> Result<Self> {
        Self::from_store(bundle.manifest.clone(), &bundle.store, opts)
    }

    /// Builds the model from `manifest` and the named tensors in `store`; every tensor must be used.
    pub fn from_store(manifest: Manifest, store: &WeightStore, opts: &RunOptions) -> Result<Self> {
        manifest.check(store.origin())?;
        let dtype = opts.dtype.unwrap_or(manifest.dtype.candle());
        let network = InceptionResnetV1::load(
            &manifest.architecture,
            manifest.input.channels,
            store,
            &opts.device,
            dtype,
            opts.kernel.clone(),
        )?;
        let heads = heads::Heads::load(
            &manifest.tasks,
            manifest.architecture.head_input_dim(),
            store,
            &opts.device,
            dtype,
        )?;
        store.ensure_all_taken()?;
        let plan = if opts.kernel.prefers_cpu_plan() && opts.device.is_cpu() && dtype == DType::F32
        {
            Some(cpu_plan::CpuPlan::build(
                &network,
                rayon::current_num_threads(),
            )?)
        } else {
            None
        };
        Ok(Self {
            manifest,
            network,
            plan,
            heads,
            device: opts.device.clone(),
            dtype,
            trunk_graph: None,
        })
    }

    /// On CUDA: capture the trunk as a CUDA graph at the first forward pass and replay it for
    /// every later batch of the same shape (other shapes, and any capture failure, fall back to
    /// the plain pass). No effect on the CPU. See `crate::gpu::graph`.
    pub fn enable_cuda_graph(&mut self) {
        if self.device.is_cuda() {
            self.trunk_graph = Some(crate::gpu::graph::TrunkGraph::new());
        }
    }

    /// The CUDA graph's state, for reports: None when not asked for.
    pub fn cuda_graph(&self) -> Option<&crate::gpu::graph::TrunkGraph> {
        self.trunk_graph.as_ref()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn network(&self) -> &InceptionResnetV1 {
        &self.network
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The prepared CPU plan, when the trunk runs through one.
    pub fn cpu_plan(&self) -> Option<&cpu_plan::CpuPlan> {
        self.plan.as_ref()
    }
    /// What computes the trunk: `cpu-plan (avx2-fma)`, or the layer-by-layer kernel's name.
    pub fn backend_name(&self) -> String {
        match &self.plan {
            Some(p) => format!("cpu-plan ({})", p.kernel_name()),
            None => self.network.kernel_name().to_string(),
        }
    }

    /// Checks a normalised batch's shape before it reaches the network.
    pub fn check_batch_shape(&self, dims: &[usize]) -> Result<()> {
        let stem = self.manifest.input.channels;
        let &[n, c, h, w] = dims else {
            return Err(ModelError::Input(format!(
                "expected a [N, C, H, W] tensor, got shape {dims:?}"
            )));
        };
        if n == 0 {
            return Err(ModelError::Input(
                "the batch holds no frames (N = 0)".into(),
            ));
        }
        if !(c == stem || (c == 1 && stem == 3)) {
            return Err(ModelError::Input(format!(
                "{c} channels, but the model's stem takes {stem}{}",
                if stem == 3 {
                    " (or 1 for a grey frame)"
                } else {
                    ""
                }
            )));
        }
        if h < arch::MIN_INPUT_SIZE || w < arch::MIN_INPUT_SIZE {
            return Err(ModelError::Input(format!(
                "frames of {h}x{w} are below the network's minimum {0}x{0}",
                arch::MIN_INPUT_SIZE
            )));
        }
        Ok(())
    }

    /// Pooled features `[N, c7]` (f32, CPU) and raw head outputs, one row per frame.
    pub fn forward(&self, batch: &Tensor) -> Result<(Tensor, Vec<Vec<f32>>)> {
        self.check_batch_shape(batch.dims())?;
        let x = batch.to_device(&self.device)?.to_dtype(self.dtype)?;
        // One backend computes the trunk, chosen at load: the prepared CPU plan, or a captured
        // CUDA graph, or the layer-by-layer network (which is also the graph's fallback).
        let planned = match (&self.plan, &self.trunk_graph) {
            (Some(plan), _) => Some(plan.features(&x)?),
            (None, Some(g)) => g.features(&self.network, &x)?,
            (None, None) => None,
        };
        let features = match planned {
            Some(f) => f,
            None => self.network.features(&x)?,
        };
        let raw = self.heads.raw(&self.network.head_input(&features)?)?;
        let features = features.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        Ok((features, raw))
    }

    /// Per-frame reported outputs for a normalised batch `[N, C, H, W]`.
    pub fn infer(&self, batch: &Tensor, with_features: bool) -> Result<Vec<FrameOutput>> {
        let (features, raw) = self.forward(batch)?;
        let features = if with_features {
            Some(features.to_vec2::<f32>()?)
        } else {
            None
        };
        let tasks = self.heads.tasks();
        Ok(raw
            .into_iter()
            .enumerate()
            .map(|(i, row)| FrameOutput {
                outputs: tasks
                    .iter()
                    .zip(row)
                    .map(|(t, r)| (t.name.clone(), t.finish(r as f64)))
                    .collect(),
                features: features.as_ref().map(|f| f[i].clone()),
            })
            .collect())
    }
}
