//! Masking and cropping: the sector's bounding box cut out of a frame with every pixel outside
//! the sector set to black, so burned-in text, the ECG trace and logos never reach the model.
//! Only the sector's runs are read; the rest of the crop stays at its initial zero.

use super::sector::Sector;
use super::{luma, PreprocessError};
use crate::frame::{Image, PixelFormat};

/// Planar 8-bit crop: `planes` planes of `width * height` bytes each.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    pub width: usize,
    pub height: usize,
    pub planes: usize,
    pub data: Vec<u8>,
}

impl Crop {
    pub fn plane(&self, p: usize) -> &[u8] {
        let n = self.width * self.height;
        self.data.get(p * n..(p + 1) * n).unwrap_or(&[])
    }
}

/// Checks that `image` is well formed and matches the size `sector` was made for.
pub fn check_frame(image: &Image, sector: &Sector) -> Result<(), PreprocessError> {
    if image.data.len() != image.width * image.height * image.format.channels() {
        return Err(PreprocessError::BadFrame(format!(
            "{} bytes for a {}x{} {:?} image",
            image.data.len(),
            image.width,
            image.height,
            image.format
        )));
    }
    if sector.frame_size() != (image.width, image.height) {
        return Err(PreprocessError::SizeMismatch {
            image: (image.width, image.height),
            sector: sector.frame_size(),
        });
    }
    Ok(())
}

/// The sector's bounding box out of one 8-bit plane of the sector's frame size (a frame's luma,
/// already computed), black outside the sector.
pub fn masked_crop_plane(plane: &[u8], sector: &Sector) -> Result<Crop, PreprocessError> {
    let (w, h) = sector.frame_size();
    if plane.len() != w * h {
        return Err(PreprocessError::BadFrame(format!(
            "{} bytes for a {w}x{h} plane",
            plane.len()
        )));
    }
    let bbox = sector.bbox();
    let cw = bbox.width();
    let mut data = vec![0u8; cw * bbox.height()];
    for run in sector.runs() {
        let dst = (run.y - bbox.y0) * cw + (run.x0 - bbox.x0);
        let len = run.x1 - run.x0;
        if let (Some(s), Some(d)) = (
            plane.get(run.y * w + run.x0..run.y * w + run.x1),
            data.get_mut(dst..dst + len),
        ) {
            d.copy_from_slice(s);
        }
    }
    Ok(Crop {
        width: cw,
        height: bbox.height(),
        planes: 1,
        data,
    })
}

/// The sector's bounding box out of `image`, black outside the sector. `grey` asks for one luma
/// plane (BT.601 for colour frames); otherwise three planes R, G, B (a grey frame is repeated).
pub fn masked_crop(image: &Image, sector: &Sector, grey: bool) -> Result<Crop, PreprocessError> {
    check_frame(image, sector)?;
    let bbox = sector.bbox();
    let (cw, ch) = (bbox.width(), bbox.height());
    let planes = if grey { 1 } else { 3 };
    let n = cw * ch;
    let mut data = vec![0u8; planes * n];
    let w = image.width;
    for run in sector.runs() {
        let src = run.y * w + run.x0..run.y * w + run.x1;
        let dst_start = (run.y - bbox.y0) * cw + (run.x0 - bbox.x0);
        let len = run.x1 - run.x0;
        match (image.format, grey) {
            (PixelFormat::Gray8, _) => {
                let Some(s) = image.data.get(src) else {
                    continue;
                };
                for p in 0..planes {
                    if let Some(d) = data.get_mut(p * n + dst_start..p * n + dst_start + len) {
                        d.copy_from_slice(s);
                    }
                }
            }
            (PixelFormat::Rgb8, true) => {
                let Some(s) = image.data.get(src.start * 3..src.end * 3) else {
                    continue;
                };
                if let Some(d) = data.get_mut(dst_start..dst_start + len) {
                    for (o, px) in d.iter_mut().zip(s.chunks_exact(3)) {
                        *o = luma(px[0], px[1], px[2]);
                    }
                }
            }
            (PixelFormat::Rgb8, false) => {
                let Some(s) = image.data.get(src.start * 3..src.end * 3) else {
                    continue;
                };
                let (r, rest) = data.split_at_mut(n);
                let (g, b) = rest.split_at_mut(n);
                let span = dst_start..dst_start + len;
                if let (Some(r), Some(g), Some(b)) = (
                    r.get_mut(span.clone()),
                    g.get_mut(span.clone()),
                    b.get_mut(span),
                ) {
                    for (i, px) in s.chunks_exact(3).enumerate() {
                        r[i] = px[0];
                        g[i] = px[1];
                        b[i] = px[2];
                    }
                }
            }
        }
    }
    Ok(Crop {
        width: cw,
        height: ch,
        planes,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelRect;
    use crate::preprocess::sector::Fan;

    #[test]
    fn outside_of_the_sector_is_black_and_cropped_away() {
        // A 6x4 white frame; the sector is the 3x2 rectangle at (2, 1).
        let image = Image::gray(6, 4, vec![255; 24]).unwrap();
        let sector = Sector::rect(
            PixelRect {
                x0: 2,
                y0: 1,
                x1: 5,
                y1: 3,
            },
            6,
            4,
        )
        .unwrap();
        let crop = masked_crop(&image, &sector, true).unwrap();
        assert_eq!((crop.width, crop.height, crop.planes), (3, 2, 1));
        assert_eq!(crop.data, vec![255; 6]);
    }

    #[test]
    fn fan_corners_inside_the_box_are_zeroed() {
        let image = Image::gray(64, 64, vec![200; 64 * 64]).unwrap();
        let fan = Fan {
            apex_x: 32.0,
            apex_y: 0.0,
            inner_radius: 0.0,
            outer_radius: 60.0,
            start_deg: 45.0,
            end_deg: 135.0,
        };
        let sector = Sector::fan(fan, 64, 64).unwrap();
        let crop = masked_crop(&image, &sector, true).unwrap();
        let b = sector.bbox();
        for y in 0..crop.height {
            for x in 0..crop.width {
                let want = if sector.contains_pixel(x + b.x0, y + b.y0) {
                    200
                } else {
                    0
                };
                assert_eq!(crop.data[y * crop.width + x], want, "({x}, {y})");
            }
        }
        // Top corners of the box lie outside the fan.
        assert_eq!(crop.data[0], 0);
    }

    #[test]
    fn colour_frames_split_or_become_luma() {
        let image = Image::new(2, 1, PixelFormat::Rgb8, vec![10, 20, 30, 255, 0, 0]).unwrap();
        let sector = Sector::rect(
            PixelRect {
                x0: 0,
                y0: 0,
                x1: 2,
                y1: 1,
            },
            2,
            1,
        )
        .unwrap();
        let rgb = masked_crop(&image, &sector, false).unwrap();
        assert_eq!(rgb.data, vec![10, 255, 20, 0, 30, 0]);
        let grey = masked_crop(&image, &sector, true).unwrap();
        assert_eq!(grey.data, vec![luma(10, 20, 30), luma(255, 0, 0)]);
        // A grey frame asked for as three planes repeats itself.
        let g = Image::gray(2, 1, vec![7, 9]).unwrap();
        assert_eq!(
            masked_crop(&g, &sector, false).unwrap().data,
            vec![7, 9, 7, 9, 7, 9]
        );
    }

    #[test]
    fn plane_crop_matches_image_crop() {
        let image = Image::new(3, 2, PixelFormat::Rgb8, (0..18).map(|i| i * 13).collect()).unwrap();
        let sector = Sector::rect(
            PixelRect {
                x0: 1,
                y0: 0,
                x1: 3,
                y1: 2,
            },
            3,
            2,
        )
        .unwrap();
        assert_eq!(
            masked_crop_plane(&image.to_gray(), &sector).unwrap(),
            masked_crop(&image, &sector, true).unwrap()
        );
        assert!(masked_crop_plane(&[0; 5], &sector).is_err());
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let image = Image::gray(4, 4, vec![0; 16]).unwrap();
        let sector = Sector::rect(
            PixelRect {
                x0: 0,
                y0: 0,
                x1: 2,
                y1: 2,
            },
            5,
            4,
        )
        .unwrap();
        assert!(matches!(
            masked_crop(&image, &sector, true),
            Err(PreprocessError::SizeMismatch { .. })
        ));
    }
}
