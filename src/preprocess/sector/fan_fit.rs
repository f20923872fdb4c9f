//! Fitting a fan (apex, radii, angles) to a detected region: straight side edges fitted
//! robustly, their crossing as the apex, the radius from rays.

use super::*;

/// Rows from the top that may sit on a fan's straight edges before the far arc takes over.
pub(super) const EDGE_SEED_SHARE: f64 = 0.2;
/// A row's extreme pixel within this distance of the fitted edge is on it, pixels.
pub(super) const EDGE_TOLERANCE_PX: f64 = 2.0;
/// Consecutive off-line rows that end an edge.
pub(super) const EDGE_MAX_MISSES: usize = 4;
/// Fewest rows an edge is fitted to.
pub(super) const MIN_EDGE_ROWS: usize = 12;
/// Rays cast from the apex to measure the radii, over the middle of the fan.
pub(super) const RADIUS_RAYS: usize = 33;

/// Least-squares line `x = a + b * y` through `(y, x)` points.
pub(super) fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let my = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mx = points.iter().map(|p| p.1).sum::<f64>() / n;
    let syy: f64 = points.iter().map(|p| (p.0 - my) * (p.0 - my)).sum();
    let syx: f64 = points.iter().map(|p| (p.0 - my) * (p.1 - mx)).sum();
    if syy < 1e-9 {
        return None;
    }
    let b = syx / syy;
    Some((mx - b * my, b))
}

/// One straight edge of a fan from the region's extreme pixel per row (top to bottom): seeded on
/// the top rows (below the apex, where the edge is always straight), then extended down while
/// rows stay on the line, and refitted to those rows.
pub(super) fn fit_edge(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len();
    // The first rows are the rounded tip the opening leaves near the apex.
    let skip = (n / 40).max(3);
    let seed_end = (skip + (n as f64 * EDGE_SEED_SHARE) as usize).min(n);
    if seed_end < skip + MIN_EDGE_ROWS {
        return None;
    }
    let mut line = fit_line(&points[skip..seed_end])?;
    for _ in 0..3 {
        let mut inliers = Vec::with_capacity(n);
        let mut misses = 0;
        for &(y, x) in &points[skip..] {
            if (x - (line.0 + line.1 * y)).abs() <= EDGE_TOLERANCE_PX {
                inliers.push((y, x));
                misses = 0;
            } else {
                misses += 1;
                if misses > EDGE_MAX_MISSES {
                    break;
                }
            }
        }
        if inliers.len() < MIN_EDGE_ROWS {
            return None;
        }
        line = fit_line(&inliers)?;
    }
    Some(line)
}

pub(super) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Fits a downward-opening fan (apex above, the display convention for echocardiography) to a
/// region given by its row extents and mask. `None` when the edges are not two straight lines
/// meeting above the region.
pub(super) fn fit_fan(
    rows: &[(usize, usize, usize)],
    component: &[bool],
    width: usize,
    height: usize,
) -> Option<Fan> {
    // Rows clipped by the frame's sides show the border, not the fan's edge.
    let left: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1 > 0)
        .map(|r| (r.0 as f64 + 0.5, r.1 as f64))
        .collect();
    let right: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.2 < width)
        .map(|r| (r.0 as f64 + 0.5, r.2 as f64))
        .collect();
    let (al, bl) = fit_edge(&left)?;
    let (ar, br) = fit_edge(&right)?;
    // Edges must diverge downwards: the left one heads left of the right one.
    if bl >= br {
        return None;
    }
    let apex_y = (ar - al) / (bl - br);
    let apex_x = al + bl * apex_y;
    let top = rows.first()?.0 as f64;
    let bottom = rows.last()?.0 as f64 + 1.0;
    // The apex sits above the region (or at its tip), not absurdly far away; NaN fails too.
    let apex_plausible = apex_y <= top + 0.1 * (bottom - top) && apex_y >= -2.0 * height as f64;
    if !apex_plausible {
        return None;
    }
    // Downward directions (b, 1): the right edge has the smaller angle.
    let start_deg = 1f64.atan2(br).to_degrees();
    let end_deg = 1f64.atan2(bl).to_degrees();
    let span = end_deg - start_deg;
    if !(10.0..=175.0).contains(&span) {
        return None;
    }
    // Radii along rays over the middle 70 % of the fan, where the near and far arcs are the
    // region's boundary; the median ignores rays that cross dark chambers or clipped corners.
    let t_max = [
        (0.0, 0.0),
        (width as f64, 0.0),
        (0.0, height as f64),
        (width as f64, height as f64),
    ]
    .iter()
    .map(|&(x, y)| ((x - apex_x).powi(2) + (y - apex_y).powi(2)).sqrt())
    .fold(0.0, f64::max);
    const STEP: f64 = 0.25;
    let (mut inner, mut outer) = (Vec::new(), Vec::new());
    for k in 0..RADIUS_RAYS {
        let a = start_deg + span * (0.15 + 0.7 * k as f64 / (RADIUS_RAYS - 1) as f64);
        let (s, c) = a.to_radians().sin_cos();
        let (mut first, mut last) = (None, None);
        let mut t = 0.0;
        while t <= t_max {
            let (x, y) = (apex_x + t * c, apex_y + t * s);
            let inside = x >= 0.0 && y >= 0.0 && (x as usize) < width && (y as usize) < height;
            if inside && component[y as usize * width + x as usize] {
                first.get_or_insert(t);
                last = Some(t);
            }
            t += STEP;
        }
        if let (Some(f), Some(l)) = (first, last) {
            inner.push(f64::max(f - STEP / 2.0, 0.0));
            outer.push(l + STEP / 2.0);
        }
    }
    let inner_radius = median(&mut inner)?;
    let outer_radius = median(&mut outer)?;
    // An inner arc within a couple of pixels of the apex is the apex itself.
    let inner_radius = if inner_radius < 3.0 {
        0.0
    } else {
        inner_radius
    };
    let fan = Fan {
        apex_x,
        apex_y,
        inner_radius,
        outer_radius,
        start_deg,
        end_deg,
    };
    fan.check().ok().map(|_| fan)
}
