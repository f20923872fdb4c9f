//! The GPU side of the runtime, kept apart from the device-agnostic model: what a CUDA device is
//! (name, compute capability, memory, driver version, for `echonet doctor`), how a
//! freshly opened device is set up for one-thread use, and the CUDA-graph capture of the trunk
//! ([`graph`]). Everything here compiles without `--features cuda`, where it reports that the
//! build has no CUDA.

pub mod graph;

use serde::Serialize;

/// Facts about one CUDA device, as the driver reports them.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// `major.minor`, e.g. "8.7" for Jetson Orin, "9.0" for H100/H200.
    pub compute_capability: String,
    pub memory_total_mib: u64,
    pub memory_free_mib: u64,
    /// The driver's CUDA API version, e.g. "13.0".
    pub driver_cuda_version: String,
    /// The compute capability the binary's kernels were compiled for (`CUDA_COMPUTE_CAP` at build
    /// time); a newer GPU runs them by JIT-compiling their PTX at start-up.
    pub kernels_built_for: Option<String>,
}

/// `CUDA_COMPUTE_CAP` of the build, as `major.minor`, when the build recorded one.
pub fn kernels_built_for() -> Option<String> {
    let cap = option_env!("CUDA_COMPUTE_CAP")?;
    let n: u32 = cap.trim().parse().ok()?;
    Some(format!("{}.{}", n / 10, n % 10))
}

/// Describes CUDA device `ordinal`, or says why it cannot.
pub fn describe(ordinal: usize) -> Result<GpuInfo, String> {
    imp::describe(ordinal)
}

/// Number of CUDA devices the driver sees (0 without a driver or without a CUDA build).
pub fn device_count() -> usize {
    imp::device_count()
}

/// Prepares a device that only its one owning thread uses: candle then skips the per-tensor
/// cross-stream events it records by default (one stream needs none), which also keeps them out
/// of CUDA-graph capture. No-op on the CPU.
pub fn prepare_single_stream(device: &candle_core::Device) {
    imp::prepare_single_stream(device)
}

#[cfg(feature = "cuda")]
mod imp {
    use super::GpuInfo;
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};

    pub fn device_count() -> usize {
        CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .unwrap_or(0)
    }

    fn driver_version() -> Result<i32, String> {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: cuDriverGetVersion writes one int through the pointer it is given.
        let r = unsafe { sys::cuDriverGetVersion(&mut v) };
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(v)
        } else {
            Err(format!("cuDriverGetVersion: {r:?}"))
        }
    }

    pub fn describe(ordinal: usize) -> Result<GpuInfo, String> {
        let count = device_count();
        if ordinal >= count {
            return Err(format!(
                "cuda:{ordinal}: the driver sees {count} CUDA device(s)"
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cuda:{ordinal}: {e}"))?;
        let name = ctx.name().map_err(|e| format!("device name: {e}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("compute capability: {e}"))?;
        let (free, total) = ctx
            .mem_get_info()
            .map_err(|e| format!("memory info: {e}"))?;
        let v = driver_version()?;
        Ok(GpuInfo {
            ordinal,
            name,
            compute_capability: format!("{major}.{minor}"),
            memory_total_mib: (total / (1 << 20)) as u64,
            memory_free_mib: (free / (1 << 20)) as u64,
            driver_cuda_version: format!("{}.{}", v / 1000, (v % 1000) / 10),
            kernels_built_for: super::kernels_built_for(),
        })
    }

    pub fn prepare_single_stream(device: &candle_core::Device) {
        if let candle_core::Device::Cuda(d) = device {
            // SAFETY: the device is used by the thread that opened it, on candle's one stream per
            // device; with a single stream no tensor can be read or freed on another stream, which
            // is the condition candle's documentation puts on turning event tracking off.
            unsafe { d.disable_event_tracking() };
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::GpuInfo;

    pub fn device_count() -> usize {
        0
    }

    pub fn describe(ordinal: usize) -> Result<GpuInfo, String> {
        Err(format!(
            "cuda:{ordinal}: this binary was built without `--features cuda` (build the CUDA binary with `make cuda`)"
        ))
    }

    pub fn prepare_single_stream(_device: &candle_core::Device) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cpu_build_says_it_has_no_cuda() {
        assert_eq!(device_count(), 0);
        let err = describe(0).unwrap_err();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(err.contains("make cuda"), "{err}");
    }
}
