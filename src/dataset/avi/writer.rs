//! A small AVI writer (MJPEG or raw frames, with or without `idx1`) for tests and fixtures only:
//! built under `cfg(test)` or the `test-support` feature (which the integration tests enable).

/// The video stream of an AVI to write (tests, tools that make small clips).
#[derive(Debug, Clone)]
pub struct AviSpec {
    pub width: u32,
    pub height: u32,
    /// Frames per second as a rational `rate / scale`.
    pub rate: u32,
    pub scale: u32,
    /// `fccHandler` and `biCompression` (`[0; 4]` for BI_RGB).
    pub handler: [u8; 4],
    pub compression: [u8; 4],
    pub bit_count: u16,
    /// RGBQUADs after the BITMAPINFOHEADER (8-bit DIB palettes), as RGB.
    pub palette: Vec<[u8; 3]>,
    /// Write a legacy `idx1` index.
    pub index: bool,
}

impl AviSpec {
    /// Motion JPEG at `fps` frames per second.
    pub fn mjpeg(width: u32, height: u32, fps: u32) -> Self {
        Self {
            width,
            height,
            rate: fps,
            scale: 1,
            handler: *b"MJPG",
            compression: *b"MJPG",
            bit_count: 24,
            palette: Vec::new(),
            index: true,
        }
    }
}

pub(super) fn put_chunk(out: &mut Vec<u8>, id: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(id);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
}

pub(super) fn put_list(out: &mut Vec<u8>, id: &[u8; 4], kind: &[u8; 4], body: &[u8]) {
    let mut b = Vec::with_capacity(body.len() + 4);
    b.extend_from_slice(kind);
    b.extend_from_slice(body);
    put_chunk(out, id, &b);
}

/// A single-stream AVI holding `frames` (already coded payloads, one '00dc' chunk each).
pub fn write_avi(spec: &AviSpec, frames: &[Vec<u8>]) -> Vec<u8> {
    let le = |v: u32| v.to_le_bytes();
    let us = (1e6 * spec.scale as f64 / spec.rate.max(1) as f64) as u32;
    let mut avih = Vec::new();
    for v in [
        us,
        0,
        0,
        0x10,
        frames.len() as u32,
        0,
        1,
        0,
        spec.width,
        spec.height,
        0,
        0,
        0,
        0,
    ] {
        avih.extend_from_slice(&le(v));
    }
    let mut strh = Vec::new();
    strh.extend_from_slice(b"vids");
    strh.extend_from_slice(&spec.handler);
    for v in [
        0u32,
        0,
        0,
        spec.scale,
        spec.rate,
        0,
        frames.len() as u32,
        0,
        u32::MAX,
        0,
    ] {
        strh.extend_from_slice(&le(v));
    }
    strh.extend_from_slice(&[0u8; 8]); // rcFrame
    let mut strf = Vec::new();
    strf.extend_from_slice(&le(40));
    strf.extend_from_slice(&le(spec.width));
    strf.extend_from_slice(&le(spec.height));
    strf.extend_from_slice(&1u16.to_le_bytes());
    strf.extend_from_slice(&spec.bit_count.to_le_bytes());
    strf.extend_from_slice(&spec.compression);
    for v in [0u32, 0, 0, spec.palette.len() as u32, 0] {
        strf.extend_from_slice(&le(v));
    }
    for c in &spec.palette {
        strf.extend_from_slice(&[c[2], c[1], c[0], 0]);
    }
    let mut strl = Vec::new();
    put_chunk(&mut strl, b"strh", &strh);
    put_chunk(&mut strl, b"strf", &strf);
    let mut hdrl = Vec::new();
    put_chunk(&mut hdrl, b"avih", &avih);
    put_list(&mut hdrl, b"LIST", b"strl", &strl);
    let mut movi = Vec::new();
    let mut idx = Vec::new();
    for f in frames {
        // Offset from the 'movi' type field.
        let off = movi.len() as u32 + 4;
        put_chunk(&mut movi, b"00dc", f);
        idx.extend_from_slice(b"00dc");
        idx.extend_from_slice(&le(0x10));
        idx.extend_from_slice(&le(off));
        idx.extend_from_slice(&le(f.len() as u32));
    }
    let mut body = Vec::new();
    put_list(&mut body, b"LIST", b"hdrl", &hdrl);
    put_list(&mut body, b"LIST", b"movi", &movi);
    if spec.index {
        put_chunk(&mut body, b"idx1", &idx);
    }
    let mut out = Vec::new();
    put_list(&mut out, b"RIFF", b"AVI ", &body);
    out
}
