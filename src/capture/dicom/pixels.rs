//! Sample decoding for DICOM replay: lookup tables that turn every possible raw sample word into
//! output bytes (grey windowing, colour scaling, palette colour including segmented tables), and
//! the YBR_FULL to RGB conversion.

use std::path::Path;

use dicom_core::value::{InMemFragment, PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, Tag};

use super::{get_f64, get_f64s, DicomError};

/// How the stored bits of a sample are laid out (PS3.5 8.1.1).
#[derive(Debug, Clone, Copy)]
pub(super) struct SampleBits {
    pub(super) allocated: u16,
    pub(super) stored: u16,
    pub(super) high_bit: u16,
    pub(super) signed: bool,
}

impl SampleBits {
    /// The stored value held in a raw sample word.
    fn value(self, raw: u32) -> i64 {
        let shift = u32::from(self.high_bit + 1 - self.stored);
        let mask = (1u32 << self.stored) - 1;
        let value = i64::from((raw >> shift) & mask);
        if self.signed && value >= 1 << (self.stored - 1) {
            value - (1 << self.stored)
        } else {
            value
        }
    }

    fn min_max(self) -> (i64, i64) {
        if self.signed {
            (-(1 << (self.stored - 1)), (1 << (self.stored - 1)) - 1)
        } else {
            (0, (1 << self.stored) - 1)
        }
    }

    /// Every raw sample word, as an index into a lookup table of `1 << allocated` entries.
    fn raw_words(self) -> std::ops::Range<u32> {
        0..1u32 << self.allocated
    }
}

/// Maps every possible raw sample word (8- or 16-bit) straight to output bytes, so decoding a
/// frame is a table look-up per sample whatever the bit depth, windowing or palette.
#[derive(Debug, Clone)]
pub(super) enum SampleMap {
    Grey(Vec<u8>),
    Palette(Vec<[u8; 3]>),
    /// Per-channel scaling of colour samples; YBR is converted after scaling.
    Colour(Vec<u8>),
}

/// YBR_FULL (full-range ITU-R BT.601, as in JPEG/JFIF) to RGB, PS3.3 C.7.6.3.1.2.
pub(super) fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = f64::from(y);
    let cb = f64::from(cb) - 128.0;
    let cr = f64::from(cr) - 128.0;
    let to_u8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    [
        to_u8(y + 1.402 * cr),
        to_u8(y - 0.344_136 * cb - 0.714_136 * cr),
        to_u8(y + 1.772 * cb),
    ]
}

/// Grey lookup: rescale, then the first Window Center/Width when present (the DICOM linear VOI
/// function, PS3.3 C.11.2.1.2.1), else the whole range Bits Stored can hold, so 8-bit data pass
/// unchanged and 16-bit data keep their proportions; MONOCHROME1 is inverted last.
pub(super) fn grey_lut(
    obj: &InMemDicomObject,
    bits: SampleBits,
    invert: bool,
    path: &Path,
) -> Vec<u8> {
    let slope = get_f64(obj, tags::RESCALE_SLOPE)
        .filter(|s| *s != 0.0)
        .unwrap_or(1.0);
    let intercept = get_f64(obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    let centre = get_f64s(obj, tags::WINDOW_CENTER).and_then(|v| v.first().copied());
    let width = get_f64s(obj, tags::WINDOW_WIDTH).and_then(|v| v.first().copied());
    let window = match (centre, width) {
        (Some(c), Some(w)) if c.is_finite() && w.is_finite() && w >= 1.0 => Some((c, w)),
        (None, None) => None,
        _ => {
            tracing::warn!(file = %path.display(), "unusable Window Center/Width: using the full stored range");
            None
        }
    };
    let (min, max) = bits.min_max();
    let (a, b) = (
        min as f64 * slope + intercept,
        max as f64 * slope + intercept,
    );
    let (lo, hi) = (a.min(b), a.max(b));
    bits.raw_words()
        .map(|raw| {
            let x = bits.value(raw) as f64 * slope + intercept;
            let y = match window {
                Some((c, w)) => {
                    if x <= c - 0.5 - (w - 1.0) / 2.0 {
                        0.0
                    } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                        255.0
                    } else {
                        ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
                    }
                }
                None if hi > lo => (x - lo) / (hi - lo) * 255.0,
                None => 0.0,
            };
            let grey = y.round().clamp(0.0, 255.0) as u8;
            if invert {
                255 - grey
            } else {
                grey
            }
        })
        .collect()
}

/// Colour samples scaled from Bits Stored to 8 bits (identity for 8-bit data).
pub(super) fn colour_lut(bits: SampleBits) -> Vec<u8> {
    let unsigned = SampleBits {
        signed: false,
        ..bits
    };
    let max = ((1u32 << bits.stored) - 1) as f64;
    bits.raw_words()
        .map(|raw| {
            (unsigned.value(raw) as f64 * 255.0 / max)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect()
}

/// One channel of a palette: its descriptor and its entries scaled to 8 bits.
struct PaletteChannel {
    first_mapped: i64,
    entries: Vec<u8>,
}

impl PaletteChannel {
    /// Values below the first mapped value take the first entry, above the table the last
    /// (PS3.3 C.7.6.3.1.5).
    fn look_up(&self, value: i64) -> u8 {
        let last = self.entries.len().saturating_sub(1);
        let index = (value - self.first_mapped).clamp(0, last as i64) as usize;
        self.entries.get(index).copied().unwrap_or(0)
    }
}

/// Palette lookup for every raw sample word, from the three channels' descriptors and (plain or
/// segmented) data.
pub(super) fn palette_lut(
    obj: &InMemDicomObject,
    bits: SampleBits,
    path: &Path,
) -> Result<Vec<[u8; 3]>, DicomError> {
    let channels = [
        (
            "red",
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        ),
        (
            "green",
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        ),
        (
            "blue",
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        ),
    ];
    let mut decoded = Vec::with_capacity(3);
    for (name, descriptor, data, segmented) in channels {
        let channel =
            palette_channel(obj, descriptor, data, segmented, bits.signed).map_err(|reason| {
                DicomError::Palette {
                    path: path.to_path_buf(),
                    reason: format!("{name}: {reason}"),
                }
            })?;
        decoded.push(channel);
    }
    let [red, green, blue] =
        <[PaletteChannel; 3]>::try_from(decoded).map_err(|_| DicomError::Palette {
            path: path.to_path_buf(),
            reason: "three channels expected".into(),
        })?;
    Ok(bits
        .raw_words()
        .map(|raw| {
            let value = bits.value(raw);
            [
                red.look_up(value),
                green.look_up(value),
                blue.look_up(value),
            ]
        })
        .collect())
}

fn palette_channel(
    obj: &InMemDicomObject,
    descriptor_tag: Tag,
    data_tag: Tag,
    segmented_tag: Tag,
    signed_pixels: bool,
) -> Result<PaletteChannel, String> {
    let descriptor = obj
        .get(descriptor_tag)
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .filter(|d| d.len() == 3)
        .ok_or("descriptor (0028,1101-1103) missing or not three numbers")?;
    // Number of entries: 0 stands for 65536 (PS3.3 C.7.6.3.1.5).
    let count = match descriptor[0] {
        0 => 65536,
        n @ 1..=65535 => n as usize,
        n => return Err(format!("descriptor gives {n} entries")),
    };
    // The first mapped value follows the pixel representation; a US-typed descriptor of signed
    // pixels holds it as the 16-bit pattern.
    let first_mapped = if signed_pixels {
        i64::from(descriptor[1] as u16 as i16)
    } else {
        descriptor[1] & 0xFFFF
    };
    let entry_bits = descriptor[2];
    if entry_bits != 8 && entry_bits != 16 {
        return Err(format!(
            "descriptor gives {entry_bits} bits per entry, 8 or 16 expected"
        ));
    }

    let entries: Vec<u16> = if let Some(element) = obj.get(segmented_tag) {
        let words = element_words(element.value()).ok_or("segmented data are not 16-bit words")?;
        expand_segmented_lut(&words, count)?
    } else {
        let element = obj
            .get(data_tag)
            .ok_or("neither plain nor segmented lookup table data present")?;
        if entry_bits == 16 {
            element_words(element.value()).ok_or("data are not 16-bit words")?
        } else {
            let bytes = element_bytes(element.value()).ok_or("data are not bytes or words")?;
            if bytes.len() == 2 * count {
                // One 8-bit entry per 16-bit word: some writers use the low byte, some the high.
                let words: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|p| u16::from_le_bytes([p[0], p[1]]))
                    .collect();
                let high = words.iter().any(|&w| w > 0xFF);
                words
                    .into_iter()
                    .map(|w| if high { w >> 8 } else { w & 0xFF })
                    .collect()
            } else {
                // Packed two entries per word (the standard layout); the last byte may be padding.
                bytes.iter().map(|&b| u16::from(b)).collect()
            }
        }
    };
    if entries.len() < count {
        return Err(format!("{} entries found, {count} declared", entries.len()));
    }
    let entries = entries[..count]
        .iter()
        .map(|&e| {
            if entry_bits == 16 {
                // 16-bit entries to 8 bits, rounded: 0xFFFF → 255, 0x8080 → 128.
                ((u32::from(e) * 255 + 32767) / 65535) as u8
            } else {
                e.min(255) as u8
            }
        })
        .collect();
    Ok(PaletteChannel {
        first_mapped,
        entries,
    })
}

/// Expands Segmented Palette Color Lookup Table Data (PS3.3 C.7.9.2): discrete segments list
/// values, linear segments interpolate from the previous segment's last value, indirect segments
/// replay earlier segments found by a byte offset from the start of the data.
pub(super) fn expand_segmented_lut(words: &[u16], count: usize) -> Result<Vec<u16>, String> {
    let mut out = Vec::with_capacity(count);
    expand_segments(words, 0, None, &mut out, count, true)?;
    if out.len() < count {
        return Err(format!(
            "segments expand to {} entries, {count} declared",
            out.len()
        ));
    }
    Ok(out)
}

/// Expands segments from `words[start..]`: all of them, or `limit` of them (for indirect copies,
/// which may not nest).
fn expand_segments(
    words: &[u16],
    start: usize,
    limit: Option<usize>,
    out: &mut Vec<u16>,
    count: usize,
    allow_indirect: bool,
) -> Result<(), String> {
    let word = |i: usize| {
        words
            .get(i)
            .copied()
            .ok_or_else(|| format!("segment data end at word {i}"))
    };
    let mut position = start;
    let mut done = 0usize;
    while position < words.len() && limit.is_none_or(|l| done < l) {
        let opcode = word(position)?;
        let length = usize::from(word(position + 1)?);
        match opcode {
            0 => {
                let values = words
                    .get(position + 2..position + 2 + length)
                    .ok_or("discrete segment runs past the data")?;
                out.extend_from_slice(values);
                position += 2 + length;
            }
            1 => {
                let y0 = f64::from(*out.last().ok_or("linear segment with no previous value")?);
                let y1 = f64::from(word(position + 2)?);
                for step in 1..=length {
                    let y = y0 + (y1 - y0) * step as f64 / length as f64;
                    out.push(y.round() as u16);
                }
                position += 3;
            }
            2 if allow_indirect => {
                let offset =
                    u32::from(word(position + 2)?) | (u32::from(word(position + 3)?) << 16);
                if offset % 2 != 0 {
                    return Err(format!(
                        "indirect segment offset {offset} is not a word boundary"
                    ));
                }
                expand_segments(words, offset as usize / 2, Some(length), out, count, false)?;
                position += 4;
            }
            2 => return Err("indirect segment inside an indirect copy".into()),
            other => return Err(format!("unknown segment opcode {other}")),
        }
        if out.len() > count {
            return Err(format!("segments expand past the {count} declared entries"));
        }
        done += 1;
    }
    if let Some(l) = limit {
        if done < l {
            return Err(format!(
                "indirect segment asks for {l} segments, {done} found"
            ));
        }
    }
    Ok(())
}

/// An OW/US element's values as 16-bit words (little-endian when stored as bytes).
fn element_words(value: &Value<InMemDicomObject, InMemFragment>) -> Option<Vec<u16>> {
    match value {
        Value::Primitive(PrimitiveValue::U16(words)) => Some(words.to_vec()),
        Value::Primitive(PrimitiveValue::I16(words)) => {
            Some(words.iter().map(|&w| w as u16).collect())
        }
        Value::Primitive(PrimitiveValue::U8(bytes)) => Some(
            bytes
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect(),
        ),
        _ => None,
    }
}

/// An OB/OW element's bytes in file (little-endian) order.
fn element_bytes(value: &Value<InMemDicomObject, InMemFragment>) -> Option<Vec<u8>> {
    match value {
        Value::Primitive(PrimitiveValue::U8(bytes)) => Some(bytes.to_vec()),
        Value::Primitive(PrimitiveValue::U16(words)) => {
            Some(words.iter().flat_map(|w| w.to_le_bytes()).collect())
        }
        _ => None,
    }
}
