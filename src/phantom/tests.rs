//! The phantom's own checks: volumes, shapes, rendering, parameters, labels.

use std::time::Instant;

use crate::frame::Image;

use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Pixels of `img` below `threshold` among those where `region` is set.
fn dark_in(img: &Image, region: &[bool], threshold: u8) -> usize {
    img.data
        .iter()
        .zip(region)
        .filter(|&(&v, &r)| r && v < threshold)
        .count()
}

fn in_any(rects: &[PixelRect], x: usize, y: usize) -> bool {
    rects
        .iter()
        .any(|r| (r.x0..r.x1).contains(&x) && (r.y0..r.y1).contains(&y))
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let a = Phantom::new(PhantomParams::random(11)).unwrap();
    let b = Phantom::new(PhantomParams::random(11)).unwrap();
    let c = Phantom::new(PhantomParams::random(12)).unwrap();
    assert_eq!(PhantomParams::random(11), PhantomParams::random(11));
    assert_ne!(PhantomParams::random(11), PhantomParams::random(12));
    for k in [0, 1, 17] {
        let t = a.frame_time(k);
        assert_eq!(a.render(t).data, b.render(t).data, "frame {k}");
        assert_ne!(a.render(t).data, c.render(t).data, "frame {k}");
    }
    // Same patient, only the speckle seed changed: still different bytes.
    let d = Phantom::new(PhantomParams {
        seed: 12,
        ..PhantomParams::random(11)
    })
    .unwrap();
    assert_ne!(a.render(Duration::ZERO).data, d.render(Duration::ZERO).data);
    // Speckle changes from frame to frame.
    assert_ne!(
        a.render(a.frame_time(0)).data,
        a.render(a.frame_time(1)).data
    );
}

#[test]
fn random_patients_are_in_range_and_fit_the_sector() {
    for seed in 0..400 {
        let p = PhantomParams::random(seed);
        let ef = p.ef_percent();
        assert!((70.0..220.0).contains(&p.edv_ml), "{p:?}");
        assert!((15.0..75.0).contains(&ef), "{p:?}");
        assert!((50.0..110.0).contains(&p.heart_rate_bpm), "{p:?}");
        assert!((0.85..1.2).contains(&p.gain) && (-8.0..10.0).contains(&p.offset));
        assert!(p.tilt_deg.abs() <= 5.0 && p.shift_cm.0.abs() <= 0.3 && p.shift_cm.1.abs() <= 0.3);
        if let Err(e) = Phantom::new(p) {
            panic!("seed {seed}: {e}");
        }
    }
    // The corners of the drawn ranges fit too (largest and smallest hearts, tilted and
    // shifted every way).
    for edv in [RANDOM_EDV_ML.0, RANDOM_EDV_ML.1] {
        for ef in [RANDOM_EF_PERCENT.0, RANDOM_EF_PERCENT.1] {
            for tilt in [RANDOM_TILT_DEG.0, RANDOM_TILT_DEG.1] {
                for sx in [RANDOM_SHIFT_CM.0, RANDOM_SHIFT_CM.1] {
                    for sz in [RANDOM_SHIFT_CM.0, RANDOM_SHIFT_CM.1] {
                        let p = PhantomParams {
                            edv_ml: edv,
                            esv_ml: edv * (1.0 - ef / 100.0),
                            tilt_deg: tilt,
                            shift_cm: (sx, sz),
                            ..PhantomParams::default()
                        };
                        assert!(Phantom::new(p.clone()).is_ok(), "{p:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn volume_curve_hits_edv_at_beat_start_and_esv_at_end_systole() {
    for seed in [1, 2, 3, 99] {
        let p = PhantomParams::random(seed);
        let ph = Phantom::new(p.clone()).unwrap();
        let period = p.beat_period_s();
        let close = |v: f64, want: f64| (v - want).abs() <= 0.005 * want;
        for beat in 0..3 {
            let start = beat as f64 * period;
            assert!(close(ph.lv_volume_ml(secs(start)), p.edv_ml), "{p:?}");
            assert!(
                close(ph.lv_volume_ml(secs(start + period / 3.0)), p.esv_ml),
                "{p:?}"
            );
        }
        // Over a fine grid the curve stays within [ESV, EDV] and reaches both; it moves
        // smoothly (no step bigger than the steepest systolic slope allows).
        let n = 3000;
        let vols: Vec<f64> = (0..=n)
            .map(|i| ph.lv_volume_ml(secs(2.0 * period * i as f64 / n as f64)))
            .collect();
        let (lo, hi) = vols
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(
            close(lo, p.esv_ml) && close(hi, p.edv_ml),
            "{lo} {hi} {p:?}"
        );
        let max_step =
            (p.edv_ml - p.esv_ml) * std::f64::consts::PI / 2.0 * 3.0 * (2.0 / n as f64) * 1.01;
        assert!(vols.windows(2).all(|w| (w[1] - w[0]).abs() <= max_step));
        let ef = 100.0 * (hi - lo) / hi;
        assert!(
            (ef - p.ef_percent()).abs() < 0.5,
            "{ef} vs {}",
            p.ef_percent()
        );
        assert!((p.ef_percent() - 100.0 * (p.edv_ml - p.esv_ml) / p.edv_ml).abs() < 1e-12);
        // Systole is the first third: volume falls there and rises after.
        assert!(ph.lv_volume_ml(secs(0.1 * period)) > ph.lv_volume_ml(secs(0.2 * period)));
        assert!(ph.lv_volume_ml(secs(0.5 * period)) < ph.lv_volume_ml(secs(0.9 * period)));
    }
}

#[test]
fn lv_mask_follows_the_area_length_relation() {
    for seed in [4, 5, 6] {
        let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
        let cm2 = ph.cm_per_pixel().powi(2);
        let period = ph.params().beat_period_s();
        for frac in [0.0, 0.1, 0.2, 1.0 / 3.0, 0.5, 0.8] {
            let t = secs(frac * period);
            let shape = ph.lv_shape(t);
            let pixels = ph.lv_mask(t).iter().filter(|&&m| m).count();
            let area = pixels as f64 * cm2;
            assert!(
                (area - shape.area_cm2).abs() < 0.015 * shape.area_cm2,
                "{area} vs {shape:?}"
            );
            // V = 8 A² / (3 π L) from the pixel area recovers the volume.
            let v = 8.0 * area * area / (3.0 * std::f64::consts::PI * shape.length_cm);
            assert!(
                (v - shape.volume_ml).abs() < 0.03 * shape.volume_ml,
                "{v} vs {shape:?}"
            );
            assert!((shape.volume_ml - ph.lv_volume_ml(t)).abs() < 1e-9);
        }
    }
}

#[test]
fn rendered_lv_cavity_grows_with_volume() {
    for seed in [7, 8, 9] {
        let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
        let period = ph.params().beat_period_s();
        // The known LV region: the cavity at ED, above the mitral plane at ES (the base
        // descends toward the apex in systole, bringing the left atrium with it).
        let es = ph.heart_state(secs(period / 3.0));
        let base_es = es.wall_cm + es.length_cm;
        let w = ph.params().width;
        let region: Vec<bool> = ph
            .lv_mask(Duration::ZERO)
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let (u, _) = ph.px_to_heart((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
                m && u < base_es
            })
            .collect();
        let mut samples: Vec<(f64, usize, usize)> = (0..8)
            .map(|k| {
                let t = secs(period * (0.1 + 0.12 * k as f64));
                let dark = dark_in(&ph.render(t), &region, 60);
                let truth = ph
                    .lv_mask(t)
                    .iter()
                    .zip(&region)
                    .filter(|&(&m, &r)| m && r)
                    .count();
                (ph.lv_volume_ml(t), dark, truth)
            })
            .collect();
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Diastasis is a plateau: equal volumes there may differ by a speckle pixel or two.
        samples.dedup_by(|b, a| b.0 - a.0 < 1.0);
        assert!(samples.len() >= 6, "{samples:?}");
        for w in samples.windows(2) {
            assert!(
                w[1].1 > w[0].1,
                "dark pixels not growing with volume: {samples:?}"
            );
        }
        for &(v, dark, truth) in &samples {
            let err = (dark as f64 - truth as f64).abs() / truth as f64;
            assert!(
                err < 0.05,
                "V {v}: {dark} dark pixels vs {truth} in the cavity"
            );
        }
    }
}

#[test]
fn outside_the_fan_only_annotations_and_the_fan_matches_its_truth() {
    for (w, h, seed) in [
        (640, 480, 21),
        (320, 240, 22),
        (1024, 768, 23),
        (480, 640, 24),
    ] {
        let ph = Phantom::new(PhantomParams {
            width: w,
            height: h,
            ..PhantomParams::random(seed)
        })
        .unwrap();
        let sec = ph.sector();
        let opening = (sec.end_angle_rad() - sec.start_angle_rad()).to_degrees();
        assert!((75.0..=90.0).contains(&opening));
        let notes = ph.annotation_regions();
        for r in &notes {
            for y in r.y0..r.y1 {
                for x in r.x0..r.x1 {
                    assert!(
                        !sec.contains(x, y),
                        "{w}x{h}: annotation {r:?} overlaps the fan"
                    );
                }
            }
        }
        let mask = sec.mask(w, h);
        for k in [0, 5, 13] {
            let img = ph.render(ph.frame_time(k));
            for y in 0..h {
                for x in 0..w {
                    let v = img.data[y * w + x];
                    if mask[y * w + x] {
                        assert!(v > 0, "{w}x{h}: fan pixel ({x},{y}) is black");
                    } else if v != 0 {
                        assert!(in_any(&notes, x, y), "{w}x{h}: stray pixel ({x},{y}) = {v}");
                    }
                }
            }
            // Text, ECG and bar are all there.
            for r in &notes {
                let lit = (r.y0..r.y1)
                    .flat_map(|y| (r.x0..r.x1).map(move |x| (x, y)))
                    .filter(|&(x, y)| img.data[y * w + x] > 0)
                    .count();
                assert!(lit > 20, "{w}x{h}: annotation {r:?} is empty");
            }
        }
        let g = ph.geometry();
        assert_eq!(g.regions, vec![sec.bounding_box(w, h)]);
        let bb = g.regions[0];
        assert!(
            mask[bb.y0 * w + (bb.x0 + bb.x1) / 2] || (bb.x0..bb.x1).any(|x| mask[bb.y0 * w + x])
        );
        assert!((0..h).all(|y| !mask[y * w + bb.x0.saturating_sub(1)] || bb.x0 == 0));
        let (cx, cy) = g.cm_per_pixel.unwrap();
        assert_eq!(cx, cy);
        assert!((cx * sec.radius_px - ph.params().depth_cm).abs() < 1e-9);
    }
}

#[test]
fn ecg_scrolls_and_peaks_at_end_diastole() {
    let ph = Phantom::new(PhantomParams::default()).unwrap();
    let r = ph.layout.ecg;
    let strip = |img: &Image| -> Vec<u8> {
        (r.y0..r.y1)
            .flat_map(|y| img.data[y * img.width + r.x0..y * img.width + r.x1].to_vec())
            .collect()
    };
    let a = strip(&ph.render(ph.frame_time(0)));
    let b = strip(&ph.render(ph.frame_time(3)));
    assert_ne!(a, b);
    let period = ph.params().beat_period_s();
    let peak = (0..1000)
        .map(|i| period * i as f64 / 1000.0)
        .max_by(|&x, &y| ecg_mv(x, period).total_cmp(&ecg_mv(y, period)))
        .unwrap();
    assert!(peak.min(period - peak) < 0.005, "R wave at {peak} s");
    // At ED the newest column (right end) is at the top of the R wave.
    let img = ph.render(secs(period * 2.0));
    let col = r.x1 - 1;
    let top = (r.y0..r.y1)
        .find(|&y| img.data[y * img.width + col] > 0)
        .unwrap();
    assert!(top < r.y0 + r.height() / 4, "top {top} in {r:?}");
}

#[test]
fn apical_four_chamber_layout() {
    for seed in [30, 31, 32, 33] {
        let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
        let c = ph.chamber_centres(Duration::ZERO);
        assert!(c.lv.0 > c.rv.0, "LV right of RV: {c:?}");
        assert!(c.la.0 > c.ra.0, "LA right of RA: {c:?}");
        assert!(
            c.la.1 > c.lv.1 && c.ra.1 > c.rv.1,
            "atria below ventricles: {c:?}"
        );
        assert!(
            c.lv.1 < ph.params().height as f64 / 2.0,
            "LV in the upper half: {c:?}"
        );
    }
}

#[test]
fn chambers_never_merge() {
    // Cavities of different chambers are separated by wall at every phase, for small
    // hyperdynamic and large failing hearts alike.
    for (edv, ef, la_scale) in [
        (70.0, 75.0, 1.0),
        (220.0, 15.0, 1.0),
        (140.0, 73.0, 1.0),
        (120.0, 60.0, 1.0),
        (70.0, 75.0, 1.75),
        (220.0, 15.0, 1.75),
    ] {
        let ph = Phantom::new(PhantomParams {
            edv_ml: edv,
            esv_ml: edv * (1.0 - ef / 100.0),
            la_scale,
            ..PhantomParams::default()
        })
        .unwrap();
        let period = ph.params().beat_period_s();
        for k in 0..12 {
            let st = ph.heart_state(secs(period * k as f64 / 12.0));
            let gap = (st.la_cavity.cv - st.la_cavity.b) - (st.ra_cavity.cv + st.ra_cavity.b);
            assert!(
                gap >= 2.0 * ATRIAL_WALL_CM - 1e-9,
                "interatrial septum {gap} cm"
            );
            let sep = (st.lv_cavity.cv - st.lv_cavity.b) - (st.rv_cavity.cv + st.rv_cavity.b);
            assert!(sep >= st.wall_cm, "interventricular septum {sep} cm");
            let lv_base = st.lv_cavity.cu + st.lv_cavity.a_base;
            let la_top = st.la_cavity.cu - st.la_cavity.a_apex;
            assert!(
                la_top - lv_base >= VALVE_CM,
                "mitral plane {} cm",
                la_top - lv_base
            );
        }
    }
}

#[test]
fn standard_view_has_the_lv_right_of_centre() {
    let ph = Phantom::new(PhantomParams::default()).unwrap();
    let c = ph.chamber_centres(Duration::ZERO);
    assert!(c.lv.0 > ph.params().width as f64 / 2.0 && c.rv.0 < ph.params().width as f64 / 2.0);
}

#[test]
fn wall_thickens_in_systole_and_mitral_valve_opens_in_diastole() {
    let ph = Phantom::new(PhantomParams::default()).unwrap();
    let period = ph.params().beat_period_s();
    let ed = ph.lv_shape(Duration::ZERO);
    let es = ph.lv_shape(secs(period / 3.0));
    assert!(es.wall_cm > ed.wall_cm * 1.2 && es.length_cm < ed.length_cm);
    assert!(ph.heart_state(secs(period * 0.2)).mitral_orifice.is_none());
    assert!(ph.heart_state(secs(period * 0.45)).mitral_orifice.is_some());
}

#[test]
fn bad_parameters_are_rejected() {
    let ok = PhantomParams::default();
    for p in [
        PhantomParams {
            esv_ml: 130.0,
            ..ok.clone()
        },
        PhantomParams {
            fps: 0.0,
            ..ok.clone()
        },
        PhantomParams {
            fps: f64::NAN,
            ..ok.clone()
        },
        PhantomParams {
            width: 100,
            ..ok.clone()
        },
        PhantomParams {
            heart_rate_bpm: 0.0,
            ..ok.clone()
        },
    ] {
        assert!(matches!(
            Phantom::new(p),
            Err(PhantomError::InvalidParam { .. })
        ));
    }
    let big = PhantomParams {
        edv_ml: 220.0,
        depth_cm: 8.0,
        ..ok
    };
    assert!(matches!(
        Phantom::new(big),
        Err(PhantomError::DoesNotFit { .. })
    ));
}

#[test]
fn clip_seeds_are_distinct_and_bounded() {
    assert_eq!(clip_seed(5, 0), Some(5000));
    assert_eq!(clip_seed(5, 999), Some(5999));
    assert_eq!(clip_seed(6, 0), Some(6000));
    assert_eq!(clip_seed(5, 1000), None);
    assert_eq!(clip_seed(u64::MAX, 0), None);
}

#[test]
fn labels_use_only_drawable_characters() {
    let ph = Phantom::new(PhantomParams {
        fps: 29.97,
        depth_cm: 15.5,
        ..PhantomParams::random(3)
    })
    .unwrap();
    let (l, r) = ph.labels();
    for line in l.iter().chain(&r) {
        assert!(line.chars().all(|c| font::glyph(c).is_some()), "{line}");
    }
    assert!(r.contains(&"29.9 FPS".to_string()) || r.contains(&"30.0 FPS".to_string()));
}

// --- findings and views (issue #13 item 5) -----------------------------------------------------

/// Mean grey level of `img` over the pixels where `region` is set.
fn mean_in(img: &Image, region: &[bool]) -> f64 {
    let (sum, n) = img
        .data
        .iter()
        .zip(region)
        .filter(|&(_, &r)| r)
        .fold((0.0, 0usize), |(s, n), (&v, _)| (s + f64::from(v), n + 1));
    sum / n.max(1) as f64
}

#[test]
fn random_findings_come_in_their_stated_shares_and_leave_the_patient_alone() {
    let n = 4000;
    let (mut pm, mut la, mut thick, mut other) = (0, 0, 0, 0);
    for seed in 0..n {
        let p = PhantomParams::random(seed);
        pm += usize::from(p.pacemaker);
        la += usize::from(p.la_dilation());
        thick += usize::from(!p.lv_wall_normal());
        other += usize::from(!p.view.is_a4c());
        // The draws sit well away from the label thresholds: a label is never borderline.
        assert!((p.la_scale - LA_SEVERE_SCALE).abs() >= 0.1, "{p:?}");
        assert!((p.wall_scale - WALL_NORMAL_MAX_SCALE).abs() >= 0.1, "{p:?}");
        if seed < 200 {
            Phantom::new(p).unwrap();
        }
    }
    let share = |k: usize| k as f64 / n as f64;
    for (what, got, want) in [
        ("pacemaker", share(pm), RANDOM_PACEMAKER_SHARE),
        ("la dilation", share(la), RANDOM_LA_DILATED_SHARE),
        ("thick walls", share(thick), RANDOM_WALL_THICK_SHARE),
        ("not A4C", share(other), RANDOM_NOT_A4C_SHARE),
    ] {
        // 4000 draws: the binomial SD is under 0.008.
        assert!((got - want).abs() < 0.03, "{what}: {got} vs {want}");
    }
    // Findings draw from their own stream: a patient's volumes and probe are those it had
    // before findings existed (a patient is the same patient with or without its lead).
    let p = PhantomParams::random(1000);
    assert!((p.edv_ml - 135.3872).abs() < 1e-3 && (p.ef_percent() - 51.7732).abs() < 1e-3);
}

/// A patient with a lead, and the same patient without one.
fn with_and_without_lead(seed: u64) -> (Phantom, Phantom) {
    let p = PhantomParams {
        view: PhantomView::A4c,
        ..PhantomParams::random(seed)
    };
    let lead = Phantom::new(PhantomParams {
        pacemaker: true,
        ..p.clone()
    })
    .unwrap();
    let none = Phantom::new(PhantomParams {
        pacemaker: false,
        ..p
    })
    .unwrap();
    (lead, none)
}

#[test]
fn a_pacemaker_lead_is_bright_runs_from_the_atrium_into_the_ventricle_and_casts_a_shadow() {
    for seed in [3, 8, 21] {
        let (lead, none) = with_and_without_lead(seed);
        let (w, h) = (lead.params().width, lead.params().height);
        assert!(none.lead_mask(Duration::ZERO).iter().all(|&m| !m));
        for k in [0, 5, 11] {
            let t = lead.frame_time(k);
            let mask = lead.lead_mask(t);
            let area = mask.iter().filter(|&&m| m).count();
            // About 0.2 cm wide over several cm of its course.
            let px_per_cm = 1.0 / lead.cm_per_pixel();
            assert!(
                area as f64 > 4.0 * 0.15 * px_per_cm * px_per_cm,
                "seed {seed}: lead area {area} px"
            );
            let (with, without) = (lead.render(t), none.render(t));
            let fan = lead.sector().mask(w, h);
            let on_lead: Vec<bool> = mask.iter().zip(&fan).map(|(&a, &b)| a && b).collect();
            assert!(
                // (Brightest near the probe; its edges are blurred like every tissue edge.)
                mean_in(&with, &on_lead) > 150.0 && mean_in(&without, &on_lead) < 100.0,
                "seed {seed} frame {k}: lead {:.0} vs {:.0} without it",
                mean_in(&with, &on_lead),
                mean_in(&without, &on_lead)
            );
            // It passes through the RA and the RV cavities.
            let c = lead.chamber_centres(t);
            let st = lead.heart_state(t);
            let line = lead.lead_px(&st).unwrap();
            let near = |(x, y): (f64, f64), e: &Ellipse| {
                let (u, v) = lead.px_to_heart(x, y);
                e.implicit(u, v).0 < 1.0
            };
            assert!(line.iter().any(|&p| near(p, &st.ra_cavity)), "{c:?}");
            assert!(near(line[3], &st.rv_cavity), "tip in the RV: {c:?}");
            // The shadow: pixels deeper than the lead on its beams are darker than without it;
            // elsewhere (the LV and its wall, screen right) nothing changes.
            let sec = lead.sector();
            let mut behind = vec![false; w * h];
            for (i, b) in behind.iter_mut().enumerate() {
                let (x, y) = ((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
                if !fan[i] || mask[i] {
                    continue;
                }
                // Beyond the middle of the lead's course in the RV, on the same beam, 1-3 cm
                // deeper.
                let (mx, my) = (0.5 * (line[2].0 + line[3].0), 0.5 * (line[2].1 + line[3].1));
                let ang = |px: f64, py: f64| (px - sec.apex_x).atan2(py - sec.apex_y);
                let r = |px: f64, py: f64| (px - sec.apex_x).hypot(py - sec.apex_y);
                *b = (ang(x, y) - ang(mx, my)).abs() < 0.004
                    && (1.0..3.0).contains(&((r(x, y) - r(mx, my)) * lead.cm_per_pixel()));
            }
            let probe = behind.iter().filter(|&&b| b).count();
            assert!(probe > 30, "seed {seed}: {probe} pixels behind the lead");
            let (lit, shaded) = (mean_in(&without, &behind), mean_in(&with, &behind));
            // Deep tissue is dim already; the shadow takes most of what there is.
            assert!(
                lit - shaded > 15.0 && shaded < 0.5 * lit,
                "seed {seed} frame {k}: behind the lead {shaded:.1} grey levels, {lit:.1} without"
            );
            let lv = lead.lv_mask(t);
            assert_eq!(
                dark_in(&with, &lv, 60),
                dark_in(&without, &lv, 60),
                "the lead touched the LV"
            );
        }
    }
}

#[test]
fn dilated_atria_and_thick_walls_change_only_their_own_structures() {
    let base = PhantomParams {
        view: PhantomView::A4c,
        pacemaker: false,
        la_scale: 1.0,
        wall_scale: 1.0,
        ..PhantomParams::random(17)
    };
    let normal = Phantom::new(base.clone()).unwrap();
    let dilated = Phantom::new(PhantomParams {
        la_scale: 1.6,
        ..base.clone()
    })
    .unwrap();
    let thick = Phantom::new(PhantomParams {
        wall_scale: 2.0,
        ..base.clone()
    })
    .unwrap();
    assert!(dilated.params().la_dilation() && !normal.params().la_dilation());
    assert!(!thick.params().lv_wall_normal() && normal.params().lv_wall_normal());
    for k in [0, 4, 9] {
        let t = normal.frame_time(k);
        let (a, b, c) = (
            normal.heart_state(t),
            dilated.heart_state(t),
            thick.heart_state(t),
        );
        // LA: 1.6 times as long and as wide, its septal side where it was.
        let area = |e: &Ellipse| e.a_apex * e.b;
        assert!((area(&b.la_cavity) / area(&a.la_cavity) - 2.56).abs() < 1e-9);
        assert!(((b.la_cavity.cv - b.la_cavity.b) - (a.la_cavity.cv - a.la_cavity.b)).abs() < 1e-9);
        // Twice the myocardium: a wall about 1.5 times as thick, the same cavity.
        assert!(
            c.wall_cm > 1.4 * a.wall_cm && c.wall_cm < 1.8 * a.wall_cm,
            "{} vs {}",
            c.wall_cm,
            a.wall_cm
        );
        // (The thick-walled cavity sits deeper by the extra apical wall, same shape and size.)
        let area = |ph: &Phantom| ph.lv_mask(t).iter().filter(|&&m| m).count() as f64;
        assert!((area(&thick) / area(&normal) - 1.0).abs() < 0.01);
        assert_eq!(normal.lv_mask(t), dilated.lv_mask(t));
        assert_eq!(normal.lv_volume_ml(t), thick.lv_volume_ml(t));
        // In the image: more dark (blood) pixels for the dilated atrium, more bright
        // (myocardium) ones for the thick walls.
        let fan = normal.sector().mask(base.width, base.height);
        let (n_img, d_img, t_img) = (normal.render(t), dilated.render(t), thick.render(t));
        // Same seed, same speckle: every pixel that differs belongs to the atrium or its wall,
        // and the enlarged atrium shows (the fan cuts off its far part in large hearts).
        let changed = |img: &Image| {
            img.data
                .iter()
                .zip(&n_img.data)
                .filter(|&(&a, &b)| a.abs_diff(b) > 10)
                .count()
        };
        let la_px = changed(&d_img);
        let px_per_cm2 = 1.0 / (normal.cm_per_pixel() * normal.cm_per_pixel());
        assert!(
            la_px as f64 > 3.0 * px_per_cm2,
            "the dilated atrium changed {la_px} pixels"
        );
        let la_top = normal.heart_to_px(b.la_cavity.cu - b.la_cavity.a_apex, b.la_cavity.cv);
        assert!(normal.sector().contains_point(la_top.0, la_top.1));
        let bright = |img: &Image| {
            img.data
                .iter()
                .zip(&fan)
                .filter(|&(&v, &f)| f && v > 130)
                .count()
        };
        let (tb, nb) = (bright(&t_img), bright(&n_img));
        assert!(
            tb > nb + 2000,
            "bright pixels {tb} with thick walls, {nb} without"
        );
    }
}

#[test]
fn the_two_chamber_view_has_no_right_heart_and_the_same_lv() {
    let a4c = PhantomParams {
        view: PhantomView::A4c,
        pacemaker: false,
        ..PhantomParams::random(23)
    };
    let four = Phantom::new(a4c.clone()).unwrap();
    let two = Phantom::new(PhantomParams {
        view: PhantomView::A2c,
        ..a4c
    })
    .unwrap();
    let t = four.frame_time(0);
    // No lead drawn where there is no right heart, even for a patient who has one.
    let paced = Phantom::new(PhantomParams {
        pacemaker: true,
        ..two.params().clone()
    })
    .unwrap();
    assert!(paced.lead_mask(t).iter().all(|&m| !m));
    assert_eq!(paced.render(t).data, two.render(t).data);
    // The RV cavity of the A4C is dark there; in the A2C the same place is tissue.
    let (x, y) = four.chamber_centres(t).rv;
    let w = four.params().width;
    let patch: Vec<bool> = (0..w * four.params().height)
        .map(|i| ((i % w) as f64 - x).abs() < 6.0 && ((i / w) as f64 - y).abs() < 6.0)
        .collect();
    let (m4, m2) = (
        mean_in(&four.render(t), &patch),
        mean_in(&two.render(t), &patch),
    );
    assert!(m4 < 30.0 && m2 > 45.0, "RV patch: A4C {m4:.0}, A2C {m2:.0}");
    // The LV holds the same volume, centred in the fan.
    let area = |ph: &Phantom| ph.lv_mask(t).iter().filter(|&&m| m).count() as f64;
    assert!((area(&two) / area(&four) - 1.0).abs() < 0.01);
    // The LV moves 0.7 cm toward screen left, into the fan's middle for the standard patient.
    let (c2, c4) = (two.chamber_centres(t).lv, four.chamber_centres(t).lv);
    let moved_cm = (c2.0 - c4.0) * two.cm_per_pixel();
    assert!((moved_cm - (APEX_LATERAL_A2C_CM - APEX_LATERAL_CM)).abs() < 1e-9);
    let standard = Phantom::new(PhantomParams {
        view: PhantomView::A2c,
        ..PhantomParams::default()
    })
    .unwrap();
    let c = standard.chamber_centres(t).lv;
    assert!(
        (c.0 - w as f64 / 2.0).abs() * standard.cm_per_pixel() < 0.1,
        "{c:?}"
    );
    assert_eq!(two.labels().0[1], "SYNTHETIC A2C");
}

/// `cargo test --release --lib render_time -- --ignored --nocapture`
#[test]
#[ignore = "timing; run by hand in release"]
fn render_time() {
    let ph = Phantom::new(PhantomParams::random(1)).unwrap();
    let mut ms: Vec<f64> = (0..300)
        .map(|k| {
            let started = Instant::now();
            std::hint::black_box(ph.render(ph.frame_time(k)));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "640x480 render: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms[150], ms[270], ms[299]
    );
    assert!(ms[150] < 10.0);
}

/// `paint` skips the implicit function where its row spans say a pixel is surely inside or
/// outside; every level must still come out bit for bit as evaluating every pixel of the box
/// gives. Random patients (sizes, depths, tilts) at several instants, over a textured level
/// buffer (so the blend's rounding is exercised), and ellipses grown, shrunk and made lopsided
/// beyond what the heart model draws.
#[test]
fn paint_by_row_spans_matches_every_pixel_bit_for_bit() {
    let mut painted_pixels = 0usize;
    for seed in 0..24u64 {
        let ph = Phantom::new(PhantomParams::random(seed)).unwrap();
        let (w, h) = (ph.params().width, ph.params().height);
        let base: Vec<f32> = (0..w * h)
            .map(|i| LEVEL_TISSUE + ((i * 7919) % 97) as f32 * 0.37)
            .collect();
        for t in [0.0, 0.13, 0.41, 0.77] {
            let st = ph.heart_state(secs(t + seed as f64 * 0.01));
            let mut shapes = vec![
                st.lv_outer,
                st.lv_cavity,
                st.rv_outer,
                st.rv_cavity,
                st.la_outer,
                st.la_cavity,
                st.ra_outer,
                st.ra_cavity,
                st.mitral_valve,
                st.tricuspid_valve,
            ];
            shapes.extend(st.mitral_orifice);
            shapes.extend(st.tricuspid_orifice);
            let lopsided = Ellipse {
                a_apex: st.lv_outer.a_apex * 0.3,
                a_base: st.lv_outer.a_base * 1.4,
                ..st.lv_outer
            };
            let thin = Ellipse {
                b: 0.05,
                ..st.mitral_valve
            };
            shapes.extend([lopsided, thin]);
            for (k, e) in shapes.iter().enumerate() {
                for half_edge in [0.5 * ph.edge_cm(), 0.02, 0.4] {
                    let value = [LEVEL_BLOOD, LEVEL_MYOCARDIUM, LEVEL_VALVE][k % 3];
                    let (mut fast, mut every) = (base.clone(), base.clone());
                    ph.paint(&mut fast, e, value, half_edge);
                    ph.paint_every_pixel(&mut every, e, value, half_edge);
                    let differ = fast
                        .iter()
                        .zip(&every)
                        .position(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(
                        differ, None,
                        "seed {seed} t {t} shape {k} half_edge {half_edge}: pixel {differ:?}"
                    );
                    painted_pixels += fast.iter().zip(&base).filter(|(a, b)| a != b).count();
                }
            }
        }
    }
    // The comparison means something only if the shapes were actually painted.
    assert!(painted_pixels > 1_000_000, "{painted_pixels}");
}

/// Lead mimics (training's hard negatives for the `pacemaker` head): bright lines inside the RV
/// (the moderator band) and the RA (the Chiari filament), no lead and no shadow; the rest of the
/// image, and the patient's labels, as without them. Never drawn for random patients.
#[test]
fn lead_mimics_are_bright_lines_in_the_right_heart_without_a_shadow() {
    for seed in [3u64, 8, 21, 77000] {
        let plain = PhantomParams {
            view: PhantomView::A4c,
            pacemaker: false,
            ..PhantomParams::random(seed)
        };
        assert!(!plain.lead_mimics, "random patients have no mimics");
        let with = Phantom::new(PhantomParams {
            lead_mimics: true,
            ..plain.clone()
        })
        .unwrap();
        let none = Phantom::new(plain).unwrap();
        let (w, h) = (with.params().width, with.params().height);
        for k in [0, 7] {
            let t = with.frame_time(k);
            assert!(with.lead_mask(t).iter().all(|&m| !m), "no lead");
            let st = with.heart_state(t);
            let (band, chiari) = with.mimics_px(&st).unwrap();
            let m = st.mimics.unwrap();
            // Each line's middle lies in its chamber's cavity.
            let mid = |a: (f64, f64), b: (f64, f64)| (0.5 * (a.0 + b.0), 0.5 * (a.1 + b.1));
            let inside = |(x, y): (f64, f64), e: &Ellipse| {
                let (u, v) = with.px_to_heart(x, y);
                e.implicit(u, v).0 < 1.0
            };
            assert!(
                inside(mid(band[0], band[1]), &st.rv_cavity),
                "band in the RV"
            );
            assert!(
                inside(mid(chiari[1], chiari[2]), &st.ra_cavity),
                "filament in the RA"
            );
            let (a, b) = (with.render(t), none.render(t));
            let (ga, gb) = (a.to_gray(), b.to_gray());
            let fan = with.sector().mask(w, h);
            let near = |line: &[(f64, f64)], i: usize, cm: f64| {
                let (x, y) = ((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
                polyline_distance(line, x, y) * with.cm_per_pixel() <= cm
            };
            let on_band: Vec<bool> = (0..w * h)
                .map(|i| fan[i] && near(&band, i, 0.25 * m.band_cm) && inside_rv(&with, &st, i))
                .collect();
            assert!(
                mean_in(&a, &on_band) > mean_in(&b, &on_band) + 60.0,
                "seed {seed} frame {k}: band {:.0} vs cavity {:.0}",
                mean_in(&a, &on_band),
                mean_in(&b, &on_band)
            );
            // Away from both lines nothing changes: no shadow, no other structure.
            let far = (0..w * h)
                .filter(|&i| !near(&band, i, 1.0 + m.band_cm) && !near(&chiari, i, 1.0))
                .all(|i| ga[i] == gb[i]);
            assert!(
                far,
                "seed {seed} frame {k}: pixels changed away from the mimics"
            );
        }
    }
}

fn inside_rv(p: &Phantom, st: &HeartState, i: usize) -> bool {
    let w = p.params().width;
    let (u, v) = p.px_to_heart((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
    st.rv_cavity.implicit(u, v).0 < 1.0
}

#[test]
fn a_share_of_a_phantom_training_set_gets_lead_mimics() {
    use crate::dataset::{phantom, ClipSource};
    let count = |share: f64| {
        let mut set = phantom::in_memory(5, 400, 2, 10.0).unwrap();
        let labels: Vec<_> = set.clips.iter().map(|c| c.labels.clone()).collect();
        phantom::add_lead_mimics(&mut set, share).unwrap();
        assert!(set.origin.ends_with(&format!(",lead_mimics={share}")));
        let after: Vec<_> = set.clips.iter().map(|c| c.labels.clone()).collect();
        assert_eq!(labels, after, "labels unchanged");
        set.clips
            .iter()
            .filter(
                |c| matches!(&c.source, ClipSource::Phantom { params, .. } if params.lead_mimics),
            )
            .count()
    };
    assert_eq!(count(0.0), 0);
    assert_eq!(count(1.0), 400);
    let half = count(0.5);
    // 400 draws: the binomial SD is 10.
    assert!((160..=240).contains(&half), "{half} of 400");
    let mut set = phantom::in_memory(5, 3, 2, 10.0).unwrap();
    let err = phantom::add_lead_mimics(&mut set, 1.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lead-mimic share 1.5"), "{err}");
}
