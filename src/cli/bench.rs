//! `echonet bench`: times the forward pass (median and p90 ms/frame, frames/s) for a device,
//! dtype, batch size and thread count, on a bundle or on an untrained network of the same shape
//! (speed does not depend on the weights' values).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use echonet_edge::model::{
    import::probe_batch, profile::ProfiledKernel, read_bundle, Architecture, EchoNetModel,
    InputSpec, Manifest, Provenance, RunOptions, StorageDtype, WeightStore,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bundle to time; default: an untrained network of `--width` at `--input-size`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Width multiplier of the untrained network (1.0 = EchoNet's InceptionResNet-v1).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// Square input size of the untrained network, pixels.
    #[arg(long, default_value_t = 299)]
    pub input_size: usize,
    /// Frames per forward call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Untimed forward calls first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed forward calls.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also time every convolution by shape (adds a little overhead) and print the table.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub run: super::RunArgs,
}

/// One sampled frame every 100 ms: the paper's 10 frames per second.
const FRAME_BUDGET_MS: f64 = 100.0;

/// User + system CPU seconds of this process so far (all threads).
fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes one rusage struct, which we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (rc == 0).then(|| {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.batch > 0 && args.iters > 0,
        "--batch and --iters must be at least 1"
    );
    let mut profiler = None;
    let mut open = |dtype| -> anyhow::Result<(RunOptions, usize)> {
        let (mut opts, threads) = args.run.open(dtype)?;
        if args.profile {
            let p = Arc::new(ProfiledKernel::new(opts.kernel.clone()));
            opts.kernel = p.clone();
            profiler = Some(p);
        }
        Ok((opts, threads))
    };
    let (model, source) = match &args.model {
        Some(path) => {
            let bundle = read_bundle(path)?;
            let (opts, threads) = open(bundle.manifest.dtype.candle())?;
            (
                EchoNetModel::from_bundle(&bundle, &opts)?,
                (path.display().to_string(), threads),
            )
        }
        None => {
            let (opts, threads) = open(candle_core::DType::F32)?;
            let manifest = Manifest {
                format: echonet_edge::model::bundle::BUNDLE_FORMAT.into(),
                format_version: echonet_edge::model::bundle::BUNDLE_FORMAT_VERSION,
                architecture: Architecture::new(args.width, None),
                input: InputSpec::facenet(args.input_size, 3),
                tasks: vec![],
                dtype: StorageDtype::F32,
                intended_use: "benchmark only: untrained weights".into(),
                provenance: Provenance {
                    source: "synthetic".into(),
                    data: "none".into(),
                    created: String::new(),
                    tool: "echonet bench".into(),
                    metrics: Default::default(),
                    notes: String::new(),
                },
                content_hash: String::new(),
            };
            let store = WeightStore::synthetic(1);
            (
                EchoNetModel::from_store(manifest, &store, &opts)?,
                (format!("untrained width {}", args.width), threads),
            )
        }
    };
    let mut model = model;
    if !args.run.no_cuda_graph {
        model.enable_cuda_graph();
    }
    let spec = model.manifest().input.clone();
    let batch = probe_batch(args.batch, &spec)?.to_device(model.device())?;
    for _ in 0..args.warmup {
        model.forward(&batch)?;
    }
    if let Some(p) = &profiler {
        p.reset();
    }
    let plan_profile = args.profile.then(|| model.cpu_plan()).flatten();
    if let Some(plan) = plan_profile {
        plan.set_profiling(true);
    }
    let mut per_frame_ms = Vec::with_capacity(args.iters);
    let cpu_before = process_cpu_seconds();
    for _ in 0..args.iters {
        let t = Instant::now();
        let (features, _) = model.forward(&batch)?;
        // forward returns host data, so the device has finished when it returns.
        drop(features);
        per_frame_ms.push(t.elapsed().as_secs_f64() * 1000.0 / args.batch as f64);
    }
    // CPU time of the whole process per frame: on a shared, loaded machine this moves far less
    // than wall time (it still counts a pool's spinning).
    let cpu_ms_per_frame = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) * 1000.0 / (args.iters * args.batch) as f64),
        _ => None,
    };
    per_frame_ms.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&per_frame_ms, 0.5);
    let p90 = percentile(&per_frame_ms, 0.9);
    let meets_budget = median <= FRAME_BUDGET_MS;
    let verdict = if meets_budget {
        format!(
            "within the live budget: {median:.1} ms/frame <= {FRAME_BUDGET_MS:.0} ms (10 sampled frames/s)"
        )
    } else {
        format!(
            "too slow for live use: {median:.1} ms/frame > {FRAME_BUDGET_MS:.0} ms (10 sampled frames/s); \
             the daemon would drop frames and withhold every window. Use a GPU (--device cuda), \
             more cores (--threads), an int8 bundle (`echonet quantize`), or a smaller variant \
             (--width, --input-size)"
        )
    };
    let dtype_warning =
        (model.device().is_cpu() && model.dtype() != candle_core::DType::F32).then(|| {
            format!(
                "{:?} on the CPU has no fast path (computed through candle, several times slower \
                 than f32): run with --dtype f32",
                model.dtype()
            )
            .to_lowercase()
        });
    if let Some(w) = &dtype_warning {
        eprintln!("warning: {w}");
    }
    let report = serde_json::json!({
        "model": source.0,
        "device": args.run.device,
        "dtype": format!("{:?}", model.dtype()).to_lowercase(),
        "precision": model.precision(),
        "threads": source.1,
        "batch": args.batch,
        "input": [spec.channels, spec.height, spec.width],
        "conv_kernel": model.backend_name(),
        "cuda_graph": match model.cuda_graph() {
            None => "off".to_string(),
            Some(g) if g.is_captured() => "captured".to_string(),
            Some(g) => g.failure().map(|e| format!("failed: {e}")).unwrap_or_else(|| "not captured".into()),
        },
        "iters": args.iters,
        "median_ms_per_frame": median,
        "p90_ms_per_frame": p90,
        "frames_per_s": 1000.0 / median,
        "cpu_ms_per_frame": cpu_ms_per_frame,
        "budget_ms_per_frame": FRAME_BUDGET_MS,
        "meets_10fps_budget": meets_budget,
        "verdict": verdict,
        "warning": dtype_warning,
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} on {} ({}, batch {}, {} threads, {}x{}x{}, CUDA graph {}): median {:.3} ms/frame, p90 {:.3} ms/frame, {:.1} frames/s",
            source.0,
            args.run.device,
            model.precision(),
            args.batch,
            source.1,
            spec.channels,
            spec.height,
            spec.width,
            report["cuda_graph"].as_str().unwrap_or("?"),
            median,
            p90,
            1000.0 / median
        );
        println!("verdict: {verdict}");
    }
    if let Some(plan) = plan_profile {
        let total_ms: f64 = per_frame_ms.iter().sum::<f64>() * args.batch as f64;
        let rows = plan.profile();
        let step_ms: f64 = rows.iter().map(|r| r.wall.as_secs_f64() * 1000.0).sum();
        eprintln!(
            "cpu plan ({}, {} threads): steps {step_ms:.1} ms of {total_ms:.1} ms timed ({:.0}%); the rest is input layout, pooling of features, heads",
            plan.kernel_name(),
            plan.threads(),
            100.0 * step_ms / total_ms
        );
        // The thread CPU columns are the calling thread's only: with one thread they are the
        // step's whole cost, undisturbed by other processes taking the core.
        eprintln!(
            "{:<44} {:>6} {:>10} {:>8} {:>9} {:>11} {:>11}",
            "step (cin->cout)", "calls", "ms/iter", "share", "GFLOP/s", "thread cpu", "GFLOP/cpu-s"
        );
        for row in rows {
            let ms = row.wall.as_secs_f64() * 1000.0;
            let cpu = row.thread_cpu.as_secs_f64();
            let work = row.flops * args.iters as f64;
            eprintln!(
                "{:<44} {:>6} {:>10.2} {:>7.1}% {:>9.1} {:>11.2} {:>11.1}",
                row.label,
                row.steps,
                ms / args.iters as f64,
                100.0 * ms / total_ms,
                work / row.wall.as_secs_f64().max(1e-12) / 1e9,
                cpu * 1000.0 / args.iters as f64,
                work / cpu.max(1e-12) / 1e9
            );
        }
        if plan.threads() > 1 {
            // Where a split step's wall time goes: time inside work items (the busiest thread,
            // and all threads together), the hand-over to the pool and the wait for the last
            // item (wall - busiest), and the imbalance (busiest - mean). `busy sum` against the
            // step's wall time at one thread is what running beside another thread costs the
            // work itself.
            eprintln!(
                "{:<44} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "split (ms/iter)", "wall", "busy sum", "busiest", "hand-over", "imbalance"
            );
            let per = |d: std::time::Duration| d.as_secs_f64() * 1000.0 / args.iters as f64;
            for row in plan.profile() {
                let (wall, sum, max) = (per(row.wall), per(row.busy_sum), per(row.busy_max));
                eprintln!(
                    "{:<44} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                    row.label,
                    wall,
                    sum,
                    max,
                    wall - max,
                    max - sum / plan.threads() as f64
                );
            }
        }
        plan.set_profiling(false);
    }
    if let Some(p) = profiler.as_ref().filter(|_| plan_profile.is_none()) {
        let total_ms: f64 = per_frame_ms.iter().sum::<f64>() * args.batch as f64;
        let rows = p.report();
        let conv_ms: f64 = rows
            .iter()
            .map(|(_, s)| s.time.as_secs_f64() * 1000.0)
            .sum();
        eprintln!("convolutions: {conv_ms:.1} ms of {total_ms:.1} ms timed ({:.0}%); the rest is pooling, concatenation, residual adds", 100.0 * conv_ms / total_ms);
        eprintln!(
            "{:<40} {:>6} {:>10} {:>8} {:>9}",
            "kernel shape (cin->cout)", "calls", "ms/iter", "share", "GFLOP/s"
        );
        for (shape, s) in rows {
            let ms = s.time.as_secs_f64() * 1000.0;
            eprintln!(
                "{shape:<40} {:>6} {:>10.2} {:>7.1}% {:>9.1}",
                s.calls / args.iters,
                ms / args.iters as f64,
                100.0 * ms / total_ms,
                s.flops / s.time.as_secs_f64().max(1e-12) / 1e9
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
