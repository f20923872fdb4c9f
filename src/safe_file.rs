//! Opening input files without trusting what the path names: a FIFO, a device (`/dev/zero`), a
//! socket or a folder is refused before a single read (a read from a FIFO blocks forever, one
//! from `/dev/zero` never ends), and a file larger than its reader's cap is refused by its size
//! before anything is allocated for it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SafeFileError {
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: is {kind}, expected a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: {size} bytes, more than the {limit} bytes accepted for {what}", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
        what: &'static str,
    },
    #[error("{}: read failed: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SafeFileError {
    /// What went wrong, without the path (for errors that name the file themselves).
    pub fn reason(&self) -> String {
        match self {
            Self::Open { source, .. } => format!("cannot open: {source}"),
            Self::NotRegular { kind, .. } => format!("is {kind}, expected a regular file"),
            Self::TooLarge {
                size, limit, what, ..
            } => format!("{size} bytes, more than the {limit} bytes accepted for {what}"),
            Self::Read { source, .. } => format!("read failed: {source}"),
        }
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading only if it is a regular file (symbolic links followed), and returns
/// it with its size. The open itself cannot block: it is non-blocking, and the type is checked
/// on the opened descriptor, so the path cannot be swapped between check and use.
pub fn open_regular(path: &Path) -> Result<(File, u64), SafeFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| SafeFileError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| SafeFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(SafeFileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    // Regular files ignore O_NONBLOCK; nothing to undo.
    Ok((file, meta.len()))
}

/// Fails unless `path` is a regular file; for readers (dicom-rs) that open the path themselves.
pub fn check_regular(path: &Path) -> Result<u64, SafeFileError> {
    open_regular(path).map(|(_, size)| size)
}

/// Reads a whole regular file of at most `limit` bytes. A file that grows past the limit while
/// being read is refused too: never more than `limit + 1` bytes are read.
pub fn read_capped(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, SafeFileError> {
    let (file, size) = open_regular(path)?;
    let too_large = |size| SafeFileError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        what,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SafeFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_read_and_special_ones_are_refused_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_capped(&f, 5, "a test").unwrap(), b"12345");
        let e = read_capped(&f, 4, "a test").unwrap_err().to_string();
        assert!(
            e.contains("5 bytes") && e.contains("4 bytes accepted for a test"),
            "{e}"
        );

        let e = check_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero: is a character device"), "{e}");
        let e = check_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");

        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Would block forever on a plain open: refused at once.
        let e = read_capped(&fifo, 100, "a test").unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
    }
}
