//! The CUDA path against the CPU and PyTorch: parity of every run dtype on the PyTorch fixture,
//! the CUDA graph against the plain pass (and its fallback on another shape), offline batches of
//! 20 against single frames, and a training step's loss and gradients against the CPU.
//!
//! Every test here needs a CUDA GPU and a `--features cuda` build, so each is `#[ignore]`d: a
//! plain `cargo test` lists them as ignored and CI (no GPU) never runs them. scripts/gpu-check.sh
//! runs them on a GPU machine (`gpu --ignored`, from the test binary that scripts/gpu-prebuild.sh
//! builds); run by hand with `scripts/cuda-build.sh` settings and
//! `cargo test --release --features cuda --test gpu -- --ignored`. Without a usable GPU each one
//! fails at once saying so, rather than passing without having checked anything.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use common::*;
use echonet_edge::aggregate::WindowConfig;
use echonet_edge::config::Config;
use echonet_edge::dataset::phantom::in_memory;
use echonet_edge::input::load_npy;
use echonet_edge::model::{
    conv_kernel_named, read_bundle, Architecture, EchoNetModel, RunOptions, StorageDtype, TaskSpec,
};
use echonet_edge::offline::predict_clip_batched;
use echonet_edge::preprocess::Preprocessor;
use echonet_edge::runtime::{open_device, DeviceChoice};
use echonet_edge::train::TrainableIrv1;

/// cuda:0, opened on the calling thread (the test's), or a failure that says why not.
fn cuda() -> Device {
    match open_device(DeviceChoice::Cuda(0)) {
        Ok(d) => d,
        Err(e) => panic!("this test needs a usable CUDA device: {e}"),
    }
}

fn fixture_model(device: &Device, dtype: DType, graph: bool) -> EchoNetModel {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = convert_fixture("irv1_w0125.safetensors", dir.path(), StorageDtype::F32);
    let b = read_bundle(&bundle).expect("bundle reads");
    let opts = RunOptions {
        device: device.clone(),
        dtype: Some(dtype),
        kernel: conv_kernel_named("auto").expect("kernel"),
        int8: Default::default(),
    };
    let mut m = EchoNetModel::from_bundle(&b, &opts).expect("model builds");
    if graph {
        m.enable_cuda_graph();
    }
    m
}

fn features(m: &EchoNetModel, x: &Tensor) -> Vec<Vec<f32>> {
    m.infer(x, true)
        .expect("infer")
        .into_iter()
        .map(|f| f.features.expect("features"))
        .collect()
}

fn worst_error(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "frame counts differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| relative_l2(x, y))
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "needs a CUDA GPU and a --features cuda build; scripts/gpu-check.sh runs it"]
fn cuda_matches_pytorch_goldens_in_every_dtype_with_and_without_graph() {
    let dev = cuda();
    for (dtype, tol) in [
        (DType::F32, F32_FEATURE_TOL),
        (DType::F16, F16_FEATURE_TOL),
        (DType::BF16, 3e-2),
    ] {
        for graph in [false, true] {
            let m = fixture_model(&dev, dtype, graph);
            for case in ["rgb", "gray"] {
                let g = golden(case);
                let got = features(&m, &load_npy(&g.input).expect("npy"));
                let err = worst_error(&got, &g.features);
                eprintln!(
                    "{dtype:?} graph={graph} {case}: features rel L2 {err:.2e} (limit {tol:e})"
                );
                assert!(
                    err <= tol,
                    "{dtype:?} graph={graph} {case}: {err:e} > {tol:e}"
                );
            }
            if graph {
                let g = m.cuda_graph().expect("graph asked for");
                assert!(
                    g.is_captured(),
                    "{dtype:?}: the graph was not captured: {:?}",
                    g.failure()
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU and a --features cuda build; scripts/gpu-check.sh runs it"]
fn cuda_graph_replays_fresh_inputs_and_falls_back_on_another_shape() {
    let dev = cuda();
    let plain = fixture_model(&dev, DType::F32, false);
    let graphed = fixture_model(&dev, DType::F32, true);
    // Three different batches of the captured shape: each replay must see its own input.
    for seed in 0..3u64 {
        let x = Tensor::randn(0f32, 1f32, (2, 3, 75, 75), &Device::Cpu)
            .expect("input")
            .affine(1.0, seed as f64 * 0.1)
            .expect("shift");
        let err = worst_error(&features(&graphed, &x), &features(&plain, &x));
        assert!(err <= 1e-6, "replay {seed}: graph vs plain {err:e}");
    }
    assert!(graphed.cuda_graph().expect("graph").is_captured());
    // Another batch size is not the captured shape: the plain pass serves it, correctly.
    let x = Tensor::randn(0f32, 1f32, (3, 3, 75, 75), &Device::Cpu).expect("input");
    let err = worst_error(&features(&graphed, &x), &features(&plain, &x));
    assert!(err <= 1e-6, "other shape: {err:e}");
}

#[test]
#[ignore = "needs a CUDA GPU and a --features cuda build; scripts/gpu-check.sh runs it"]
fn cuda_offline_batch_of_20_matches_one_frame_at_a_time() {
    let dev = cuda();
    let bundle_path = source_dir().join("models/echonet-phantom-demo.safetensors");
    let bundle = read_bundle(&bundle_path).expect("demo bundle");
    let opts = RunOptions {
        device: dev,
        dtype: Some(DType::F32),
        kernel: conv_kernel_named("auto").expect("kernel"),
        int8: Default::default(),
    };
    let mut model = EchoNetModel::from_bundle(&bundle, &opts).expect("model");
    model.enable_cuda_graph();
    let data = in_memory(31, 2, 64, 30.0).expect("phantom clips");
    let config = Config::default();
    let window = WindowConfig::default();
    for clip in &data.clips {
        let frames = clip.load_frames().expect("frames");
        let run = |batch| {
            let mut pre = Preprocessor::new(config.preprocess.clone()).expect("preprocessor");
            pre.set_source_fps(Some(30.0));
            predict_clip_batched(
                &clip.id,
                &frames,
                &model,
                &mut pre,
                &window,
                echonet_edge::pipeline::DEFAULT_VIEW_THRESHOLD,
                batch,
            )
        };
        let (one, twenty) = (run(1), run(20));
        assert_eq!(one.status, "ok", "{:?}", one.reason);
        assert_eq!(twenty.status, one.status);
        for (task, e1) in &one.estimates {
            let e20 = &twenty.estimates[task];
            let (a, b) = (e1.value, e20.value);
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1.0),
                "{}: {task}: batch 20 gives {b}, one at a time {a}",
                clip.id
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU and a --features cuda build; scripts/gpu-check.sh runs it"]
fn cuda_training_step_matches_the_cpu() {
    let dev = cuda();
    let arch = Architecture::new(0.125, Some(64));
    let tasks = vec![TaskSpec::echonet_default("ef").expect("ef task")];
    let x = Tensor::randn(0f32, 1f32, (4, 1, 80, 80), &Device::Cpu).expect("x");
    let y = Tensor::randn(0f32, 1f32, (4, 1), &Device::Cpu).expect("y");
    let run = |device: &Device| -> (f32, Vec<f32>) {
        let varmap = VarMap::new();
        let net = TrainableIrv1::new(&arch, 1, &tasks, &varmap, 5, device, DType::F32)
            .expect("net builds");
        let (_, out) = net
            .forward_t(&x.to_device(device).expect("x"), true)
            .expect("forward");
        let loss = (out - y.to_device(device).expect("y"))
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .expect("loss");
        let grads = loss.backward().expect("backward");
        let name = "conv2d_1a.conv.weight";
        let var = varmap
            .data()
            .lock()
            .expect("varmap")
            .get(name)
            .cloned()
            .expect("stem weight");
        let g = grads
            .get(var.as_tensor())
            .expect("gradient")
            .flatten_all()
            .and_then(|g| g.to_device(&Device::Cpu))
            .and_then(|g| g.to_vec1::<f32>())
            .expect("gradient values");
        (loss.to_scalar::<f32>().expect("loss value"), g)
    };
    let (loss_cpu, g_cpu) = run(&Device::Cpu);
    let (loss_gpu, g_gpu) = run(&dev);
    let rel = ((loss_gpu - loss_cpu) / loss_cpu).abs();
    assert!(rel <= 1e-4, "loss: CUDA {loss_gpu}, CPU {loss_cpu}");
    let err = relative_l2(&g_gpu, &g_cpu);
    assert!(err <= 1e-3, "stem weight gradient: rel L2 {err:e}");
}
