//! Same-process A/B of the int8 plan with and without handoffs (an int8 convolution handing its
//! output on quantised, `CpuPlan::handoff_count`): two plans of one int8 bundle, frames run
//! alternately A B A B ..., so a loaded machine disturbs both alike, which runs of two binaries
//! seconds apart do not (their per-step sums moved 10 % between identical builds at load 5-7).
//! Prints per plan the least and the median per-frame time (the calling thread's CPU time at one
//! thread, wall time otherwise) and the ratios B/A; the features of both must be equal.
//!
//!     cargo run --release --example plan_ab -- INT8_BUNDLE [THREADS] [FRAMES]
//!
//! A diagnostic, so a failure panics with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use echonet_edge::model::cpu_plan::CpuPlan;
use echonet_edge::model::{read_bundle, EchoNetModel, RunOptions};
use std::path::Path;
use std::time::{Duration, Instant};

fn cpu(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = Path::new(&args[1]);
    let threads: usize = args.get(2).map_or(1, |s| s.parse().unwrap());
    let frames: usize = args.get(3).map_or(20, |s| s.parse().unwrap());
    let bundle = read_bundle(path).unwrap();
    let table = bundle.quantization.clone().unwrap().table;
    let model = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).unwrap();
    let a = CpuPlan::build_int8(model.network(), threads, &table)
        .unwrap()
        .with_handoffs(false);
    let b = CpuPlan::build_int8(model.network(), threads, &table).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let shape = (1, 3, 299, 299);
    let mut seed = 1u64;
    let x: Vec<f32> = (0..3 * 299 * 299)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    let nf = a.feature_channels();
    let (mut fa, mut fb) = (vec![0f32; nf], vec![0f32; nf]);
    let (mut ta, mut tb, mut ca, mut cb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Per frame: wall time (1 thread: the thread's CPU time) and the process's CPU time.
    let time = |plan: &CpuPlan, out: &mut [f32]| -> (f64, f64) {
        let clock = if threads > 1 {
            libc::CLOCK_PROCESS_CPUTIME_ID
        } else {
            libc::CLOCK_THREAD_CPUTIME_ID
        };
        let (w, c) = (Instant::now(), cpu(clock));
        if threads > 1 {
            pool.install(|| plan.features_into(&x, shape, out)).unwrap();
        } else {
            plan.features_into(&x, shape, out).unwrap();
        }
        let c = (cpu(clock) - c).as_secs_f64() * 1000.0;
        let w = if threads > 1 {
            w.elapsed().as_secs_f64() * 1000.0
        } else {
            c
        };
        (w, c)
    };
    time(&a, &mut fa);
    time(&b, &mut fb);
    assert_eq!(fa, fb, "handoffs changed the features");
    let per_step = std::env::var("PLAN_AB_STEPS").is_ok();
    a.set_profiling(per_step);
    b.set_profiling(per_step);
    for _ in 0..frames {
        let (w, c) = time(&a, &mut fa);
        ta.push(w);
        ca.push(c);
        let (w, c) = time(&b, &mut fb);
        tb.push(w);
        cb.push(c);
    }
    let ((amin, amed), (bmin, bmed)) = (stats(&mut ta), stats(&mut tb));
    let ((_, acpu), (_, bcpu)) = (stats(&mut ca), stats(&mut cb));
    println!(
        "{} threads, {frames} frames each ({}): A (no handoffs) least {amin:.2} median {amed:.2} ms; B ({} handoffs) least {bmin:.2} median {bmed:.2} ms; B/A least {:.3} median {:.3}",
        threads,
        if threads > 1 { "wall" } else { "thread CPU" },
        b.handoff_count(),
        bmin / amin,
        bmed / amed
    );
    println!(
        "median CPU ms per frame: A {acpu:.2}, B {bcpu:.2}, B/A {:.3}",
        bcpu / acpu
    );
    if per_step {
        // Per step label: thread CPU summed over the frames (the calling thread's only).
        let (pa, pb) = (a.profile(), b.profile());
        println!(
            "{:<44} {:>9} {:>9}",
            "step (thread CPU ms per frame)", "A", "B"
        );
        let (mut sa, mut sb) = (0.0, 0.0);
        for ra in &pa {
            let Some(rb) = pb.iter().find(|r| r.label == ra.label) else {
                continue;
            };
            let (x, y) = (
                ra.thread_cpu.as_secs_f64() * 1000.0 / frames as f64,
                rb.thread_cpu.as_secs_f64() * 1000.0 / frames as f64,
            );
            sa += x;
            sb += y;
            println!("{:<44} {x:9.3} {y:9.3}", ra.label);
        }
        println!("{:<44} {sa:9.3} {sb:9.3}", "sum");
    }
}
