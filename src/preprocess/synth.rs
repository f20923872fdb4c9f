//! Synthetic echo screens for the preprocessing tests: a scanning sector filled with speckle that
//! changes every frame (with a darker chamber), static burned-in text, a logo and depth marks,
//! and a thin green ECG trace that scrolls below the sector. Deterministic in the frame number.

use crate::frame::{Image, PixelFormat, PixelRect};

use super::sector::Fan;

/// What holds the moving speckle.
#[derive(Debug, Clone, Copy)]
pub enum Phantom {
    Fan,
    Rect(PixelRect),
}

#[derive(Debug, Clone)]
pub struct Scene {
    pub width: usize,
    pub height: usize,
    pub fan: Fan,
    pub phantom: Phantom,
    /// A colour-Doppler box (red/blue flow) inside the sector.
    pub doppler: Option<PixelRect>,
    /// Multiplies the speckle (1 = normal gain, 0 = gain at zero).
    pub gain: f64,
    /// Frames each speckle pattern lasts (1: new speckle every frame).
    pub speckle_period: u32,
    /// Capture noise on the background, +- levels (0: none).
    pub noise: u8,
}

const TEXT: PixelRect = PixelRect {
    x0: 10,
    y0: 8,
    x1: 170,
    y1: 22,
};
const ECG_Y: f64 = 467.0;
const ECG_AMPLITUDE: f64 = 8.0;

pub fn hash(x: u32, y: u32, t: u32) -> u32 {
    let mut h =
        x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ t.wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^ (h >> 15)
}

impl Scene {
    /// 640x480, a 80-degree fan opening downwards from just below the top edge.
    pub fn standard() -> Self {
        Self {
            width: 640,
            height: 480,
            fan: Fan {
                apex_x: 320.0,
                apex_y: 30.0,
                inner_radius: 25.0,
                outer_radius: 420.0,
                start_deg: 50.0,
                end_deg: 130.0,
            },
            phantom: Phantom::Fan,
            doppler: None,
            gain: 1.0,
            speckle_period: 1,
            noise: 0,
        }
    }

    pub fn inside(&self, x: usize, y: usize) -> bool {
        match self.phantom {
            Phantom::Fan => self.fan.contains(x as f64 + 0.5, y as f64 + 0.5),
            Phantom::Rect(r) => x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1,
        }
    }

    fn text_on(x: usize, y: usize) -> bool {
        (TEXT.x0..TEXT.x1).contains(&x)
            && (TEXT.y0..TEXT.y1).contains(&y)
            && ((x - TEXT.x0) % 12 < 8)
            && ((x / 2 + y / 3).is_multiple_of(3) || y == TEXT.y0 + 6)
    }

    fn logo_on(x: usize, y: usize) -> bool {
        let (dx, dy) = (x as f64 - 605.0, y as f64 - 30.0);
        dx * dx + dy * dy <= 15.0 * 15.0
    }

    fn depth_mark_on(x: usize, y: usize) -> bool {
        (610..614).contains(&x) && y >= 80 && (y - 80) % 40 < 3
    }

    fn ecg_on(x: usize, y: usize, t: u32) -> bool {
        let line = ECG_Y + ECG_AMPLITUDE * ((x as f64 + 7.0 * t as f64) / 15.0).sin();
        (y as f64 + 0.5 - line).abs() < 1.0
    }

    /// Every pixel of the static text, logo and depth marks.
    pub fn text_pixels(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.height).flat_map(move |y| {
            (0..self.width).filter_map(move |x| {
                (Self::text_on(x, y) || Self::logo_on(x, y) || Self::depth_mark_on(x, y))
                    .then_some((x, y))
            })
        })
    }

    /// Every pixel the ECG trace can reach.
    pub fn ecg_band_pixels(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let y0 = (ECG_Y - ECG_AMPLITUDE - 1.0) as usize;
        let y1 = (ECG_Y + ECG_AMPLITUDE + 2.0) as usize;
        (y0..y1.min(self.height)).flat_map(move |y| (0..self.width).map(move |x| (x, y)))
    }

    /// One RGB pixel of frame `t`.
    fn pixel(&self, x: usize, y: usize, t: u32) -> [u8; 3] {
        if self.inside(x, y) {
            let h = hash(x as u32, y as u32, t / self.speckle_period.max(1));
            if let Some(d) = self.doppler {
                if x >= d.x0 && x < d.x1 && y >= d.y0 && y < d.y1 && !h.is_multiple_of(4) {
                    // Flow towards (red) or away from (blue) the probe.
                    return if (x / 16 + t as usize).is_multiple_of(2) {
                        [200, 30, 20]
                    } else {
                        [20, 60, 210]
                    };
                }
            }
            let (dx, dy) = (x as f64 - 330.0, y as f64 - 250.0);
            let chamber = dx * dx / (70.0 * 70.0) + dy * dy / (110.0 * 110.0) < 1.0;
            let v = if chamber { 5 + h % 25 } else { 40 + h % 180 };
            let v = (v as f64 * self.gain).round().min(255.0) as u8;
            return [v; 3];
        }
        if Self::text_on(x, y) || Self::depth_mark_on(x, y) {
            return [255; 3];
        }
        if Self::logo_on(x, y) {
            return [200, 200, 40];
        }
        if Self::ecg_on(x, y, t) {
            return [40, 230, 60];
        }
        if self.noise > 0 {
            let n = hash(y as u32, x as u32, t ^ 0x5555) % (2 * self.noise as u32 + 1);
            return [n as u8; 3];
        }
        [0; 3]
    }

    pub fn image(&self, t: u32, format: PixelFormat) -> Image {
        let mut data = Vec::with_capacity(self.width * self.height * format.channels());
        for y in 0..self.height {
            for x in 0..self.width {
                let p = self.pixel(x, y, t);
                match format {
                    PixelFormat::Rgb8 => data.extend_from_slice(&p),
                    PixelFormat::Gray8 => data.push(super::luma(p[0], p[1], p[2])),
                }
            }
        }
        Image {
            width: self.width,
            height: self.height,
            format,
            data,
        }
    }

    pub fn grey(&self, t: u32) -> Vec<u8> {
        self.image(t, PixelFormat::Gray8).data
    }
}
