//! Binary morphology on masks for the detector: separable erosion and dilation, the largest
//! connected region as runs, per-row extents and their convex hull.

use super::*;

/// Separable binary morphology by a `(2r + 1)` square. With `value = true` an erosion (a cell
/// is set when its whole window is set: AND), with `value = false` a dilation (set when any cell
/// of the window is: OR). Cells beyond the border count as `outside`. Each step combines whole
/// shifted slices, which vectorises, instead of walking a window per cell.
pub(super) fn morph(
    mask: &[bool],
    width: usize,
    height: usize,
    r: usize,
    value: bool,
    outside: bool,
) -> Vec<bool> {
    if width == 0 || mask.len() != width * height {
        return mask.to_vec();
    }
    let and = value;
    let mut rows = mask.to_vec();
    for (src, dst) in mask.chunks_exact(width).zip(rows.chunks_exact_mut(width)) {
        for d in 1..=r.min(width) {
            // The cell d to the right, then d to the left; the border's outside beyond.
            fold(&mut dst[..width - d], &src[d..], and);
            fold_const(&mut dst[width - d..], outside, and);
            fold(&mut dst[d..], &src[..width - d], and);
            fold_const(&mut dst[..d], outside, and);
        }
        if r >= width {
            fold_const(dst, outside, and);
        }
    }
    let mut out = rows.clone();
    let n = out.len();
    for d in 1..=r.min(height) {
        let shift = d * width;
        fold(&mut out[..n - shift], &rows[shift..], and);
        fold_const(&mut out[n - shift..], outside, and);
        fold(&mut out[shift..], &rows[..n - shift], and);
        fold_const(&mut out[..shift], outside, and);
    }
    if r >= height {
        fold_const(&mut out, outside, and);
    }
    out
}

/// `dst[i] = dst[i] AND src[i]` (or OR), element-wise.
pub(super) fn fold(dst: &mut [bool], src: &[bool], and: bool) {
    if and {
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o &= v);
    } else {
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o |= v);
    }
}

/// `dst[i] = dst[i] AND v` (or OR) for a constant `v`.
pub(super) fn fold_const(dst: &mut [bool], v: bool, and: bool) {
    if and && !v {
        dst.fill(false);
    } else if !and && v {
        dst.fill(true);
    }
}

/// Erosion, the outside counting as unset.
pub(super) fn erode(mask: &[bool], width: usize, height: usize, r: usize) -> Vec<bool> {
    morph(mask, width, height, r, true, false)
}

/// Dilation, the outside counting as unset.
pub(super) fn dilate(mask: &[bool], width: usize, height: usize, r: usize) -> Vec<bool> {
    morph(mask, width, height, r, false, false)
}

/// The largest 4-connected region of set cells, as runs sorted by row, and its area. Regions are
/// merged run by run (union-find on runs that overlap between neighbouring rows), one pass.
pub(super) fn largest_component(
    mask: &[bool],
    width: usize,
    height: usize,
) -> Option<(Vec<Run>, usize)> {
    let runs = mask_runs(mask, width);
    let mut row_start = vec![0usize; height + 1];
    for run in &runs {
        row_start[run.y + 1] += 1;
    }
    for y in 0..height {
        row_start[y + 1] += row_start[y];
    }
    let mut parent: Vec<usize> = (0..runs.len()).collect();
    pub(super) fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for y in 1..height {
        let (mut a, a_end) = (row_start[y - 1], row_start[y]);
        let (mut b, b_end) = (row_start[y], row_start[y + 1]);
        while a < a_end && b < b_end {
            if runs[a].x0 < runs[b].x1 && runs[b].x0 < runs[a].x1 {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                if ra != rb {
                    parent[ra.max(rb)] = ra.min(rb);
                }
            }
            // Advance whichever run ends first; it cannot overlap anything further right.
            if runs[a].x1 < runs[b].x1 {
                a += 1;
            } else {
                b += 1;
            }
        }
    }
    let mut area = vec![0usize; runs.len()];
    for (i, run) in runs.iter().enumerate() {
        let root = find(&mut parent, i);
        area[root] += run.x1 - run.x0;
    }
    let (best, &best_area) = area.iter().enumerate().max_by_key(|(_, &a)| a)?;
    if best_area == 0 {
        return None;
    }
    let kept = (0..runs.len())
        .filter(|&i| find(&mut parent, i) == best)
        .map(|i| runs[i])
        .collect();
    Some((kept, best_area))
}

/// Per row of a region, top to bottom: `(y, leftmost x, one past the rightmost x)`.
pub(super) fn row_extents(runs: &[Run]) -> Vec<(usize, usize, usize)> {
    let mut rows: Vec<(usize, usize, usize)> = Vec::new();
    for run in runs {
        match rows.last_mut() {
            Some(last) if last.0 == run.y => {
                last.1 = last.1.min(run.x0);
                last.2 = last.2.max(run.x1);
            }
            _ => rows.push((run.y, run.x0, run.x1)),
        }
    }
    rows
}

/// Convex hull (monotone chain) of the corners of each row's extreme pixels, so the hull covers
/// every pixel of the region.
pub(super) fn convex_hull(rows: &[(usize, usize, usize)]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = Vec::with_capacity(rows.len() * 4);
    for &(y, x0, x1) in rows {
        let (y, x0, x1) = (y as f64, x0 as f64, x1 as f64);
        pts.extend([(x0, y), (x0, y + 1.0), (x1, y), (x1, y + 1.0)]);
    }
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
    for pass in 0..2 {
        let base = hull.len();
        let ordered: Box<dyn Iterator<Item = &(f64, f64)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in ordered {
            while hull.len() >= base + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        // The last point of each chain starts the other one.
        hull.pop();
    }
    hull
}
