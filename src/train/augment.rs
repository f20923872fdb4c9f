//! The paper's training augmentation, on one prepared frame (`height x width` normalised f32):
//! a random rotation within ±20 degrees about the frame centre (bilinear; what rotates in from
//! outside is black, normalised like any black pixel) and a brightness shift within ±0.1 of the
//! [0, 1] pixel range, added to every pixel.

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
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            rotation_deg: 20.0,
            brightness: 0.1,
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
        };
        let a = augment(&src, 10, 10, &cfg, -1.0, 0.5, &mut rng);
        let d = a[0] - 1.0;
        assert!(d.abs() <= 0.2 + 1e-6 && d != 0.0);
        assert!(a.iter().all(|v| (v - 1.0 - d).abs() < 1e-6));
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
