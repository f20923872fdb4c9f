//! Forward-pass benchmarks of the full-size InceptionResNet-v1 (299x299, f32, CPU) at batch 1 and
//! 20 (the paper's frames per video), on untrained weights: speed does not depend on the values.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use echonet_edge::model::{
    bundle::{BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION},
    import::probe_batch,
    Architecture, EchoNetModel, InputSpec, Manifest, Provenance, RunOptions, StorageDtype,
    WeightStore,
};

fn untrained_model() -> EchoNetModel {
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture: Architecture::new(1.0, None),
        input: InputSpec::facenet(299, 3),
        tasks: vec![],
        dtype: StorageDtype::F32,
        intended_use: "benchmark only".into(),
        provenance: Provenance {
            source: "synthetic".into(),
            data: "none".into(),
            created: String::new(),
            tool: "benches/forward.rs".into(),
            metrics: Default::default(),
            notes: String::new(),
        },
        content_hash: String::new(),
    };
    EchoNetModel::from_store(manifest, &WeightStore::synthetic(1), &RunOptions::cpu())
        .expect("untrained model builds")
}

fn forward(c: &mut Criterion) {
    echonet_edge::runtime::configure_cpu_threads(None);
    let model = untrained_model();
    let mut group = c.benchmark_group("irv1_299_f32_cpu");
    group.sample_size(10);
    for batch in [1usize, 20] {
        let x = probe_batch(batch, &model.manifest().input).expect("probe batch");
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| model.forward(&x).expect("forward"))
        });
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
