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
pub mod ood;
pub mod profile;
pub mod quantize;
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
    /// Whether an int8 bundle runs its int8 layers.
    pub int8: Int8Request,
}

impl RunOptions {
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            kernel: conv_kernel_named("auto").unwrap_or_else(|| Arc::new(CandleConv)),
            int8: Int8Request::Auto,
        }
    }
}

/// What `--dtype` / `model.dtype` asks of an int8 bundle (one made by `echonet quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int8Request {
    /// No precision asked for: int8 where it can run (the CPU plan), else the bundle's f32
    /// weights in the run dtype, with a warning saying so.
    #[default]
    Auto,
    /// `int8` asked for: an error where it cannot run, or when the bundle has no int8 section.
    Require,
    /// Another precision asked for (`f32`, `f16`): the int8 section is not used.
    Off,
}

/// Why int8 cannot run with these settings, or None when it can: int8 kernels exist in the
/// prepared CPU plan only (f32 between layers), not on CUDA and not in the layer-by-layer
/// kernels.
pub fn int8_unavailable(on_cpu: bool, dtype: DType, kernel: &dyn ConvKernel) -> Option<String> {
    if !on_cpu {
        return Some(
            "int8 kernels exist for the CPU only; on CUDA the bundle's f32 weights (which it carries beside the int8 ones) run in the run dtype, with no int8 arithmetic"
                .into(),
        );
    }
    if dtype != DType::F32 {
        return Some(format!(
            "int8 runs inside the f32 CPU plan; dtype {dtype:?} was asked for"
        ));
    }
    if !kernel.prefers_cpu_plan() {
        return Some(format!(
            "--conv {} has no int8 path; use --conv auto",
            kernel.name()
        ));
    }
    None
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
    /// Whether the plan runs the bundle's int8 layers.
    int8: bool,
    /// The bundle's out-of-distribution statistics, when it has them (the gate is off without).
    ood: Option<Arc<ood::OodStats>>,
}

impl EchoNetModel {
    /// The model of a bundle; an int8 bundle runs int8 as `opts.int8` says (see [`Int8Request`]).
    pub fn from_bundle(bundle: &Bundle, opts: &RunOptions) -> Result<Self> {
        let mut model = Self::from_store(bundle.manifest.clone(), &bundle.store, opts)?;
        model.ood = bundle.ood.clone().map(Arc::new);
        let file = bundle.path.display();
        match (opts.int8, &bundle.quantization) {
            (Int8Request::Off, _) | (Int8Request::Auto, None) => {}
            (Int8Request::Require, None) => {
                return Err(ModelError::Unsupported(format!(
                    "{file}: dtype int8 asked for, but the bundle has no int8 section (make one with `echonet quantize`)"
                )))
            }
            (request, Some(q)) => {
                match int8_unavailable(model.device.is_cpu(), model.dtype, opts.kernel.as_ref()) {
                    None => model.use_int8(q, &bundle.path)?,
                    Some(why) if request == Int8Request::Require => {
                        return Err(ModelError::Unsupported(format!(
                            "{file}: cannot run int8: {why}"
                        )))
                    }
                    Some(why) => tracing::warn!("{file}: int8 bundle not run in int8: {why}"),
                }
            }
        }
        Ok(model)
    }

    /// Rebuilds the CPU plan with the int8 layers of `q` (checked against this network's plan:
    /// the same convolutions, labels and shapes, in the same order).
    pub fn use_int8(&mut self, q: &bundle::QuantizedWeights, file: &std::path::Path) -> Result<()> {
        let Some(old) = &self.plan else {
            return Err(ModelError::Unsupported(format!(
                "{}: int8 needs the prepared CPU plan (f32 on the CPU, --conv auto)",
                file.display()
            )));
        };
        let threads = old.threads();
        let convs = cpu_plan::CpuPlan::convolutions(&self.network)?;
        let bad = |field: String, reason: String| ModelError::Metadata {
            file: file.to_path_buf(),
            field,
            reason,
        };
        if convs.len() != q.info.layers.len() || q.table.len() != convs.len() {
            return Err(bad(
                format!("{}.layers", quantize::QUANT_KEY),
                format!(
                    "{} layers, the network's plan has {} convolutions",
                    q.info.layers.len(),
                    convs.len()
                ),
            ));
        }
        for (i, (pc, l)) in convs.iter().zip(&q.info.layers).enumerate() {
            let (co, ci, kh, kw) = pc.conv.weight.dims4()?;
            if pc.label != l.label || [co, ci, kh, kw] != l.shape {
                return Err(bad(
                    format!("{}.layers[{i}]", quantize::QUANT_KEY),
                    format!(
                        "is {:?} {:?}, the network's plan has {:?} {:?} there",
                        l.label,
                        l.shape,
                        pc.label,
                        [co, ci, kh, kw]
                    ),
                ));
            }
        }
        self.plan = None; // the f32 plan's memory goes before the int8 plan's comes
        drop(convs);
        self.plan = Some(cpu_plan::CpuPlan::build_int8(
            &self.network,
            threads,
            &q.table,
        )?);
        self.int8 = true;
        release_freed_memory();
        Ok(())
    }

    /// What the model computes in: `int8` (the plan's int8 layers; the stem and few-channel
    /// layers f32), else the run dtype (`f32`, `f16`, `bf16`).
    pub fn precision(&self) -> &'static str {
        if self.int8 {
            return "int8";
        }
        match self.dtype {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "f32",
        }
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
        release_freed_memory();
        Ok(Self {
            manifest,
            network,
            plan,
            heads,
            device: opts.device.clone(),
            dtype,
            trunk_graph: None,
            int8: false,
            ood: None,
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
    /// The out-of-distribution statistics the inference step gates on (None: the gate is off).
    pub fn ood(&self) -> Option<&Arc<ood::OodStats>> {
        self.ood.as_ref()
    }
    /// Replaces the statistics (`echonet ood-fit` scores frames with the ones it just fitted).
    pub fn set_ood(&mut self, stats: Option<ood::OodStats>) {
        self.ood = stats.map(Arc::new);
    }
    /// The gate's state in words, for records, summaries and doctor: `on (threshold 1.83, ...)`
    /// or `off: the bundle has no training statistics`.
    pub fn ood_gate(&self) -> String {
        ood::gate_description(self.ood.as_deref())
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
            Some(p) if self.int8 => format!(
                "cpu-plan int8 ({}, {} of {} convolutions int8)",
                p.kernel_name(),
                p.int8_convs(),
                p.conv_count()
            ),
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

/// Hands memory freed inside the allocator back to the system, once a model is loaded. Loading
/// folds and packs the weights through temporaries, and an int8 bundle builds and drops two f32
/// plans (about 90 MB of packed weights) before its int8 plan; glibc keeps freed memory in its
/// per-thread arenas, and with the plan's worker threads alive it kept about 60 MB of it (the
/// daemon's int8 peak RSS 292 MB, 231 before the plan had its own threads; `MALLOC_ARENA_MAX=1`
/// gave 233). Trimmed: int8 152 MB, f32 228 MB (was 235).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
