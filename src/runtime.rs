//! Where the model runs: device selection (CPU, or CUDA when built with `--features cuda`), run
//! dtype, and CPU thread-pool sizing. candle's CPU kernels slow down badly when oversubscribed,
//! so the pool is sized to the cores this process may actually use.

use candle_core::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("device {0:?}: expected `cpu`, `cuda` or `cuda:N`")]
    BadDevice(String),
    #[error("device {requested}: CUDA is not usable here: {reason}")]
    CudaUnavailable { requested: String, reason: String },
    #[error("dtype {0:?}: expected f32, f16, bf16 or int8")]
    BadDtype(String),
    #[error("dtype bf16 is supported on CUDA only (on the CPU use f32 or f16)")]
    Bf16OnCpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, RuntimeError> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| RuntimeError::BadDevice(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Opens the device. Must be called on the thread that will run the model: candle's CUDA device
/// issues its work on the calling thread's per-thread stream, so the thread that opens the device
/// must be the one that uses it (and, with cross-stream event tracking turned off here, the only
/// one).
pub fn open_device(choice: DeviceChoice) -> Result<Device, RuntimeError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(RuntimeError::CudaUnavailable {
                    requested: choice.to_string(),
                    reason: "this binary was built without `--features cuda`".into(),
                });
            }
            let device = Device::new_cuda(n).map_err(|e| RuntimeError::CudaUnavailable {
                requested: choice.to_string(),
                reason: e.to_string(),
            })?;
            crate::gpu::prepare_single_stream(&device);
            Ok(device)
        }
    }
}

/// The run dtype when none is asked for: f16 on CUDA (half the memory traffic, tensor cores;
/// parity within 1e-2 of f32, checked by scripts/gpu-check.sh), the bundle's storage dtype on the
/// CPU (candle's CPU f16 kernels are slower than f32).
pub fn default_dtype(choice: DeviceChoice, bundle_dtype: DType) -> DType {
    match choice {
        DeviceChoice::Cuda(_) => DType::F16,
        DeviceChoice::Cpu => bundle_dtype,
    }
}

pub fn parse_dtype(s: &str) -> Result<DType, RuntimeError> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(RuntimeError::BadDtype(other.to_string())),
    }
}

/// Rejects combinations this build does not support well.
pub fn check_dtype_for_device(dtype: DType, device: &Device) -> Result<(), RuntimeError> {
    if dtype == DType::BF16 && device.is_cpu() {
        return Err(RuntimeError::Bf16OnCpu);
    }
    Ok(())
}

/// Cores this process may run on (affinity and cgroup quota respected by the standard library).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Sizes candle's and rayon's CPU pools; `requested` of None or 0 means every available core.
/// Call once, first thing, before any tensor work starts a pool. Returns the thread count used.
pub fn configure_cpu_threads(requested: Option<usize>) -> usize {
    let available = available_cores();
    let threads = match requested {
        Some(n) if n > 0 => n,
        _ => available,
    };
    if threads > available {
        tracing::warn!(
            threads,
            available,
            "more CPU threads than available cores: expect slowdowns"
        );
    }
    // candle reads these when it first sizes its pools.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    // Already built (by an earlier call) is fine: the first size stands.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!("cpu".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Cpu));
        assert_eq!(
            "cuda".parse::<DeviceChoice>().ok(),
            Some(DeviceChoice::Cuda(0))
        );
        assert_eq!(
            "cuda:2".parse::<DeviceChoice>().ok(),
            Some(DeviceChoice::Cuda(2))
        );
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_request_without_cuda_build_is_a_clear_error() {
        let err = open_device(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[test]
    fn f16_is_the_default_on_cuda_only() {
        assert_eq!(default_dtype(DeviceChoice::Cuda(0), DType::F32), DType::F16);
        assert_eq!(
            default_dtype(DeviceChoice::Cuda(1), DType::BF16),
            DType::F16
        );
        assert_eq!(default_dtype(DeviceChoice::Cpu, DType::F32), DType::F32);
        assert_eq!(default_dtype(DeviceChoice::Cpu, DType::F16), DType::F16);
    }

    #[test]
    fn bf16_on_cpu_is_refused() {
        assert!(check_dtype_for_device(DType::BF16, &Device::Cpu).is_err());
        assert!(check_dtype_for_device(DType::F16, &Device::Cpu).is_ok());
    }
}
