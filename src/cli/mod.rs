//! One module per subcommand; each parses its arguments and reports through `anyhow`.

pub mod bench;
pub mod convert;
pub mod doctor;
pub mod eval;
pub mod explain;
pub mod export;
pub mod infer;
pub mod ood_fit;
pub mod phantom;
pub mod predict;
pub mod probe_capture;
pub mod quantize;
pub mod run;
pub mod train;

use anyhow::Context;
use candle_core::DType;
use echonet_edge::model::{conv_kernel_named, Bundle, EchoNetModel, RunOptions};
use echonet_edge::runtime::{self, DeviceChoice};

/// Device, dtype and threads, shared by the commands that run the model.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32`, `f16`, `bf16` (CUDA only) or `int8` (an `echonet quantize` bundle, CPU only);
    /// default: f16 on CUDA, else the bundle's storage dtype, or int8 for an int8 bundle on the CPU.
    #[arg(long)]
    pub dtype: Option<String>,
    /// CPU threads; default: every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Convolution kernel: `auto`, `cpu-gemm` or `candle`.
    #[arg(long, default_value = "auto")]
    pub conv: String,
    /// On CUDA the trunk is captured as a CUDA graph at the first batch and replayed for every
    /// batch of that shape; this turns that off (plain kernel-by-kernel forward pass).
    #[arg(long)]
    pub no_cuda_graph: bool,
}

/// Everything about where the model runs except the device handle itself, which must be opened
/// on the thread that will run the model ([`RunPlan::open_device`]).
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub choice: DeviceChoice,
    pub dtype: DType,
    /// `--dtype int8` (Require), another dtype (Off), or none (Auto).
    pub int8: echonet_edge::model::Int8Request,
    pub kernel: std::sync::Arc<dyn echonet_edge::model::ConvKernel>,
    pub threads: usize,
    pub cuda_graph: bool,
}

impl RunPlan {
    /// Builds the model from `bundle` on a device opened on the calling thread, with the CUDA
    /// graph enabled unless turned off.
    pub fn build_model(&self, bundle: &Bundle) -> anyhow::Result<EchoNetModel> {
        let opts = self.open_device()?;
        let mut model = EchoNetModel::from_bundle(bundle, &opts)?;
        if self.cuda_graph {
            model.enable_cuda_graph();
        }
        Ok(model)
    }

    /// Opens the device on the calling thread and checks the dtype against it.
    pub fn open_device(&self) -> anyhow::Result<RunOptions> {
        let device = runtime::open_device(self.choice)?;
        runtime::check_dtype_for_device(self.dtype, &device)
            .with_context(|| format!("on device {}", self.choice))?;
        Ok(RunOptions {
            device,
            dtype: Some(self.dtype),
            kernel: self.kernel.clone(),
            int8: self.int8,
        })
    }
}

impl RunArgs {
    /// Sizes the CPU pools and resolves device choice, dtype and kernel, without opening the
    /// device. Call before any tensor work.
    pub fn plan(&self, bundle_dtype: DType) -> anyhow::Result<RunPlan> {
        let threads = runtime::configure_cpu_threads(self.threads);
        let choice: DeviceChoice = self.device.parse()?;
        use echonet_edge::model::Int8Request;
        let (dtype, int8) = match self.dtype.as_deref() {
            // int8 runs inside the f32 CPU plan.
            Some("int8") => (DType::F32, Int8Request::Require),
            Some(s) => (runtime::parse_dtype(s)?, Int8Request::Off),
            None => (
                runtime::default_dtype(choice, bundle_dtype),
                Int8Request::Auto,
            ),
        };
        let kernel = conv_kernel_named(&self.conv).ok_or_else(|| {
            anyhow::anyhow!("--conv {:?}: expected auto, cpu-gemm or candle", self.conv)
        })?;
        Ok(RunPlan {
            choice,
            dtype,
            int8,
            kernel,
            threads,
            cuda_graph: !self.no_cuda_graph,
        })
    }

    /// [`RunArgs::plan`] and the model built on the calling thread: for commands that run the
    /// model on the thread that calls this.
    pub fn model(&self, bundle: &Bundle) -> anyhow::Result<EchoNetModel> {
        self.plan(bundle.manifest.dtype.candle())?
            .build_model(bundle)
    }

    /// [`RunArgs::plan`] and the device opened on the calling thread: for commands that run the
    /// model on the thread that calls this.
    pub fn open(&self, bundle_dtype: DType) -> anyhow::Result<(RunOptions, usize)> {
        let plan = self.plan(bundle_dtype)?;
        Ok((plan.open_device()?, plan.threads))
    }
}
