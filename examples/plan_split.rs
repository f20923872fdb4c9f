//! Per-step split of a plan at 1 against 2 threads, in one process: two plans of one bundle (1
//! and 2 threads; int8 for an `echonet quantize` bundle, else f32), frames run alternately on
//! the same 2-thread pool, each step's least wall time over the frames kept per plan (another
//! process can only add to it). Prints per step the least wall at 1 and 2 threads, their ratio
//! (0.5 is a perfect split) and what the 2-thread step loses against a perfect split. Runs of
//! two binaries seconds apart differ by up to 10 % on a loaded machine; alternating frames in one
//! process load both plans alike. If the machine has no second core free (load above 2 per two
//! cores), the ratios say so (near 1 everywhere) rather than anything about the split.
//!
//!     cargo run --release --example plan_split -- BUNDLE [FRAMES]
//!
//! A diagnostic, so a failure panics with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use echonet_edge::model::cpu_plan::CpuPlan;
use echonet_edge::model::{read_bundle, EchoNetModel, RunOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = Path::new(&args[1]);
    let frames: usize = args.get(2).map_or(20, |s| s.parse().unwrap());
    let bundle = read_bundle(path).unwrap();
    let model = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).unwrap();
    let plan = |threads| match &bundle.quantization {
        Some(q) => CpuPlan::build_int8(model.network(), threads, &q.table).unwrap(),
        None => CpuPlan::build(model.network(), threads).unwrap(),
    };
    let plans = [plan(1), plan(2)];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
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
    let nf = plans[0].feature_channels();
    let mut out = vec![0f32; nf];
    let mut least: [BTreeMap<String, (usize, f64)>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut frame_least = [f64::MAX; 2];
    for f in 0..=frames {
        for (i, plan) in plans.iter().enumerate() {
            plan.set_profiling(f > 0);
            let t = Instant::now();
            pool.install(|| plan.features_into(&x, shape, &mut out))
                .unwrap();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if f == 0 {
                continue; // warm-up
            }
            frame_least[i] = frame_least[i].min(ms);
            for r in plan.profile() {
                let w = r.wall.as_secs_f64() * 1000.0;
                let e = least[i].entry(r.label.clone()).or_insert((r.steps, w));
                e.1 = e.1.min(w);
            }
        }
    }
    let mut rows: Vec<_> = least[0]
        .iter()
        .map(|(k, &(n, a))| (k.clone(), n, a, least[1].get(k).map_or(f64::NAN, |v| v.1)))
        .collect();
    rows.sort_by(|a, b| (b.3 - b.2 / 2.0).total_cmp(&(a.3 - a.2 / 2.0)));
    println!(
        "{:<44} {:>5} {:>8} {:>8} {:>6} {:>8}",
        "step (least wall ms per frame)", "calls", "1 thr", "2 thr", "2/1", "lost ms"
    );
    let (mut s1, mut s2) = (0.0, 0.0);
    for (k, n, a, b) in rows {
        s1 += a;
        s2 += b;
        println!(
            "{k:<44} {n:>5} {a:8.3} {b:8.3} {:6.3} {:8.3}",
            b / a,
            b - a / 2.0
        );
    }
    println!(
        "{:<44} {:>5} {s1:8.3} {s2:8.3} {:6.3} {:8.3}",
        "sum of steps",
        "",
        s2 / s1,
        s2 - s1 / 2.0
    );
    println!(
        "least frame: 1 thread {:.2} ms, 2 threads {:.2} ms ({frames} frames each)",
        frame_least[0], frame_least[1]
    );
}
