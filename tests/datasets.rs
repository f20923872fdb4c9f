//! The dataset layouts read from folders built here: an EchoNet-Dynamic release in miniature
//! (synthetic MJPG AVIs, FileList.csv, VolumeTracings.csv), a clip manifest (a DICOM written by
//! `echonet phantom`, an image folder, an AVI), and their error messages.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::echonet;
use echonet_edge::dataset::avi::{encode_jpeg, write_avi, AviSpec};
use echonet_edge::dataset::echonet_dynamic::open_echonet_dynamic;
use echonet_edge::dataset::{
    self, ClipSource, DatasetKind, MissingClips, OpenOptions, Split, LV_VOLUME,
};
use echonet_edge::frame::PixelFormat;

const SIDE: u32 = 112;

/// A grey MJPG AVI of `n` frames, 112x112 (three equal channels, as EchoNet-Dynamic writes).
fn mjpeg_clip(n: u32, fps: u32) -> Vec<u8> {
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let grey: Vec<u8> = (0..SIDE * SIDE)
                .map(|i| ((i % SIDE + i / SIDE + k * 7) % 256) as u8)
                .collect();
            encode_jpeg(SIDE, SIDE, 1, &grey, 90).unwrap()
        })
        .collect();
    write_avi(&AviSpec::mjpeg(SIDE, SIDE, fps), &frames)
}

/// Tracing rows of one frame: a vertical long axis of `len` and 4 discs of diameter `d`.
fn tracing(name: &str, frame: usize, len: f64, d: f64) -> String {
    let mut s = format!("{name},56,20,56,{},{frame}\n", 20.0 + len);
    for i in 0..4 {
        let y = 20.0 + len * (i as f64 + 0.5) / 4.0;
        s += &format!(
            "{name},{},{y},{},{y},{frame}\n",
            56.0 - d / 2.0,
            56.0 + d / 2.0
        );
    }
    s
}

const FILE_LIST_HEADER: &str =
    "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n";

fn echonet_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("Videos")).unwrap();
    std::fs::write(dir.join("Videos/0XAAA.avi"), mjpeg_clip(6, 50)).unwrap();
    std::fs::write(dir.join("Videos/0XBBB.avi"), mjpeg_clip(5, 25)).unwrap();
    std::fs::write(dir.join("Videos/0XCCC.avi"), mjpeg_clip(4, 30)).unwrap();
    std::fs::write(
        dir.join("FileList.csv"),
        format!(
            "{FILE_LIST_HEADER}\
             0XAAA,60.0,40.0,100.0,112,112,50,6,TRAIN\n\
             0XBBB.avi,50.0,50.0,100.0,112,112,25,5,VAL\n\
             0XCCC,30.0,70.0,100.0,112,112,30,4,TEST\n"
        ),
    )
    .unwrap();
    // 0XAAA: ES (small) traced first at frame 4, ED (large) at frame 1.
    // 0XBBB: ED first at frame 0, ES at frame 3. 0XCCC: no tracings.
    let mut t = String::from("FileName,X1,Y1,X2,Y2,Frame\n");
    t += &tracing("0XAAA.avi", 4, 60.0, 20.0);
    t += &tracing("0XAAA.avi", 1, 70.0, 30.0);
    t += &tracing("0XBBB.avi", 0, 80.0, 35.0);
    t += &tracing("0XBBB.avi", 3, 60.0, 25.0);
    std::fs::write(dir.join("VolumeTracings.csv"), t).unwrap();
}

#[test]
fn echonet_dynamic_folder_reads_labels_splits_tracings_and_frames() {
    let tmp = tempfile::tempdir().unwrap();
    echonet_folder(tmp.path());
    let ds = dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.kind, DatasetKind::EchonetDynamic);
    assert_eq!(ds.clips.len(), 3);
    let a = &ds.clips[0];
    assert_eq!((a.id.as_str(), a.patient.as_str()), ("0XAAA", "0XAAA"));
    assert_eq!(a.split, Some(Split::Train));
    assert_eq!(ds.clips[1].split, Some(Split::Val));
    assert_eq!(ds.clips[2].split, Some(Split::Test));
    assert_eq!(a.labels["ef"], 60.0);
    assert_eq!(a.labels["esv"], 40.0);
    assert_eq!(a.labels["edv"], 100.0);
    // ED (larger tracing) gets EDV, ES gets ESV, whichever was traced first.
    assert_eq!(a.frame_labels.len(), 2);
    assert_eq!(a.frame_labels[&1][LV_VOLUME], 100.0);
    assert_eq!(a.frame_labels[&4][LV_VOLUME], 40.0);
    let b = &ds.clips[1];
    assert_eq!(b.id, "0XBBB");
    assert_eq!(b.frame_labels[&0][LV_VOLUME], 100.0);
    assert_eq!(b.frame_labels[&3][LV_VOLUME], 50.0);
    assert!(ds.clips[2].frame_labels.is_empty());
    match &b.source {
        ClipSource::Avi { path, fps } => {
            assert!(path.ends_with("Videos/0XBBB.avi"));
            assert_eq!(*fps, Some(25.0));
        }
        other => panic!("unexpected source {other:?}"),
    }
    for (clip, n) in ds.clips.iter().zip([6usize, 5, 4]) {
        let frames = clip.load_frames().unwrap();
        assert_eq!(frames.len(), n, "{}", clip.id);
        for f in &frames {
            assert_eq!((f.image.width, f.image.height), (112, 112));
            assert_eq!(f.image.format, PixelFormat::Gray8);
        }
    }
    let frames = b.load_frames().unwrap();
    assert_eq!(frames[2].media_time, std::time::Duration::from_millis(80));

    let (_, report) = open_echonet_dynamic(tmp.path(), &OpenOptions::default()).unwrap();
    assert_eq!(report.untraced, vec!["0XCCC".to_string()]);
}

#[test]
fn echonet_dynamic_missing_video_is_an_error_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    echonet_folder(tmp.path());
    std::fs::remove_file(tmp.path().join("Videos/0XBBB.avi")).unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("FileList.csv") && e.contains("line 3") && e.contains("0XBBB.avi"),
        "{e}"
    );
    let options = OpenOptions {
        missing: MissingClips::Skip,
    };
    let (ds, report) = open_echonet_dynamic(tmp.path(), &options).unwrap();
    assert_eq!(ds.clips.len(), 2);
    assert_eq!(report.skipped_missing, vec!["0XBBB".to_string()]);
}

#[test]
fn echonet_dynamic_csv_errors_name_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    echonet_folder(tmp.path());
    let list = tmp.path().join("FileList.csv");
    // Missing column.
    std::fs::write(&list, "FileName,EF,ESV,FPS,Split\n0XAAA,60,40,50,TRAIN\n").unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("FileList.csv") && e.contains("\"EDV\""), "{e}");
    // Bad number.
    std::fs::write(
        &list,
        format!("{FILE_LIST_HEADER}0XAAA,sixty,40,100,112,112,50,6,TRAIN\n"),
    )
    .unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("FileList.csv")
            && e.contains("line 2")
            && e.contains("column EF")
            && e.contains("sixty"),
        "{e}"
    );
    // Empty cell, bad split.
    std::fs::write(
        &list,
        format!("{FILE_LIST_HEADER}0XAAA,60,,100,112,112,50,6,TRAIN\n"),
    )
    .unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("line 2, column ESV: empty cell"), "{e}");
    std::fs::write(
        &list,
        format!("{FILE_LIST_HEADER}0XAAA,60,40,100,112,112,50,6,HOLDOUT\n"),
    )
    .unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("line 2, column Split") && e.contains("holdout"),
        "{e}"
    );
    // Garbled tracing.
    std::fs::write(
        &list,
        format!("{FILE_LIST_HEADER}0XAAA,60,40,100,112,112,50,6,TRAIN\n"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("VolumeTracings.csv"),
        "FileName,X1,Y1,X2,Y2,Frame\n0XAAA.avi,1,2,3,4,5\n0XAAA.avi,1,2,x,4,5\n",
    )
    .unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("VolumeTracings.csv") && e.contains("line 3, column X2"),
        "{e}"
    );
}

#[test]
fn unsupported_fourcc_is_refused_with_the_file_and_a_conversion_hint() {
    let tmp = tempfile::tempdir().unwrap();
    echonet_folder(tmp.path());
    let spec = AviSpec {
        handler: *b"FMP4",
        compression: *b"FMP4",
        ..AviSpec::mjpeg(SIDE, SIDE, 50)
    };
    std::fs::write(
        tmp.path().join("Videos/0XAAA.avi"),
        write_avi(&spec, &[vec![0, 0, 1, 0xb6, 1, 2, 3]]),
    )
    .unwrap();
    let ds = dataset::open(tmp.path()).unwrap();
    let e = ds.clips[0].load_frames().unwrap_err().to_string();
    assert!(e.contains("0XAAA.avi") && e.contains("\"FMP4\""), "{e}");
    assert!(e.contains("MJPG") && e.contains("ffmpeg"), "{e}");
}

fn phantom_dicom(out: &Path) {
    let status = echonet()
        .args(["phantom", "--out"])
        .arg(out)
        .args([
            "--clips", "1", "--seed", "3", "--frames", "4", "--width", "160", "--height", "120",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn manifest_folder_with_dicom_image_folder_and_avi() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    phantom_dicom(&dir.join("ph"));
    let frames_dir = dir.join("frames/p2");
    std::fs::create_dir_all(&frames_dir).unwrap();
    for k in 0..3u8 {
        let img = image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x + y) as u8 * 3 + k]));
        img.save(frames_dir.join(format!("f{k:03}.png"))).unwrap();
    }
    std::fs::write(dir.join("clip3.avi"), mjpeg_clip(3, 20)).unwrap();
    std::fs::write(
        dir.join("manifest.csv"),
        "path,patient,split,fps,ef,pacemaker,age\n\
         ph/clip_0000.dcm,P1,train,,55.5,0,70\n\
         frames/p2,P2,val,12.5,,1,\n\
         clip3.avi,P3,,,40,,\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("frame_labels.csv"),
        "path,frame,lv_volume\nph/clip_0000.dcm,0,110.5\nph/clip_0000.dcm,2,60\n",
    )
    .unwrap();
    let ds = dataset::open(dir).unwrap();
    assert_eq!(ds.kind, DatasetKind::Manifest);
    assert_eq!(ds.clips.len(), 3);
    let (d, f, a) = (&ds.clips[0], &ds.clips[1], &ds.clips[2]);
    assert_eq!(
        (d.id.as_str(), d.patient.as_str(), d.split),
        ("ph/clip_0000", "P1", Some(Split::Train))
    );
    assert_eq!(d.labels["ef"], 55.5);
    assert_eq!(d.labels["pacemaker"], 0.0);
    assert_eq!(d.labels["age"], 70.0);
    assert_eq!(d.frame_labels[&0][LV_VOLUME], 110.5);
    assert_eq!(d.frame_labels[&2][LV_VOLUME], 60.0);
    assert!(matches!(d.source, ClipSource::Dicom(_)));
    let df = d.load_frames().unwrap();
    assert_eq!(df.len(), 4);
    assert_eq!((df[0].image.width, df[0].image.height), (160, 120));

    assert_eq!(
        f.labels.len(),
        1,
        "unknown labels stay unknown: {:?}",
        f.labels
    );
    assert_eq!(f.labels["pacemaker"], 1.0);
    assert_eq!(f.split, Some(Split::Val));
    let ff = f.load_frames().unwrap();
    assert_eq!(ff.len(), 3);
    assert_eq!((ff[0].image.width, ff[0].image.height), (40, 30));
    assert_eq!(ff[2].media_time, std::time::Duration::from_millis(160));
    assert_eq!(ff[1].image.data[0], 1);

    assert_eq!(a.split, None);
    let af = a.load_frames().unwrap();
    assert_eq!(af.len(), 3);
    assert_eq!(af[1].media_time, std::time::Duration::from_millis(50));
}

#[test]
fn manifest_errors_name_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("clip.avi"), mjpeg_clip(2, 20)).unwrap();
    let write = |s: &str| std::fs::write(dir.join("manifest.csv"), s).unwrap();
    let err = || dataset::open(dir).unwrap_err().to_string();

    write("path,patient,ef,lvef_guess\nclip.avi,P1,50,3\n");
    let e = err();
    assert!(
        e.contains("manifest.csv") && e.contains("\"lvef_guess\"") && e.contains("pacemaker"),
        "{e}"
    );

    write("path,ef\nclip.avi,50\n");
    let e = err();
    assert!(
        e.contains("manifest.csv") && e.contains("\"patient\""),
        "{e}"
    );

    write("path,patient,ef\nclip.avi,P1,fifty\n");
    let e = err();
    assert!(
        e.contains("line 2, column ef") && e.contains("fifty"),
        "{e}"
    );

    write("path,patient,pacemaker\nclip.avi,P1,0.5\n");
    let e = err();
    assert!(
        e.contains("line 2, column pacemaker") && e.contains("0 or 1"),
        "{e}"
    );

    write("path,patient\nclip.avi,P1\nnothere.dcm,P2\n");
    let e = err();
    assert!(
        e.contains("line 3, column path") && e.contains("nothere.dcm"),
        "{e}"
    );

    std::fs::create_dir_all(dir.join("frames")).unwrap();
    write("path,patient\nframes,P1\n");
    let e = err();
    assert!(e.contains("line 2, column fps"), "{e}");

    write("path,patient\nclip.avi,P1\n");
    std::fs::write(
        dir.join("frame_labels.csv"),
        "path,frame,lv_volume\nother.avi,0,50\n",
    )
    .unwrap();
    let e = err();
    assert!(
        e.contains("frame_labels.csv") && e.contains("line 2") && e.contains("other.avi"),
        "{e}"
    );
}

#[test]
fn unknown_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("FileList.csv") && e.contains("manifest.csv"),
        "{e}"
    );
}

/// An EchoNet-Dynamic folder whose videos are phantom echoes (MJPG, 160x120, 50 fps, 40 frames:
/// enough for the sector to be found from motion, as in a real 2-4 s EchoNet-Dynamic clip).
fn echonet_phantom_folder(dir: &Path) {
    use echonet_edge::phantom::{Phantom, PhantomParams};
    std::fs::create_dir_all(dir.join("Videos")).unwrap();
    for (name, seed) in [("0XAAA", 11u64), ("0XBBB", 12), ("0XCCC", 13)] {
        let p = Phantom::new(PhantomParams {
            width: 160,
            height: 120,
            fps: 50.0,
            ..PhantomParams::random(seed)
        })
        .unwrap();
        let frames: Vec<Vec<u8>> = (0..40)
            .map(|k| {
                let img = p.render(p.frame_time(k));
                encode_jpeg(160, 120, 1, &img.data, 90).unwrap()
            })
            .collect();
        std::fs::write(
            dir.join(format!("Videos/{name}.avi")),
            write_avi(&AviSpec::mjpeg(160, 120, 50), &frames),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("FileList.csv"),
        format!(
            "{FILE_LIST_HEADER}\
             0XAAA,60.0,40.0,100.0,120,160,50,40,TRAIN\n\
             0XBBB,50.0,50.0,100.0,120,160,50,40,VAL\n\
             0XCCC,30.0,70.0,100.0,120,160,50,40,TEST\n"
        ),
    )
    .unwrap();
    let mut t = String::from("FileName,X1,Y1,X2,Y2,Frame\n");
    t += &tracing("0XAAA.avi", 12, 60.0, 20.0);
    t += &tracing("0XAAA.avi", 3, 70.0, 30.0);
    t += &tracing("0XBBB.avi", 0, 80.0, 35.0);
    t += &tracing("0XBBB.avi", 7, 60.0, 25.0);
    std::fs::write(dir.join("VolumeTracings.csv"), t).unwrap();
}

/// Training frames from an EchoNet-Dynamic folder: the 10 fps samples plus the traced ED and ES
/// frames (sparse per-frame labels), each traced frame with its volume, every sampled frame with
/// the clip's labels, the sector found from the whole clip (no region is declared in an AVI);
/// the declared TRAIN/VAL split is used and TEST never is.
#[test]
fn training_frames_from_echonet_dynamic_include_traced_frames_and_honour_splits() {
    use echonet_edge::model::InputSpec;
    use echonet_edge::train::data::{prepare, split_patients, FramePick};
    let tmp = tempfile::tempdir().unwrap();
    echonet_phantom_folder(tmp.path());
    let ds = dataset::open(tmp.path()).unwrap();
    let tasks = vec!["ef".to_string(), LV_VOLUME.to_string()];
    let data = prepare(
        &ds,
        &tasks,
        &InputSpec::facenet(75, 1),
        FramePick { sampled: 20 },
    )
    .unwrap();
    let of_clip = |c: usize| -> Vec<(usize, Option<f64>, Option<f64>)> {
        data.frames
            .iter()
            .filter(|f| f.clip == c)
            .map(|f| (f.frame, f.labels[0], f.labels[1]))
            .collect()
    };
    // 0XAAA at 50 fps: 10 fps samples are frames 0, 5, ..., 35; traced frames 3 (ED), 12 (ES).
    let mut expect: Vec<(usize, Option<f64>, Option<f64>)> =
        (0..8).map(|k| (k * 5, Some(60.0), None)).collect();
    expect.push((3, Some(60.0), Some(100.0)));
    expect.push((12, Some(60.0), Some(40.0)));
    expect.sort_by_key(|e| e.0);
    assert_eq!(of_clip(0), expect, "rejected: {:?}", data.rejected);
    assert!(data.frames.iter().all(|f| f.pixels.len() == 75 * 75));
    let split = split_patients(&data, 0.1, 1);
    assert_eq!(split.train, vec!["0XAAA"]);
    assert_eq!(split.val, vec!["0XBBB"]);
}
