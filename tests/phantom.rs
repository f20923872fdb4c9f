//! `echonet phantom` end to end: the clips it writes are valid multi-frame ultrasound DICOM whose
//! pixels, timing and geometry are the phantom's own, and its CSV ground truth agrees with the
//! library's volume curve.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::echonet;
use dicom_dictionary_std::{tags, uids};
use dicom_object::open_file;
use echonet_edge::phantom::{clip_seed, Phantom, PhantomParams};

/// `echonet ARGS`, waited for.
fn run_echonet(args: &[&str]) -> std::process::Output {
    echonet().args(args).output().expect("run echonet")
}

/// Rows of a CSV file (no quoting in these files), keyed by header name.
fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).expect("csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn num(row: &HashMap<String, String>, key: &str) -> f64 {
    row[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key} = {:?}", row[key]))
}

#[test]
fn cli_writes_dicom_clips_and_agreeing_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let (clips, frames, fps, w, h) = (3u32, 10u64, 25.0, 320usize, 240usize);
    let o = run_echonet(&[
        "phantom",
        "--out",
        out.to_str().unwrap(),
        "--clips",
        &clips.to_string(),
        "--seed",
        "7",
        "--frames",
        &frames.to_string(),
        "--fps",
        "25",
        "--width",
        &w.to_string(),
        "--height",
        &h.to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "clip_0000.dcm",
            "clip_0001.dcm",
            "clip_0002.dcm",
            "frame_volumes.csv",
            "labels.csv"
        ],
        "no temporary files left behind"
    );

    let labels = read_csv(&out.join("labels.csv"));
    let volumes = read_csv(&out.join("frame_volumes.csv"));
    assert_eq!(labels.len(), clips as usize);
    assert_eq!(volumes.len(), (u64::from(clips) * frames) as usize);

    for (i, row) in labels.iter().enumerate() {
        let seed = clip_seed(7, i as u32).unwrap();
        let params = PhantomParams {
            width: w,
            height: h,
            fps,
            ..PhantomParams::random(seed)
        };
        let phantom = Phantom::new(params.clone()).unwrap();
        let file = &row["file"];
        assert_eq!(file, &format!("clip_{i:04}.dcm"));
        assert_eq!(row["seed"], seed.to_string());
        assert!((num(row, "edv_ml") - params.edv_ml).abs() < 1e-3);
        assert!((num(row, "esv_ml") - params.esv_ml).abs() < 1e-3);
        let (edv, esv, ef) = (
            num(row, "edv_ml"),
            num(row, "esv_ml"),
            num(row, "ef_percent"),
        );
        assert!((ef - 100.0 * (edv - esv) / edv).abs() < 1e-3, "{row:?}");
        assert!((num(row, "heart_rate_bpm") - params.heart_rate_bpm).abs() < 1e-3);
        assert_eq!(num(row, "fps"), fps);
        assert_eq!(num(row, "frames") as u64, frames);
        // The findings and the view, 0/1, from the patient's parameters.
        let bit = |b: bool| if b { "1" } else { "0" };
        assert_eq!(row["pacemaker"], bit(params.pacemaker));
        assert_eq!(row["la_dilation"], bit(params.la_dilation()));
        assert_eq!(row["lv_wall_normal"], bit(params.lv_wall_normal()));
        assert_eq!(row["view_a4c"], bit(params.view.is_a4c()));

        let clip_rows: Vec<_> = volumes.iter().filter(|r| &r["file"] == file).collect();
        assert_eq!(clip_rows.len() as u64, frames);
        for (k, r) in clip_rows.iter().enumerate() {
            let t = phantom.frame_time(k as u64);
            assert_eq!(num(r, "frame") as usize, k);
            assert!((num(r, "time_s") - k as f64 / fps).abs() < 1e-5);
            assert!((num(r, "lv_volume_ml") - phantom.lv_volume_ml(t)).abs() < 1e-3);
        }
        // Frame 0 is end-diastole.
        assert!((num(clip_rows[0], "lv_volume_ml") - edv).abs() < 1e-3);

        let obj = open_file(out.join(file)).unwrap();
        assert_eq!(
            obj.meta().media_storage_sop_class_uid(),
            uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE
        );
        assert_eq!(
            obj.meta().transfer_syntax(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        let get = |tag| obj.element(tag).unwrap();
        assert_eq!(
            get(tags::SOP_CLASS_UID).to_str().unwrap(),
            uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE
        );
        assert_eq!(get(tags::MODALITY).to_str().unwrap(), "US");
        assert_eq!(
            get(tags::PHOTOMETRIC_INTERPRETATION).to_str().unwrap(),
            "MONOCHROME2"
        );
        assert_eq!(get(tags::BITS_ALLOCATED).to_int::<u16>().unwrap(), 8);
        assert_eq!(get(tags::SAMPLES_PER_PIXEL).to_int::<u16>().unwrap(), 1);
        assert_eq!(get(tags::ROWS).to_int::<usize>().unwrap(), h);
        assert_eq!(get(tags::COLUMNS).to_int::<usize>().unwrap(), w);
        assert_eq!(get(tags::NUMBER_OF_FRAMES).to_int::<u64>().unwrap(), frames);
        assert!((get(tags::FRAME_TIME).to_float64().unwrap() - 1000.0 / fps).abs() < 1e-4);
        assert_eq!(get(tags::CINE_RATE).to_int::<u32>().unwrap(), 25);
        assert!(get(tags::SOP_INSTANCE_UID)
            .to_str()
            .unwrap()
            .starts_with("2.25."));

        let regions = get(tags::SEQUENCE_OF_ULTRASOUND_REGIONS).items().unwrap();
        assert_eq!(regions.len(), 1);
        let region = &regions[0];
        let field = |tag| region.element(tag).unwrap();
        let bb = phantom.geometry().regions[0];
        assert_eq!(
            field(tags::REGION_LOCATION_MIN_X0)
                .to_int::<usize>()
                .unwrap(),
            bb.x0
        );
        assert_eq!(
            field(tags::REGION_LOCATION_MIN_Y0)
                .to_int::<usize>()
                .unwrap(),
            bb.y0
        );
        assert_eq!(
            field(tags::REGION_LOCATION_MAX_X1)
                .to_int::<usize>()
                .unwrap(),
            bb.x1 - 1
        );
        assert_eq!(
            field(tags::REGION_LOCATION_MAX_Y1)
                .to_int::<usize>()
                .unwrap(),
            bb.y1 - 1
        );
        assert_eq!(
            field(tags::PHYSICAL_UNITS_X_DIRECTION)
                .to_int::<u16>()
                .unwrap(),
            3
        );
        assert_eq!(
            field(tags::PHYSICAL_UNITS_Y_DIRECTION)
                .to_int::<u16>()
                .unwrap(),
            3
        );
        let dx = field(tags::PHYSICAL_DELTA_X).to_float64().unwrap();
        let dy = field(tags::PHYSICAL_DELTA_Y).to_float64().unwrap();
        assert_eq!((dx, dy), (phantom.cm_per_pixel(), phantom.cm_per_pixel()));

        let pixels = get(tags::PIXEL_DATA).to_bytes().unwrap();
        let frame_len = w * h;
        assert_eq!(pixels.len(), frame_len * frames as usize);
        assert_eq!(
            &pixels[..frame_len],
            &phantom.render(phantom.frame_time(0)).data[..]
        );
        let last = frames as usize - 1;
        assert_eq!(
            &pixels[last * frame_len..],
            &phantom.render(phantom.frame_time(last as u64)).data[..]
        );
    }

    // The same command gives the same bytes (no dates, no random UIDs).
    let again = dir.path().join("again");
    let o = run_echonet(&[
        "phantom",
        "--out",
        again.to_str().unwrap(),
        "--clips",
        "1",
        "--seed",
        "7",
        "--frames",
        "10",
        "--fps",
        "25",
        "--width",
        "320",
        "--height",
        "240",
    ]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(out.join("clip_0000.dcm")).unwrap(),
        std::fs::read(again.join("clip_0000.dcm")).unwrap()
    );
}

#[test]
fn cli_rejects_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for args in [
        vec!["phantom", "--out", out, "--clips", "0", "--seed", "1"],
        vec!["phantom", "--out", out, "--clips", "1001", "--seed", "1"],
        vec![
            "phantom", "--out", out, "--clips", "1", "--seed", "1", "--frames", "0",
        ],
        vec![
            "phantom",
            "--out",
            out,
            "--clips",
            "1",
            "--seed",
            "18446744073709551615",
        ],
        vec![
            "phantom", "--out", out, "--clips", "1", "--seed", "1", "--width", "50",
        ],
    ] {
        let o = run_echonet(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("error"),
            "{args:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// The dataset reader on an `echonet phantom` folder: each clip's labels are what the in-memory
/// phantom gives the same patient; a two-chamber clip carries only `view_a4c` = 0, and a bad
/// 0/1 cell is refused naming the file, line and column.
#[test]
fn dataset_reads_the_findings_and_keeps_volumes_off_other_views() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clips");
    // Base seed 1: clip 3 is a two-chamber view, clip 6 has a lead (the seed's draws).
    let o = run_echonet(&[
        "phantom",
        "--out",
        out.to_str().unwrap(),
        "--clips",
        "8",
        "--seed",
        "1",
        "--frames",
        "3",
        "--width",
        "320",
        "--height",
        "240",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = echonet_edge::dataset::open(&out).unwrap();
    let memory = echonet_edge::dataset::phantom::in_memory(1, 8, 3, 30.0).unwrap();
    assert_eq!(data.clips.len(), 8);
    let mut other_views = 0;
    for (read, mem) in data.clips.iter().zip(&memory.clips) {
        assert_eq!(
            read.labels.keys().collect::<Vec<_>>(),
            mem.labels.keys().collect::<Vec<_>>()
        );
        for (k, v) in &read.labels {
            assert!((v - mem.labels[k]).abs() < 1e-3, "{} {k}", read.id);
        }
        if read.labels["view_a4c"] == 0.0 {
            other_views += 1;
            assert_eq!(read.labels.len(), 1, "{}: {:?}", read.id, read.labels);
            assert!(read.frame_labels.is_empty() && mem.frame_labels.is_empty());
        } else {
            for task in ["ef", "pacemaker", "la_dilation", "lv_wall_normal"] {
                assert!(read.labels.contains_key(task), "{} lacks {task}", read.id);
            }
            assert_eq!(read.frame_labels.len(), 3);
        }
    }
    assert!(
        other_views >= 1,
        "seed 1 has a two-chamber clip among its first 8"
    );

    let labels = out.join("labels.csv");
    let text = std::fs::read_to_string(&labels).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = format!("{},2", lines[2].rsplit_once(',').unwrap().0);
    std::fs::write(&labels, lines.join("\n") + "\n").unwrap();
    let e = echonet_edge::dataset::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("labels.csv") && e.contains("line 3") && e.contains("view_a4c"),
        "{e}"
    );
}
