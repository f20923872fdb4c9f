//! The RIFF container: bounds-checked little-endian reads, chunk and list walking, the `hdrl`
//! headers, and the video frames found through `idx1` or by scanning `movi`.

use super::*;

pub(super) struct Reader<'a> {
    pub(super) path: &'a Path,
}

impl Reader<'_> {
    pub(super) fn bad(&self, what: impl Into<String>) -> DatasetError {
        DatasetError::Invalid {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }
}

pub(super) fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
pub(super) fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
pub(super) fn i32_at(d: &[u8], o: usize) -> Option<i32> {
    u32_at(d, o).map(|v| v as i32)
}
pub(super) fn cc_at(d: &[u8], o: usize) -> Option<[u8; 4]> {
    d.get(o..o.checked_add(4)?)?.try_into().ok()
}

/// One chunk: its id, payload range, and (for RIFF/LIST) its list type.
pub(super) struct Chunk {
    pub(super) id: [u8; 4],
    pub(super) body: Range<usize>,
    /// Offset of the chunk header.
    pub(super) at: usize,
}

/// Chunks inside `range` of `data`; each must fit inside `range`.
pub(super) fn chunks(
    r: &Reader,
    data: &[u8],
    range: Range<usize>,
    what: &str,
) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        if range.end - pos < 8 {
            // Trailing padding shorter than a chunk header: tolerated (some writers pad lists).
            break;
        }
        let id = cc_at(data, pos)
            .ok_or_else(|| r.bad(format!("{what}: chunk header at byte {pos} is cut off")))?;
        let size = u32_at(data, pos + 4)
            .ok_or_else(|| r.bad(format!("{what}: chunk header at byte {pos} is cut off")))?
            as usize;
        let start = pos + 8;
        let end = start
            .checked_add(size)
            .filter(|e| *e <= range.end)
            .ok_or_else(|| {
                r.bad(format!(
                    "{what}: chunk {} at byte {pos} declares {size} bytes but only {} remain (truncated or corrupt file)",
                    fourcc_text(id),
                    range.end - start
                ))
            })?;
        out.push(Chunk {
            id,
            body: start..end,
            at: pos,
        });
        // Chunks are padded to an even size.
        pos = end + (size & 1);
    }
    Ok(out)
}

pub(super) fn list_type(data: &[u8], c: &Chunk) -> Option<[u8; 4]> {
    if c.body.len() >= 4 {
        cc_at(data, c.body.start)
    } else {
        None
    }
}

pub(super) struct StreamHeader {
    pub(super) kind: [u8; 4],
    pub(super) handler: [u8; 4],
    pub(super) scale: u32,
    pub(super) rate: u32,
    pub(super) format: Option<Range<usize>>,
}

pub(super) fn frame_id(stream: usize, suffix: &[u8; 2]) -> [u8; 4] {
    let tens = b'0' + (stream / 10 % 10) as u8;
    let ones = b'0' + (stream % 10) as u8;
    [tens, ones, suffix[0], suffix[1]]
}

/// Video chunks of a movi list (descending into `LIST rec ` groups).
pub(super) fn scan_movi(
    r: &Reader,
    data: &[u8],
    range: Range<usize>,
    ids: &[[u8; 4]; 2],
    out: &mut Vec<Range<usize>>,
    depth: usize,
) -> Result<()> {
    if depth > 4 {
        return Err(r.bad("'movi' lists nested too deeply"));
    }
    for c in chunks(r, data, range, "movi")? {
        if &c.id == b"LIST" {
            scan_movi(
                r,
                data,
                c.body.start.saturating_add(4).min(c.body.end)..c.body.end,
                ids,
                out,
                depth + 1,
            )?;
        } else if ids.contains(&c.id) {
            out.push(c.body);
        }
    }
    Ok(())
}

/// The video frames as the legacy index lists them, or `None` when the index does not agree with
/// the file (then the movi list is scanned instead).
pub(super) fn frames_from_idx1(
    data: &[u8],
    ix: Range<usize>,
    movi: Range<usize>,
    ids: &[[u8; 4]; 2],
) -> Option<Vec<Range<usize>>> {
    let entries = data.get(ix)?;
    let mut out = Vec::new();
    // Offsets are relative to the 'movi' type field (usual) or absolute; decided on the first
    // video entry by checking which points at a matching chunk header.
    let mut base: Option<usize> = None;
    for e in entries.chunks_exact(16) {
        let id = cc_at(e, 0)?;
        if !ids.contains(&id) {
            continue;
        }
        let offset = u32_at(e, 8)? as usize;
        let size = u32_at(e, 12)? as usize;
        let b = match base {
            Some(b) => b,
            None => {
                let rel = movi.start + 8;
                let b = [rel, 0]
                    .into_iter()
                    .find(|b| cc_at(data, b + offset) == Some(id))?;
                base = Some(b);
                b
            }
        };
        let at = b.checked_add(offset)?;
        if cc_at(data, at) != Some(id) || u32_at(data, at + 4)? as usize != size {
            return None;
        }
        let start = at + 8;
        let end = start.checked_add(size)?;
        if end > data.len() {
            return None;
        }
        out.push(start..end);
    }
    Some(out)
}

/// Main header, and the first video stream's header and format.
pub(super) fn parse_hdrl(r: &Reader, data: &[u8], range: Range<usize>) -> Result<(AviInfo, usize)> {
    let mut avih: Option<Range<usize>> = None;
    let mut streams: Vec<StreamHeader> = Vec::new();
    for c in chunks(r, data, range, "hdrl")? {
        match &c.id {
            b"avih" => avih = Some(c.body.clone()),
            b"LIST" if list_type(data, &c).as_ref() == Some(b"strl") => {
                let mut sh: Option<StreamHeader> = None;
                let mut format = None;
                for s in chunks(r, data, c.body.start + 4..c.body.end, "strl")? {
                    match &s.id {
                        b"strh" => {
                            let d = &data[s.body.clone()];
                            let short = || {
                                r.bad(format!(
                                    "stream {} header 'strh' is {} bytes, too short",
                                    streams.len(),
                                    d.len()
                                ))
                            };
                            sh = Some(StreamHeader {
                                kind: cc_at(d, 0).ok_or_else(short)?,
                                handler: cc_at(d, 4).ok_or_else(short)?,
                                scale: u32_at(d, 20).ok_or_else(short)?,
                                rate: u32_at(d, 24).ok_or_else(short)?,
                                format: None,
                            })
                        }
                        b"strf" => format = Some(s.body.clone()),
                        _ => {}
                    }
                }
                let mut sh = sh.ok_or_else(|| {
                    r.bad(format!("stream {} has no 'strh' header", streams.len()))
                })?;
                sh.format = format;
                streams.push(sh);
            }
            _ => {}
        }
    }
    let avih = avih.ok_or_else(|| r.bad("no main header 'avih'"))?;
    let a = &data[avih];
    let short = || {
        r.bad(format!(
            "main header 'avih' is {} bytes, expected 56",
            a.len()
        ))
    };
    let us_per_frame = u32_at(a, 0).ok_or_else(short)?;
    let declared_frames = u32_at(a, 16).ok_or_else(short)?;
    let avih_w = u32_at(a, 32).ok_or_else(short)?;
    let avih_h = u32_at(a, 36).ok_or_else(short)?;
    let (stream, sh) = streams
        .iter()
        .enumerate()
        .find(|(_, s)| &s.kind == b"vids")
        .ok_or_else(|| r.bad("no video stream ('strh' of type 'vids')"))?;
    let f = sh
        .format
        .clone()
        .ok_or_else(|| r.bad(format!("video stream {stream} has no format 'strf'")))?;
    let bih = &data[f];
    let fshort = || {
        r.bad(format!(
            "video format 'strf' is {} bytes, expected a 40-byte BITMAPINFOHEADER",
            bih.len()
        ))
    };
    let bi_size = u32_at(bih, 0).ok_or_else(fshort)? as usize;
    let bi_w = i32_at(bih, 4).ok_or_else(fshort)?;
    let bi_h = i32_at(bih, 8).ok_or_else(fshort)?;
    let bit_count = u16_at(bih, 14).ok_or_else(fshort)?;
    let compression = cc_at(bih, 16).ok_or_else(fshort)?;
    let clr_used = u32_at(bih, 32).ok_or_else(fshort)?;
    let (width, height, bottom_up) = if bi_w != 0 && bi_h != 0 {
        (bi_w.unsigned_abs(), bi_h.unsigned_abs(), bi_h > 0)
    } else {
        (avih_w, avih_h, true)
    };
    if bi_w < 0 || width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(r.bad(format!(
            "frame size {bi_w}x{bi_h} (main header {avih_w}x{avih_h}): expected 1 to {MAX_SIDE} pixels a side"
        )));
    }
    let mut palette = Vec::new();
    if bit_count == 8 && compression == [0; 4] {
        let entries = if clr_used == 0 {
            256
        } else {
            clr_used as usize
        };
        let start = bi_size.max(40);
        if entries > 256 {
            return Err(r.bad(format!(
                "palette of {entries} colours: at most 256 for 8-bit frames"
            )));
        }
        for i in 0..entries {
            match bih.get(start + 4 * i..start + 4 * i + 3) {
                Some(q) => palette.push([q[2], q[1], q[0]]),
                None => break,
            }
        }
    }
    let period_s = if sh.scale > 0 && sh.rate > 0 {
        sh.scale as f64 / sh.rate as f64
    } else {
        us_per_frame as f64 / 1e6
    };
    if !(period_s > 0.0 && period_s <= 3600.0) {
        return Err(r.bad(format!(
            "frame period is zero or absurd (strh dwScale {} / dwRate {}, avih {} µs per frame)",
            sh.scale, sh.rate, us_per_frame
        )));
    }
    Ok((
        AviInfo {
            width,
            height,
            bottom_up,
            declared_frames,
            frame_period: Duration::from_secs_f64(period_s),
            handler: sh.handler,
            compression,
            bit_count,
            palette,
        },
        stream,
    ))
}
