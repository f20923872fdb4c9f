//! The paper's training augmentation, on one prepared frame (`height x width` normalised f32):
//! a random rotation within ±20 degrees about the frame centre (bilinear; what rotates in from
//! outside is black, normalised like any black pixel) and a brightness shift within ±0.1 of the
//! [0, 1] pixel range, added to every pixel. Optionally (off by default, not the paper's) Gaussian
//! noise on every pixel inside the scan sector, as SmoothGrad adds it when it explains the model.

/// Uniform numbers from a seed (splitmix64): the CPU device cannot be seeded, and a training run
/// must replay exactly from its seed and checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainRng {
    state: u64,
}

impl TrainRng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x7452_4149_4e5f_5247,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller; one of the pair, so every call draws two numbers).
    pub fn gaussian(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform index in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Augmentation ranges (the paper's by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Largest rotation either way, degrees. Default 20.
    pub rotation_deg: f64,
    /// Largest brightness shift either way, in units of the [0, 1] pixel range. Default 0.1.
    pub brightness: f64,
    /// Standard deviation of Gaussian noise added to every pixel inside the sector, as a fraction
    /// of the frame's range (SmoothGrad's definition). Default 0: off. Training with the noise
    /// SmoothGrad explains with sharpens its maps (Smilkov et al. 2017, section 4.2): the model
    /// can no longer lean on faint texture spread over the whole frame.
    pub noise: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            rotation_deg: 20.0,
            brightness: 0.1,
            noise: 0.0,
        }
    }
}

/// `src` rotated by `degrees` (counter-clockwise on screen) about its centre, bilinear; samples
/// from outside the frame read `fill`.
pub fn rotate(src: &[f32], height: usize, width: usize, degrees: f64, fill: f32) -> Vec<f32> {
    let (s, c) = degrees.to_radians().sin_cos();
    let cx = (width as f64 - 1.0) / 2.0;
    let cy = (height as f64 - 1.0) / 2.0;
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= width as isize || y >= height as isize {
            fill
        } else {
            src[y as usize * width + x as usize]
        }
    };
    let mut out = vec![fill; width * height];
    for (y, row) in out.chunks_exact_mut(width).enumerate() {
        for (x, o) in row.iter_mut().enumerate() {
            // Inverse map: where in the source does this output pixel come from.
            let dx = x as f64 - cx;
            let dy = y as f64 - cy;
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            let x0 = sx.floor();
            let y0 = sy.floor();
            let fx = (sx - x0) as f32;
            let fy = (sy - y0) as f32;
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            *o = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// One augmented copy of a prepared frame. `black` is the normalised value of a black pixel and
/// `std` the normalisation's standard deviation (so a shift of `b` in pixel range is `b / std`).
pub fn augment(
    src: &[f32],
    height: usize,
    width: usize,
    cfg: &AugmentConfig,
    black: f32,
    std: f32,
    rng: &mut TrainRng,
) -> Vec<f32> {
    let angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg);
    let shift = (rng.uniform(-cfg.brightness, cfg.brightness) / f64::from(std)) as f32;
    let mut out = if cfg.rotation_deg > 0.0 {
        rotate(src, height, width, angle, black)
    } else {
        src.to_vec()
    };
    // Noise before the brightness shift, so "outside the sector" is still exactly `black`
    // (preprocessing blackens everything outside; the fan's floor keeps every pixel inside above
    // it). No draws when off: runs without noise replay exactly as before it existed.
    if cfg.noise > 0.0 {
        let (lo, hi) = out
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let sigma = cfg.noise * f64::from(hi - lo);
        for v in out.iter_mut().filter(|v| **v > black) {
            *v += (sigma * rng.gaussian()) as f32;
        }
    }
    if cfg.brightness > 0.0 {
        out.iter_mut().for_each(|v| *v += shift);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rotation_is_identity_and_quarter_turn_moves_pixels() {
        let (h, w) = (5, 5);
        let src: Vec<f32> = (0..25).map(|v| v as f32).collect();
        let same = rotate(&src, h, w, 0.0, -1.0);
        for (a, b) in same.iter().zip(&src) {
            assert!((a - b).abs() < 1e-5);
        }
        // 90 degrees: output (x, y) reads source (cx - dy, cy + dx) = (4 - y, x).
        let turned = rotate(&src, h, w, 90.0, -1.0);
        for y in 0..5 {
            for x in 0..5 {
                let expect = src[x * w + (4 - y)];
                assert!((turned[y * w + x] - expect).abs() < 1e-4, "({x},{y})");
            }
        }
    }

    #[test]
    fn rotation_fills_corners_and_brightness_shifts_everything() {
        let src = vec![1.0f32; 100];
        let out = rotate(&src, 10, 10, 45.0, -1.0);
        assert!(out[0] < 0.0, "corner rotates in from outside: {}", out[0]);
        assert!((out[55] - 1.0).abs() < 1e-6, "centre stays");
        let mut rng = TrainRng::new(3);
        let cfg = AugmentConfig {
            rotation_deg: 0.0,
            brightness: 0.1,
            noise: 0.0,
        };
        let a = augment(&src, 10, 10, &cfg, -1.0, 0.5, &mut rng);
        let d = a[0] - 1.0;
        assert!(d.abs() <= 0.2 + 1e-6 && d != 0.0);
        assert!(a.iter().all(|v| (v - 1.0 - d).abs() < 1e-6));
    }

    #[test]
    fn noise_has_the_asked_spread_inside_and_leaves_black_black() {
        // Left half black (outside the sector), right half a ramp 0.5..1.5: range 1.5 + 1.
        let black = -1.0f32;
        let src: Vec<f32> = (0..10_000)
            .map(|i| {
                if i % 100 < 50 {
                    black
                } else {
                    0.5 + (i % 100 - 50) as f32 / 50.0
                }
            })
            .collect();
        let cfg = AugmentConfig {
            rotation_deg: 0.0,
            brightness: 0.0,
            noise: 0.1,
        };
        let out = augment(&src, 100, 100, &cfg, black, 0.5, &mut TrainRng::new(5));
        let d: Vec<f64> = out
            .iter()
            .zip(&src)
            .filter(|(_, &s)| s > black)
            .map(|(o, s)| f64::from(o - s))
            .collect();
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let range = 1.48 - f64::from(black);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!(
            (sd / (0.1 * range) - 1.0).abs() < 0.05,
            "sd {sd} for range {range}"
        );
        assert!(out.iter().zip(&src).all(|(o, &s)| s > black || *o == black));
        // Off: no draws, the frame unchanged.
        let off = AugmentConfig { noise: 0.0, ..cfg };
        let mut rng = TrainRng::new(5);
        assert_eq!(augment(&src, 100, 100, &off, black, 0.5, &mut rng), src);
        // Only the rotation's and the shift's draws, as before noise existed.
        let mut expect = TrainRng::new(5);
        expect.unit();
        expect.unit();
        assert_eq!(rng, expect);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = TrainRng::new(9);
        let mut b = TrainRng::new(9);
        for _ in 0..1000 {
            let x = a.uniform(-20.0, 20.0);
            assert_eq!(x, b.uniform(-20.0, 20.0));
            assert!((-20.0..20.0).contains(&x));
            assert!(a.below(7) < 7);
            b.below(7);
        }
    }
}
