//! Offline prediction in batches (what `echonet predict` and `echonet eval` do on CUDA, 20 frames
//! per pass) gives the estimates of one frame at a time, on the CPU too: sampling, preparation
//! and window order do not depend on the batch size, including a short last batch and frames the
//! quality gate refuses. The CUDA side of the same check is in tests/gpu.rs.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use echonet_edge::aggregate::WindowConfig;
use echonet_edge::config::Config;
use echonet_edge::dataset::phantom::in_memory;
use echonet_edge::frame::Image;
use echonet_edge::model::{read_bundle, EchoNetModel, RunOptions};
use echonet_edge::offline::{predict_clip, predict_clip_batched, ClipResult};
use echonet_edge::pipeline::DEFAULT_VIEW_THRESHOLD as VIEW;
use echonet_edge::preprocess::Preprocessor;

fn demo_model() -> EchoNetModel {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/echonet-phantom-demo.safetensors");
    EchoNetModel::from_bundle(
        &read_bundle(&path).expect("demo bundle"),
        &RunOptions::cpu(),
    )
    .expect("model builds")
}

fn assert_same(a: &ClipResult, b: &ClipResult, what: &str) {
    assert_eq!(
        a.status, b.status,
        "{what}: {:?} vs {:?}",
        a.reason, b.reason
    );
    assert_eq!(a.frames_used, b.frames_used, "{what}");
    assert_eq!(
        a.estimates.keys().collect::<Vec<_>>(),
        b.estimates.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (task, ea) in &a.estimates {
        let eb = &b.estimates[task];
        assert!(
            (ea.value - eb.value).abs() <= 1e-4 * ea.value.abs().max(1.0),
            "{what}: {task}: {} vs {}",
            ea.value,
            eb.value
        );
    }
}

#[test]
fn batches_of_7_and_20_give_the_estimates_of_single_frames() {
    let model = demo_model();
    let data = in_memory(41, 2, 64, 30.0).expect("phantom clips");
    let config = Config::default();
    let window = WindowConfig::default();
    for clip in &data.clips {
        let frames = clip.load_frames().expect("frames");
        let run = |batch: Option<usize>| {
            let mut pre = Preprocessor::new(config.preprocess.clone()).expect("preprocessor");
            pre.set_source_fps(Some(30.0));
            match batch {
                None => predict_clip(&clip.id, &frames, &model, &mut pre, &window, VIEW),
                Some(b) => {
                    predict_clip_batched(&clip.id, &frames, &model, &mut pre, &window, VIEW, b)
                }
            }
        };
        let single = run(None);
        assert_eq!(single.status, "ok", "{}: {:?}", clip.id, single.reason);
        // 7 leaves a short last batch (20 = 7 + 7 + 6); 20 is the CUDA batch.
        assert_same(&single, &run(Some(7)), &format!("{} batch 7", clip.id));
        assert_same(&single, &run(Some(20)), &format!("{} batch 20", clip.id));
    }
}

#[test]
fn a_clip_with_refused_frames_keeps_them_in_place_when_batched() {
    let model = demo_model();
    let data = in_memory(42, 1, 64, 30.0).expect("phantom clip");
    let clip = &data.clips[0];
    let mut frames = clip.load_frames().expect("frames");
    // Blank every fourth frame: the quality gate refuses those, the others go in batches.
    for f in frames.iter_mut().step_by(4) {
        let (w, h) = (f.image.width, f.image.height);
        f.image = Image::gray(w, h, vec![0; w * h]).expect("blank frame");
    }
    let window = WindowConfig::default();
    let run = |batch| {
        let mut pre = Preprocessor::new(Config::default().preprocess).expect("preprocessor");
        pre.set_source_fps(Some(30.0));
        predict_clip_batched(&clip.id, &frames, &model, &mut pre, &window, VIEW, batch)
    };
    let (one, many) = (run(1), run(20));
    let q1 = one.quality.as_ref().expect("quality");
    let q20 = many.quality.as_ref().expect("quality");
    assert_eq!(q1.reasons, q20.reasons, "refused frames and reasons");
    assert!(!q1.reasons.is_empty(), "the blanked frames were refused");
    assert_same(&one, &many, "blanked frames");
}
