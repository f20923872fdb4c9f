//! Damaged, mismatched and foreign files must fail with an error naming the file and the tensor
//! or field at fault — never a panic, never a silently wrong model.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use echonet_edge::input::load_npy;
use echonet_edge::model::import::{convert, ConvertOptions, ConvertSpec};
use echonet_edge::model::{
    read_bundle, write_bundle, EchoNetModel, ModelError, RunOptions, StorageDtype,
};

fn fixture_bundle(dir: &Path) -> PathBuf {
    convert_fixture("irv1_w0125.pth", dir, StorageDtype::F32)
}

/// Loads a bundle all the way to a model, returning the first error.
fn load(path: &Path) -> Result<EchoNetModel, ModelError> {
    let b = read_bundle(path)?;
    EchoNetModel::from_bundle(&b, &RunOptions::cpu())
}

fn err_text(path: &Path) -> String {
    match load(path) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the JSON header of a safetensors file (keeping the data section as is).
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let new_header = serde_json::to_vec(&header).unwrap();
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend(new_header);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

fn edit_manifest(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    edit_header(path, |h| {
        let text = h["__metadata__"]["echonet.manifest"]
            .as_str()
            .unwrap()
            .to_string();
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut m);
        h["__metadata__"]["echonet.manifest"] = serde_json::Value::String(m.to_string());
    });
}

/// Rewrites a bundle with its tensors changed by `edit`, hashed afresh (a well-formed bundle
/// whose contents do not fit the network).
fn rewrite_tensors(
    path: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, candle_core::Tensor>),
) {
    let b = read_bundle(path).unwrap();
    let mut tensors = b.store.snapshot();
    edit(&mut tensors);
    write_bundle(path, &b.manifest, &tensors).unwrap();
}

#[test]
fn intact_bundle_loads() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load(&fixture_bundle(dir.path())).is_ok());
}

#[test]
fn truncated_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 5, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = err_text(&path);
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}

#[test]
fn altered_weights_fail_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let e = err_text(&path);
    assert!(e.contains("content hash mismatch"), "{e}");
}

#[test]
fn altered_manifest_fails_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    edit_manifest(&path, |m| m["intended_use"] = "clinical use".into());
    assert!(err_text(&path).contains("content hash mismatch"));
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    rewrite_tensors(&path, |t| {
        t.remove("repeat_2.3.branch1.1.bn.running_var");
    });
    let e = err_text(&path);
    assert!(
        e.contains("`repeat_2.3.branch1.1.bn.running_var` is missing"),
        "{e}"
    );
}

#[test]
fn extra_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    rewrite_tensors(&path, |t| {
        let x = t["heads.ef.bias"].clone();
        t.insert("heads.stray.bias".into(), x);
    });
    let e = err_text(&path);
    assert!(
        e.contains("unexpected tensor") && e.contains("heads.stray.bias"),
        "{e}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    rewrite_tensors(&path, |t| {
        let w = t["conv2d_4a.conv.weight"].narrow(0, 0, 20).unwrap();
        t.insert("conv2d_4a.conv.weight".into(), w);
    });
    let e = err_text(&path);
    assert!(
        e.contains("`conv2d_4a.conv.weight` has shape [20, 10, 3, 3], expected [24, 10, 3, 3]"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    // I32 has F32's size, so the file stays well-formed and only the dtype is wrong.
    edit_header(&path, |h| h["conv2d_2b.bn.bias"]["dtype"] = "I32".into());
    let e = err_text(&path);
    assert!(
        e.contains("`conv2d_2b.bn.bias` is stored as i32, expected f32"),
        "{e}"
    );
}

#[test]
fn plain_safetensors_is_not_a_bundle() {
    let e = err_text(&fixture("irv1_w0125.safetensors"));
    assert!(
        e.contains("echonet.manifest") && e.contains("echonet convert"),
        "{e}"
    );
}

#[test]
fn manifest_field_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_bundle(dir.path());
    type ManifestEdit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(ManifestEdit, &str)> = vec![
        (
            Box::new(|m| m["surprise"] = 1.into()),
            "unknown field `surprise`",
        ),
        (
            Box::new(|m| {
                m.as_object_mut()
                    .unwrap()
                    .remove("intended_use")
                    .map(|_| ())
                    .unwrap()
            }),
            "missing field `intended_use`",
        ),
        (
            Box::new(|m| m["input"]["channels"] = 2.into()),
            "input.channels",
        ),
        (
            Box::new(|m| m["architecture"]["name"] = "resnet50".into()),
            "architecture",
        ),
        (
            Box::new(|m| m["format_version"] = 99.into()),
            "format_version",
        ),
        (
            Box::new(|m| m["tasks"][0]["kind"] = "ordinal".into()),
            "unknown variant `ordinal`",
        ),
    ];
    let original = std::fs::read(&path).unwrap();
    for (edit, expected) in cases {
        std::fs::write(&path, &original).unwrap();
        edit_manifest(&path, |m| edit(m));
        let e = err_text(&path);
        assert!(
            e.contains(expected) && e.contains(&path.display().to_string()),
            "expected {expected:?} in: {e}"
        );
    }
}

#[test]
fn missing_file_is_named() {
    let e = err_text(Path::new("/nonexistent/model.safetensors"));
    assert!(e.contains("/nonexistent/model.safetensors"), "{e}");
}

#[test]
fn convert_refuses_foreign_and_incomplete_state_dicts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ConvertSpec::default();
    let opts = ConvertOptions {
        dtype: StorageDtype::F32,
        input_size: Some(75),
        extra_tasks: vec![],
        intended_use: None,
        probe_frames: 1,
    };
    // A state dict lacking one tensor: the error names it.
    let b = read_bundle(&fixture_bundle(dir.path())).unwrap();
    let mut tensors = b.store.snapshot();
    tensors.remove("mixed_7a.branch2.1.conv.weight");
    let partial = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &partial).unwrap();
    let e = convert(&partial, &dir.path().join("x.safetensors"), &spec, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mixed_7a.branch2.1.conv.weight"), "{e}");
    // Asking for a task whose head is absent.
    let opts_esv = ConvertOptions {
        extra_tasks: vec!["esv".into()],
        ..opts
    };
    let e = convert(
        &fixture("irv1_w0125.pth"),
        &dir.path().join("y.safetensors"),
        &spec,
        &opts_esv,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("heads.esv.weight"), "{e}");
    // Not a PyTorch file at all.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a pickle").unwrap();
    let e = convert(&junk, &dir.path().join("z.safetensors"), &spec, &opts_esv)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("junk.pth"), "{e}");
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let m = load(&fixture_bundle(dir.path())).unwrap();
    // Two channels: neither RGB nor grey.
    let x = candle_core::Tensor::zeros(
        (1, 2, 75, 75),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(m
        .infer(&x, false)
        .unwrap_err()
        .to_string()
        .contains("2 channels"));
    // Too small for the network.
    let x = candle_core::Tensor::zeros(
        (1, 3, 60, 60),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(m
        .infer(&x, false)
        .unwrap_err()
        .to_string()
        .contains("minimum"));
    // Non-finite values in a .npy.
    let nan = dir.path().join("nan.npy");
    let mut v = vec![0f32; 3 * 75 * 75];
    v[7] = f32::NAN;
    candle_core::Tensor::from_vec(v, (1, 3, 75, 75), &candle_core::Device::Cpu)
        .unwrap()
        .write_npy(&nan)
        .unwrap();
    let e = load_npy(&nan).unwrap_err().to_string();
    assert!(e.contains("nan.npy") && e.contains("index 7"), "{e}");
    // float64 instead of float32.
    let f64_path = dir.path().join("f64.npy");
    candle_core::Tensor::zeros(
        (1, 3, 75, 75),
        candle_core::DType::F64,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .write_npy(&f64_path)
    .unwrap();
    assert!(load_npy(&f64_path)
        .unwrap_err()
        .to_string()
        .contains("float32"));
}

#[test]
fn special_files_are_refused_before_any_read() {
    // `/dev/zero` never ends: reading it whole grew until memory ran out.
    let e = err_text(Path::new("/dev/zero"));
    assert!(
        e.contains("/dev/zero") && e.contains("character device") && e.contains("regular file"),
        "{e}"
    );
    // A FIFO with no writer: a plain open blocks forever.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.safetensors");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = err_text(&fifo);
    assert!(e.contains("FIFO"), "{e}");
}
