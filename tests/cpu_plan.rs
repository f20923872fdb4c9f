//! The prepared CPU plan against the references: each prepared convolution (both micro-kernels,
//! several thread counts, in-place residual epilogue) against candle's conv2d, and the whole
//! planned trunk against the layer-by-layer candle network over random widths, sizes, batches and
//! grey frames.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::{DType, Device, Tensor};
use echonet_edge::model::bundle::{BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION};
use echonet_edge::model::conv::{CandleConv, ConvKernel, FoldedConv, Geometry};
use echonet_edge::model::cpu_plan::exec::PreparedConv;
use echonet_edge::model::cpu_plan::gemm::MicroKernel;
use echonet_edge::model::{
    conv_kernel_named, Architecture, EchoNetModel, InputSpec, Manifest, Provenance, RunOptions,
    StorageDtype, WeightStore,
};
use proptest::prelude::*;

/// Max abs difference of one convolution, relative to the largest reference value: f32 sums of
/// at most a few hundred products, in a different order.
const KERNEL_REL_TOL: f32 = 1e-5;
/// The same for Winograd with 4-output tiles (F(4x4, 3x3), and F(4, 3) / F(4, 7) along one axis of
/// a 1x3 / 1x7 kernel): their transforms multiply by up to 8 (F(4, 7): 17) before the products are
/// summed back, which costs about a decimal digit of f32 (F(2x2) uses only 0, 1 and 1/2 and is
/// held to `KERNEL_REL_TOL`).
const WINOGRAD_F4_REL_TOL: f32 = 1e-4;
/// Relative L2 of pooled features, planned trunk vs candle trunk: ~30 layers of reordered f32
/// sums; well inside the 1e-4 allowed against PyTorch.
const TRUNK_REL_L2_TOL: f64 = 2e-5;

fn mk(shape: &[usize], seed: u64) -> Tensor {
    let count: usize = shape.iter().product();
    let mut x = seed | 1;
    let v: Vec<f32> = (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Every kernel this CPU runs (on an AVX-512 CPU: portable, AVX2 and AVX-512).
fn kernels() -> Vec<MicroKernel> {
    MicroKernel::available()
}

/// The output's bits, for kernels that must agree exactly.
fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// candle's convolution of `x`, plus a seeded residual when asked, then ReLU when asked: the
/// reference every prepared convolution is held to. Returns the residual used.
fn reference_conv(
    x: &Tensor,
    folded: &FoldedConv,
    residual: bool,
    relu: bool,
    seed: u64,
) -> (Tensor, Tensor) {
    let mut reference = CandleConv.forward(x, folded).unwrap();
    let res = mk(reference.dims(), seed.wrapping_add(3));
    if residual {
        reference = (reference + &res).unwrap();
    }
    if relu {
        reference = reference.relu().unwrap();
    }
    (reference, res)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn prepared_conv_matches_candle(
        n in 1usize..3, cin in 1usize..20, cout in 1usize..40,
        h in 3usize..24, w in 3usize..24,
        kh in prop::sample::select(vec![1usize, 3, 7]), kw in prop::sample::select(vec![1usize, 3, 7]),
        stride in 1usize..3, pad_h in 0usize..4, pad_w in 0usize..4,
        relu in any::<bool>(), residual in any::<bool>(), threads in 1usize..4, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad_h >= kh && w + 2 * pad_w >= kw);
        let x = mk(&[n, cin, h, w], seed);
        let folded = FoldedConv {
            weight: mk(&[cout, cin, kh, kw], seed.wrapping_add(1)),
            bias: mk(&[cout], seed.wrapping_add(2)),
            geometry: Geometry { stride, pad_h, pad_w },
            relu: false,
        };
        let (reference, res) = reference_conv(&x, &folded, residual, relu, seed);
        // Direct, and Winograd with 2- and 4-output tiles (stride 1 with 3- or 7-tap axes; others
        // run direct).
        for (winograd, tol) in [(None, KERNEL_REL_TOL), (Some(2), KERNEL_REL_TOL), (Some(4), WINOGRAD_F4_REL_TOL)] {
            let prepared = PreparedConv::from_folded_with(&folded, winograd).unwrap();
            for kernel in kernels() {
                let fast = prepared
                    .forward_nchw(&x, residual.then_some(&res), relu, kernel, threads)
                    .unwrap();
                prop_assert_eq!(fast.dims(), reference.dims());
                let d = max_rel_diff(&fast, &reference);
                prop_assert!(d <= tol, "{:?} winograd {:?}: max rel diff {}", kernel, winograd, d);
            }
        }
    }
}

/// Stem-shaped convolutions (no padding, short kernel rows: RGB and grey 3x3 stride 2, a 7x7
/// over 4 channels at stride 1) read each window row in place, one accumulating pass per kernel
/// row, and match candle for every kernel, thread count, residual and ReLU; output rows that are
/// not whole 6-pixel strips and channels that are not whole panels included. A padded one keeps
/// the unfolded path.
#[test]
fn stem_shaped_convs_read_their_kernel_rows_in_place() {
    let cases = [
        (2, 3, 21, 25, 3, 2, 35),
        (1, 1, 19, 19, 3, 2, 32),
        (1, 4, 15, 17, 7, 1, 17),
    ];
    for (i, &(n, cin, h, w, k, stride, cout)) in cases.iter().enumerate() {
        let seed = 40 + i as u64;
        let x = mk(&[n, cin, h, w], seed);
        let folded = FoldedConv {
            weight: mk(&[cout, cin, k, k], seed + 1),
            bias: mk(&[cout], seed + 2),
            geometry: Geometry {
                stride,
                pad_h: 0,
                pad_w: 0,
            },
            relu: false,
        };
        let prepared = PreparedConv::from_folded_with(&folded, None).unwrap();
        assert_eq!(prepared.kernel_rows.len(), k, "case {i}: read in place");
        for (residual, relu) in [(false, true), (true, false), (true, true)] {
            let (reference, res) = reference_conv(&x, &folded, residual, relu, seed);
            for kernel in kernels() {
                for threads in 1..4 {
                    let fast = prepared
                        .forward_nchw(&x, residual.then_some(&res), relu, kernel, threads)
                        .unwrap();
                    let d = max_rel_diff(&fast, &reference);
                    assert!(
                        d <= KERNEL_REL_TOL,
                        "case {i} {kernel:?} {threads} threads residual {residual}: {d}"
                    );
                }
            }
        }
    }
    let padded = PreparedConv::from_folded_with(
        &FoldedConv {
            weight: mk(&[8, 3, 3, 3], 1),
            bias: mk(&[8], 2),
            geometry: Geometry {
                stride: 1,
                pad_h: 1,
                pad_w: 1,
            },
            relu: false,
        },
        None,
    )
    .unwrap();
    assert!(padded.kernel_rows.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// 1x1 convolutions with enough input channels for several K passes, whose weights are
    /// stored pass by pass with the next panel's slice prefetched: row counts that are not whole
    /// strips, output channels that are not whole panels, residual and ReLU, 1-3 threads.
    #[test]
    fn pointwise_matches_candle(
        n in 1usize..3, cin in 1usize..700, cout in 1usize..70,
        h in 1usize..20, w in 1usize..20,
        relu in any::<bool>(), residual in any::<bool>(), threads in 1usize..4, seed in any::<u64>(),
    ) {
        let x = mk(&[n, cin, h, w], seed);
        let folded = FoldedConv {
            weight: mk(&[cout, cin, 1, 1], seed.wrapping_add(1)),
            bias: mk(&[cout], seed.wrapping_add(2)),
            geometry: Geometry::unit(),
            relu: false,
        };
        let (reference, res) = reference_conv(&x, &folded, residual, relu, seed);
        let prepared = PreparedConv::from_folded_with(&folded, None).unwrap();
        for kernel in kernels() {
            let fast = prepared
                .forward_nchw(&x, residual.then_some(&res), relu, kernel, threads)
                .unwrap();
            prop_assert_eq!(fast.dims(), reference.dims());
            let d = max_rel_diff(&fast, &reference);
            prop_assert!(d <= KERNEL_REL_TOL, "{:?} {}->{}: max rel diff {}", kernel, cin, cout, d);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Winograd's own shapes (stride 1: 3x3 on both axes, 1x3 / 3x1 / 1x7 / 7x1 on one) with
    /// enough input channels for several K passes of the GEMM, partial tiles at the borders,
    /// channel counts that are not whole 8-lane groups, and one-axis padding.
    #[test]
    fn winograd_matches_candle(
        n in 1usize..3, cin in 1usize..300, cout in 1usize..70,
        h in 3usize..20, w in 3usize..20,
        kernel in prop::sample::select(vec![(3usize, 3usize), (1, 3), (3, 1), (1, 7), (7, 1)]),
        pad_h in 0usize..4, pad_w in 0usize..4,
        relu in any::<bool>(), residual in any::<bool>(), threads in 1usize..4, seed in any::<u64>(),
    ) {
        let (kh, kw) = kernel;
        let (pad_h, pad_w) = (pad_h.min(kh / 2), pad_w.min(kw / 2));
        prop_assume!(h + 2 * pad_h >= kh && w + 2 * pad_w >= kw);
        let x = mk(&[n, cin, h, w], seed);
        let folded = FoldedConv {
            weight: mk(&[cout, cin, kh, kw], seed.wrapping_add(1)),
            bias: mk(&[cout], seed.wrapping_add(2)),
            geometry: Geometry { stride: 1, pad_h, pad_w },
            relu: false,
        };
        let (reference, res) = reference_conv(&x, &folded, residual, relu, seed);
        for (tile, tol) in [(2, KERNEL_REL_TOL), (4, WINOGRAD_F4_REL_TOL)] {
            let prepared = PreparedConv::from_folded_with(&folded, Some(tile)).unwrap();
            // Every shape here has a transform for 4-output tiles; for 2 all but the 7-tap ones.
            prop_assert_eq!(prepared.winograd.is_some(), tile == 4 || kh.max(kw) == 3);
            for kernel in kernels() {
                let fast = prepared
                    .forward_nchw(&x, residual.then_some(&res), relu, kernel, threads)
                    .unwrap();
                prop_assert_eq!(fast.dims(), reference.dims());
                let d = max_rel_diff(&fast, &reference);
                prop_assert!(d <= tol, "{:?} {}x{} F({}): max rel diff {}", kernel, kh, kw, tile, d);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The AVX-512 f32 kernel sums every output in the AVX2 kernel's order: the same bits for direct (1x1 with several K passes and
    /// im2col) and Winograd convolutions, partial panels, residual and ReLU, 1-3 threads.
    #[test]
    fn avx512_f32_matches_avx2_bit_for_bit(
        n in 1usize..3, cin in 1usize..600, cout in 1usize..90,
        h in 3usize..16, w in 3usize..16,
        shape in prop::sample::select(vec![(1usize, 1usize, None), (3, 3, None), (3, 3, Some(2)), (1, 7, Some(4))]),
        stride in 1usize..3,
        relu in any::<bool>(), residual in any::<bool>(), threads in 1usize..4, seed in any::<u64>(),
    ) {
        let available = MicroKernel::available();
        let has = |name: &str| available.iter().any(|k| k.name() == name);
        if !(has("avx2-fma") && has("avx512-vnni")) {
            // No AVX-512 on this CPU (or not x86): there is no pair to compare. Rejecting the
            // case instead would abort the test with "too many global rejects".
            return Ok(());
        }
        let (kh, kw, winograd) = shape;
        let stride = if winograd.is_some() { 1 } else { stride };
        let x = mk(&[n, cin, h, w], seed);
        let folded = FoldedConv {
            weight: mk(&[cout, cin, kh, kw], seed.wrapping_add(1)),
            bias: mk(&[cout], seed.wrapping_add(2)),
            geometry: Geometry { stride, pad_h: kh / 2, pad_w: kw / 2 },
            relu: false,
        };
        let res_dims = CandleConv.forward(&x, &folded).unwrap();
        let res = mk(res_dims.dims(), seed.wrapping_add(3));
        let prepared = PreparedConv::from_folded_with(&folded, winograd).unwrap();
        let run = |name: &str| {
            let kernel = *available.iter().find(|k| k.name() == name).unwrap();
            prepared
                .forward_nchw(&x, residual.then_some(&res), relu, kernel, threads)
                .unwrap()
        };
        prop_assert_eq!(bits(&run("avx2-fma")), bits(&run("avx512-vnni")));
    }
}

fn untrained(
    width: f64,
    size: usize,
    channels: usize,
    embedding: Option<usize>,
    kernel: &str,
    seed: u64,
) -> EchoNetModel {
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture: Architecture::new(width, embedding),
        input: InputSpec::facenet(size, channels),
        tasks: vec![],
        dtype: StorageDtype::F32,
        intended_use: "test".into(),
        provenance: Provenance {
            source: "synthetic".into(),
            data: "none".into(),
            created: String::new(),
            tool: "tests/cpu_plan.rs".into(),
            metrics: Default::default(),
            notes: String::new(),
        },
        content_hash: String::new(),
    };
    let opts = RunOptions {
        kernel: conv_kernel_named(kernel).unwrap(),
        ..RunOptions::cpu()
    };
    EchoNetModel::from_store(manifest, &WeightStore::synthetic(seed), &opts).unwrap()
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    echonet_edge::model::import::relative_l2(&a, &b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn planned_trunk_matches_candle_trunk(
        width in prop::sample::select(vec![0.0625f64, 0.1, 0.125, 0.2]),
        size in 75usize..110, n in 1usize..3, grey in any::<bool>(), seed in any::<u64>(),
    ) {
        let planned = untrained(width, size, 3, None, "cpu-plan", seed);
        prop_assert!(planned.cpu_plan().is_some());
        let reference = untrained(width, size, 3, None, "candle", seed);
        prop_assert!(reference.cpu_plan().is_none());
        let x = mk(&[n, if grey { 1 } else { 3 }, size, size], seed.wrapping_add(9));
        let (a, _) = planned.forward(&x).unwrap();
        let (b, _) = reference.forward(&x).unwrap();
        prop_assert_eq!(a.dims(), b.dims());
        let err = rel_l2(&a, &b);
        prop_assert!(err <= TRUNK_REL_L2_TOL, "rel L2 {}", err);
        // The same plan again, and with another batch size: buffers are reused or remade.
        let (again, _) = planned.forward(&x).unwrap();
        prop_assert_eq!(rel_l2(&again, &a), 0.0);
    }
}

#[test]
fn portable_micro_kernel_runs_the_whole_trunk() {
    let a = untrained(0.125, 80, 3, Some(16), "cpu-plan", 7);
    let b = untrained(0.125, 80, 3, Some(16), "candle", 7);
    let x = mk(&[2, 3, 80, 80], 11);
    let plan = a.cpu_plan().unwrap();
    let fast = plan.features(&x).unwrap();
    let (reference, _) = b.forward(&x).unwrap();
    assert!(rel_l2(&fast, &reference) <= TRUNK_REL_L2_TOL);
    let portable = echonet_edge::model::cpu_plan::CpuPlan::build(b.network(), 2)
        .unwrap()
        .with_kernel(MicroKernel::Portable);
    assert_eq!(portable.kernel_name(), "portable");
    let slow = portable.features(&x).unwrap();
    assert!(rel_l2(&slow, &reference) <= TRUNK_REL_L2_TOL);
}

#[test]
fn plan_is_used_only_for_f32_on_the_cpu() {
    let m = untrained(0.125, 75, 3, None, "auto", 1);
    assert!(
        m.backend_name().starts_with("cpu-plan"),
        "{}",
        m.backend_name()
    );
    let gemm = untrained(0.125, 75, 3, None, "cpu-gemm", 1);
    assert_eq!(gemm.backend_name(), "cpu-gemm");
    // f16 on the CPU: the layer-by-layer kernel, no plan.
    let manifest = gemm.manifest().clone();
    let opts = RunOptions {
        dtype: Some(DType::F16),
        kernel: conv_kernel_named("auto").unwrap(),
        ..RunOptions::cpu()
    };
    let half = EchoNetModel::from_store(manifest, &WeightStore::synthetic(1), &opts).unwrap();
    assert!(half.cpu_plan().is_none());
    assert_eq!(half.backend_name(), "cpu-gemm");
}

#[test]
fn plan_rejects_wrong_channels_with_a_clear_error() {
    let m = untrained(0.125, 75, 3, None, "cpu-plan", 1);
    let x = mk(&[1, 2, 75, 75], 1);
    let err = m.cpu_plan().unwrap().features(&x).unwrap_err().to_string();
    assert!(err.contains("2 input channels"), "{err}");
}
