//! Pixel converters for the formats capture devices deliver: one captured buffer (exactly
//! `bytesused` bytes) to an [`Image`]. Pure functions, so every format is testable without
//! hardware. Packed: YUYV, UYVY (4:2:2), GREY, RGB3, BGR3; planar 4:2:0: NV12 (Y plane, then
//! interleaved CbCr), YU12 / I420 (Y, Cb, Cr planes); compressed: MJPG. YCbCr is BT.601 limited
//! range, what SD/HD grabbers and UVC devices send unless told otherwise.

use crate::frame::{Image, PixelFormat};

/// The pixel formats this build decodes, in the order negotiation prefers them when the device
/// offers several natively: uncompressed before compressed (MJPEG costs a decode per frame and is
/// lossy), 4:2:2 before 4:2:0 (more chroma), grey and RGB last among the raw ones only because
/// scanners' grabbers rarely offer them at full size.
pub const SUPPORTED: [&[u8; 4]; 8] = [
    b"YUYV", b"UYVY", b"NV12", b"YU12", b"GREY", b"RGB3", b"BGR3", b"MJPG",
];

/// The supported formats as one readable list, for messages.
pub fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(|f| String::from_utf8_lossy(*f).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Negotiated stream parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub fourcc: [u8; 4],
    pub width: usize,
    pub height: usize,
    /// Bytes per line (of the luma plane for NV12/YU12); 0 when the driver does not say, then
    /// the tight stride is assumed.
    pub stride: usize,
}

impl Negotiated {
    /// Bytes per line of the first plane: the driver's, or the tight one when it gave less.
    fn line_bytes(&self, bytes_per_pixel: usize) -> usize {
        self.stride.max(self.width * bytes_per_pixel)
    }
}

/// Converts one captured buffer to an image.
pub fn decode_buffer(n: &Negotiated, buf: &[u8]) -> Result<Image, String> {
    let (w, h) = (n.width, n.height);
    if w == 0 || h == 0 {
        return Err(format!("{w}x{h}: empty image"));
    }
    let bad = || format!("{w}x{h}: the decoded pixels do not fill the image");
    let too_short = |needed: usize, stride: usize| {
        format!(
            "buffer of {} bytes is too short for {} {w}x{h} at {stride} bytes per line ({needed} needed)",
            buf.len(),
            String::from_utf8_lossy(&n.fourcc)
        )
    };
    // Rows of a packed image with `bpp` bytes per pixel.
    let rows = |bpp: usize| -> Result<Vec<&[u8]>, String> {
        let stride = n.line_bytes(bpp);
        let needed = stride * (h - 1) + w * bpp;
        if buf.len() < needed {
            return Err(too_short(needed, stride));
        }
        Ok((0..h)
            .map(|y| &buf[y * stride..y * stride + w * bpp])
            .collect())
    };
    match &n.fourcc {
        b"GREY" => {
            let data: Vec<u8> = rows(1)?.concat();
            Image::new(w, h, PixelFormat::Gray8, data).ok_or_else(bad)
        }
        b"RGB3" | b"BGR3" => {
            let mut data: Vec<u8> = rows(3)?.concat();
            if &n.fourcc == b"BGR3" {
                data.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
            }
            Image::new(w, h, PixelFormat::Rgb8, data).ok_or_else(bad)
        }
        b"YUYV" | b"UYVY" => {
            // Byte positions of Y0, Cb, Y1, Cr within each 4-byte pair of pixels.
            let (y0, u, y1, v) = if &n.fourcc == b"YUYV" {
                (0, 1, 2, 3)
            } else {
                (1, 0, 3, 2)
            };
            let pair_bytes = w.div_ceil(2) * 4;
            let stride = n.stride.max(pair_bytes);
            let needed = stride * (h - 1) + pair_bytes;
            if buf.len() < needed {
                return Err(too_short(needed, stride));
            }
            let mut data = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                let row = &buf[y * stride..y * stride + pair_bytes];
                for quad in row.chunks_exact(4) {
                    data.extend_from_slice(&yuv_to_rgb(quad[y0], quad[u], quad[v]));
                    data.extend_from_slice(&yuv_to_rgb(quad[y1], quad[u], quad[v]));
                }
                if w % 2 == 1 {
                    // An odd width leaves one pixel of a pair: it shares the last pair's chroma.
                    data.truncate(data.len() - 3);
                }
            }
            Image::new(w, h, PixelFormat::Rgb8, data).ok_or_else(bad)
        }
        b"NV12" | b"YU12" => {
            let luma_stride = n.line_bytes(1);
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let luma_len = luma_stride * h;
            // NV12: one CbCr plane with the luma's stride; YU12: Cb then Cr at half of it.
            let (chroma_stride, needed) = if &n.fourcc == b"NV12" {
                let cs = luma_stride.max(cw * 2);
                (cs, luma_len + cs * (ch - 1) + cw * 2)
            } else {
                let cs = (luma_stride / 2).max(cw);
                (cs, luma_len + cs * ch + cs * (ch - 1) + cw)
            };
            if buf.len() < needed {
                return Err(too_short(needed, luma_stride));
            }
            let chroma = &buf[luma_len..];
            let mut data = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                let luma = &buf[y * luma_stride..y * luma_stride + w];
                let crow = (y / 2) * chroma_stride;
                for (x, &yy) in luma.iter().enumerate() {
                    let (u, v) = if &n.fourcc == b"NV12" {
                        (chroma[crow + 2 * (x / 2)], chroma[crow + 2 * (x / 2) + 1])
                    } else {
                        (
                            chroma[crow + x / 2],
                            chroma[chroma_stride * ch + crow + x / 2],
                        )
                    };
                    data.extend_from_slice(&yuv_to_rgb(yy, u, v));
                }
            }
            Image::new(w, h, PixelFormat::Rgb8, data).ok_or_else(bad)
        }
        b"MJPG" => {
            // Decoders fill a truncated JPEG's missing rows with grey; a short transfer must be
            // a bad frame, not half a picture. Some devices pad after the EOI marker with zeros.
            let end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if end < 4 || buf[end - 2..end] != [0xFF, 0xD9] {
                return Err(format!(
                    "MJPEG frame of {} bytes is truncated: it does not end with the end-of-image marker",
                    buf.len()
                ));
            }
            // A damaged frame may declare any size (the fuzzer's: 2048x32774 in a 8x6 stream,
            // seconds to decode): nothing larger than the negotiated size is decoded.
            let mut reader = image::ImageReader::with_format(
                std::io::Cursor::new(&buf[..end]),
                image::ImageFormat::Jpeg,
            );
            let mut limits = image::Limits::default();
            limits.max_image_width = Some(u32::try_from(w).unwrap_or(u32::MAX));
            limits.max_image_height = Some(u32::try_from(h).unwrap_or(u32::MAX));
            reader.limits(limits);
            let img = reader
                .decode()
                .map_err(|e| format!("MJPEG frame (stream {w}x{h}): {e}"))?;
            let (iw, ih) = (img.width() as usize, img.height() as usize);
            if img.color().has_color() {
                Image::new(iw, ih, PixelFormat::Rgb8, img.to_rgb8().into_raw()).ok_or_else(bad)
            } else {
                Image::new(iw, ih, PixelFormat::Gray8, img.to_luma8().into_raw()).ok_or_else(bad)
            }
        }
        other => Err(format!(
            "unsupported fourcc {} (this build decodes {})",
            String::from_utf8_lossy(other),
            supported_names()
        )),
    }
}

/// BT.601 limited-range YCbCr to RGB.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as f32 - 16.0) * 1.164;
    let d = u as f32 - 128.0;
    let e = v as f32 - 128.0;
    let clamp = |x: f32| x.round().clamp(0.0, 255.0) as u8;
    [
        clamp(c + 1.596 * e),
        clamp(c - 0.392 * d - 0.813 * e),
        clamp(c + 2.017 * d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `v4l2_convert` fuzz target (fuzz/regressions/v4l2_convert/): an MJPG frame
    /// declaring a picture far larger than the negotiated stream is refused, not decoded.
    #[test]
    fn an_mjpeg_frame_larger_than_the_stream_is_refused() {
        let big = image::GrayImage::from_fn(64, 48, |x, y| image::Luma([(x + y) as u8]));
        let mut jpeg = Vec::new();
        image::DynamicImage::from(big)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let e = decode_buffer(&neg(b"MJPG", 8, 6, 0), &jpeg).unwrap_err();
        assert!(e.contains("MJPEG frame (stream 8x6)"), "{e}");
        let ok = decode_buffer(&neg(b"MJPG", 64, 48, 0), &jpeg).unwrap();
        assert_eq!((ok.width, ok.height), (64, 48));
    }

    fn neg(fourcc: &[u8; 4], w: usize, h: usize, stride: usize) -> Negotiated {
        Negotiated {
            fourcc: *fourcc,
            width: w,
            height: h,
            stride,
        }
    }

    const WHITE: [u8; 3] = [255, 255, 255];
    const BLACK: [u8; 3] = [0, 0, 0];

    fn is_red(p: &[u8]) -> bool {
        p[0] > 200 && p[1] < 40 && p[2] < 40
    }

    fn is_blue(p: &[u8]) -> bool {
        p[2] > 200 && p[0] < 40 && p[1] < 60
    }

    #[test]
    fn grey_with_padded_stride() {
        let buf = [1u8, 2, 0, 0, 3, 4, 0, 0];
        let img = decode_buffer(&neg(b"GREY", 2, 2, 4), &buf).unwrap();
        assert_eq!(img.data, vec![1, 2, 3, 4]);
    }

    #[test]
    fn bgr_is_swapped_to_rgb() {
        let img = decode_buffer(&neg(b"BGR3", 1, 1, 0), &[10, 20, 30]).unwrap();
        assert_eq!(img.data, vec![30, 20, 10]);
    }

    #[test]
    fn yuyv_grey_and_colour() {
        // Y=235 with neutral chroma is white; Y=16 is black; strong Cr is red.
        let img = decode_buffer(
            &neg(b"YUYV", 4, 1, 0),
            &[235, 128, 16, 128, 81, 90, 81, 240],
        )
        .unwrap();
        assert_eq!(&img.data[0..3], &WHITE);
        assert_eq!(&img.data[3..6], &BLACK);
        assert!(is_red(&img.data[6..9]), "{:?}", &img.data[6..9]);
    }

    #[test]
    fn uyvy_is_yuyv_with_chroma_first() {
        // The same pixels as the YUYV test, bytes in U Y0 V Y1 order, one padded line.
        let img = decode_buffer(
            &neg(b"UYVY", 4, 2, 10),
            &[
                128, 235, 128, 16, 90, 81, 240, 81, 0, 0, //
                128, 16, 128, 235, 240, 41, 110, 41,
            ],
        )
        .unwrap();
        assert_eq!(&img.data[0..3], &WHITE);
        assert_eq!(&img.data[3..6], &BLACK);
        assert!(is_red(&img.data[6..9]), "{:?}", &img.data[6..9]);
        assert_eq!(&img.data[12..15], &BLACK);
        assert_eq!(&img.data[15..18], &WHITE);
        assert!(is_blue(&img.data[18..21]), "{:?}", &img.data[18..21]);
    }

    /// A 4x2 image, left half white, right half red (by 2x2 blocks), with `pad` bytes after each
    /// luma line, in NV12 or YU12 layout.
    fn planar_420(fourcc: &[u8; 4], pad: usize) -> Vec<u8> {
        let stride = 4 + pad;
        let mut buf = Vec::new();
        for _ in 0..2 {
            buf.extend_from_slice(&[235, 235, 81, 81]);
            buf.extend(std::iter::repeat_n(0, pad));
        }
        if fourcc == b"NV12" {
            buf.extend_from_slice(&[128, 128, 90, 240]);
            buf.extend(std::iter::repeat_n(0, pad));
        } else {
            let cstride = stride / 2;
            buf.extend_from_slice(&[128, 90]);
            buf.extend(std::iter::repeat_n(0, cstride - 2));
            buf.extend_from_slice(&[128, 240]);
            buf.extend(std::iter::repeat_n(0, cstride - 2));
        }
        buf
    }

    #[test]
    fn nv12_planes_with_and_without_padding() {
        for pad in [0, 4] {
            let buf = planar_420(b"NV12", pad);
            let img = decode_buffer(&neg(b"NV12", 4, 2, 4 + pad), &buf).unwrap();
            assert_eq!(img.format, PixelFormat::Rgb8);
            for row in 0..2 {
                let px = |x: usize| &img.data[(row * 4 + x) * 3..(row * 4 + x) * 3 + 3];
                assert_eq!(px(0), &WHITE, "pad {pad}");
                assert_eq!(px(1), &WHITE, "pad {pad}");
                assert!(is_red(px(2)) && is_red(px(3)), "pad {pad}: {:?}", px(2));
            }
            // One byte short of the chroma plane is refused by size, not read past the end.
            let e = decode_buffer(&neg(b"NV12", 4, 2, 4 + pad), &buf[..buf.len() - pad - 1])
                .unwrap_err();
            assert!(e.contains("too short"), "{e}");
        }
    }

    #[test]
    fn yu12_planes_with_and_without_padding() {
        for pad in [0, 4] {
            let buf = planar_420(b"YU12", pad);
            let img = decode_buffer(&neg(b"YU12", 4, 2, 4 + pad), &buf).unwrap();
            for row in 0..2 {
                let px = |x: usize| &img.data[(row * 4 + x) * 3..(row * 4 + x) * 3 + 3];
                assert_eq!(px(0), &WHITE, "pad {pad}");
                assert!(is_red(px(3)), "pad {pad}: {:?}", px(3));
            }
            let e = decode_buffer(&neg(b"YU12", 4, 2, 4 + pad), &buf[..buf.len() - 8]).unwrap_err();
            assert!(e.contains("too short"), "{e}");
        }
    }

    #[test]
    fn odd_sizes_share_the_last_chroma_sample() {
        // 3x3 NV12: chroma is 2x2 samples; the last column and row reuse the last sample.
        let mut buf = vec![235u8; 9];
        buf.extend_from_slice(&[128, 128, 90, 240, 128, 128, 90, 240]);
        let img = decode_buffer(&neg(b"NV12", 3, 3, 0), &buf).unwrap();
        assert_eq!((img.width, img.height, img.data.len()), (3, 3, 27));
        assert_eq!(&img.data[0..3], &WHITE);
        let last = &img.data[24..27];
        assert!(last[0] > 250 && last[1] > 100, "{last:?}");
        // 3x1 UYVY: two pairs on the wire, three pixels out.
        let img = decode_buffer(
            &neg(b"UYVY", 3, 1, 0),
            &[128, 16, 128, 16, 128, 235, 128, 235],
        )
        .unwrap();
        assert_eq!(img.data, vec![0, 0, 0, 0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn short_buffer_is_a_bad_frame_not_a_panic() {
        for fourcc in SUPPORTED {
            let e = decode_buffer(&neg(fourcc, 640, 480, 0), &[0u8; 1000]).unwrap_err();
            assert!(!e.is_empty(), "{fourcc:?}");
        }
        let e = decode_buffer(&neg(b"YUYV", 640, 480, 1280), &[0u8; 1000]).unwrap_err();
        assert!(e.contains("too short") && e.contains("YUYV"), "{e}");
        assert!(decode_buffer(&neg(b"MJPG", 640, 480, 0), &[0xFF, 0xD8, 0x00]).is_err());
        assert!(decode_buffer(&neg(b"YUYV", 0, 480, 0), &[0u8; 10]).is_err());
    }

    #[test]
    fn unknown_fourcc_is_refused_by_name() {
        let e = decode_buffer(&neg(b"H264", 4, 4, 0), &[0u8; 64]).unwrap_err();
        assert!(e.contains("H264") && e.contains("NV12"), "{e}");
    }

    #[test]
    fn mjpeg_decodes() {
        let mut jpeg = Vec::new();
        image::GrayImage::from_pixel(16, 8, image::Luma([77]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let img = decode_buffer(&neg(b"MJPG", 16, 8, 0), &jpeg).unwrap();
        assert_eq!(
            (img.width, img.height, img.format),
            (16, 8, PixelFormat::Gray8)
        );
        assert!((img.data[0] as i32 - 77).abs() <= 2);
        // Zero padding after the end-of-image marker is fine; a cut-off frame is not.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0; 16]);
        assert!(decode_buffer(&neg(b"MJPG", 16, 8, 0), &padded).is_ok());
        let e = decode_buffer(&neg(b"MJPG", 16, 8, 0), &jpeg[..jpeg.len() * 2 / 3]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
