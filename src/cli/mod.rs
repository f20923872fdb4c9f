//! One module per subcommand; each parses its arguments and reports through `anyhow`.

pub mod bench;
pub mod convert;
pub mod doctor;
pub mod eval;
pub mod explain;
pub mod export;
pub mod infer;
pub mod phantom;
pub mod predict;
pub mod run;
pub mod train;

use anyhow::Context;
use candle_core::DType;
use echonet_edge::model::{conv_kernel_named, RunOptions};
use echonet_edge::runtime::{self, DeviceChoice};

/// Device, dtype and threads, shared by the commands that run the model.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32`, `f16` or `bf16` (CUDA only); default: the bundle's storage dtype.
    #[arg(long)]
    pub dtype: Option<String>,
    /// CPU threads; default: every core this process may use.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Convolution kernel: `auto`, `cpu-gemm` or `candle`.
    #[arg(long, default_value = "auto")]
    pub conv: String,
}

impl RunArgs {
    /// Sizes the CPU pools, opens the device and resolves the dtype. Call before any tensor work.
    pub fn open(&self, bundle_dtype: DType) -> anyhow::Result<(RunOptions, usize)> {
        let threads = runtime::configure_cpu_threads(self.threads);
        let choice: DeviceChoice = self.device.parse()?;
        let device = runtime::open_device(choice)?;
        let dtype = match &self.dtype {
            Some(s) => runtime::parse_dtype(s)?,
            None => bundle_dtype,
        };
        runtime::check_dtype_for_device(dtype, &device)
            .with_context(|| format!("on device {choice}"))?;
        Ok((
            RunOptions {
                device,
                dtype: Some(dtype),
                kernel: conv_kernel_named(&self.conv).ok_or_else(|| {
                    anyhow::anyhow!("--conv {:?}: expected auto, cpu-gemm or candle", self.conv)
                })?,
            },
            threads,
        ))
    }
}
