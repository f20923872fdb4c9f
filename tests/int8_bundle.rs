//! int8 from calibration to bundle to model: the planned int8 trunk against f32 (and its two
//! micro-kernels against each other), the int8 section's round trip through a bundle (hashed,
//! loaded as int8, refused when altered), and which precision each `--dtype` request gets.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use echonet_edge::model::bundle::{
    write_bundle_int8, QuantizedWeights, BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION,
};
use echonet_edge::model::cpu_plan::gemm::MicroKernel;
use echonet_edge::model::cpu_plan::CpuPlan;
use echonet_edge::model::quantize::{self, Calibration, Method, Quantization};
use echonet_edge::model::{
    conv_kernel_named, int8_unavailable, read_bundle, write_bundle, Architecture, EchoNetModel,
    InputSpec, Int8Request, Manifest, Provenance, RunOptions, StorageDtype, WeightStore,
};

/// Relative L2 of pooled features, int8 trunk vs f32 trunk, on frames like the calibration
/// frames: ~90 int8 convolutions of 8-bit activations and 7-bit weights, each about 1% off
/// (tests/int8_kernels.rs), mostly averaging out; measured 1-3% on these random networks.
const INT8_TRUNK_REL_L2_TOL: f64 = 6e-2;

/// Relative L2 of int8 features, portable micro-kernels vs the detected ones: f32 layers round
/// differently (FMA), so a few int8 inputs land one quantisation step apart; measured ~1e-7.
const PORTABLE_VS_VECTOR_TOL: f64 = 1e-3;

fn frames(n: usize, size: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n * 3 * size * size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn manifest(size: usize) -> Manifest {
    Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        architecture: Architecture::new(0.125, Some(16)),
        input: InputSpec::facenet(size, 3),
        tasks: vec![],
        dtype: StorageDtype::F32,
        intended_use: "test".into(),
        provenance: Provenance {
            source: "synthetic".into(),
            data: "none".into(),
            created: String::new(),
            tool: "tests/int8_bundle.rs".into(),
            metrics: Default::default(),
            notes: String::new(),
        },
        content_hash: String::new(),
    }
}

/// An f32 bundle of an untrained network and its int8 section, calibrated on random frames.
fn quantised(dir: &Path, size: usize, method: Method) -> (std::path::PathBuf, QuantizedWeights) {
    quantised_with(dir, size, method, 1.0)
}

/// [`quantised`] with activation ranges widened `headroom` times.
fn quantised_with(
    dir: &Path,
    size: usize,
    method: Method,
    headroom: f32,
) -> (std::path::PathBuf, QuantizedWeights) {
    let store = WeightStore::synthetic(5);
    let model = EchoNetModel::from_store(manifest(size), &store, &RunOptions::cpu()).unwrap();
    let f32_path = dir.join("f32.safetensors");
    write_bundle(&f32_path, &manifest(size), &store.snapshot()).unwrap();
    let plan = model.cpu_plan().unwrap();
    let batches = vec![
        (frames(4, size, 1), (4, 3, size, size)),
        (frames(4, size, 2), (4, 3, size, size)),
    ];
    let stats = quantize::calibrate(plan, &batches).unwrap();
    let convs = CpuPlan::convolutions(model.network()).unwrap();
    assert_eq!(stats.len(), convs.len());
    let (table, layers) = quantize::plan_table(&convs, &stats, method, headroom).unwrap();
    assert!(table[0].is_none(), "the stem stays f32");
    assert!(layers[0].reason.as_deref().unwrap().contains("stem"));
    let q = QuantizedWeights {
        info: Quantization {
            scheme: quantize::SCHEME.into(),
            method,
            headroom,
            calibration: Calibration {
                source: "random frames".into(),
                frames: 8,
                held_out_frames: 0,
            },
            layers,
            drift: Default::default(),
            features_rel_l2: 0.0,
        },
        table,
    };
    (f32_path, q)
}

fn features(model: &EchoNetModel, x: &[f32], size: usize) -> Vec<f32> {
    let n = x.len() / (3 * size * size);
    let t = Tensor::from_slice(x, (n, 3, size, size), &Device::Cpu).unwrap();
    let (f, _) = model.forward(&t).unwrap();
    f.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn int8_trunk_is_close_to_f32_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let size = 80;
    let x = frames(2, size, 99); // not among the calibration frames
    for method in [Method::MinMax, Method::Percentile, Method::Mse] {
        let (path, q) = quantised(dir.path(), size, method);
        let bundle = read_bundle(&path).unwrap();
        let reference = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).unwrap();
        assert_eq!(reference.precision(), "f32");
        let mut int8 = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).unwrap();
        int8.use_int8(&q, &path).unwrap();
        assert_eq!(int8.precision(), "int8");
        assert!(
            int8.backend_name().contains("int8"),
            "{}",
            int8.backend_name()
        );
        let plan = int8.cpu_plan().unwrap();
        assert!(plan.int8_convs() > plan.conv_count() / 2);
        let (a, b) = (features(&int8, &x, size), features(&reference, &x, size));
        let err = echonet_edge::model::import::relative_l2(&a, &b);
        assert!(err <= INT8_TRUNK_REL_L2_TOL, "{method:?}: rel L2 {err}");
        assert!(err > 0.0, "{method:?}: int8 gave f32's exact features");
        // The portable kernels: the int8 layers compute the same integers, but the f32 layers
        // (stem, small K) round differently, which can move an int8 input by one step.
        let portable = CpuPlan::build_int8(int8.network(), 2, &q.table)
            .unwrap()
            .with_kernel(MicroKernel::Portable);
        let t = Tensor::from_slice(&x, (2, 3, size, size), &Device::Cpu).unwrap();
        let p = portable
            .features(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let v = plan
            .features(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = echonet_edge::model::import::relative_l2(&p, &v);
        assert!(
            d <= PORTABLE_VS_VECTOR_TOL,
            "{method:?}: portable vs vector rel L2 {d}"
        );
    }
}

#[test]
fn int8_bundle_round_trips_and_loads_as_int8() {
    let dir = tempfile::tempdir().unwrap();
    let size = 75;
    let (f32_path, q) = quantised(dir.path(), size, Method::Percentile);
    let f32_bundle = read_bundle(&f32_path).unwrap();
    let path = dir.path().join("int8.safetensors");
    let written = write_bundle_int8(
        &path,
        &f32_bundle.manifest,
        &f32_bundle.store.snapshot(),
        &q,
    )
    .unwrap();
    assert_ne!(written.content_hash, f32_bundle.manifest.content_hash);
    let bundle = read_bundle(&path).unwrap();
    let back = bundle.quantization.as_ref().unwrap();
    assert_eq!(back.info, q.info);
    assert_eq!(back.table, q.table);
    // No precision asked: int8 on the CPU.
    let model = EchoNetModel::from_bundle(&bundle, &RunOptions::cpu()).unwrap();
    assert_eq!(model.precision(), "int8");
    let mut direct = EchoNetModel::from_bundle(&f32_bundle, &RunOptions::cpu()).unwrap();
    direct.use_int8(&q, &path).unwrap();
    let x = frames(1, size, 3);
    assert_eq!(features(&model, &x, size), features(&direct, &x, size));
    // f32 asked: the section is not used.
    let off = RunOptions {
        int8: Int8Request::Off,
        ..RunOptions::cpu()
    };
    assert_eq!(
        EchoNetModel::from_bundle(&bundle, &off)
            .unwrap()
            .precision(),
        "f32"
    );
    // f16 without asking for int8: runs f16 (with a warning), not int8.
    let half = RunOptions {
        dtype: Some(DType::F16),
        ..RunOptions::cpu()
    };
    assert_eq!(
        EchoNetModel::from_bundle(&bundle, &half)
            .unwrap()
            .precision(),
        "f16"
    );
    // int8 required but impossible, or absent: clear errors.
    let need = |dtype, kernel: &str| RunOptions {
        dtype: Some(dtype),
        kernel: conv_kernel_named(kernel).unwrap(),
        int8: Int8Request::Require,
        ..RunOptions::cpu()
    };
    let err = EchoNetModel::from_bundle(&bundle, &need(DType::F16, "auto"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot run int8") && err.contains("F16"),
        "{err}"
    );
    let err = EchoNetModel::from_bundle(&bundle, &need(DType::F32, "cpu-gemm"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--conv cpu-gemm has no int8 path"), "{err}");
    let err = EchoNetModel::from_bundle(&f32_bundle, &need(DType::F32, "auto"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no int8 section") && err.contains("echonet quantize"),
        "{err}"
    );
    assert_eq!(
        EchoNetModel::from_bundle(&bundle, &need(DType::F32, "auto"))
            .unwrap()
            .precision(),
        "int8"
    );
}

#[test]
fn int8_runs_only_in_the_cpu_plan() {
    let auto = conv_kernel_named("auto").unwrap();
    assert_eq!(int8_unavailable(true, DType::F32, auto.as_ref()), None);
    let cuda = int8_unavailable(false, DType::F16, auto.as_ref()).unwrap();
    assert!(
        cuda.contains("CPU only") && cuda.contains("f32 weights"),
        "{cuda}"
    );
    assert!(int8_unavailable(true, DType::F16, auto.as_ref()).is_some());
    let candle = conv_kernel_named("candle").unwrap();
    assert!(int8_unavailable(true, DType::F32, candle.as_ref()).is_some());
}

/// Rewrites one metadata entry of a safetensors file, keeping the data section as is.
fn edit_metadata(path: &Path, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let text = header["__metadata__"][key].as_str().unwrap().to_string();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    header["__metadata__"][key] = serde_json::Value::String(v.to_string());
    let new_header = serde_json::to_vec(&header).unwrap();
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend(new_header);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn altered_or_inconsistent_int8_sections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (f32_path, q) = quantised(dir.path(), 75, Method::MinMax);
    let f32_bundle = read_bundle(&f32_path).unwrap();
    let path = dir.path().join("int8.safetensors");
    let write = || {
        write_bundle_int8(
            &path,
            &f32_bundle.manifest,
            &f32_bundle.store.snapshot(),
            &q,
        )
        .unwrap();
    };
    let err = |p: &Path| match read_bundle(p) {
        Ok(_) => panic!("{} read but should not have", p.display()),
        Err(e) => e.to_string(),
    };
    // A changed activation scale: the content hash no longer matches.
    write();
    let i = q.table.iter().position(|t| t.is_some()).unwrap();
    edit_metadata(&path, quantize::QUANT_KEY, |v| {
        v["layers"][i]["act_scale"] = serde_json::json!(0.5);
    });
    assert!(
        err(&path).contains("content hash mismatch"),
        "{}",
        err(&path)
    );
    // An int8 layer without its scale: named.
    write();
    edit_metadata(&path, quantize::QUANT_KEY, |v| {
        v["layers"][i].as_object_mut().unwrap().remove("act_scale");
    });
    let e = err(&path);
    assert!(
        e.contains(&format!("layers[{i}]")) && e.contains("act_scale"),
        "{e}"
    );
    // A scheme this build does not run: named.
    write();
    edit_metadata(&path, quantize::QUANT_KEY, |v| v["scheme"] = "int4".into());
    let e = err(&path);
    assert!(e.contains("scheme") && e.contains("int4"), "{e}");
    // The section of another network: the loader names the first layer that differs.
    write();
    let bundle = read_bundle(&path).unwrap();
    let mut other = bundle.quantization.clone().unwrap();
    other.info.layers[3].label = "block35 up 1x1 s1 99->99".into();
    let mut model = EchoNetModel::from_bundle(&f32_bundle, &RunOptions::cpu()).unwrap();
    let e = model.use_int8(&other, &path).unwrap_err().to_string();
    assert!(e.contains("layers[3]") && e.contains("99->99"), "{e}");
}

#[test]
fn methods_choose_nested_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mm) = quantised(dir.path(), 75, Method::MinMax);
    let (_, pc) = quantised(dir.path(), 75, Method::Percentile);
    let (_, ms) = quantised(dir.path(), 75, Method::Mse);
    let mut clipped = 0;
    for ((a, b), c) in mm.table.iter().zip(&pc.table).zip(&ms.table) {
        if let (Some(a), Some(b), Some(c)) = (a, b, c) {
            // Percentile and MSE clip outliers: never a wider range than min/max.
            assert!(
                b.act.scale <= a.act.scale * 1.0001,
                "{} > {}",
                b.act.scale,
                a.act.scale
            );
            assert!(
                c.act.scale <= a.act.scale * 1.0001,
                "{} > {}",
                c.act.scale,
                a.act.scale
            );
            clipped += usize::from(b.act.scale < a.act.scale * 0.999);
            // Weights do not depend on the method.
            assert_eq!(a.weights, b.weights);
        }
    }
    assert!(clipped > 0, "percentile never clipped anything");
    assert!("mse".parse::<Method>().is_ok());
    let e = "l2".parse::<Method>().unwrap_err();
    assert!(e.contains("minmax, percentile or mse"), "{e}");
}

#[test]
fn headroom_widens_every_int8_range_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_, plain) = quantised(dir.path(), 75, Method::Percentile);
    let (_, wide) = quantised_with(dir.path(), 75, Method::Percentile, 2.0);
    let mut int8 = 0;
    for (a, b) in plain.table.iter().zip(&wide.table) {
        assert_eq!(
            a.is_some(),
            b.is_some(),
            "headroom changed which layers are int8"
        );
        if let (Some(a), Some(b)) = (a, b) {
            // Twice the range: twice the step, the zero point where it was (or one step off
            // where the doubled range rounds it differently).
            let ratio = b.act.scale / a.act.scale;
            assert!((ratio - 2.0).abs() < 1e-3, "scale ratio {ratio}");
            assert!((a.act.zero_point as i32 - b.act.zero_point as i32).abs() <= 1);
            assert_eq!(a.weights, b.weights);
            int8 += 1;
        }
    }
    assert!(int8 > 10, "only {int8} int8 layers");
    // The section records it; a section written before the field existed reads as 1; below 1 is
    // refused naming the field.
    assert_eq!(wide.info.headroom, 2.0);
    let mut old = serde_json::to_value(&plain.info).unwrap();
    old.as_object_mut().unwrap().remove("headroom");
    let old_json = old.clone();
    let old: Quantization = serde_json::from_value(old).unwrap();
    assert_eq!(old.headroom, 1.0);
    // ...and writes back exactly as it was, so a bundle made before the field existed keeps its
    // content hash (the hash covers the section as written; a headroom of 1 is not written).
    assert_eq!(serde_json::to_value(&old).unwrap(), old_json);
    assert!(serde_json::to_value(&wide.info)
        .unwrap()
        .get("headroom")
        .is_some());
    let mut bad = wide.info.clone();
    bad.headroom = 0.5;
    let (field, why) = bad.check().unwrap_err();
    assert_eq!(field, "headroom", "{why}");
}
