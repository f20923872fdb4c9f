//! `echonet train` end to end on tiny phantom sets (width 0.125, 75x75, a few steps): the bundle
//! it writes loads and describes itself, a paused and resumed run equals an uninterrupted one
//! exactly, the grid and per-task layouts write what they say, bad settings are refused by
//! name, progress is logged from the first step when stderr is not a terminal, and Ctrl-C before
//! the first validation leaves a checkpoint that resumes, and `--init` starts from a bundle's
//! weights (refusing another network). Whether training learns is checked where it matters, on
//! the bundled model (tests/bundled_model.rs).
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Output;

use common::echonet;

use echonet_edge::model::{read_bundle, EchoNetModel, RunOptions};

const TINY: &[&str] = &[
    "train",
    "--phantom-seed",
    "5",
    "--phantom-clips",
    "6",
    "--width",
    "0.125",
    "--input-size",
    "75",
    "--batch-size",
    "4",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--threads",
    "1",
];

/// `TINY` with `extra`; a flag in `extra` replaces TINY's value for it.
fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = vec![TINY[0]];
    for pair in TINY[1..].chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    args
}

fn train(extra: &[&str]) -> Output {
    echonet().args(train_args(extra)).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let b = read_bundle(path).unwrap();
    b.store
        .snapshot()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn train_writes_a_bundle_that_loads_and_records_how_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let stdout = ok(&train(&["--out", out.to_str().unwrap()]));
    assert!(stdout.contains("wrote"), "{stdout}");
    let b = read_bundle(&out).unwrap();
    let m = &b.manifest;
    let names: Vec<&str> = m.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ef", "esv", "edv", "lv_volume"]);
    let vol = &m.tasks[3];
    assert_eq!(vol.unit, "mL");
    assert!(
        vol.offset > 30.0 && vol.scale > 1.0,
        "scaled to the labels: {vol:?}"
    );
    assert_eq!((m.input.height, m.input.channels), (75, 1));
    assert!(m.provenance.metrics.contains_key("val_loss"));
    assert!(m.provenance.metrics.contains_key("val_lv_volume_mae"));
    assert!(m.provenance.data.contains("phantom:seed=5"));
    assert!(
        m.provenance.notes.contains("seed 1"),
        "{}",
        m.provenance.notes
    );
    EchoNetModel::from_bundle(&b, &RunOptions::cpu()).unwrap();
    assert!(dir
        .path()
        .join("m.work/lr1e-3_wd1e-4/checkpoint.safetensors")
        .is_file());
}

#[test]
fn paused_and_resumed_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.safetensors");
    ok(&train(&["--out", whole.to_str().unwrap()]));

    let parts = dir.path().join("parts.safetensors");
    let first = ok(&train(&[
        "--out",
        parts.to_str().unwrap(),
        "--pause-at",
        "3",
    ]));
    assert!(first.contains("paused"), "{first}");
    assert!(!parts.exists(), "no final bundle before the run ends");
    ok(&train(&["--out", parts.to_str().unwrap(), "--resume"]));
    assert_eq!(tensors(&whole), tensors(&parts));

    // Resuming with other settings is refused, naming the checkpoint.
    let other = train(&["--out", parts.to_str().unwrap(), "--resume", "--steps", "6"]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("other settings"),
        "{err}"
    );
}

#[test]
fn grid_tries_every_pair_and_per_task_writes_one_bundle_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.safetensors");
    let stdout = ok(&train(&[
        "--out",
        out.to_str().unwrap(),
        "--lr-grid",
        "1e-3,1e-4",
        "--steps",
        "2",
        "--tasks",
        "edv",
    ]));
    assert!(
        stdout.contains("\n1e-3 ") && stdout.contains("\n1e-4 "),
        "{stdout}"
    );
    assert!(out.is_file());

    let out = dir.path().join("p.safetensors");
    ok(&train(&[
        "--out",
        out.to_str().unwrap(),
        "--heads",
        "per_task",
        "--tasks",
        "ef,lv_volume",
        "--steps",
        "2",
    ]));
    for task in ["ef", "lv_volume"] {
        let b = read_bundle(&dir.path().join(format!("p.{task}.safetensors"))).unwrap();
        let names: Vec<&str> = b.manifest.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [task]);
    }
}

#[test]
fn bad_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, "steps = 3\n[augment]\nrotation = 5\n").unwrap();
    let r = train(&[
        "--out",
        out.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("train.toml") && err.contains("augment"),
        "{err}"
    );

    let r = train(&[
        "--out",
        out.to_str().unwrap(),
        "--tasks",
        "ef,cardiac_output",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("cardiac_output") && err.contains("lv_volume"),
        "{err}"
    );

    let r = train(&["--out", out.to_str().unwrap(), "--batch-size", "1"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("batch_size 1"));

    for share in ["-0.5", "1.5"] {
        let r = train(&[
            "--out",
            out.to_str().unwrap(),
            "--phantom-seed",
            "5",
            "--phantom-clips",
            "3",
            &format!("--phantom-lead-mimics={share}"),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success());
        assert!(err.contains(&format!("lead-mimic share {share}")), "{err}");
    }
}

/// With stderr not a terminal (a log file, a service), progress is logged as lines from the
/// first step on, before the first validation.
#[test]
fn progress_lines_come_before_the_first_validation_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    // At the log level a user gets by default.
    let o = echonet()
        .env("ECHONET_LOG", "info")
        .args(train_args(&[
            "--out",
            out.to_str().unwrap(),
            "--eval-every",
            "4",
        ]))
        .output()
        .unwrap();
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line_of = |pred: &dyn Fn(&str) -> bool| stderr.lines().position(pred);
    let first_step = line_of(&|l| l.contains("training") && l.contains(" step=1 "))
        .unwrap_or_else(|| panic!("no progress line for step 1: {stderr}"));
    let first_validation = line_of(&|l| l.contains("validation") && l.contains(" step=4 "))
        .unwrap_or_else(|| panic!("no validation line: {stderr}"));
    assert!(first_step < first_validation, "{stderr}");
    assert!(
        !stderr.contains('\r'),
        "a redrawn bar went to a non-terminal"
    );
}

/// Ctrl-C before the first validation stops after the current step with a checkpoint and says
/// how to continue; the checkpoint resumes.
#[test]
fn ctrl_c_before_the_first_validation_leaves_a_checkpoint_that_resumes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let args = train_args(&[
        "--steps",
        "1000",
        "--eval-every",
        "1000",
        "--out",
        out.to_str().unwrap(),
    ]);
    let mut child = echonet()
        .env("ECHONET_LOG", "info")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no progress line; stderr so far: {seen:#?}"));
        let started = line.contains("training") && line.contains(" step=1 ");
        seen.push(line);
        if started {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("train did not stop after Ctrl-C: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{status:?}: {seen:#?}");
    let interrupted = seen
        .iter()
        .find(|l| l.contains("interrupted: writing a checkpoint"))
        .unwrap_or_else(|| panic!("no interruption message: {seen:#?}"));
    assert!(
        stdout.contains("paused; continue with the same command and --resume"),
        "{stdout}"
    );
    // Nothing validated yet: the table says so instead of an infinite loss.
    assert!(
        stdout.contains("none") && stdout.contains("not validated yet"),
        "{stdout}"
    );
    assert!(!stdout.split_whitespace().any(|w| w == "inf"), "{stdout}");
    let checkpoint = dir
        .path()
        .join("m.work/lr1e-3_wd1e-4/checkpoint.safetensors");
    assert!(checkpoint.is_file(), "no checkpoint: {seen:#?}");
    assert!(!out.exists(), "no final bundle before the run ends");

    // The checkpoint continues: one more step from where Ctrl-C stopped.
    let step: usize = interrupted
        .split(" step=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in {interrupted}"));
    let next = (step + 1).to_string();
    let mut again = args.clone();
    again.extend_from_slice(&["--resume", "--pause-at", &next]);
    let resumed = echonet()
        .env("ECHONET_LOG", "info")
        .args(&again)
        .output()
        .unwrap();
    let text = ok(&resumed);
    assert!(text.contains("paused"), "{text}");
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        log.contains("resuming") && log.contains(&format!("step={step}")),
        "{log}"
    );
}

/// `--init`: a fine-tune starts from the bundle's weights and keeps its heads' scale and offset
/// (at a vanishing learning rate the weights stay the bundle's, where a seeded start is far from
/// them), and a bundle of another width, input size or head list is refused before any data is
/// rendered, naming the bundle and what differs.
#[test]
fn init_starts_from_a_bundles_weights_and_refuses_another_network() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    ok(&train(&["--out", base.to_str().unwrap()]));
    let base_s = base.to_str().unwrap();
    // Other patients (their label statistics differ), two steps, no weight decay.
    let tuned = dir.path().join("tuned.safetensors");
    let fresh = dir.path().join("fresh.safetensors");
    let common = [
        "--phantom-seed",
        "6",
        "--steps",
        "2",
        "--lr",
        "1e-12",
        "--weight-decay",
        "0",
    ];
    let mut a = common.to_vec();
    a.extend_from_slice(&["--out", tuned.to_str().unwrap(), "--init", base_s]);
    let stdout = ok(&train(&a));
    assert!(stdout.contains("wrote"), "{stdout}");
    // Another seed: another initialisation (the same seed would start from the base's own).
    let mut b = common.to_vec();
    b.extend_from_slice(&["--out", fresh.to_str().unwrap(), "--seed", "2"]);
    ok(&train(&b));

    // Largest absolute difference over the trained parameters (BatchNorm running statistics
    // move with every batch whatever the learning rate).
    let diff = |x: &Path, y: &Path| {
        tensors(x)
            .iter()
            .zip(tensors(y))
            .filter(|((n, _), _)| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
            .map(|((n, a), (m, b))| {
                assert_eq!(n, &m);
                a.iter()
                    .zip(&b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max)
            })
            .fold(0f32, f32::max)
    };
    let (from_base, from_seed) = (diff(&base, &tuned), diff(&base, &fresh));
    assert!(
        from_base < 1e-5 && from_seed > 1e-2,
        "fine-tuned {from_base} from the bundle, seeded start {from_seed}"
    );
    let specs = |p: &Path| read_bundle(p).unwrap().manifest.tasks;
    assert_eq!(specs(&tuned), specs(&base));
    assert_ne!(
        specs(&fresh),
        specs(&base),
        "seed 6's labels give other scales"
    );
    let m = read_bundle(&tuned).unwrap().manifest;
    assert!(
        m.provenance.source.contains("--init"),
        "{}",
        m.provenance.source
    );

    let out = dir.path().join("x.safetensors");
    for (flag, value, says) in [
        ("--width", "0.25", "architecture"),
        ("--input-size", "80", "input"),
        ("--tasks", "ef,edv", "heads"),
        // One network per task: each run's single head is not the bundle's list.
        ("--heads", "per_task", "heads"),
    ] {
        let r = train(&[
            "--out",
            out.to_str().unwrap(),
            "--init",
            base_s,
            flag,
            value,
        ]);
        assert!(!r.status.success(), "{flag} {value} accepted");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains("--init") && err.contains("base.safetensors") && err.contains(says),
            "{flag} {value}: {err}"
        );
        assert!(
            !err.contains("data prepared"),
            "refused only after rendering: {err}"
        );
    }
    let missing = train(&[
        "--out",
        out.to_str().unwrap(),
        "--init",
        "/nonexistent/m.safetensors",
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/m.safetensors"), "{err}");
}
