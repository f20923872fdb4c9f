//! What of a live frame the display may serve. Text burned into an ultrasound image (patient
//! name, date of birth, institution) sits outside the scanning sector, so by default `/api/frame`
//! serves only the pixels inside the sector's outline, black elsewhere, and no frame at all while
//! the sector is unknown.

use serde::{Deserialize, Serialize};

use crate::frame::Image;

/// How `/api/frame` treats the live frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FramePolicy {
    /// Only the scanning sector; nothing while no sector outline is known. The default.
    #[default]
    Sector,
    /// No live frame at all.
    Off,
    /// The whole frame, burned-in text included (a bench or demo set-up without patient data).
    Unmasked,
}

/// A copy of `image` with every pixel outside `outline` (a polygon in pixel coordinates, x right,
/// y down; even-odd rule at pixel centres) set to black.
pub fn mask_outside(image: &Image, outline: &[(f32, f32)]) -> Image {
    let channels = image.format.channels();
    let mut out = image.clone();
    let mut crossings: Vec<f32> = Vec::with_capacity(outline.len());
    for y in 0..image.height {
        let cy = y as f32 + 0.5;
        crossings.clear();
        for i in 0..outline.len() {
            let (x0, y0) = outline[i];
            let (x1, y1) = outline[(i + 1) % outline.len()];
            // Half-open in y, so a vertex on the scanline counts once.
            if (y0 <= cy) != (y1 <= cy) {
                crossings.push(x0 + (cy - y0) / (y1 - y0) * (x1 - x0));
            }
        }
        crossings.sort_by(f32::total_cmp);
        let row = &mut out.data[y * image.width * channels..(y + 1) * image.width * channels];
        let mut inside_from: Option<usize> = None;
        let mut x_cursor = 0usize;
        let black = |from: usize, to: usize, row: &mut [u8]| {
            if from < to {
                row[from * channels..to * channels].fill(0);
            }
        };
        for (k, x) in crossings.iter().enumerate() {
            // First pixel whose centre is right of the crossing.
            let px = ((x - 0.5).ceil().max(0.0) as usize).min(image.width);
            if k % 2 == 0 {
                black(x_cursor, px, row);
                inside_from = Some(px);
            } else {
                x_cursor = px.max(inside_from.unwrap_or(0));
                inside_from = None;
            }
        }
        black(x_cursor.min(image.width), image.width, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_outside_the_polygon_go_black() {
        let image = Image::gray(10, 10, vec![200; 100]).unwrap();
        // A square from (2,2) to (8,8): pixel centres 2.5..7.5 inside.
        let masked = mask_outside(&image, &[(2.0, 2.0), (8.0, 2.0), (8.0, 8.0), (2.0, 8.0)]);
        for y in 0..10 {
            for x in 0..10 {
                let inside = (2..8).contains(&x) && (2..8).contains(&y);
                assert_eq!(
                    masked.data[y * 10 + x],
                    if inside { 200 } else { 0 },
                    "({x},{y})"
                );
            }
        }
        // A triangle on an RGB frame: the corner outside it is black in every channel.
        let rgb = Image::new(4, 4, crate::frame::PixelFormat::Rgb8, vec![9; 48]).unwrap();
        let masked = mask_outside(&rgb, &[(0.0, 0.0), (4.0, 0.0), (0.0, 4.0)]);
        assert_eq!(&masked.data[..3], &[9, 9, 9]);
        assert_eq!(&masked.data[45..48], &[0, 0, 0]);
        // No outline: nothing survives.
        assert!(mask_outside(&image, &[]).data.iter().all(|&v| v == 0));
    }
}
