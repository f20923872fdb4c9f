//! CUDA-graph capture of the trunk's forward pass (every convolution, pooling, concatenation and
//! residual step: hundreds of kernel launches) for one fixed input shape: captured once,
//! then replayed as a single launch, which removes the host-side launch gaps that dominate a
//! small batch on a fast GPU. The captured graph reads a fixed device input buffer and writes a
//! fixed output buffer; a call copies the batch into the one and the result out of the other.
//!
//! Capture uses candle's host-to-device parameter cache (small shape/stride uploads made during a
//! warm-up run are reused from device memory while capturing) and stream-ordered allocation, so
//! the intermediate tensors are allocated and freed inside the graph. Anything that goes wrong
//! while capturing ends the capture, is logged once, and leaves the caller on the plain forward
//! pass: a graph is an optimisation, never a requirement.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::model::InceptionResnetV1;

/// A trunk graph for one input shape, or why there is none.
pub struct TrunkGraph {
    state: Mutex<State>,
}

impl std::fmt::Debug for TrunkGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.state.lock() {
            Ok(s) => match &*s {
                State::Pending => "pending".to_string(),
                State::Ready(c) => format!("captured for {:?}", c.dims),
                State::Failed(e) => format!("failed: {e}"),
            },
            Err(_) => "poisoned".into(),
        };
        write!(f, "TrunkGraph({s})")
    }
}

enum State {
    /// Not captured yet: the first call with the wanted shape captures.
    Pending,
    Ready(imp::Captured),
    /// Capture failed; the plain forward pass is used from then on.
    Failed(String),
}

impl TrunkGraph {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::Pending),
        }
    }

    /// Why the graph is not in use, when capture was tried and failed.
    pub fn failure(&self) -> Option<String> {
        match &*self.state.lock().ok()? {
            State::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// True once a graph has been captured.
    pub fn is_captured(&self) -> bool {
        self.state
            .lock()
            .map(|s| matches!(*s, State::Ready(_)))
            .unwrap_or(false)
    }

    /// The trunk's pooled features for `x` (already on the device, in the run dtype): by graph
    /// replay when `x` has the captured shape (capturing on the first call), else by the plain
    /// forward pass. Returns None when the graph cannot serve this call (other shape, CPU, or a
    /// failed capture), so the caller runs the plain pass.
    pub fn features(
        &self,
        network: &InceptionResnetV1,
        x: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if !x.device().is_cuda() {
            return Ok(None);
        }
        let Ok(mut state) = self.state.lock() else {
            return Ok(None);
        };
        if matches!(*state, State::Pending) {
            *state = match imp::capture(network, x.dims(), x.dtype(), x.device()) {
                Ok(c) => {
                    tracing::info!(dims = ?x.dims(), "trunk captured as a CUDA graph");
                    State::Ready(c)
                }
                Err(e) => {
                    tracing::warn!("CUDA graph capture failed, using the plain forward pass: {e}");
                    State::Failed(e)
                }
            };
        }
        match &*state {
            State::Ready(c) if c.dims == x.dims() => c.replay(x).map(Some),
            _ => Ok(None),
        }
    }
}

impl Default for TrunkGraph {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};

    pub struct Captured {
        pub dims: Vec<usize>,
        input: Tensor,
        output: Tensor,
        graph: CudaGraph,
    }

    // SAFETY: a CudaGraph holds raw driver handles and is not internally synchronised; it is only
    // reached through TrunkGraph's Mutex, so no two threads touch it at once, and the driver
    // allows a graph to be launched from any thread bound to its context (launch binds it).
    unsafe impl Send for Captured {}

    impl Captured {
        pub fn replay(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            let x = x.contiguous()?;
            self.input.slice_set(&x, 0, 0)?;
            self.graph
                .launch()
                .map_err(|e| candle_core::Error::Msg(format!("CUDA graph launch: {e}")))?;
            // The output buffer is overwritten by the next replay: hand out a copy.
            self.output.copy()
        }
    }

    pub fn capture(
        network: &InceptionResnetV1,
        dims: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Captured, String> {
        let Device::Cuda(cuda) = device else {
            return Err("not a CUDA device".into());
        };
        if cuda.is_event_tracking() {
            return Err(
                "the device records cross-stream events (open it with runtime::open_device)".into(),
            );
        }
        let e = |what: &str| {
            let what = what.to_string();
            move |err: candle_core::Error| format!("{what}: {err}")
        };
        let input = Tensor::randn(0f32, 1f32, dims, device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(e("input buffer"))?;
        let stream = cuda.cuda_stream();
        // Small host uploads (shapes, strides) made from here on are cached on the device, so
        // the captured run finds them there instead of copying from the host.
        let _cache = cuda.enable_cuda_graph_htod_cache();
        // Two warm-up runs: kernels loaded, cuBLAS workspaces and the upload cache filled.
        drop(network.features(&input).map_err(e("warm-up"))?);
        let warm = network
            .features(&input)
            .and_then(|f| f.contiguous())
            .map_err(e("warm-up"))?;
        let output = warm.zeros_like().map_err(e("output buffer"))?;
        drop(warm);
        stream
            .synchronize()
            .map_err(|err| format!("synchronise before capture: {err}"))?;
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|err| format!("begin capture: {err}"))?;
        let captured = network
            .features(&input)
            .and_then(|f| f.contiguous())
            .and_then(|f| output.slice_set(&f, 0, 0));
        // End the capture whatever happened, so the stream is usable again.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        captured.map_err(e("captured run"))?;
        let graph = graph
            .map_err(|err| format!("end capture: {err}"))?
            .ok_or("the capture recorded nothing")?;
        graph
            .upload()
            .map_err(|err| format!("graph upload: {err}"))?;
        Ok(Captured {
            dims: dims.to_vec(),
            input,
            output,
            graph,
        })
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    pub struct Captured {
        pub dims: Vec<usize>,
    }

    impl Captured {
        pub fn replay(&self, _x: &Tensor) -> candle_core::Result<Tensor> {
            candle_core::bail!("CUDA graphs need a `--features cuda` build")
        }
    }

    pub fn capture(
        _network: &InceptionResnetV1,
        _dims: &[usize],
        _dtype: DType,
        _device: &Device,
    ) -> Result<Captured, String> {
        Err("this binary was built without `--features cuda`".into())
    }
}
