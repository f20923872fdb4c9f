//! Resampling the cropped sector to the network's input size. Shrinking averages the source area
//! each output pixel covers (no aliasing of speckle into the smaller image, which bilinear
//! sampling would do beyond 2x); enlarging is bilinear. Both are separable: weights per output
//! column and row are computed once per call, then one horizontal and one vertical pass.
//!
//! The aspect ratio is kept: the crop is scaled to fit inside the output and centred, and the
//! rest is black (letterboxing). Stretching would change the heart's shape, and the geometry of
//! the chambers is what ejection fraction is read from; black is what masking already puts
//! outside the sector, so the padding looks like more of the same.

/// Where the scaled crop lands in the output: `width x height` at `(x, y)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// The largest `src` aspect-preserving size that fits `dst`, centred.
pub fn letterbox(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Placement {
    if src_w == 0 || src_h == 0 {
        return Placement {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
        };
    }
    let scale = f64::min(dst_w as f64 / src_w as f64, dst_h as f64 / src_h as f64);
    let width = ((src_w as f64 * scale).round() as usize).clamp(1, dst_w.max(1));
    let height = ((src_h as f64 * scale).round() as usize).clamp(1, dst_h.max(1));
    Placement {
        x: (dst_w.saturating_sub(width)) / 2,
        y: (dst_h.saturating_sub(height)) / 2,
        width,
        height,
    }
}

/// Weights of one axis, every output with the same number of taps (`taps`, zero-padded) so the
/// inner loops have a fixed shape: output `i` is
/// `sum(weights[i * taps + k] * src[first[i] + k])`. Sources are read up to `src + taps - 1`,
/// so callers pad their source lines with `taps - 1` zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    first: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

impl AxisWeights {
    /// `src` samples to `dst` samples: area-averaging when shrinking, bilinear otherwise.
    pub fn new(src: usize, dst: usize) -> Self {
        let mut per_output: Vec<(usize, Vec<f32>)> = Vec::with_capacity(dst);
        if src > 0 {
            let scale = src as f64 / dst as f64;
            for i in 0..dst {
                if dst < src {
                    // Output i covers source [lo, hi); each source sample weighs by its overlap.
                    let lo = i as f64 * scale;
                    let hi = ((i + 1) as f64 * scale).min(src as f64);
                    let j0 = lo.floor() as usize;
                    let j1 = (hi.ceil() as usize).min(src);
                    let w = (j0..j1)
                        .map(|j| {
                            let overlap = hi.min((j + 1) as f64) - lo.max(j as f64);
                            (overlap.max(0.0) / scale) as f32
                        })
                        .collect();
                    per_output.push((j0, w));
                } else {
                    // Pixel centres align: output centre i + 0.5 maps to source (i + 0.5) * scale.
                    let c = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
                    let j0 = c.floor() as usize;
                    let f = c - j0 as f64;
                    let w = if j0 + 1 < src && f > 0.0 {
                        vec![(1.0 - f) as f32, f as f32]
                    } else {
                        vec![1.0]
                    };
                    per_output.push((j0, w));
                }
            }
        }
        let taps = per_output.iter().map(|(_, w)| w.len()).max().unwrap_or(1);
        let mut first = Vec::with_capacity(dst);
        let mut weights = vec![0f32; per_output.len() * taps];
        for ((j0, w), slot) in per_output.iter().zip(weights.chunks_exact_mut(taps)) {
            first.push(*j0);
            slot[..w.len()].copy_from_slice(w);
        }
        Self {
            first,
            taps,
            weights,
        }
    }

    fn len(&self) -> usize {
        self.first.len()
    }

    /// `(first source index, weights)` of output `i` (zero-padded to `taps`).
    fn taps(&self, i: usize) -> (usize, &[f32]) {
        let w = self
            .weights
            .get(i * self.taps..(i + 1) * self.taps)
            .unwrap_or(&[]);
        (self.first.get(i).copied().unwrap_or(0), w)
    }
}

/// A separable resampler from one plane size to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Resampler {
    src_w: usize,
    src_h: usize,
    x: AxisWeights,
    y: AxisWeights,
}

impl Resampler {
    pub fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Self {
        Self {
            src_w,
            src_h,
            x: AxisWeights::new(src_w, dst_w),
            y: AxisWeights::new(src_h, dst_h),
        }
    }

    pub fn dst_size(&self) -> (usize, usize) {
        (self.x.len(), self.y.len())
    }

    /// Resamples `src` (`src_w * src_h`, row-major) and writes `map(value)` (value in 0..=255)
    /// into the `dst_w x dst_h` window of `dst` at `(x0, y0)`, `dst` having rows of `stride`.
    /// `line` is scratch space, reused between calls. Does nothing if the sizes do not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        src: &[u8],
        line: &mut Vec<f32>,
        dst: &mut [f32],
        stride: usize,
        x0: usize,
        y0: usize,
        map: impl Fn(f32) -> f32,
    ) {
        let (dw, dh) = self.dst_size();
        let fits = src.len() == self.src_w * self.src_h
            && x0 + dw <= stride
            && (y0 + dh) * stride <= dst.len();
        if !fits || dw == 0 || dh == 0 {
            return;
        }
        // Vertical first, whole source rows at a time (contiguous, vectorised), so the
        // horizontal pass, which gathers, runs on the dh output rows only.
        line.clear();
        line.resize(self.src_w + self.x.taps, 0.0);
        for i in 0..dh {
            let (j, wy) = self.y.taps(i);
            let acc = &mut line[..self.src_w];
            acc.fill(0.0);
            for (k, &wk) in wy.iter().enumerate() {
                if wk == 0.0 {
                    continue;
                }
                if let Some(row) = src.get((j + k) * self.src_w..(j + k + 1) * self.src_w) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += wk * v as f32;
                    }
                }
            }
            let start = (y0 + i) * stride + x0;
            let Some(out) = dst.get_mut(start..start + dw) else {
                continue;
            };
            // Fixed tap counts unroll; they cover every ratio down to 1/3.
            match self.x.taps {
                1 => self.horizontal::<1>(line, out, &map),
                2 => self.horizontal::<2>(line, out, &map),
                3 => self.horizontal::<3>(line, out, &map),
                4 => self.horizontal::<4>(line, out, &map),
                _ => self.horizontal_any(line, out, &map),
            }
        }
    }

    fn horizontal<const T: usize>(&self, line: &[f32], out: &mut [f32], map: &impl Fn(f32) -> f32) {
        for (o, (&jx, wx)) in out
            .iter_mut()
            .zip(self.x.first.iter().zip(self.x.weights.chunks_exact(T)))
        {
            let (Some(s), Ok(w)) = (line.get(jx..jx + T), <&[f32; T]>::try_from(wx)) else {
                continue;
            };
            let mut v = 0.0;
            for k in 0..T {
                v += s[k] * w[k];
            }
            *o = map(v);
        }
    }

    fn horizontal_any(&self, line: &[f32], out: &mut [f32], map: &impl Fn(f32) -> f32) {
        let taps = self.x.taps;
        for (o, (&jx, wx)) in out
            .iter_mut()
            .zip(self.x.first.iter().zip(self.x.weights.chunks_exact(taps)))
        {
            let v = line
                .get(jx..jx + taps)
                .map_or(0.0, |s| s.iter().zip(wx).map(|(&p, &k)| p * k).sum());
            *o = map(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resample(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
        let r = Resampler::new(sw, sh, dw, dh);
        let mut out = vec![-1.0; dw * dh];
        r.run(src, &mut Vec::new(), &mut out, dw, 0, 0, |v| v);
        out
    }

    #[test]
    fn weights_sum_to_one() {
        for (s, d) in [
            (640, 299),
            (300, 299),
            (299, 299),
            (100, 299),
            (7, 3),
            (3, 7),
        ] {
            let a = AxisWeights::new(s, d);
            for i in 0..d {
                let sum: f32 = a.taps(i).1.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{s}->{d} output {i}: {sum}");
            }
        }
    }

    #[test]
    fn halving_averages_pairs() {
        // Columns alternate 0 and 200, rows too: each 2x2 block averages to 100 or stays.
        let src: Vec<u8> = (0..16).map(|i| if i % 2 == 0 { 0 } else { 200 }).collect();
        assert_eq!(resample(&src, 4, 4, 2, 2), vec![100.0; 4]);
        let rows: Vec<u8> = (0..16).map(|i| if (i / 4) < 2 { 40 } else { 80 }).collect();
        assert_eq!(resample(&rows, 4, 4, 2, 2), vec![40.0, 40.0, 80.0, 80.0]);
    }

    #[test]
    fn fractional_shrink_keeps_the_mean_and_weights_overlap() {
        // 3 -> 2: output 0 covers [0, 1.5): (a + b/2) / 1.5.
        let out = resample(&[30, 60, 90], 3, 1, 2, 1);
        assert!(
            (out[0] - 40.0).abs() < 1e-4 && (out[1] - 80.0).abs() < 1e-4,
            "{out:?}"
        );
    }

    #[test]
    fn large_shrink_uses_every_tap() {
        // 50 -> 4 needs up to 14 taps per output; a ramp keeps its mean per segment.
        let src: Vec<u8> = (0..50).map(|i| i as u8 * 4).collect();
        let out = resample(&src, 50, 1, 4, 1);
        for (i, v) in out.iter().enumerate() {
            let (lo, hi) = (i as f32 * 12.5, (i + 1) as f32 * 12.5);
            // Mean of 4 * floor(x) over [lo, hi).
            let want = (lo.floor() as usize..hi.ceil() as usize)
                .map(|j| {
                    let overlap = hi.min(j as f32 + 1.0) - lo.max(j as f32);
                    4.0 * j as f32 * overlap
                })
                .sum::<f32>()
                / 12.5;
            assert!((v - want).abs() < 1e-3, "{i}: {v} vs {want}");
        }
    }

    #[test]
    fn enlarging_is_bilinear_and_identity_is_exact() {
        let out = resample(&[0, 100], 2, 1, 4, 1);
        assert_eq!(out, vec![0.0, 25.0, 75.0, 100.0]);
        let src: Vec<u8> = (0..12).map(|i| i * 20).collect();
        let same: Vec<f32> = src.iter().map(|&v| v as f32).collect();
        assert_eq!(resample(&src, 4, 3, 4, 3), same);
    }

    #[test]
    fn writes_into_a_window_with_a_map() {
        let r = Resampler::new(2, 2, 2, 2);
        let mut out = vec![0.0; 16];
        r.run(&[1, 2, 3, 4], &mut Vec::new(), &mut out, 4, 1, 2, |v| {
            v * 10.0
        });
        assert_eq!(&out[9..11], &[10.0, 20.0]);
        assert_eq!(&out[13..15], &[30.0, 40.0]);
        assert_eq!(out.iter().filter(|&&v| v != 0.0).count(), 4);
    }

    #[test]
    fn letterbox_keeps_aspect_and_centres() {
        assert_eq!(
            letterbox(600, 200, 299, 299),
            Placement {
                x: 0,
                y: 99,
                width: 299,
                height: 100
            }
        );
        assert_eq!(
            letterbox(100, 100, 299, 299),
            Placement {
                x: 0,
                y: 0,
                width: 299,
                height: 299
            }
        );
        assert_eq!(letterbox(10, 400, 299, 299).width, 7);
    }
}
