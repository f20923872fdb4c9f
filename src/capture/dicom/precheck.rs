//! What is checked in a DICOM file before dicom-rs reads it: the transfer syntax from the file
//! meta group alone, and every element length against the bytes left in the file.
//!
//! Lengths: dicom-rs allocates a value's declared length before reading it, so one
//! damaged length field (a flipped byte in a 2-byte length that shifts every element after it)
//! made it allocate gigabytes and spend seconds failing. This walk reads only element headers,
//! seeks over values, and stops at the first length that cannot fit.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// A length that does not fit, in words for the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LengthFault {
    pub offset: u64,
    pub tag: (u16, u16),
    pub declared: u64,
    pub remaining: u64,
}

impl std::fmt::Display for LengthFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "element ({:04X},{:04X}) at byte {} declares {} bytes but only {} remain in the file",
            self.tag.0, self.tag.1, self.offset, self.declared, self.remaining
        )
    }
}

/// The error for a length that does not fit: pixel data running past the end of the file is the
/// usual damage (a copy cut short) and reads as truncated pixel data; anything else as damage.
pub(super) fn fault_error(path: &Path, fault: &LengthFault) -> super::DicomError {
    if fault.tag == PIXEL_DATA {
        super::DicomError::DamagedPixelData {
            path: path.to_path_buf(),
            reason: format!("truncated: {fault}"),
        }
    } else {
        super::DicomError::Read {
            path: path.to_path_buf(),
            reason: format!("damaged element length: {fault}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

/// VRs whose explicit form has a 2-byte length (PS3.5 7.1.2). Every other pair of bytes, a
/// VR this list does not name included, has 2 reserved bytes and a 4-byte length: dicom-rs reads
/// an unknown VR as UN, so a flipped VR byte ("UI" -> "~I") makes it read 4 length bytes from
/// the value, and this walk must read the same length to check it.
fn has_short_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// The VR dicom-rs gives an implicit-VR element: pixel and overlay data are OW, others come from
/// the dictionary (its first choice for "US or SS"-style entries), unknown tags are UN.
fn implicit_vr(tag: (u16, u16)) -> VR {
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(Tag(tag.0, tag.1))
        .map_or(VR::UN, |e| e.vr().relaxed())
}

/// The bytes dicom-rs actually reads for a value of `length` bytes: binary numbers are read as
/// whole numbers (`length / size` of them), so a length that is not a multiple of the number's
/// size leaves the rest in the stream, where dicom-rs reads it as the next element's header.
/// A damaged UI -> UL VR with an odd text length did that, and the "header" then declared a
/// 775 MB value (fuzz/regressions/dicom/timeout-c1dc...).
fn bytes_read(vr: VR, length: u32) -> u64 {
    let size: u32 = match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::UL | VR::SL | VR::FL | VR::OF | VR::OL | VR::AT => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    };
    u64::from(length - length % size)
}

/// Walks the file meta group and the data set of the file at `file`, `size` bytes long, whose
/// data set uses `transfer_syntax`. Ok(()) also for files this walk does not understand (no
/// "DICM" marker): dicom-rs refuses those in its own words. Err only for a length that cannot
/// fit, or an I/O error (as a fault at the offset reached).
pub fn check_lengths(file: File, size: u64, transfer_syntax: &str) -> Result<(), LengthFault> {
    walk(file, size, transfer_syntax, false)
}

/// The same walk over the file meta group only (always explicit VR little endian), for before
/// the transfer syntax is known: dicom-rs's meta group reader, which `peek_transfer_syntax`
/// uses, allocates each declared length too (a zeroed VR in (0002,0012) made it take 775 MB).
pub fn check_meta_lengths(file: &File, size: u64) -> Result<(), LengthFault> {
    let file = file.try_clone().map_err(|_| LengthFault {
        offset: 0,
        tag: (0, 0),
        declared: 0,
        remaining: size,
    })?;
    walk(file, size, "", true)
}

fn walk(file: File, size: u64, transfer_syntax: &str, meta_only: bool) -> Result<(), LengthFault> {
    let mut r = BufReader::new(file);
    let mut magic = [0u8; 132];
    if size < 132
        || r.seek(SeekFrom::Start(0)).is_err()
        || r.read_exact(&mut magic).is_err()
        || &magic[128..132] != b"DICM"
    {
        return Ok(());
    }
    let data_syntax = match transfer_syntax.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2" => Syntax::ImplicitLittle,
        "1.2.840.10008.1.2.2" => Syntax::ExplicitBig,
        _ => Syntax::ExplicitLittle,
    };
    let mut pos: u64 = 132;
    let mut in_encapsulated = false;
    // Where the meta group ends: dicom-rs reads it by its group length (0002,0000), element
    // after element in explicit VR little endian whatever their tags say, not by group number.
    let mut meta_end: Option<u64> = None;
    let io_fault = |pos: u64| LengthFault {
        offset: pos,
        tag: (0, 0),
        declared: 0,
        remaining: size.saturating_sub(pos),
    };
    while pos < size {
        let mut head = [0u8; 8];
        if size - pos < 8 {
            // A trailing fragment shorter than an element header: dicom-rs reports it.
            return Ok(());
        }
        r.read_exact(&mut head).map_err(|_| io_fault(pos))?;
        // The meta group (0002) is always explicit little endian; peek the group to choose.
        let group_le = u16::from_le_bytes([head[0], head[1]]);
        let in_meta = meta_end.map_or(group_le == 0x0002, |end| pos < end);
        if meta_only && !in_meta {
            return Ok(());
        }
        let syntax = if in_meta {
            Syntax::ExplicitLittle
        } else {
            data_syntax
        };
        let u16_at = |b: [u8; 2]| match syntax {
            Syntax::ExplicitBig => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        };
        let u32_at = |b: [u8; 4]| match syntax {
            Syntax::ExplicitBig => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        };
        let tag = (u16_at([head[0], head[1]]), u16_at([head[2], head[3]]));
        let offset = pos;
        pos += 8;
        let (length, sequence, vr) = if tag.0 == 0xFFFE {
            // Item and delimiters: tag + 4-byte length, no VR, in every syntax.
            let length = u32_at([head[4], head[5], head[6], head[7]]);
            match tag.1 {
                0xE000 if in_encapsulated => (length, false, VR::OB),
                // An item of a sequence: its elements follow, walk them.
                0xE000 => (length, true, VR::SQ),
                0xE0DD => {
                    in_encapsulated = false;
                    (0, false, VR::OB)
                }
                _ => (0, false, VR::OB),
            }
        } else if syntax == Syntax::ImplicitLittle {
            let length = u32_at([head[4], head[5], head[6], head[7]]);
            let vr = implicit_vr(tag);
            (length, vr == VR::SQ, vr)
        } else {
            let vr_bytes = [head[4], head[5]];
            let vr = VR::from_binary(vr_bytes).unwrap_or(VR::UN);
            if has_short_length(vr_bytes) {
                (u32::from(u16_at([head[6], head[7]])), false, vr)
            } else {
                if size - pos < 4 {
                    return Ok(()); // a header cut short: dicom-rs reports it
                }
                let mut more = [0u8; 4];
                r.read_exact(&mut more).map_err(|_| io_fault(pos))?;
                pos += 4;
                (u32_at(more), vr == VR::SQ, vr)
            }
        };
        if offset == 132 && tag == (0x0002, 0x0000) && length == 4 && size - pos >= 4 {
            let mut value = [0u8; 4];
            r.read_exact(&mut value).map_err(|_| io_fault(pos))?;
            pos += 4;
            meta_end = Some(pos + u64::from(u32::from_le_bytes(value)));
            continue;
        }
        if length == UNDEFINED {
            // Undefined length: a sequence or encapsulated pixel data; its contents follow.
            if tag == PIXEL_DATA {
                in_encapsulated = true;
            }
            continue;
        }
        let remaining = size - pos;
        if u64::from(length) > remaining {
            return Err(LengthFault {
                offset,
                tag,
                declared: length.into(),
                remaining,
            });
        }
        if !sequence {
            let read = bytes_read(vr, length);
            r.seek(SeekFrom::Current(read as i64))
                .map_err(|_| io_fault(pos))?;
            pos += read;
        }
    }
    Ok(())
}

/// The transfer syntax from the file meta group only; `None` when that cannot be read (the full
/// read then reports why).
pub(super) fn peek_transfer_syntax(path: &Path) -> Option<String> {
    let read = || -> Option<String> {
        let mut file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
        let start = file.fill_buf().ok()?;
        // The 128-byte preamble is optional in practice; the meta group starts at "DICM".
        let skip = if start.len() >= 132 && &start[128..132] == b"DICM" {
            128
        } else if start.starts_with(b"DICM") {
            0
        } else {
            return None;
        };
        file.consume(skip);
        let meta = dicom_object::FileMetaTable::from_reader(file).ok()?;
        Some(meta.transfer_syntax().to_string())
    };
    crate::contained_panic::contain(read).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file: preamble, DICM, a meta element, then `body` (explicit VR little endian).
    fn file_with(body: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        // (0002,0010) UI, 2-byte length 20.
        bytes.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I', 20, 0]);
        bytes.extend_from_slice(b"1.2.840.10008.1.2.1\0");
        bytes.extend_from_slice(body);
        f.write_all(&bytes).unwrap();
        (f, bytes.len() as u64)
    }

    fn check(body: &[u8]) -> Result<(), LengthFault> {
        let (f, size) = file_with(body);
        check_lengths(f.reopen().unwrap(), size, "1.2.840.10008.1.2.1")
    }

    #[test]
    fn fitting_lengths_pass_and_an_oversized_one_is_named() {
        // (0028,0010) US 2 bytes.
        let rows = [0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 0x40, 0x00];
        assert_eq!(check(&rows), Ok(()));
        // The same element with its length flipped to 0x4002.
        let flipped = [0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0x40, 0x40, 0x00];
        let fault = check(&flipped).unwrap_err();
        assert_eq!(fault.tag, (0x0028, 0x0010));
        assert_eq!(fault.declared, 0x4002);
        assert!(fault.to_string().contains("(0028,0010)"), "{fault}");
        // A 4-byte OB length of 0x7F000000.
        let ob = [0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0, 0, 0, 0x7F];
        assert_eq!(check(&ob).unwrap_err().declared, 0x7F00_0000);
    }

    /// A flipped VR byte ("UI" -> "~I"): dicom-rs reads the unknown VR as UN, with 2 reserved
    /// bytes and a 4-byte length taken from the value's text (0x2E333231, 775 MB: what 96
    /// mutations of tests/dicom_mutations.rs allocated). The walk reads the same length.
    #[test]
    fn an_unknown_vr_has_a_four_byte_length_as_dicom_rs_reads_it() {
        let mut uid = vec![0x20, 0x00, 0x0D, 0x00, b'~', b'I', 8, 0];
        uid.extend_from_slice(b"1.23.4.5");
        let fault = check(&uid).unwrap_err();
        assert_eq!(fault.tag, (0x0020, 0x000D));
        assert_eq!(fault.declared, u64::from(u32::from_le_bytes(*b"1.23")));
        // Known short and long VRs keep their own forms.
        let mut short = vec![0x20, 0x00, 0x0D, 0x00, b'U', b'I', 8, 0];
        short.extend_from_slice(b"1.23.4.5");
        assert_eq!(check(&short), Ok(()));
        let mut long = vec![0x09, 0x00, 0x10, 0x10, b'U', b'T', 0, 0, 4, 0, 0, 0];
        long.extend_from_slice(b"text");
        assert_eq!(check(&long), Ok(()));
    }

    /// The meta group is checked on its own, before the transfer syntax is read from it: a
    /// zeroed VR there (an unknown VR: 4-byte length) is caught, and a data set element that
    /// would not fit is left to the full walk.
    #[test]
    fn the_meta_group_is_checked_before_the_transfer_syntax_is_read() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0x02, 0x00, 0x12, 0x00, 0, 0, 0, 0]);
        bytes.extend_from_slice(b"1.2.826.0.1.3680043");
        f.write_all(&bytes).unwrap();
        let size = bytes.len() as u64;
        let fault = check_meta_lengths(&f.reopen().unwrap(), size).unwrap_err();
        assert_eq!(fault.tag, (0x0002, 0x0012));
        let (g, size) = file_with(&[0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0x40, 0x40, 0x00]);
        assert_eq!(check_meta_lengths(&g.reopen().unwrap(), size), Ok(()));
        assert!(check_lengths(g.reopen().unwrap(), size, "1.2.840.10008.1.2.1").is_err());
    }

    /// Found by the `dicom` fuzz target (fuzz/regressions/dicom/): (0002,0002) with its group
    /// damaged to F002 inside the meta group's length, then (0002,0010) with the VR FEFE and a
    /// 4-byte length of 4.3 GB. dicom-rs's meta reader reads by the group length, not by group
    /// number, so the walk does too.
    #[test]
    fn the_meta_group_ends_where_its_group_length_says() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 34, 0, 0, 0]);
        bytes.extend_from_slice(&[0x02, 0xF0, 0x02, 0x00, b'U', b'I', 2, 0, b'1', 0]);
        bytes.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, 0xFE, 0xFE, 0, 0, 0xFE, 0xFE]);
        bytes.extend_from_slice(&[0xFE, 0xFE, b'1', b'.', b'2', 0, 0, 0, 0, 0, 0, 0]);
        f.write_all(&bytes).unwrap();
        let size = bytes.len() as u64;
        let fault = check_meta_lengths(&f.reopen().unwrap(), size).unwrap_err();
        assert_eq!(fault.tag, (0x0002, 0x0010));
        assert_eq!(fault.declared, 0xFEFE_FEFE);
    }

    /// Found by the `dicom` fuzz target (fuzz/regressions/dicom/timeout-c1dc...): (0008,0016)
    /// with its VR damaged from UI to UL and a text length of 26. dicom-rs reads 6 whole u32s
    /// (24 bytes) and takes the 2 bytes left plus the next element as a header with an unknown
    /// VR and a 4-byte length of 775 MB. The walk advances as dicom-rs reads, so it sees that
    /// length too.
    #[test]
    fn numbers_are_read_whole_as_dicom_rs_reads_them() {
        let mut body = vec![0x08, 0x00, 0x16, 0x00, b'U', b'L', 26, 0];
        body.extend_from_slice(b"1.2.840.10008.5.1.4.1.1.7\0");
        body.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, b'U', b'I', 0x40, 0x00]);
        body.extend_from_slice(&[b'1'; 0x40]);
        let fault = check(&body).unwrap_err();
        assert_eq!(fault.tag, (0x0037, 0x0008));
        assert_eq!(
            fault.declared,
            u64::from(u32::from_le_bytes([0x40, 0, b'1', b'1']))
        );
        // The same element with a whole number of u32s passes.
        let mut whole = vec![0x08, 0x00, 0x16, 0x00, b'U', b'L', 8, 0];
        whole.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        whole.extend_from_slice(&[
            0x08, 0x00, 0x18, 0x00, b'U', b'I', 4, 0, b'1', b'.', b'2', 0,
        ]);
        assert_eq!(check(&whole), Ok(()));
        assert_eq!(bytes_read(VR::US, 7), 6);
        assert_eq!(bytes_read(VR::FD, 17), 16);
        assert_eq!(bytes_read(VR::OB, 7), 7);
        assert_eq!(bytes_read(VR::UI, 27), 27);
    }

    #[test]
    fn encapsulated_fragments_and_sequences_are_walked() {
        let mut body = Vec::new();
        // Pixel data, OB, undefined length; an empty offset table item; a 4-byte fragment;
        // the sequence delimiter.
        body.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 1, 2, 3, 4]);
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(check(&body), Ok(()));
        // A fragment claiming more than the file holds.
        let mut bad = body.clone();
        bad[24..28].copy_from_slice(&[0, 0, 0, 0x7F]);
        assert_eq!(check(&bad).unwrap_err().tag, (0xFFFE, 0xE000));
    }
}
