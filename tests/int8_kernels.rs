//! The int8 path of the prepared CPU plan: the quantised convolution (both micro-kernels, several
//! thread counts, in-place residual and ReLU epilogue) against a direct scalar reference over the
//! same quantised values, the vector quantiser against the scalar one, and the int8 convolution
//! and the int8 trunk against f32 within the error quantisation is expected to cost.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::{Device, Tensor};
use echonet_edge::model::conv::{CandleConv, ConvKernel, FoldedConv, Geometry};
use echonet_edge::model::cpu_plan::exec::PreparedConv;
use echonet_edge::model::cpu_plan::gemm::MicroKernel;
use echonet_edge::model::cpu_plan::qgemm::{self, quantize_row, ActQuant, WEIGHT_LEVELS};
use echonet_edge::model::cpu_plan::ConvQuant;
use proptest::prelude::*;

/// Max abs difference, int8 kernel vs the direct reference, relative to the largest reference
/// value: both sum the same integers exactly; only the f32 epilogue differs (the kernel folds the
/// zero point into the bias and uses one fused multiply-add, the reference computes in f64).
const INT8_EPILOGUE_REL_TOL: f64 = 1e-5;
/// L2 of one int8 convolution's difference from f32 over the L2 of f32's pre-activation, with
/// min/max input scales: 8-bit activations (step = range/255) and 7-bit weights (step =
/// max|w|/63) on uniform random data give about 1% (measured 0.5-1.5%); the bound leaves room
/// for small K.
const INT8_CONV_REL_L2_TOL: f64 = 4e-2;

fn values(count: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x % 10001) as f32 / 10000.0)
        })
        .collect()
}

fn mk(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let count: usize = shape.iter().product();
    Tensor::from_vec(values(count, seed, lo, hi), shape, &Device::Cpu).unwrap()
}

/// Every kernel this CPU runs (on an AVX-512 VNNI CPU: portable, AVX2 and VNNI).
fn kernels() -> Vec<MicroKernel> {
    MicroKernel::available()
}

/// The quantised convolution computed directly: quantised input (zero point outside the image),
/// integer products summed per output, `(sum (qa - zp) qw) * sa * sw + bias`, residual, ReLU.
// Plain index loops on purpose: the reference should read like the definition.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn reference(
    x: &[f32],
    (n, cin, h, w): (usize, usize, usize, usize),
    q: &ConvQuant,
    bias: &[f32],
    (cout, kh, kw): (usize, usize, usize),
    g: Geometry,
    residual: Option<&[f32]>,
    relu: bool,
) -> (Vec<f64>, (usize, usize)) {
    let oh = (h + 2 * g.pad_h - kh) / g.stride + 1;
    let ow = (w + 2 * g.pad_w - kw) / g.stride + 1;
    let zp = q.act.zero_point as i64;
    let mut out = vec![0f64; n * cout * oh * ow];
    for img in 0..n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0i64;
                    for c in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad_h as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad_w as isize;
                                let qa = if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w
                                {
                                    zp
                                } else {
                                    q.act.quantize(
                                        x[((img * cin + c) * h + iy as usize) * w + ix as usize],
                                    ) as i64
                                };
                                let qw = q.weights[((o * cin + c) * kh + ky) * kw + kx] as i64;
                                acc += (qa - zp) * qw;
                            }
                        }
                    }
                    let i = ((img * cout + o) * oh + oy) * ow + ox;
                    let mut v =
                        acc as f64 * q.act.scale as f64 * q.scales[o] as f64 + bias[o] as f64;
                    if let Some(r) = residual {
                        v += r[i] as f64;
                    }
                    if relu {
                        v = v.max(0.0);
                    }
                    out[i] = v;
                }
            }
        }
    }
    (out, (oh, ow))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn int8_conv_matches_direct_reference(
        n in 1usize..3, cin in 1usize..40, cout in 1usize..40,
        h in 3usize..16, w in 3usize..16,
        kh in prop::sample::select(vec![1usize, 3, 7]), kw in prop::sample::select(vec![1usize, 3]),
        stride in 1usize..3, pad_h in 0usize..4, pad_w in 0usize..2,
        lo in prop::sample::select(vec![0.0f32, -0.5, -2.0]), relu in any::<bool>(),
        residual in any::<bool>(), threads in 1usize..4, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad_h >= kh && w + 2 * pad_w >= kw);
        let x = mk(&[n, cin, h, w], seed, lo, 3.0);
        let folded = FoldedConv {
            weight: mk(&[cout, cin, kh, kw], seed.wrapping_add(1), -1.0, 1.0),
            bias: mk(&[cout], seed.wrapping_add(2), -1.0, 1.0),
            geometry: Geometry { stride, pad_h, pad_w },
            relu: false,
        };
        // A range a little narrower than the data, so some inputs saturate at 0 or 255.
        let q = ConvQuant::from_folded(&folded, ActQuant::from_range(lo * 0.9, 2.7)).unwrap();
        prop_assert!(q.weights.iter().all(|&v| (v as i32).abs() <= WEIGHT_LEVELS));
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bias = folded.bias.to_vec1::<f32>().unwrap();
        let g = folded.geometry;
        let oh = (h + 2 * pad_h - kh) / stride + 1;
        let ow = (w + 2 * pad_w - kw) / stride + 1;
        let res = mk(&[n, cout, oh, ow], seed.wrapping_add(3), -1.0, 1.0);
        let rs = res.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (want, _) = reference(&xs, (n, cin, h, w), &q, &bias, (cout, kh, kw), g,
            residual.then_some(rs.as_slice()), relu);
        let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        let prepared = PreparedConv::from_folded_int8(&folded, &q).unwrap();
        let mut outputs = Vec::new();
        for kernel in kernels() {
            let got = prepared
                .forward_nchw(&x, residual.then_some(&res), relu, kernel, threads)
                .unwrap()
                .flatten_all().unwrap().to_vec1::<f32>().unwrap();
            prop_assert_eq!(got.len(), want.len());
            let d = got.iter().zip(&want).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs())) / scale;
            prop_assert!(d <= INT8_EPILOGUE_REL_TOL, "{:?}: max rel diff {}", kernel, d);
            outputs.push(got);
        }
        // The vector kernel computes the same integers and the same fused epilogue: bit-identical.
        for o in &outputs[1..] {
            prop_assert!(o == &outputs[0], "kernels differ");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Wide convolutions (K up to a few thousand, like the 17x17 and 8x8 stages) against f32
    /// candle: the error int8 costs stays at the percent level.
    #[test]
    fn int8_conv_is_close_to_f32(
        cin in 16usize..300, cout in 1usize..70, h in 3usize..12,
        kh in prop::sample::select(vec![1usize, 3]), relu in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = mk(&[1, cin, h, h], seed, 0.0, 1.0);
        let pad = kh / 2;
        let folded = FoldedConv {
            weight: mk(&[cout, cin, kh, kh], seed.wrapping_add(1), -1.0, 1.0),
            bias: mk(&[cout], seed.wrapping_add(2), -0.1, 0.1),
            geometry: Geometry { stride: 1, pad_h: pad, pad_w: pad },
            relu: false,
        };
        let pre_activation = CandleConv.forward(&x, &folded).unwrap();
        let want = if relu { pre_activation.relu().unwrap() } else { pre_activation.clone() };
        let q = ConvQuant::from_folded(&folded, ActQuant::from_range(0.0, 1.0)).unwrap();
        let got = PreparedConv::from_folded_int8(&folded, &q)
            .unwrap()
            .forward_nchw(&x, None, relu, MicroKernel::detect(), 2)
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Relative to the pre-activation's size, the scale the kernel computes at: when ReLU
        // clips nearly every output (one output channel whose weights sum well below zero:
        // 2 of 36 outputs positive), the clipped output's own norm is tiny and says nothing
        // about int8's error. ReLU never increases a difference.
        let norm = |v: &[f32]| v.iter().map(|&e| f64::from(e).powi(2)).sum::<f64>().sqrt();
        let diff: Vec<f32> = flat(&got).iter().zip(flat(&want)).map(|(a, b)| a - b).collect();
        let err = norm(&diff) / norm(&flat(&pre_activation));
        prop_assert!(err <= INT8_CONV_REL_L2_TOL, "rel L2 {}", err);
    }
}

/// The int8 kernel the detected micro-kernel runs is the one this CPU can run: `sdot` exactly
/// when an aarch64 CPU has the dot-product extension; on x86, `avx512-vnni` exactly when the CPU
/// has AVX-512 F, BW and VNNI beside AVX2 and FMA, else `avx2` exactly when it has AVX2 and FMA. `ECHONET_EXPECT_INT8_KERNEL` names the kernel a run must get (the qemu checks set it:
/// `sdot` under `-cpu max`, `portable` under `-cpu cortex-a57`), so a run on the wrong path fails
/// rather than passing the bit-identity test above trivially.
#[test]
fn int8_kernel_follows_the_cpu() {
    let name = qgemm::kernel_name(MicroKernel::detect());
    eprintln!("int8 kernel: {name}");
    assert_eq!(qgemm::kernel_name(MicroKernel::Portable), "portable");
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        name == "sdot",
        std::arch::is_aarch64_feature_detected!("dotprod")
    );
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let vnni = avx2
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        assert_eq!(name == "avx512-vnni", vnni);
        assert_eq!(name == "avx2", avx2 && !vnni);
        // Where VNNI runs, the AVX2 kernel is still tested beside it (`kernels()`).
        if vnni {
            assert_eq!(qgemm::kernel_name(MicroKernel::Avx2Fma), "avx2");
            assert!(MicroKernel::available().contains(&MicroKernel::Avx2Fma));
        }
    }
    if let Ok(want) = std::env::var("ECHONET_EXPECT_INT8_KERNEL") {
        assert_eq!(name, want, "ECHONET_EXPECT_INT8_KERNEL");
    }
}

#[test]
fn vector_quantiser_matches_scalar() {
    for (lo, hi) in [(0.0f32, 1.0f32), (-1.0, 3.0), (-5.0, 0.1), (0.0, 1e-3)] {
        let act = ActQuant::from_range(lo, hi);
        let mut src = values(1000, 42, lo * 2.0 - 1.0, hi * 2.0 + 1.0);
        // Halfway points, extremes and non-finite values.
        src.extend([
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
        ]);
        src.extend((0..64).map(|i| (i as f32 + 0.5) * act.scale));
        let mut fast = vec![0u8; src.len()];
        quantize_row(&src, &mut fast, act);
        for (i, (&s, &f)) in src.iter().zip(&fast).enumerate() {
            assert_eq!(act.quantize(s), f, "value {s} at {i}, range {lo}..{hi}");
        }
        // Zero is exact (padding), and the range ends land on 0 and 255.
        assert_eq!(act.quantize(0.0), act.zero_point);
        assert_eq!(act.quantize(hi.max(0.0)), 255);
        assert_eq!(act.quantize(lo.min(0.0)), 0);
    }
}

#[test]
fn bad_int8_tables_are_refused() {
    let folded = FoldedConv {
        weight: mk(&[4, 3, 1, 1], 1, -1.0, 1.0),
        bias: mk(&[4], 2, -1.0, 1.0),
        geometry: Geometry::unit(),
        relu: false,
    };
    let good = ConvQuant::from_folded(&folded, ActQuant::from_range(0.0, 1.0)).unwrap();
    let mut wide = good.clone();
    wide.weights[0] = 100;
    let err = PreparedConv::from_folded_int8(&folded, &wide)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside -63..=63"), "{err}");
    let mut short = good.clone();
    short.scales.pop();
    let err = PreparedConv::from_folded_int8(&folded, &short)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 scales"), "{err}");
    let mut zero = good;
    zero.act.scale = 0.0;
    let err = PreparedConv::from_folded_int8(&folded, &zero)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not positive"), "{err}");
}
