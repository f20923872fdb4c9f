//! The AVI reader against files written by `writer`, and every malformed-file error.

use super::writer::{put_chunk, put_list};
use super::*;

fn gradient(w: u32, h: u32, k: u32) -> Vec<u8> {
    (0..w * h)
        .map(|i| ((i % w) * 4 + (i / w) * 2 + k * 10) as u8)
        .collect()
}

fn mjpeg_avi(w: u32, h: u32, n: u32, grey: bool, index: bool) -> Vec<u8> {
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let g = gradient(w, h, k);
            if grey {
                encode_jpeg(w, h, 1, &g, 95).unwrap()
            } else {
                let rgb: Vec<u8> = g.iter().flat_map(|&v| [v, 255 - v, v / 2]).collect();
                encode_jpeg(w, h, 3, &rgb, 95).unwrap()
            }
        })
        .collect();
    write_avi(
        &AviSpec {
            index,
            ..AviSpec::mjpeg(w, h, 50)
        },
        &frames,
    )
}

fn parse(bytes: Vec<u8>) -> Result<AviFile> {
    AviFile::parse(Path::new("clip.avi"), bytes)
}

#[test]
fn mjpeg_grey_round_trip_with_and_without_index() {
    for index in [true, false] {
        let avi = parse(mjpeg_avi(32, 24, 5, true, index)).unwrap();
        assert_eq!(avi.frame_count(), 5);
        assert_eq!(avi.codec().unwrap(), Codec::Mjpeg);
        let frames = avi.decode_all(None).unwrap();
        assert_eq!(frames.len(), 5);
        for (k, f) in frames.iter().enumerate() {
            assert_eq!((f.image.width, f.image.height), (32, 24));
            assert_eq!(f.image.format, PixelFormat::Gray8);
            assert_eq!(f.media_time, Duration::from_millis(20) * k as u32);
            let want = gradient(32, 24, k as u32);
            let err: f64 = f
                .image
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .sum::<f64>()
                / want.len() as f64;
            assert!(err < 3.0, "frame {k}: mean error {err}");
        }
    }
}

#[test]
fn mjpeg_colour_decodes_rgb_and_fps_override() {
    let avi = parse(mjpeg_avi(16, 16, 3, false, true)).unwrap();
    let frames = avi.decode_all(Some(10.0)).unwrap();
    assert_eq!(frames[0].image.format, PixelFormat::Rgb8);
    assert_eq!(frames[2].media_time, Duration::from_millis(200));
}

#[test]
fn missing_huffman_tables_are_inserted() {
    let g = gradient(16, 16, 0);
    let jpeg = encode_jpeg(16, 16, 1, &g, 90).unwrap();
    let reference = image::load_from_memory(&jpeg)
        .unwrap()
        .to_luma8()
        .into_raw();
    // Strip every DHT segment.
    let mut stripped = jpeg[..2].to_vec();
    let mut pos = 2;
    while jpeg[pos + 1] != 0xda {
        let len = ((jpeg[pos + 2] as usize) << 8) | jpeg[pos + 3] as usize;
        if jpeg[pos + 1] != 0xc4 {
            stripped.extend_from_slice(&jpeg[pos..pos + 2 + len]);
        }
        pos += 2 + len;
    }
    stripped.extend_from_slice(&jpeg[pos..]);
    assert!(stripped.len() < jpeg.len());
    let fixed = with_default_huffman_tables(&stripped);
    let decoded = image::load_from_memory(&fixed)
        .unwrap()
        .to_luma8()
        .into_raw();
    assert_eq!(decoded, reference);
    let avi = write_avi(&AviSpec::mjpeg(16, 16, 25), &[stripped]);
    let frames = parse(avi).unwrap().decode_all(None).unwrap();
    assert_eq!(frames[0].image.data, reference);
}

fn dib_avi(bits: u16, w: u32, h: u32, palette: Vec<[u8; 3]>, frames: &[Vec<u8>]) -> Vec<u8> {
    let spec = AviSpec {
        handler: *b"DIB ",
        compression: [0; 4],
        bit_count: bits,
        palette,
        ..AviSpec::mjpeg(w, h, 30)
    };
    write_avi(&spec, frames)
}

#[test]
fn dib_24_bit_bottom_up_padded() {
    let (w, h) = (3u32, 2u32); // 9 bytes a row, padded to 12
                               // Top row red, green, blue; bottom row grey levels. Stored bottom-up, BGR.
    let top = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
    let bottom = [[10, 10, 10], [20, 20, 20], [30, 30, 30]];
    let mut raw = Vec::new();
    for row in [bottom, top] {
        for p in row {
            raw.extend_from_slice(&[p[2], p[1], p[0]]);
        }
        raw.extend_from_slice(&[0, 0, 0]);
    }
    let avi = parse(dib_avi(24, w, h, vec![], &[raw])).unwrap();
    let f = avi.decode_all(None).unwrap();
    assert_eq!(f[0].image.format, PixelFormat::Rgb8);
    let want: Vec<u8> = top.iter().chain(bottom.iter()).flatten().copied().collect();
    assert_eq!(f[0].image.data, want);
    assert_eq!(f[0].media_time, Duration::ZERO);
}

#[test]
fn dib_8_bit_grey_palette_becomes_gray8() {
    let palette: Vec<[u8; 3]> = (0..=255u8).map(|i| [i, i, i]).collect();
    let (w, h) = (5u32, 2u32); // 5 bytes a row, padded to 8
    let raw = vec![1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 9, 10, 0, 0, 0];
    let avi = parse(dib_avi(8, w, h, palette, &[raw.clone(), raw])).unwrap();
    let f = avi.decode_all(None).unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].image.format, PixelFormat::Gray8);
    assert_eq!(f[0].image.data, vec![6, 7, 8, 9, 10, 1, 2, 3, 4, 5]);
}

#[test]
fn y800_grey() {
    let spec = AviSpec {
        handler: *b"Y800",
        compression: *b"Y800",
        bit_count: 8,
        ..AviSpec::mjpeg(4, 2, 25)
    };
    let avi = write_avi(&spec, &[(0..8).collect()]);
    let f = parse(avi).unwrap().decode_all(None).unwrap();
    assert_eq!(f[0].image.data, (0..8).collect::<Vec<u8>>());
}

#[test]
fn mpeg4_is_refused_by_fourcc_with_hint() {
    let spec = AviSpec {
        handler: *b"FMP4",
        compression: *b"FMP4",
        ..AviSpec::mjpeg(8, 8, 50)
    };
    let avi = parse(write_avi(&spec, &[vec![0, 0, 1, 0xb0]])).unwrap();
    let e = avi.decode_all(None).unwrap_err().to_string();
    assert!(
        e.contains("clip.avi") && e.contains("FMP4") && e.contains("MPEG-4 Part 2"),
        "{e}"
    );
    assert!(
        e.contains("MJPG") && e.contains("ffmpeg -i in.avi -c:v mjpeg"),
        "{e}"
    );
}

#[test]
fn malformed_headers_are_errors() {
    // Zero frame period.
    let spec = AviSpec {
        rate: 0,
        scale: 0,
        ..AviSpec::mjpeg(8, 8, 1)
    };
    let e = parse(write_avi(&spec, &[vec![1]])).unwrap_err().to_string();
    assert!(e.contains("clip.avi") && e.contains("frame period"), "{e}");
    // Absurd size.
    let e = parse(write_avi(&AviSpec::mjpeg(100_000, 8, 25), &[vec![1]]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("frame size"), "{e}");
    // Not an AVI.
    let e = parse(b"RIFF\x04\0\0\0WAVE".to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an AVI"), "{e}");
    // A chunk larger than the file.
    let mut bytes = mjpeg_avi(8, 8, 2, true, true);
    let n = bytes.len();
    bytes.truncate(n - 30);
    let e = parse(bytes).unwrap_err().to_string();
    assert!(e.contains("clip.avi") && e.contains("truncated"), "{e}");
}

#[test]
fn opendml_avix_extension_is_read() {
    let jpegs: Vec<Vec<u8>> = (0..2)
        .map(|k| encode_jpeg(8, 8, 1, &gradient(8, 8, k), 90).unwrap())
        .collect();
    let mut bytes = write_avi(
        &AviSpec {
            index: false,
            ..AviSpec::mjpeg(8, 8, 25)
        },
        &jpegs[..1],
    );
    let mut movi = Vec::new();
    put_chunk(&mut movi, b"00dc", &jpegs[1]);
    put_chunk(&mut movi, b"ix00", &[0; 24]);
    let mut ext_body = Vec::new();
    put_list(&mut ext_body, b"LIST", b"movi", &movi);
    put_list(&mut bytes, b"RIFF", b"AVIX", &ext_body);
    let avi = parse(bytes).unwrap();
    assert_eq!(avi.frame_count(), 2);
    assert_eq!(avi.decode_all(None).unwrap().len(), 2);
}

#[test]
fn empty_chunk_repeats_previous_frame_and_avih_period_is_the_fallback() {
    let jpeg = encode_jpeg(8, 8, 1, &gradient(8, 8, 1), 90).unwrap();
    let mut bytes = write_avi(&AviSpec::mjpeg(8, 8, 25), &[jpeg, Vec::new()]);
    // Zero the stream header's dwScale/dwRate: the main header's 40000 µs remains.
    let strh = bytes.windows(4).position(|w| w == b"strh").unwrap() + 8;
    bytes[strh + 20..strh + 28].fill(0);
    let frames = parse(bytes).unwrap().decode_all(None).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].image, frames[0].image);
    assert_eq!(frames[1].media_time, Duration::from_millis(40));
    let e = parse(write_avi(&AviSpec::mjpeg(8, 8, 25), &[Vec::new()])).unwrap_err();
    assert!(e.to_string().contains("first video frame is empty"), "{e}");
}

#[test]
fn truncation_and_byte_flips_never_panic() {
    let good = mjpeg_avi(8, 8, 3, true, true);
    for cut in 0..good.len() {
        if let Ok(avi) = parse(good[..cut].to_vec()) {
            let _ = avi.decode_all(None);
        }
    }
    let dib = dib_avi(24, 3, 2, vec![], &[vec![7; 24]]);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for base in [&good, &dib] {
        for _ in 0..3000 {
            let mut m = base.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % m.len();
                m[i] = (seed >> 32) as u8;
            }
            if let Ok(avi) = parse(m) {
                let _ = avi.decode_all(None);
            }
        }
    }
}
