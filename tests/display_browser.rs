//! The display page in a real browser: headless Chromium driven through chromedriver's W3C
//! WebDriver API. Checks what a person at the bedside would see: live values that follow the
//! estimates, a withheld estimate showing its reason and no number, STALE when updates stop, the
//! intended use, the live frame, the trend, and the polling fallback.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/install-deps.sh installs them); the
//! test fails, and says so, when they are missing.
// Test code: a failed unwrap/expect is the test failing (the crate denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod display_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use display_support::webdriver::{require_browser, Browser};
use display_support::{estimate, start, withheld, INTENDED_USE};
use echonet_edge::aggregate::{EfAgreement, Status};
use echonet_edge::frame::Image;
use echonet_edge::publish::{DisplayHub, EstimateRecord, HubConfig, ServerConfig};

const WAIT: Duration = Duration::from_secs(15);

/// Publishes the current estimate (with a rising seq) and a frame five times a second, like the
/// runtime does; `set(None)` stops it, as a hung pipeline would.
struct Feeder {
    current: Arc<Mutex<Option<EstimateRecord>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Feeder {
    fn start(hub: Arc<DisplayHub>) -> Self {
        let current: Arc<Mutex<Option<EstimateRecord>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (current.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let (w, h) = (400usize, 300usize);
            let pixels: Vec<u8> = (0..w * h).map(|i| ((i % w + i / w) % 256) as u8).collect();
            let image = Image::gray(w, h, pixels).unwrap();
            let outline = vec![(200.0, 10.0), (20.0, 280.0), (200.0, 295.0), (380.0, 280.0)];
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                let next = c.lock().unwrap().clone();
                if let Some(mut e) = next {
                    seq += 1;
                    e.seq = Some(seq);
                    hub.publish_estimate(&e).unwrap();
                    hub.publish_frame(&image, Some(outline.clone())).unwrap();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            current,
            stop,
            handle: Some(handle),
        }
    }

    fn set(&self, estimate: Option<EstimateRecord>) {
        *self.current.lock().unwrap() = estimate;
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn has_digit(s: &str) -> bool {
    s.chars().any(|c| c.is_ascii_digit())
}

#[test]
fn display_page_in_headless_chromium() {
    require_browser();
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    let feeder = Feeder::start(hub.clone());
    let browser = Browser::start(1280, 800);
    browser.goto(&server.url());

    // Before anything arrives: no number, waiting.
    browser.wait_text("status", WAIT, "WAITING", |t| t == "WAITING");
    assert!(!has_digit(&browser.text("ef-value")));

    feeder.set(Some(estimate(0, 41.0)));
    browser.wait_text("ef-value", WAIT, "EF 41", |t| t == "41");
    assert_eq!(browser.text("status"), "LIVE");
    assert_eq!(browser.text("esv-value"), "48");
    assert_eq!(browser.text("edv-value"), "107");
    assert_eq!(browser.text("ef-spread"), "± 3.2 %");
    assert!(browser.text("intended-use").contains(INTENDED_USE));
    assert!(browser.text("demo-flag").contains("NOT FOR CLINICAL USE"));
    assert_eq!(browser.text("latency"), "47 ms");
    assert_eq!(browser.text("valid-frames"), "18 / 20 (frozen 2)");

    // The live update, over the stream.
    feeder.set(Some(estimate(0, 63.0)));
    browser.wait_text("ef-value", WAIT, "EF 63", |t| t == "63");
    assert_eq!(browser.text("transport"), "live stream");
    browser.wait_text("frame-note", WAIT, "a live frame", |t| t.is_empty());
    let frame_seq = browser.attribute("frame-canvas", "data-frame-seq");
    assert!(frame_seq.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    let points = browser
        .attribute("trend-canvas", "data-points")
        .unwrap_or_default();
    assert!(
        points.parse::<u64>().is_ok_and(|n| n >= 2),
        "trend points {points:?}"
    );

    // No flag while the two EF readings agree; low agreement (issue #13 item 3): the number
    // stays, with the flag and the difference beside it.
    assert_eq!(browser.text("agreement-text"), "");
    let mut flagged = estimate(0, 64.0);
    flagged.agreement = Some(EfAgreement {
        difference: 23.4,
        margin: 10.0,
        low: true,
    });
    feeder.set(Some(flagged));
    browser.wait_text("agreement-text", WAIT, "the low-agreement flag", |t| {
        t.contains("23.4 points") && t.contains("margin 10.0")
    });
    assert_eq!(browser.text("ef-value"), "64");

    // Findings (issue #13 item 5): binary heads as probabilities on one line, the view gate's
    // head left out; none without them, and none when withheld (checked below).
    assert_eq!(
        browser.text("findings"),
        "",
        "findings line without binary heads"
    );
    let mut findings = estimate(0, 62.0);
    for (task, p) in [
        ("pacemaker", 0.921),
        ("la_dilation", 0.08),
        ("lv_wall_normal", 0.706),
        ("view_a4c", 0.99),
    ] {
        findings.estimates.insert(
            task.to_string(),
            echonet_edge::aggregate::TaskEstimate {
                value: p,
                unit: "probability".into(),
                spread: Some(0.02),
            },
        );
    }
    feeder.set(Some(findings));
    browser.wait_text("findings-text", WAIT, "the findings line", |t| {
        t.contains("pacemaker lead 92 %")
    });
    let line = browser.text("findings-text");
    assert!(
        line.contains("severe LA dilation 8 %") && line.contains("normal LV wall thickness 71 %"),
        "{line}"
    );
    assert!(
        !line.contains("a4c") && !line.contains("99 %"),
        "view gate shown: {line}"
    );
    assert!(browser
        .text("findings")
        .starts_with("Findings (model probability)"));

    // Withheld: the number goes, the reason shows.
    let reason = "too few valid frames (9/20)";
    feeder.set(Some(withheld(0, reason)));
    browser.wait_text("status", WAIT, "WITHHELD", |t| t == "WITHHELD");
    assert!(
        !has_digit(&browser.text("ef-value")),
        "EF shown while withheld"
    );
    assert!(!has_digit(&browser.text("esv-value")) && !has_digit(&browser.text("edv-value")));
    assert_eq!(browser.text("withheld-reason"), reason);
    assert_eq!(browser.text("findings-text"), "", "findings while withheld");
    assert_eq!(
        browser.text("agreement-text"),
        "",
        "no flag without a number"
    );
    assert_eq!(
        browser.text("status-detail"),
        "no number: the estimate was withheld"
    );

    // Withheld because inference is over the budget: the page says so, and what to do.
    let reason = format!(
        "{}the window's 20 frames span 3.8 s (at most 2.5 s): frames were dropped",
        echonet_edge::aggregate::slow_inference_cause(160.0)
    );
    feeder.set(Some(withheld(0, &reason)));
    browser.wait_text("withheld-reason", WAIT, "the slow reason", |t| t == reason);
    assert_eq!(
        browser.text("status-detail"),
        "no number: inference is too slow for live use"
    );
    let shown = browser.text("withheld-reason");
    assert!(shown.contains("GPU") && shown.contains("int8") && shown.contains("smaller variant"));

    // Withheld because the frames are out of the model's training domain (issue #13 item 2):
    // the window's own reason, the page's line for it, and the distance against the threshold.
    let mut window = echonet_edge::aggregate::RollingWindow::new(Default::default());
    window.set_ood_threshold(Some(echonet_edge::model::ood::OodThresholds {
        frame: 2.5,
        window_median: 2.0,
    }));
    for seq in 0..20u64 {
        window.push(echonet_edge::aggregate::FramePrediction {
            seq,
            media_time: Duration::from_millis(100 * seq),
            captured_at: std::time::Instant::now(),
            captured_wall: std::time::SystemTime::now(),
            verdict: echonet_edge::aggregate::Verdict::Invalid(vec![
                echonet_edge::preprocess::UnfitReason::OutOfDistribution,
            ]),
            ood_distance: Some(3.0 + seq as f64 / 100.0),
        });
    }
    let tasks: Vec<_> = ["ef", "esv", "edv"]
        .iter()
        .filter_map(|n| echonet_edge::model::TaskSpec::echonet_default(n))
        .collect();
    let e = window.estimate(&tasks).unwrap();
    let template = estimate(0, 0.0);
    let record = echonet_edge::publish::record::EstimateRecord::estimate(
        &e,
        std::time::Instant::now(),
        std::time::SystemTime::now(),
        &template.model,
        &template.source,
    );
    let reason = record.withheld_reason.clone().unwrap();
    assert!(
        reason.starts_with("out of the model's training domain"),
        "{reason}"
    );
    feeder.set(Some(record));
    browser.wait_text("withheld-reason", WAIT, "the OOD reason", |t| t == reason);
    assert_eq!(
        browser.text("status-detail"),
        "no number: the image is out of the model's training domain"
    );
    assert!(
        !has_digit(&browser.text("ef-value")),
        "EF shown out of domain"
    );
    let frames = browser.text("valid-frames");
    assert!(
        frames.contains("out_of_distribution 20") && frames.contains("domain distance 3.19 / 2.50"),
        "{frames}"
    );

    // Back to live, then the publisher stops: STALE within a few seconds, number hidden.
    feeder.set(Some(estimate(0, 57.0)));
    browser.wait_text("ef-value", WAIT, "EF 57", |t| t == "57");
    assert_eq!(browser.text("withheld-reason"), "");
    feeder.set(None);
    browser.wait_text("status", WAIT, "STALE", |t| t == "STALE");
    assert!(
        !has_digit(&browser.text("ef-value")),
        "a stale EF is still shown"
    );
    assert!(browser.text("status-detail").contains("no update for"));
    assert!(
        browser.text("intended-use").contains(INTENDED_USE),
        "intended use gone when stale"
    );

    // A publisher that itself reports stale input is STALE at once.
    let mut reported = estimate(0, 50.0);
    reported.status = Status::Stale;
    feeder.set(Some(reported));
    browser.wait_text("status-detail", WAIT, "the runtime's stale report", |t| {
        t.contains("reports stale input")
    });
    assert!(!has_digit(&browser.text("ef-value")));

    // The polling fallback (forced; it is what the page does when the stream fails).
    browser.goto(&format!("{}?transport=poll", server.url()));
    feeder.set(Some(estimate(0, 44.0)));
    browser.wait_text("ef-value", WAIT, "EF 44 by polling", |t| t == "44");
    assert_eq!(browser.text("transport"), "polling");
    drop(feeder);
}

/// The page's "Where the model looks" button: a clear refusal before any usable frame, then the
/// saliency map of the newest model input beside the live frame, and hidden again on a second
/// click.
#[test]
fn saliency_button_shows_the_map_beside_the_frame() {
    use echonet_edge::explain::worker::SaliencyWorker;
    use echonet_edge::preprocess::{ModelInput, PreparedInput};

    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    let bundle = echonet_edge::model::read_bundle(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/echonet-phantom-demo.safetensors"),
    )
    .unwrap();
    let spec = bundle.manifest.input.clone();
    hub.set_saliency_worker(
        SaliencyWorker::spawn(bundle.manifest.clone(), bundle.store.snapshot()).unwrap(),
    );
    let browser = Browser::start(1280, 800);
    browser.goto(&server.url());
    browser.click("saliency-button");
    browser.wait_text("saliency-note", WAIT, "the refusal", |t| {
        t.contains("no frame yet")
    });
    browser.click("saliency-button"); // hide
    let plane = spec.width * spec.height;
    let data: Vec<f32> = (0..plane)
        .map(|i| ((i % spec.width) as f32 / spec.width as f32) * 2.0 - 1.0)
        .collect();
    hub.set_model_input(ModelInput {
        seq: 7,
        input: Arc::new(PreparedInput {
            data,
            channels: 1,
            height: spec.height,
            width: spec.width,
        }),
        sector: None,
    });
    browser.click("saliency-button");
    let note = browser.wait_text("saliency-note", Duration::from_secs(60), "the map", |t| {
        t.contains("SmoothGrad")
    });
    assert!(note.contains("frame 7"), "{note}");
    let src = browser.attribute("saliency-img", "src").unwrap_or_default();
    assert!(src.starts_with("blob:"), "{src}");
    browser.click("saliency-button");
    browser.wait_text("saliency-button", WAIT, "the button reset", |t| {
        t == "Where the model looks"
    });
}

/// Results that cannot be recorded (the journal unwritable) or a dead stage: the page flags the
/// fault, over the stream and when polling, while the live numbers carry on; the flag goes when
/// the fault clears.
#[test]
fn a_fault_is_flagged_on_the_page_while_the_numbers_carry_on() {
    require_browser();
    let (hub, server) = start(HubConfig::default(), ServerConfig::default());
    let feeder = Feeder::start(hub.clone());
    feeder.set(Some(estimate(0, 41.0)));
    let browser = Browser::start(1280, 800);
    browser.goto(&server.url());
    browser.wait_text("ef-value", WAIT, "EF 41", |t| t == "41");
    assert_eq!(browser.text("fault-flag"), "");

    let reason = "journal /data/journal.sqlite: database or disk is full";
    hub.set_fault("journal", Some(reason.to_string()));
    let flag = browser.wait_text("fault-flag", WAIT, "the journal fault", |t| {
        t.contains(reason)
    });
    assert!(flag.starts_with("FAULT"), "{flag}");
    feeder.set(Some(estimate(0, 52.0)));
    browser.wait_text("ef-value", WAIT, "EF 52 with the fault open", |t| t == "52");
    assert_eq!(browser.text("status"), "LIVE");

    // A page that connects while the fault is open sees it at once; polling sees it too.
    browser.goto(&server.url());
    browser.wait_text("fault-flag", WAIT, "the fault on a new page", |t| {
        t.contains(reason)
    });
    browser.goto(&format!("{}?transport=poll", server.url()));
    browser.wait_text("fault-flag", WAIT, "the fault when polling", |t| {
        t.contains(reason)
    });
    browser.wait_text("ef-value", WAIT, "EF 52 by polling", |t| t == "52");

    hub.set_fault("journal", None);
    browser.wait_text("fault-flag", WAIT, "the fault cleared (polling)", |t| {
        t.is_empty()
    });
    browser.goto(&server.url());
    hub.set_fault("journal", Some(reason.to_string()));
    browser.wait_text("fault-flag", WAIT, "the fault again (stream)", |t| {
        t.contains(reason)
    });
    hub.set_fault("journal", None);
    browser.wait_text("fault-flag", WAIT, "the fault cleared (stream)", |t| {
        t.is_empty()
    });
    drop(feeder);
}
