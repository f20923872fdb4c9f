//! The prepared CPU plan for f32: the whole trunk as a list of steps over one activation layout
//! (NHWC), with every convolution's weights packed once at load for the GEMM micro-kernel, branch
//! outputs written in place into channel slices of their block's buffer (no concatenation), the
//! residual scale-add and ReLU done in the up-projection's epilogue (in place on the residual
//! stream), and activation buffers made once per input shape (at warm-up) and reused, so a frame
//! allocates nothing. The backend boundary is the whole forward: NCHW batch in, pooled features out.

mod build;
pub mod exec;
pub mod gemm;
mod pool;
pub mod qgemm;
pub mod steps;
pub mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::conv::{ConvKernel, FoldedConv};
use super::cpu_conv::{cpu_f32, CpuGemmConv};
pub use build::{ConvQuant, PlanConv};
use exec::{PreparedConv, Scratch, Tiling, View};
use gemm::{AlignedVec, Epilogue, MicroKernel};

/// The kernel choice that asks for the plan: the trunk runs through [`CpuPlan`] when the model is
/// f32 on the CPU, and through [`CpuGemmConv`] layer by layer otherwise (f16, CUDA).
#[derive(Debug, Default, Clone, Copy)]
pub struct PlanKernel(CpuGemmConv);

impl ConvKernel for PlanKernel {
    /// Where the plan does not apply, the layers run through `cpu-gemm`.
    fn name(&self) -> &'static str {
        "cpu-gemm"
    }
    fn forward(&self, x: &Tensor, conv: &FoldedConv) -> candle_core::Result<Tensor> {
        self.0.forward(x, conv)
    }
    fn forward_residual(
        &self,
        parts: &[&Tensor],
        conv: &FoldedConv,
        residual: &Tensor,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        self.0.forward_residual(parts, conv, residual, relu)
    }
    fn prefers_cpu_plan(&self) -> bool {
        true
    }
}

/// One logical activation buffer: `channels` per pixel (its row stride).
#[derive(Debug, Clone, Copy)]
struct BufferSpec {
    channels: usize,
}

/// A channel range of a logical buffer.
#[derive(Debug, Clone, Copy)]
struct Slot {
    buf: usize,
    offset: usize,
    channels: usize,
}

#[derive(Debug)]
enum Op {
    /// The stem convolution, picked by the input's channel count (RGB, or a grey frame).
    Stem {
        src: Slot,
        dst: Slot,
    },
    Conv {
        conv: usize,
        src: Slot,
        dst: Slot,
        epilogue: Epilogue,
    },
    MaxPool {
        src: Slot,
        dst: Slot,
    },
}

/// A step and its label for `--profile`.
#[derive(Debug)]
struct Step {
    op: Op,
    label: String,
}

/// Buffers and tilings for one input shape `(n, c, h, w)`; made at warm-up, reused per frame.
#[derive(Debug)]
struct Workspace {
    shape: (usize, usize, usize, usize),
    /// Per logical buffer: (physical buffer, height, width).
    placement: Vec<(usize, usize, usize)>,
    physical: Vec<AlignedVec>,
    tilings: Vec<Option<Tiling>>,
    /// Per step: floating-point operations of one call (multiply-adds count 2).
    flops: Vec<f64>,
    scratch: Scratch,
}

#[derive(Debug)]
pub struct CpuPlan {
    convs: Vec<PreparedConv>,
    stem_rgb: usize,
    stem_grey: Option<usize>,
    stem_channels: usize,
    buffers: Vec<BufferSpec>,
    steps: Vec<Step>,
    input: usize,
    output: usize,
    kernel: MicroKernel,
    threads: usize,
    workspace: Mutex<Option<Workspace>>,
    /// The threads each layer's work items are split across (see [`pool::SpinPool`]).
    pool: pool::SpinPool,
    profiling: AtomicBool,
    /// Per step, summed over profiled calls.
    timings: Mutex<Vec<StepTime>>,
}

/// What profiling records of one step, summed over calls.
#[derive(Debug, Clone, Copy, Default)]
struct StepTime {
    wall: Duration,
    /// CPU time of the thread that ran the step.
    cpu: Duration,
    /// Time inside work items: of the busiest thread, and of all threads together.
    busy_max: Duration,
    busy_sum: Duration,
}

/// One row of [`CpuPlan::profile`]: the steps sharing a label.
#[derive(Debug, Clone)]
pub struct ProfileRow {
    pub label: String,
    /// Steps with that label in one forward.
    pub steps: usize,
    /// Wall time, summed over the profiled calls.
    pub wall: Duration,
    /// CPU time of the thread that ran the steps (with one thread: the whole cost, and far less
    /// sensitive to a loaded machine than wall time).
    pub thread_cpu: Duration,
    /// Floating-point operations of one forward at the current shape.
    pub flops: f64,
    /// Time spent inside the steps' work items, summed over calls: by the busiest thread of each
    /// call, and by all threads. With several threads, `wall - busy_max` is what handing the
    /// items to the pool and waiting for the last one cost, and `busy_max - busy_sum / threads`
    /// the imbalance; `busy_sum` against one thread's wall is the work's own slowdown.
    pub busy_max: Duration,
    pub busy_sum: Duration,
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// What [`CpuPlan::features_observed`] shows every convolution's input to: the convolution's
/// plan index and one input pixel's channels.
pub type Observer<'a> = &'a mut (dyn FnMut(usize, &[f32]) + Send);

/// Why the plan could not run a batch.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cpu plan: {0}")]
    Shape(String),
}

fn bad(msg: impl Into<String>) -> PlanError {
    PlanError::Shape(msg.into())
}

impl CpuPlan {
    /// Name of the micro-kernel chosen at load (`avx2-fma` or `portable`).
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name()
    }

    /// Threads each layer is split across.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Forces the portable micro-kernel (tests compare it with the detected one).
    pub fn with_kernel(mut self, kernel: MicroKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Turns per-step timing on (for `echonet bench --profile`) and clears what was recorded.
    pub fn set_profiling(&self, on: bool) {
        self.profiling.store(on, Ordering::Relaxed);
        pool::ITEM_CLOCK.set(on);
        if let Ok(mut t) = self.timings.lock() {
            t.clear();
            t.resize(self.steps.len(), StepTime::default());
        }
    }

    /// Per step label: steps with that label in one forward, recorded wall and thread CPU time
    /// (summed over calls) and floating-point operations of one forward; slowest first.
    pub fn profile(&self) -> Vec<ProfileRow> {
        let times = self.timings.lock().map(|t| t.clone()).unwrap_or_default();
        let flops = self
            .workspace
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|ws| ws.flops.clone()))
            .unwrap_or_default();
        let mut rows: Vec<ProfileRow> = Vec::new();
        for (i, (step, t)) in self.steps.iter().zip(times).enumerate() {
            let f = flops.get(i).copied().unwrap_or(0.0);
            match rows.iter_mut().find(|r| r.label == step.label) {
                Some(r) => {
                    r.steps += 1;
                    r.wall += t.wall;
                    r.thread_cpu += t.cpu;
                    r.flops += f;
                    r.busy_max += t.busy_max;
                    r.busy_sum += t.busy_sum;
                }
                None => rows.push(ProfileRow {
                    label: step.label.clone(),
                    steps: 1,
                    wall: t.wall,
                    thread_cpu: t.cpu,
                    flops: f,
                    busy_max: t.busy_max,
                    busy_sum: t.busy_sum,
                }),
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.wall));
        rows
    }

    /// Pooled features `[N, c7]` of an f32 NCHW batch on the CPU.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        let (storage, layout) = x.storage_and_layout();
        let data = cpu_f32(&storage, layout).ok_or_else(|| {
            candle_core::Error::Msg("cpu plan: input is not f32 on the CPU".into())
        })?;
        let mut out = vec![0f32; n * self.feature_channels()];
        self.features_into(data, (n, c, h, w), &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        drop(storage);
        Tensor::from_vec(out, (n, self.feature_channels()), &Device::Cpu)
    }

    /// Channels of the pooled features.
    pub fn feature_channels(&self) -> usize {
        self.buffers[self.output].channels
    }

    /// Pooled features of `input` (NCHW, `shape`) into `out` (`n` x feature channels). After the
    /// first call for a shape (the warm-up), allocates nothing.
    pub fn features_into(
        &self,
        input: &[f32],
        shape: (usize, usize, usize, usize),
        out: &mut [f32],
    ) -> Result<(), PlanError> {
        self.features_observed(input, shape, out, None)
    }

    /// Convolutions in int8 (of [`CpuPlan::conv_count`]).
    pub fn int8_convs(&self) -> usize {
        self.convs.iter().filter(|c| c.int8.is_some()).count()
    }

    /// Convolutions in the plan (the stems included).
    pub fn conv_count(&self) -> usize {
        self.convs.len()
    }

    /// [`CpuPlan::features_into`], showing every convolution's input to `observe` first: called
    /// with the convolution's plan index (as [`CpuPlan::convolutions`]) and each input pixel's
    /// channels. For calibration; slow.
    pub fn features_observed(
        &self,
        input: &[f32],
        shape: (usize, usize, usize, usize),
        out: &mut [f32],
        observe: Option<Observer<'_>>,
    ) -> Result<(), PlanError> {
        let (n, c, h, w) = shape;
        if input.len() < n * c * h * w {
            return Err(bad(format!(
                "input holds {} floats, shape {shape:?} needs {}",
                input.len(),
                n * c * h * w
            )));
        }
        if out.len() < n * self.feature_channels() {
            return Err(bad("output buffer smaller than n x features"));
        }
        let mut guard = match self.workspace.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.as_ref().map(|ws| ws.shape) != Some(shape) {
            *guard = None; // free the old shape's buffers first
            *guard = Some(self.workspace(shape)?);
        }
        let Some(ws) = guard.as_mut() else {
            return Err(bad("workspace missing"));
        };
        self.pool
            .install(|| self.run_steps(ws, input, shape, out, observe))
    }

    /// Runs every step for a batch whose workspace is ready.
    fn run_steps(
        &self,
        ws: &mut Workspace,
        input: &[f32],
        shape: (usize, usize, usize, usize),
        out: &mut [f32],
        mut observe: Option<Observer<'_>>,
    ) -> Result<(), PlanError> {
        let (n, c, _, _) = shape;
        let profiling = self.profiling.load(Ordering::Relaxed);
        // SAFETY: every view below lies inside its physical buffer (sizes computed by
        // `workspace` from the same shapes); a step's source and destination are distinct logical
        // buffers live at the same time, hence distinct physical buffers, or (in-place residual)
        // the same range read and written element by element by one thread.
        unsafe {
            let view = |ws: &mut Workspace, s: Slot| -> View {
                let (phys, vh, vw) = ws.placement[s.buf];
                View {
                    ptr: ws.physical[phys].as_mut_slice().as_mut_ptr().add(s.offset),
                    ld: if s.buf == self.input {
                        c
                    } else {
                        self.buffers[s.buf].channels
                    },
                    channels: s.channels,
                    n,
                    h: vh,
                    w: vw,
                }
            };
            let input_view = view(
                ws,
                Slot {
                    buf: self.input,
                    offset: 0,
                    channels: c,
                },
            );
            steps::nchw_to_nhwc(input, input_view, self.threads);
            for (i, step) in self.steps.iter().enumerate() {
                let start = profiling.then(|| {
                    pool::ITEM_CLOCK.take();
                    (Instant::now(), thread_cpu_time())
                });
                if let Some(f) = observe.as_mut() {
                    let seen = match step.op {
                        Op::Stem { src, .. } => Some((self.stem_for(c)?, src, c)),
                        Op::Conv { conv, src, .. } => Some((conv, src, src.channels)),
                        Op::MaxPool { .. } => None,
                    };
                    if let Some((conv, src, channels)) = seen {
                        let v = view(ws, src);
                        for p in 0..v.n * v.h * v.w {
                            f(
                                conv,
                                std::slice::from_raw_parts(v.ptr.add(p * v.ld), channels),
                            );
                        }
                    }
                }
                match step.op {
                    Op::Stem { src, dst } => {
                        let conv = self.stem_for(c)?;
                        let mut src = view(ws, src);
                        src.channels = c;
                        let tiling = ws.tilings[i].ok_or_else(|| bad("stem tiling missing"))?;
                        exec::conv(
                            self.kernel,
                            &self.convs[conv],
                            src,
                            view(ws, dst),
                            Epilogue {
                                accumulate: false,
                                relu: true,
                            },
                            tiling,
                            &ws.scratch,
                            self.threads,
                        );
                    }
                    Op::Conv {
                        conv,
                        src,
                        dst,
                        epilogue,
                    } => {
                        let tiling = ws.tilings[i].ok_or_else(|| bad("conv tiling missing"))?;
                        exec::conv(
                            self.kernel,
                            &self.convs[conv],
                            view(ws, src),
                            view(ws, dst),
                            epilogue,
                            tiling,
                            &ws.scratch,
                            self.threads,
                        );
                    }
                    Op::MaxPool { src, dst } => {
                        steps::max_pool_3s2(view(ws, src), view(ws, dst), self.threads);
                    }
                }
                if let Some((start, cpu)) = start {
                    let wall = start.elapsed();
                    let cpu = thread_cpu_time().saturating_sub(cpu);
                    let busy = pool::ITEM_CLOCK.take();
                    if let Ok(mut t) = self.timings.lock() {
                        if let Some(slot) = t.get_mut(i) {
                            slot.wall += wall;
                            slot.cpu += cpu;
                            slot.busy_max += busy.iter().max().copied().unwrap_or_default();
                            slot.busy_sum += busy.iter().sum::<Duration>();
                        }
                    }
                }
            }
            let out_view = view(
                ws,
                Slot {
                    buf: self.output,
                    offset: 0,
                    channels: self.feature_channels(),
                },
            );
            steps::global_mean(out_view, &mut out[..n * self.feature_channels()]);
        }
        Ok(())
    }

    fn stem_for(&self, c: usize) -> Result<usize, PlanError> {
        if c == self.stem_channels {
            Ok(self.stem_rgb)
        } else if c == 1 {
            self.stem_grey.ok_or_else(|| {
                bad(format!(
                    "{c} input channels, the stem takes {}",
                    self.stem_channels
                ))
            })
        } else {
            Err(bad(format!(
                "{c} input channels, the stem takes {}",
                self.stem_channels
            )))
        }
    }

    /// Sizes every logical buffer for `shape`, shares physical buffers between logical ones whose
    /// lifetimes do not overlap, and plans each convolution's tiling.
    fn workspace(&self, shape: (usize, usize, usize, usize)) -> Result<Workspace, PlanError> {
        let (n, c, h, w) = shape;
        if n == 0 {
            return Err(bad("empty batch"));
        }
        let stem = self.stem_for(c)?;
        let mut dims: Vec<Option<(usize, usize)>> = vec![None; self.buffers.len()];
        dims[self.input] = Some((h, w));
        let mut tilings = vec![None; self.steps.len()];
        let mut flops = vec![0f64; self.steps.len()];
        let mut scratch = 0usize;
        let mut quantised = 0usize;
        let mut first = vec![usize::MAX; self.buffers.len()];
        let mut last = vec![0usize; self.buffers.len()];
        first[self.input] = 0;
        for (i, step) in self.steps.iter().enumerate() {
            let (src, dst, out) = match step.op {
                Op::Stem { src, dst } | Op::Conv { src, dst, .. } => {
                    let conv = match step.op {
                        Op::Conv { conv, .. } => conv,
                        _ => stem,
                    };
                    let (sh, sw) = dims[src.buf]
                        .ok_or_else(|| bad(format!("{}: input not yet computed", step.label)))?;
                    let pc = &self.convs[conv];
                    let out = pc.output_size(sh, sw).ok_or_else(|| {
                        bad(format!(
                            "{}: {sh}x{sw} input is smaller than its {}x{} kernel",
                            step.label, pc.kh, pc.kw
                        ))
                    })?;
                    let t = exec::tiling(pc, n, out.0, out.1, self.threads);
                    flops[i] = 2.0 * (n * out.0 * out.1 * pc.weights.k * pc.cout()) as f64;
                    scratch = scratch.max(t.scratch);
                    quantised = quantised.max(exec::int8_input_bytes(pc, n, sh, sw));
                    tilings[i] = Some(t);
                    (src, dst, out)
                }
                Op::MaxPool { src, dst } => {
                    let (sh, sw) = dims[src.buf]
                        .ok_or_else(|| bad(format!("{}: input not yet computed", step.label)))?;
                    let out = steps::pool_output_size(sh, sw).ok_or_else(|| {
                        bad(format!("{}: {sh}x{sw} input is below 3x3", step.label))
                    })?;
                    (src, dst, out)
                }
            };
            match dims[dst.buf] {
                Some(d) if d != out => {
                    return Err(bad(format!(
                        "{}: writes {out:?} into a buffer of {d:?}",
                        step.label
                    )))
                }
                _ => dims[dst.buf] = Some(out),
            }
            for b in [src.buf, dst.buf] {
                first[b] = first[b].min(i);
                last[b] = last[b].max(i);
            }
        }
        last[self.output] = usize::MAX;
        // Greedy lifetime sharing, in order of first use.
        let mut order: Vec<usize> = (0..self.buffers.len()).collect();
        order.sort_by_key(|&b| first[b]);
        let mut physical_sizes: Vec<usize> = Vec::new();
        let mut physical_free_after: Vec<usize> = Vec::new();
        let mut placement = vec![(0, 0, 0); self.buffers.len()];
        for b in order {
            let Some((bh, bw)) = dims[b] else { continue };
            let channels = if b == self.input {
                c
            } else {
                self.buffers[b].channels
            };
            let size = n * bh * bw * channels;
            let free = (0..physical_sizes.len())
                .filter(|&p| physical_free_after[p] < first[b])
                .max_by_key(|&p| (physical_sizes[p] >= size, usize::MAX - physical_sizes[p]));
            let p = match free {
                Some(p) => p,
                None => {
                    physical_sizes.push(0);
                    physical_free_after.push(0);
                    physical_sizes.len() - 1
                }
            };
            physical_sizes[p] = physical_sizes[p].max(size);
            physical_free_after[p] = last[b];
            placement[b] = (p, bh, bw);
        }
        Ok(Workspace {
            shape,
            placement,
            physical: physical_sizes.into_iter().map(AlignedVec::zeroed).collect(),
            tilings,
            flops,
            scratch: Scratch::new(self.threads, scratch).with_shared(quantised),
        })
    }

    /// Bytes of activation and scratch buffers held for the current shape.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace
            .lock()
            .ok()
            .and_then(|g| {
                g.as_ref().map(|ws| {
                    4 * (ws.physical.iter().map(|b| b.len()).sum::<usize>()
                        + ws.scratch.floats() * (self.threads + 1))
                        + ws.scratch.shared_bytes()
                })
            })
            .unwrap_or(0)
    }
}

impl PreparedConv {
    /// Packs a folded convolution with its natural channel orders (Winograd with 2-output tiles
    /// for a 3x3, 1x3 or 3x1 stride-1 convolution).
    pub fn from_folded(conv: &FoldedConv) -> candle_core::Result<Self> {
        build::prepare(conv, None, None, build::Algorithm::Auto)
    }

    /// Packs a folded convolution in int8 (weights and input quantisation from `quant`).
    pub fn from_folded_int8(conv: &FoldedConv, quant: &ConvQuant) -> candle_core::Result<Self> {
        build::prepare_quant(conv, None, None, build::Algorithm::Direct, Some(quant))
    }

    /// Packs a folded convolution for one algorithm: direct (`None`) or Winograd with output
    /// tiles of `Some(2)` or `Some(4)` (stride 1 with 3-tap axes, or 7-tap ones for 4: F(2x2),
    /// F(4x4), F(2) / F(4) along a 1x3 or 3x1, F(4) along a 1x7 or 7x1; otherwise direct).
    pub fn from_folded_with(
        conv: &FoldedConv,
        winograd: Option<usize>,
    ) -> candle_core::Result<Self> {
        let algorithm = match winograd {
            None => build::Algorithm::Direct,
            Some(m) => build::Algorithm::Winograd(m),
        };
        build::prepare(conv, None, None, algorithm)
    }

    /// Runs this convolution alone on an NCHW f32 tensor (NHWC inside), for the kernel tests:
    /// `relu?(conv(x) + residual)`, the residual (NCHW, the output's shape) when given.
    pub fn forward_nchw(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
        kernel: MicroKernel,
        threads: usize,
    ) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.cin {
            candle_core::bail!("conv: {c} input channels, weight expects {}", self.cin);
        }
        let (oh, ow) = self
            .output_size(h, w)
            .ok_or_else(|| candle_core::Error::Msg("conv: input smaller than kernel".into()))?;
        let cout = self.cout();
        let mut src = x.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?;
        let mut dst = match residual {
            Some(r) => r.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0f32; n * oh * ow * cout],
        };
        if dst.len() != n * oh * ow * cout {
            candle_core::bail!("conv: residual does not have the output's shape");
        }
        let t = exec::tiling(self, n, oh, ow, threads);
        let scratch =
            Scratch::new(threads, t.scratch).with_shared(exec::int8_input_bytes(self, n, h, w));
        // SAFETY: both views cover exactly their vectors, which do not overlap.
        unsafe {
            exec::conv(
                kernel,
                self,
                View {
                    ptr: src.as_mut_ptr(),
                    ld: c,
                    channels: c,
                    n,
                    h,
                    w,
                },
                View {
                    ptr: dst.as_mut_ptr(),
                    ld: cout,
                    channels: cout,
                    n,
                    h: oh,
                    w: ow,
                },
                Epilogue {
                    accumulate: residual.is_some(),
                    relu,
                },
                t,
                &scratch,
                threads,
            );
        }
        Tensor::from_vec(dst, (n, oh, ow, cout), &Device::Cpu)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}
