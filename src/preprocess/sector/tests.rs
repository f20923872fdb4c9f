//! The sector shapes, the detector on synthetic scenes, and the fan fit.

use super::super::synth::{Phantom, Scene};
use super::*;

fn run_detector(det: &mut SectorDetector, scene: &Scene, frames: std::ops::Range<u32>) {
    for t in frames {
        det.push(&scene.grey(t), scene.width, scene.height).unwrap();
    }
}

fn fan_of(sector: &Sector) -> Fan {
    match sector.shape() {
        SectorShape::Fan(f) => *f,
        other => panic!("expected a fan, got {other:?}"),
    }
}

fn assert_fan_close(got: &Fan, want: &Fan) {
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
    assert!(
        close(got.apex_x, want.apex_x, 3.0)
            && close(got.apex_y, want.apex_y, 3.0)
            && close(got.start_deg, want.start_deg, 1.5)
            && close(got.end_deg, want.end_deg, 1.5)
            && close(got.outer_radius, want.outer_radius, 3.0)
            && close(got.inner_radius, want.inner_radius, 4.0),
        "fitted {got:?}\n  drawn {want:?}"
    );
}

#[test]
fn fan_membership_follows_angles_and_radii() {
    let f = Fan {
        apex_x: 100.0,
        apex_y: 0.0,
        inner_radius: 10.0,
        outer_radius: 50.0,
        start_deg: 45.0,
        end_deg: 135.0,
    };
    assert!(f.contains(100.0, 30.0)); // straight down
    assert!(!f.contains(100.0, 5.0)); // inside the inner arc
    assert!(!f.contains(100.0, 51.0)); // beyond the outer arc
    assert!(!f.contains(130.0, 20.0)); // right of the 45-degree edge
    assert!(!f.contains(70.0, 20.0)); // left of the 135-degree edge
    assert!(f.contains(115.0, 20.0) && f.contains(85.0, 20.0));
    assert!(!f.contains(100.0, -30.0)); // the opposite direction
}

#[test]
fn invalid_fans_are_refused() {
    let ok = Fan {
        apex_x: 10.0,
        apex_y: 0.0,
        inner_radius: 0.0,
        outer_radius: 50.0,
        start_deg: 45.0,
        end_deg: 135.0,
    };
    assert!(Sector::fan(ok, 64, 64).is_ok());
    for bad in [
        Fan {
            end_deg: 30.0,
            ..ok
        },
        Fan {
            end_deg: 250.0,
            ..ok
        },
        Fan {
            outer_radius: 0.0,
            ..ok
        },
        Fan {
            apex_x: f64::NAN,
            ..ok
        },
    ] {
        assert!(Sector::fan(bad, 64, 64).is_err(), "{bad:?}");
    }
    // A valid fan entirely outside the frame covers nothing.
    let away = Fan {
        apex_x: 1000.0,
        ..ok
    };
    assert!(matches!(
        Sector::fan(away, 64, 64),
        Err(PreprocessError::EmptySector { .. })
    ));
}

#[test]
fn rect_and_regions() {
    let s = Sector::rect(
        PixelRect {
            x0: 2,
            y0: 3,
            x1: 100,
            y1: 7,
        },
        10,
        10,
    )
    .unwrap();
    assert_eq!(
        s.bbox(),
        PixelRect {
            x0: 2,
            y0: 3,
            x1: 10,
            y1: 7
        }
    );
    assert_eq!(s.area(), 32);
    assert!(s.contains_pixel(2, 3) && !s.contains_pixel(1, 3) && !s.contains_pixel(2, 7));
    let geometry = SourceGeometry {
        regions: vec![
            PixelRect {
                x0: 0,
                y0: 0,
                x1: 4,
                y1: 4,
            },
            PixelRect {
                x0: 5,
                y0: 0,
                x1: 100,
                y1: 100,
            },
            PixelRect {
                x0: 50,
                y0: 50,
                x1: 90,
                y1: 90,
            },
        ],
        cm_per_pixel: None,
    };
    // The second region is the largest once clipped to the 10x10 frame; the third is outside.
    let s = Sector::from_regions(&geometry, 10, 10).unwrap();
    assert_eq!(s.area(), 50);
    assert!(Sector::from_regions(&SourceGeometry::default(), 10, 10).is_none());
}

#[test]
fn convex_polygon_covers_its_interior() {
    let s = Sector::convex(
        vec![(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)],
        20,
        20,
    )
    .unwrap();
    assert_eq!(s.area(), 100);
    let tri = Sector::convex(vec![(0.0, 0.0), (20.0, 0.0), (0.0, 20.0)], 20, 20).unwrap();
    assert!(tri.contains_pixel(0, 0) && tri.contains_pixel(9, 9) && !tri.contains_pixel(10, 10));
}

#[test]
fn override_parses_and_rejects_unknown_keys() {
    let fan: SectorOverride = toml::from_str(
        "kind = \"fan\"\napex_x = 320\napex_y = 40\nouter_radius = 400\nstart_deg = 45\nend_deg = 135\n",
    )
    .unwrap();
    assert!(matches!(fan, SectorOverride::Fan(f) if f.inner_radius == 0.0));
    let rect: SectorOverride =
        toml::from_str("kind = \"rect\"\nx0 = 1\ny0 = 2\nx1 = 30\ny1 = 40\n").unwrap();
    let s = Sector::from_override(&rect, 64, 64).unwrap();
    assert_eq!(s.area(), 29 * 38);
    let typo = toml::from_str::<SectorOverride>(
        "kind = \"fan\"\napex_x = 320\napex_y = 40\nouter_radius = 400\nstart_deg = 45\nend_deg = 135\nradius = 3\n",
    );
    assert!(typo.is_err());
    let typo = toml::from_str::<SectorOverride>(
        "kind = \"rect\"\nx0 = 1\ny0 = 2\nx1 = 30\ny1 = 40\nw = 1\n",
    );
    assert!(typo.is_err());
}

#[test]
fn detects_fan_and_excludes_text_and_ecg() {
    let scene = Scene::standard();
    let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
    run_detector(&mut det, &scene, 0..25);
    let sector = det.current().cloned().expect("a sector after one window");
    assert_fan_close(&fan_of(&sector), &scene.fan);
    for (x, y) in scene.text_pixels().chain(scene.ecg_band_pixels()) {
        assert!(
            !sector.contains_pixel(x, y),
            "({x}, {y}) outside the fan is in the sector"
        );
    }
    // Almost all of the drawn fan is kept.
    let drawn = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
    assert!(sector.iou(&drawn) > 0.98, "iou {}", sector.iou(&drawn));
}

#[test]
fn detects_fan_with_slow_speckle_and_noisy_background() {
    // Speckle that changes every other frame (as at high frame rates) and capture noise on
    // the background: the fan is still found, the noise is not taken for sector.
    let mut scene = Scene::standard();
    scene.speckle_period = 2;
    scene.noise = 3;
    let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
    run_detector(&mut det, &scene, 0..25);
    let sector = det.current().cloned().expect("a sector");
    assert_fan_close(&fan_of(&sector), &scene.fan);
    assert!(!sector.contains_pixel(5, 470) && !sector.contains_pixel(630, 5));
}

#[test]
fn detects_steered_fan_with_apex_above_the_frame() {
    let mut scene = Scene::standard();
    scene.fan = Fan {
        apex_x: 300.0,
        apex_y: -30.0,
        inner_radius: 0.0,
        outer_radius: 430.0,
        start_deg: 60.0,
        end_deg: 128.0,
    };
    let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
    run_detector(&mut det, &scene, 0..25);
    let sector = det.current().cloned().expect("a sector");
    let got = fan_of(&sector);
    // The fan is clipped by the top of the frame, so the near arc is where it enters: the
    // central ray crosses y = 0 at about 30 pixels from the apex.
    assert!((got.inner_radius - 30.0).abs() < 3.0, "{got:?}");
    assert_fan_close(
        &Fan {
            inner_radius: scene.fan.inner_radius,
            ..got
        },
        &scene.fan,
    );
    let drawn = Sector::fan(scene.fan, scene.width, scene.height).unwrap();
    assert!(sector.iou(&drawn) > 0.98, "iou {}", sector.iou(&drawn));
}

#[test]
fn rectangular_image_falls_back_to_convex_region() {
    let mut scene = Scene::standard();
    scene.phantom = Phantom::Rect(PixelRect {
        x0: 150,
        y0: 60,
        x1: 490,
        y1: 420,
    });
    let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
    run_detector(&mut det, &scene, 0..25);
    let sector = det.current().cloned().expect("a sector");
    assert!(
        matches!(sector.shape(), SectorShape::Convex { .. }),
        "{:?}",
        sector.shape()
    );
    let bbox = sector.bbox();
    assert!(
        bbox.x0.abs_diff(150) <= 1
            && bbox.x1.abs_diff(490) <= 1
            && bbox.y0.abs_diff(60) <= 1
            && bbox.y1.abs_diff(420) <= 1,
        "{bbox:?}"
    );
}

#[test]
fn blank_sequence_has_no_sector() {
    let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
    let blank = vec![0u8; 640 * 480];
    for _ in 0..100 {
        assert!(det.push(&blank, 640, 480).unwrap().is_none());
    }
}

#[test]
fn frozen_sequence_does_not_make_a_sector_from_text() {
    let scene = Scene::standard();
    let frozen = scene.grey(7);
    let mut det = SectorDetector::new(DetectorConfig::default()).unwrap();
    for _ in 0..100 {
        assert!(det
            .push(&frozen, scene.width, scene.height)
            .unwrap()
            .is_none());
    }
}

#[test]
fn sector_is_stable_and_changes_only_after_confirmations() {
    let cfg = DetectorConfig::default();
    let window = cfg.window_frames as u32;
    let a = Scene::standard();
    let mut b = Scene::standard();
    b.fan.apex_x += 30.0;
    let mut det = SectorDetector::new(cfg.clone()).unwrap();
    run_detector(&mut det, &a, 0..window + 1);
    let first = det.current().cloned().unwrap();
    // Many windows of the same scene keep the very same sector.
    let mut t = window + 1;
    for _ in 0..3 {
        run_detector(&mut det, &a, t..t + window);
        t += window;
        assert!(Arc::ptr_eq(det.current().unwrap(), &first));
    }
    // One window of a different fan is not enough, nor are two.
    for _ in 0..cfg.confirmations - 1 {
        run_detector(&mut det, &b, t..t + window);
        t += window;
        assert!(Arc::ptr_eq(det.current().unwrap(), &first));
    }
    // Back to the first scene: the pending change is forgotten.
    run_detector(&mut det, &a, t..t + window);
    t += window;
    for _ in 0..cfg.confirmations - 1 {
        run_detector(&mut det, &b, t..t + window);
        t += window;
        assert!(Arc::ptr_eq(det.current().unwrap(), &first));
    }
    run_detector(&mut det, &b, t..t + window);
    t += window;
    assert_fan_close(&fan_of(det.current().unwrap()), &b.fan);
    // A blank input drops the sector after the same number of windows.
    let blank = vec![0u8; a.width * a.height];
    for w in 0..cfg.confirmations {
        assert!(det.current().is_some(), "dropped after {w} windows");
        for _ in 0..window {
            det.push(&blank, a.width, a.height).unwrap();
        }
    }
    assert!(det.current().is_none());
    let _ = t;
}

#[test]
fn bad_detector_config_is_refused() {
    for cfg in [
        DetectorConfig {
            window_frames: 1,
            ..Default::default()
        },
        DetectorConfig {
            window_frames: 300,
            ..Default::default()
        },
        DetectorConfig {
            active_fraction: 1.5,
            ..Default::default()
        },
        DetectorConfig {
            confirmations: 0,
            ..Default::default()
        },
    ] {
        assert!(SectorDetector::new(cfg).is_err());
    }
    assert!(toml::from_str::<DetectorConfig>("window = 3").is_err());
}

#[test]
fn morphology_matches_a_direct_window_scan() {
    let (w, h) = (23, 17);
    let m: Vec<bool> = (0..w * h)
        .map(|i| !super::super::synth::hash(i as u32, 3, 9).is_multiple_of(3))
        .collect();
    for r in 0..4 {
        for (value, outside) in [(true, false), (true, true), (false, false), (false, true)] {
            let got = morph(&m, w, h, r, value, outside);
            for y in 0..h {
                for x in 0..w {
                    let mut all = true;
                    for dy in -(r as isize)..=r as isize {
                        for dx in -(r as isize)..=r as isize {
                            let (xx, yy) = (x as isize + dx, y as isize + dy);
                            let v = if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                                outside
                            } else {
                                m[yy as usize * w + xx as usize]
                            };
                            all &= v == value;
                        }
                    }
                    let want = if value { all } else { !all };
                    assert_eq!(
                        got[y * w + x],
                        want,
                        "r {r} value {value} outside {outside} ({x},{y})"
                    );
                }
            }
        }
    }
}

#[test]
fn morphology_removes_thin_lines_and_keeps_blocks() {
    let (w, h) = (40, 30);
    let mut m = vec![false; w * h];
    for y in 5..25 {
        for x in 5..20 {
            m[y * w + x] = true;
        }
    }
    for x in 0..w {
        m[27 * w + x] = true; // a 1-pixel line
    }
    let opened = dilate(&erode(&m, w, h, 2), w, h, 2);
    assert!(opened[27 * w..28 * w].iter().all(|v| !v));
    assert_eq!(opened.iter().filter(|v| **v).count(), 15 * 20);
    let (runs, area) = largest_component(&opened, w, h).unwrap();
    assert_eq!(area, 300);
    assert_eq!(runs.len(), 20);
}
