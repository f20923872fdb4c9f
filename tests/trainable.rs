//! The trainable network (`echonet_edge::train`): its max-pool against candle's, its gradients
//! against finite differences, one AdamW step against the loss, and, the point of it all, a
//! trained network exported to a bundle and loaded by the inference model giving the same
//! features and head outputs as the trainable network in evaluation mode.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use echonet_edge::model::bundle::{BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION};
use echonet_edge::model::import::relative_l2;
use echonet_edge::model::{
    read_bundle, write_bundle, Architecture, EchoNetModel, InputSpec, Manifest, Provenance,
    RunOptions, StorageDtype, TaskSpec,
};
use echonet_edge::train::{max_pool_3s2, TrainableIrv1};

/// Deterministic values uniform in [-1, 1) (the CPU device cannot be seeded).
fn uniform(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec::echonet_default("ef").unwrap(),
        TaskSpec::echonet_default("pacemaker").unwrap(),
    ]
}

fn manifest(arch: &Architecture, size: usize, tasks: Vec<TaskSpec>) -> Manifest {
    Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture: arch.clone(),
        input: InputSpec::facenet(size, 3),
        tasks,
        dtype: StorageDtype::F32,
        intended_use: "test network trained on noise, not for clinical use".into(),
        provenance: Provenance {
            source: "tests/trainable.rs".into(),
            data: "random noise".into(),
            created: "2026-01-01".into(),
            tool: "cargo test".into(),
            metrics: BTreeMap::new(),
            notes: String::new(),
        },
        content_hash: String::new(),
    }
}

fn mse(net: &TrainableIrv1, x: &Tensor, y: &Tensor, train: bool) -> Tensor {
    let (_, out) = net.forward_t(x, train).unwrap();
    (out - y).unwrap().sqr().unwrap().mean_all().unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn max_pool_equals_candle_forward() {
    let sizes = [
        (3, 3),
        (8, 8),
        (9, 9),
        (17, 17),
        (35, 35),
        (10, 17),
        (35, 8),
        (75, 75),
    ];
    for (i, &(h, w)) in sizes.iter().enumerate() {
        let x = uniform(&[2, 3, h, w], 11 + i as u64, DType::F32);
        let ours = max_pool_3s2(&x).unwrap();
        let candle = x.max_pool2d_with_stride(3, 2).unwrap();
        assert_eq!(ours.dims(), candle.dims(), "{h}x{w}");
        assert_eq!(flat(&ours), flat(&candle), "{h}x{w}: not bit-identical");
    }
    assert!(max_pool_3s2(&uniform(&[1, 1, 2, 5], 1, DType::F32)).is_err());
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    // A permutation of well-separated values: no ties, and a step of 1e-6 changes no window's
    // argmax, so the finite differences are exact up to rounding.
    let (h, w) = (7, 8);
    let n = 2 * h * w;
    let mut order: Vec<usize> = (0..n).collect();
    let keys = flat(&uniform(&[n], 5, DType::F32));
    order.sort_by(|a, b| keys[*a].total_cmp(&keys[*b]));
    let mut values = vec![0f64; n];
    for (rank, &i) in order.iter().enumerate() {
        values[i] = rank as f64 * 0.1;
    }
    let x =
        Var::from_tensor(&Tensor::from_vec(values.clone(), (1, 2, h, w), &Device::Cpu).unwrap())
            .unwrap();
    let weights = uniform(&[1, 2, 3, 3], 9, DType::F64);
    let loss = |t: &Tensor| -> f64 {
        (max_pool_3s2(t).unwrap() * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = (max_pool_3s2(x.as_tensor()).unwrap() * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let analytic: Vec<f64> = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let eps = 1e-6;
    for i in 0..n {
        let mut plus = values.clone();
        plus[i] += eps;
        let mut minus = values.clone();
        minus[i] -= eps;
        let t = |v: Vec<f64>| Tensor::from_vec(v, (1, 2, h, w), &Device::Cpu).unwrap();
        let fd = (loss(&t(plus)) - loss(&t(minus))) / (2.0 * eps);
        assert!(
            (fd - analytic[i]).abs() < 1e-6,
            "element {i}: finite difference {fd}, backward {}",
            analytic[i]
        );
    }
}

/// The key property: AdamW steps in training mode (BatchNorm running statistics move), export,
/// bundle, load into the folded inference model, and get the trainable network's eval output.
#[test]
fn trained_network_loads_unchanged_into_the_inference_model() {
    let dir = tempfile::tempdir().unwrap();
    for embedding in [Some(64), None] {
        let arch = Architecture::new(0.125, embedding);
        let varmap = VarMap::new();
        let net =
            TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 7, &Device::Cpu, DType::F32).unwrap();
        let initial = net.export(&varmap).unwrap();
        let params = ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        };
        let mut opt = AdamW::new(net.trainable_vars(&varmap).unwrap(), params).unwrap();
        for step in 0..3 {
            let x = uniform(&[4, 3, 75, 75], 100 + step, DType::F32);
            let y = uniform(&[4, 2], 200 + step, DType::F32);
            opt.backward_step(&mse(&net, &x, &y, true)).unwrap();
        }
        let exported = net.export(&varmap).unwrap();
        assert_eq!(
            exported.keys().collect::<Vec<_>>(),
            initial.keys().collect::<Vec<_>>()
        );
        let moved = |name: &str| relative_l2(&flat(&exported[name]), &flat(&initial[name])) > 1e-3;
        for name in [
            "conv2d_1a.conv.weight",
            "conv2d_1a.bn.running_mean",
            "conv2d_1a.bn.running_var",
            "repeat_2.3.branch1.2.bn.running_var",
            "block8.conv2d.bias",
            "heads.ef.weight",
        ] {
            assert!(moved(name), "{name} did not change in training");
        }
        if embedding.is_some() {
            assert!(moved("last_bn.running_mean"));
            assert_eq!(exported["last_linear.weight"].dims(), &[64, 224]);
        } else {
            assert!(!exported.contains_key("last_linear.weight"));
        }
        assert_eq!(
            exported["heads.ef.weight"].dims(),
            &[1, embedding.unwrap_or(224)]
        );

        let path = dir
            .path()
            .join(format!("trained-{embedding:?}.safetensors"));
        write_bundle(&path, &manifest(&arch, 75, tasks()), &exported).unwrap();
        let bundle = read_bundle(&path).unwrap();
        // from_bundle fails on a missing, mis-shaped or unused tensor: export is exactly a bundle.
        let model = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).unwrap();

        let x = uniform(&[3, 3, 75, 75], 999, DType::F32);
        let (features, outputs) = net.forward_t(&x, false).unwrap();
        let (inf_features, raw) = model.forward(&x).unwrap();
        let feature_err = relative_l2(&flat(&inf_features), &flat(&features));
        let raw: Vec<f32> = raw.into_iter().flatten().collect();
        let output_err = relative_l2(&raw, &flat(&outputs));
        assert!(
            feature_err < 1e-4,
            "{embedding:?}: features differ by {feature_err:e}"
        );
        assert!(
            output_err < 1e-4,
            "{embedding:?}: head outputs differ by {output_err:e}"
        );
    }
}

#[test]
fn input_gradient_matches_finite_differences() {
    // f64 throughout (candle's CPU convolutions and their backward pass take f64), eval mode.
    let arch = Architecture::new(0.125, Some(16));
    let varmap = VarMap::new();
    let net = TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 3, &Device::Cpu, DType::F64).unwrap();
    // Two training-mode passes move the running statistics away from 0/1.
    for seed in 0..2 {
        net.forward_t(&uniform(&[4, 3, 75, 75], 40 + seed, DType::F64), true)
            .unwrap();
    }
    let x0 = uniform(&[1, 3, 75, 75], 41, DType::F64);
    let output = |x: &Tensor| -> Tensor { net.forward_t(x, false).unwrap().1.i((0, 0)).unwrap() };
    let x = Var::from_tensor(&x0).unwrap();
    let grads = output(x.as_tensor()).backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
    let g_max = g
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let eps = 1e-5;
    for (c, r, col) in [(0, 0, 0), (1, 37, 37), (2, 10, 60), (0, 74, 3), (1, 50, 20)] {
        let at = |delta: f64| -> f64 {
            let mut v = base.clone();
            v[(c * 75 + r) * 75 + col] += delta;
            let t = Tensor::from_vec(v, (1, 3, 75, 75), &Device::Cpu).unwrap();
            output(&t).to_scalar::<f64>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let analytic = g.i((0, c, r, col)).unwrap().to_scalar::<f64>().unwrap();
        // Relative to the pixel's own gradient, with a floor at the image's largest gradient for
        // pixels (corners) whose gradient is within rounding of the output's differences.
        let err = (fd - analytic).abs() / analytic.abs().max(1e-2 * g_max);
        assert!(
            err < 1e-4,
            "pixel ({c},{r},{col}): finite difference {fd:e}, backward {analytic:e}"
        );
    }
}

/// Training-mode gradients (batch statistics in BatchNorm) of the loss with respect to parameters
/// of every kind: stride-2 convolutions, one-axis-padded 1x7 and 3x1 convolutions, BatchNorm
/// affine parameters, up-projection biases, the bottleneck and a head.
#[test]
fn parameter_gradients_match_finite_differences_in_training_mode() {
    let arch = Architecture::new(0.125, Some(16));
    let varmap = VarMap::new();
    let net = TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 4, &Device::Cpu, DType::F64).unwrap();
    let x = uniform(&[3, 3, 75, 75], 51, DType::F64);
    let y = uniform(&[3, 2], 52, DType::F64);
    let loss = || mse(&net, &x, &y, true);
    let grads = loss().backward().unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    // Small enough that a first-layer weight moves no ReLU across its kink (at 1e-5 one does).
    let eps = 1e-6;
    for (name, index) in [
        ("conv2d_1a.conv.weight", 7),
        ("conv2d_4b.conv.weight", 100),
        ("repeat_1.2.branch2.1.bn.weight", 1),
        ("mixed_6a.branch1.2.conv.weight", 33),
        ("repeat_2.5.branch1.1.conv.weight", 40),
        ("mixed_7a.branch0.1.conv.weight", 5),
        // [0, 5, 1, 0]: the centre tap; at 1x1 the outer taps only ever see padding.
        ("repeat_3.0.branch1.2.conv.weight", 16),
        // (Not block8.conv2d.bias: its gradient is exactly 0 in training mode, as last_bn's batch
        // mean removes any shift common to the batch.)
        ("repeat_1.0.conv2d.bias", 3),
        ("last_linear.weight", 12),
        ("last_bn.bias", 2),
        ("heads.pacemaker.weight", 4),
    ] {
        let var = &vars[name];
        let original = var.as_tensor().copy().unwrap();
        let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        let analytic: f64 = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[index];
        let at = |delta: f64| -> f64 {
            let mut v = values.clone();
            v[index] += delta;
            var.set(&Tensor::from_vec(v, original.dims(), &Device::Cpu).unwrap())
                .unwrap();
            loss().to_scalar::<f64>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&original).unwrap();
        let err = (fd - analytic).abs() / analytic.abs().max(1e-9);
        assert!(
            err < 1e-5,
            "{name}[{index}]: finite difference {fd:e}, backward {analytic:e}"
        );
    }
}

#[test]
fn one_adamw_step_reduces_regression_loss() {
    let arch = Architecture::new(0.125, Some(32));
    let varmap = VarMap::new();
    let ef = vec![TaskSpec::echonet_default("ef").unwrap()];
    let net = TrainableIrv1::new(&arch, 3, &ef, &varmap, 11, &Device::Cpu, DType::F32).unwrap();
    let x = uniform(&[8, 3, 75, 75], 77, DType::F32);
    let y = (uniform(&[8, 1], 78, DType::F32) + 2.0).unwrap();
    let before = mse(&net, &x, &y, true);
    // Adam's first step moves every parameter by about lr whatever its gradient; 1e-3 overshoots
    // on this untrained network, 1e-4 is still a first-order step.
    let params = ParamsAdamW {
        lr: 1e-4,
        ..Default::default()
    };
    let mut opt = AdamW::new(net.trainable_vars(&varmap).unwrap(), params).unwrap();
    opt.backward_step(&before).unwrap();
    let before = before.to_scalar::<f32>().unwrap();
    let after = mse(&net, &x, &y, true).to_scalar::<f32>().unwrap();
    assert!(after < before, "loss went from {before} to {after}");
}

#[test]
fn parameter_names_are_facenet_names() {
    let arch = Architecture::new(0.125, Some(64));
    let varmap = VarMap::new();
    let net = TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 1, &Device::Cpu, DType::F32).unwrap();
    let names = net.parameter_names();
    for name in [
        "conv2d_1a.conv.weight",
        "conv2d_1a.bn.running_var",
        "repeat_1.0.branch1.1.conv.weight",
        "repeat_1.4.branch2.2.bn.weight",
        "mixed_6a.branch0.conv.weight",
        "mixed_6a.branch1.2.bn.bias",
        "repeat_2.3.conv2d.weight",
        "mixed_7a.branch2.2.conv.weight",
        "repeat_3.4.branch1.2.conv.weight",
        "block8.conv2d.bias",
        "last_linear.weight",
        "last_bn.running_mean",
        "heads.pacemaker.bias",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing");
    }
    assert_eq!(
        varmap.data().lock().unwrap()["repeat_2.3.branch1.1.conv.weight"].dims(),
        &[16, 16, 1, 7]
    );
    // Trainable = everything but the running statistics.
    let stats = names.iter().filter(|n| n.contains(".running_")).count();
    assert_eq!(
        net.trainable_vars(&varmap).unwrap().len(),
        names.len() - stats
    );
    // The same seed gives the same network; parameters already in the map are reused.
    let again = VarMap::new();
    TrainableIrv1::new(&arch, 3, &tasks(), &again, 1, &Device::Cpu, DType::F32).unwrap();
    let a = net.export(&varmap).unwrap();
    let b = net.export(&again).unwrap();
    assert_eq!(
        flat(&a["repeat_3.1.conv2d.weight"]),
        flat(&b["repeat_3.1.conv2d.weight"])
    );
    // Built again on the same map with another seed: the map's parameters are reused as they are.
    TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 2, &Device::Cpu, DType::F32).unwrap();
    let reused = net.export(&varmap).unwrap();
    assert_eq!(
        flat(&a["conv2d_1a.conv.weight"]),
        flat(&reused["conv2d_1a.conv.weight"])
    );
    // ... and a parameter of the wrong shape (another width) or dtype is an error, not a silent swap.
    let wider = Architecture::new(0.25, Some(64));
    assert!(TrainableIrv1::new(&wider, 3, &tasks(), &varmap, 2, &Device::Cpu, DType::F32).is_err());
    assert!(TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 2, &Device::Cpu, DType::F64).is_err());
    assert!(net
        .forward_t(&uniform(&[1, 3, 75, 75], 1, DType::F32), true)
        .is_err());
}

/// Wall time of one training step (train-mode forward, backward, AdamW) at two sizes; run with
/// `cargo test --release --test trainable -- --ignored --nocapture step_timing`.
#[test]
#[ignore]
fn step_timing() {
    for (width, size) in [(0.125, 75), (0.25, 149)] {
        let arch = Architecture::new(width, None);
        let varmap = VarMap::new();
        let net =
            TrainableIrv1::new(&arch, 3, &tasks(), &varmap, 5, &Device::Cpu, DType::F32).unwrap();
        let mut opt = AdamW::new(net.trainable_vars(&varmap).unwrap(), Default::default()).unwrap();
        let x = uniform(&[24, 3, size, size], 1, DType::F32);
        let y = uniform(&[24, 2], 2, DType::F32);
        opt.backward_step(&mse(&net, &x, &y, true)).unwrap();
        let steps = 3;
        let start = Instant::now();
        for _ in 0..steps {
            opt.backward_step(&mse(&net, &x, &y, true)).unwrap();
        }
        let per_step = start.elapsed().as_secs_f64() / steps as f64;
        println!("width {width}, {size}x{size}, batch 24: {per_step:.2} s per training step");
    }
}
