//! Property test: the GEMM convolution kernel against candle's own conv2d (the reference), over
//! random shapes, strides, one- and two-axis padding, strided channel slices and batches.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::{DType, Device, Tensor};
use echonet_edge::model::conv::{CandleConv, ConvKernel, FoldedConv, Geometry};
use echonet_edge::model::cpu_conv::CpuGemmConv;
use proptest::prelude::*;

/// Max abs difference allowed, relative to the largest reference value: both are f32 sums of
/// at most a few hundred products, reordered.
const KERNEL_REL_TOL: f32 = 1e-5;

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn gemm_kernel_matches_candle(
        n in 1usize..3, cin in 1usize..13, cout in 1usize..9,
        h in 3usize..30, w in 3usize..30,
        tile_bytes in prop::sample::select(vec![64usize, 1000, 8192, echonet_edge::model::cpu_conv::DEFAULT_TILE_BYTES]),
        kh in prop::sample::select(vec![1usize, 3, 7]), kw in prop::sample::select(vec![1usize, 3, 7]),
        stride in 1usize..3, pad_h in 0usize..4, pad_w in 0usize..4,
        relu in any::<bool>(), slice_extra in 0usize..3, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad_h >= kh && w + 2 * pad_w >= kw);
        let dev = Device::Cpu;
        let mk = |shape: &[usize], s: u64| {
            let count: usize = shape.iter().product();
            let mut x = s | 1;
            let v: Vec<f32> = (0..count).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 2001) as f32 / 1000.0 - 1.0 }).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        // Input as a channel slice of a wider tensor, like a stacked entry convolution's branch.
        let wide = mk(&[n, cin + slice_extra, h, w], seed);
        let x = wide.narrow(1, slice_extra, cin).unwrap();
        let conv = FoldedConv {
            weight: mk(&[cout, cin, kh, kw], seed.wrapping_add(1)),
            bias: mk(&[cout], seed.wrapping_add(2)),
            geometry: Geometry { stride, pad_h, pad_w },
            relu,
        };
        let fast = CpuGemmConv::with_tile_bytes(tile_bytes).forward(&x, &conv).unwrap();
        let reference = CandleConv.forward(&x, &conv).unwrap();
        prop_assert_eq!(fast.dims(), reference.dims());
        let d = max_rel_diff(&fast, &reference);
        prop_assert!(d <= KERNEL_REL_TOL, "max rel diff {}", d);
    }
}

#[test]
fn non_f32_falls_back_to_candle() {
    let dev = Device::Cpu;
    let x = Tensor::ones((1, 2, 5, 5), DType::F16, &dev).unwrap();
    let conv = FoldedConv {
        weight: Tensor::ones((3, 2, 3, 3), DType::F16, &dev).unwrap(),
        bias: Tensor::zeros(3, DType::F16, &dev).unwrap(),
        geometry: Geometry::pad(1, 1),
        relu: true,
    };
    let y = CpuGemmConv::default().forward(&x, &conv).unwrap();
    assert_eq!(y.dtype(), DType::F16);
    // Centre pixel sees the full 3x3 window over 2 channels of ones.
    let centre = y
        .to_dtype(DType::F32)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(2)
        .unwrap()
        .get(2)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(centre, 18.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The fused residual up-projection (no concatenation, residual, bias and ReLU in the GEMM
    /// epilogue) against candle's cat + conv + add + relu.
    #[test]
    fn fused_residual_matches_candle(
        n in 1usize..3, c0 in 1usize..6, c1 in 1usize..6, cout in 1usize..8,
        h in 1usize..10, w in 1usize..10, relu in any::<bool>(), seed in any::<u64>(),
    ) {
        let dev = Device::Cpu;
        let mk = |shape: &[usize], s: u64| {
            let count: usize = shape.iter().product();
            let mut x = s | 1;
            let v: Vec<f32> = (0..count).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 2001) as f32 / 1000.0 - 1.0 }).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        // The first part is a channel slice of a wider tensor, as the blocks' branch0 is.
        let wide = mk(&[n, c0 + 3, h, w], seed);
        let p0 = wide.narrow(1, 2, c0).unwrap();
        let p1 = mk(&[n, c1, h, w], seed.wrapping_add(1));
        let residual = mk(&[n, cout, h, w], seed.wrapping_add(2));
        let conv = FoldedConv {
            weight: mk(&[cout, c0 + c1, 1, 1], seed.wrapping_add(3)),
            bias: mk(&[cout], seed.wrapping_add(4)),
            geometry: Geometry::unit(),
            relu: false,
        };
        let fast = CpuGemmConv::default().forward_residual(&[&p0, &p1], &conv, &residual, relu).unwrap();
        let reference = CandleConv.forward_residual(&[&p0, &p1], &conv, &residual, relu).unwrap();
        prop_assert_eq!(fast.dims(), reference.dims());
        let d = max_rel_diff(&fast, &reference);
        prop_assert!(d <= KERNEL_REL_TOL, "max rel diff {}", d);
    }
}
