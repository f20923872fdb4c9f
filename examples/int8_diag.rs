//! Where int8 loses on an input unlike the calibration frames (the analysis behind `echonet
//! quantize --headroom`, README "int8 bundles"): per int8 layer, the range calibration gave, the
//! range this input reaches, and how far int8 in that layer alone moves the pooled features from
//! the f32 plan (`ranges`); or the whole network with scales fitted on this input itself (what
//! per-frame dynamic scales would give) and with the bundle's ranges widened 1.5-4x (`oracle`).
//!
//!     cargo run --release --example int8_diag -- F32_BUNDLE INT8_BUNDLE INPUT.npy [ranges|oracle]
//!
//! INPUT.npy: float32 `[N, C, H, W]`, normalised (as `echonet infer --input`). A diagnostic, so
//! a failure panics with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use echonet_edge::model::cpu_plan::{ConvQuant, CpuPlan};
use echonet_edge::model::quantize::{self, Method};
use echonet_edge::model::{read_bundle, EchoNetModel, Int8Request, RunOptions};
use std::path::Path;

fn npy(path: &str) -> (Vec<f32>, Vec<usize>) {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let shape_s = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_s
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, shape)
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut d) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        n += ((x - y) as f64).powi(2);
        d += (*y as f64).powi(2);
    }
    (n / d).sqrt()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (f32b, q8b, input) = (&args[1], &args[2], &args[3]);
    let mode = args.get(4).map(String::as_str).unwrap_or("ranges");
    let bundle = read_bundle(Path::new(f32b)).unwrap();
    let qb = read_bundle(Path::new(q8b)).unwrap();
    let qw = qb.quantization.unwrap();
    let opts = RunOptions {
        dtype: Some(candle_core::DType::F32),
        int8: Int8Request::Off,
        ..RunOptions::cpu()
    };
    let model = EchoNetModel::from_bundle(&bundle, &opts).unwrap();
    let net = model.network();
    let plan = model.cpu_plan().unwrap();
    let (x, shape) = npy(input);
    let sh = (shape[0], shape[1], shape[2], shape[3]);
    let nf = plan.feature_channels();
    let mut reference = vec![0f32; sh.0 * nf];
    plan.features_into(&x, sh, &mut reference).unwrap();
    let convs = CpuPlan::convolutions(net).unwrap();
    let run = |table: &[Option<ConvQuant>]| -> f64 {
        let p = CpuPlan::build_int8(net, 1, table).unwrap();
        let mut out = vec![0f32; sh.0 * nf];
        p.features_into(&x, sh, &mut out).unwrap();
        rel(&out, &reference)
    };
    println!("all int8 (bundle table): {:.4e}", run(&qw.table));
    let stats = quantize::calibrate(plan, &[(x.clone(), sh)]).unwrap();
    match mode {
        "ranges" => {
            for (i, (l, s)) in qw.info.layers.iter().zip(&stats).enumerate() {
                if let (Some(sc), Some(zp)) = (l.act_scale, l.act_zero_point) {
                    let lo = -(zp as f32) * sc;
                    let hi = (255.0 - zp as f32) * sc;
                    let mut only = vec![None; qw.table.len()];
                    only[i] = qw.table[i].clone();
                    let e = run(&only);
                    println!("{i:3} {:<40} calib [{lo:8.3},{hi:8.3}] seen [{:8.3},{:8.3}] max/hi {:5.2} alone {e:.3e}", l.label, s.min, s.max, s.max / hi);
                }
            }
        }
        "oracle" => {
            // Scales fitted on this very input (what per-frame dynamic scales would do).
            for m in [Method::MinMax, Method::Percentile, Method::Mse] {
                let (table, _) = quantize::plan_table(&convs, &stats, m, 1.0).unwrap();
                println!("oracle {}: {:.4e}", m.as_str(), run(&table));
            }
            // Bundle weights with headroom: calibrated hi scaled by f.
            for f in [1.5f32, 2.0, 3.0, 4.0] {
                let table: Vec<Option<ConvQuant>> = qw
                    .table
                    .iter()
                    .map(|q| {
                        q.clone().map(|mut q| {
                            let lo = -(q.act.zero_point as f32) * q.act.scale;
                            let hi = (255.0 - q.act.zero_point as f32) * q.act.scale;
                            q.act = echonet_edge::model::cpu_plan::qgemm::ActQuant::from_range(
                                lo * f,
                                hi * f,
                            );
                            q
                        })
                    })
                    .collect();
                println!("headroom x{f}: {:.4e}", run(&table));
            }
        }
        _ => panic!("mode"),
    }
}
