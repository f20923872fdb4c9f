//! Live capture from a V4L2 device (frame grabber or USB capture of the scanner's video output)
//! with mmap streaming. Negotiates one of the formats carts deliver (YUYV, UYVY, NV12, YU12, GREY,
//! RGB3, BGR3, MJPG; converters in `convert`), preferring one the device offers natively at the
//! configured size; logs what it got, reads with a timeout, and reports a lost device (unplugged:
//! ENODEV and friends) as `Disconnected` so the pipeline marks the estimate stale and reopens it
//! with backoff. When the buffer flags say the timestamps are MONOTONIC, the driver's capture time
//! becomes the frame's `captured_at` and media time, so sampling and latency follow the device's
//! own clock; otherwise the dequeue time stands in. Driver sequence numbers become frame numbers,
//! so frames the driver dropped show as gaps. `emu_frames` writes the frames the test device
//! (tools/v4l2-emu) serves; `probe` is `echonet probe-capture`.

pub mod convert;
pub mod emu_frames;
pub mod probe;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use v4l::buffer::{Flags, Type};
use v4l::framesize::FrameSizeEnum;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::Capture;
use v4l::{Device, FourCC};

pub use convert::{decode_buffer, supported_names, Negotiated, SUPPORTED};

use super::{FrameSource, SourceError, SourceInfo};
use crate::frame::{Frame, SourceGeometry};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    /// Device node. Default `/dev/video0`.
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// Requested size in pixels; the driver may adjust it (the negotiated size is logged).
    /// Default: keep the device's current size.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// Pixel format to insist on: YUYV, UYVY, NV12, YU12, GREY, RGB3, BGR3 or MJPG. Default: the
    /// first of these (in that order) the device offers natively at the size, else the first it
    /// offers at all.
    #[serde(default)]
    pub fourcc: Option<String>,
    /// Longest wait for one frame, ms. Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// mmap buffers. Default 4.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_buffers() -> u32 {
    4
}

impl Default for V4l2Config {
    fn default() -> Self {
        Self {
            device: default_device(),
            width: None,
            height: None,
            fourcc: None,
            timeout_ms: default_timeout_ms(),
            buffers: default_buffers(),
        }
    }
}

/// Frame sizes a device offers for one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRange {
    Discrete {
        width: u32,
        height: u32,
    },
    Stepwise {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
}

impl SizeRange {
    pub fn contains(&self, width: u32, height: u32) -> bool {
        match *self {
            SizeRange::Discrete {
                width: w,
                height: h,
            } => (w, h) == (width, height),
            SizeRange::Stepwise { min, max, step } => {
                let fits = |v: u32, lo: u32, hi: u32, st: u32| {
                    (lo..=hi).contains(&v) && (v - lo).is_multiple_of(st.max(1))
                };
                fits(width, min.0, max.0, step.0) && fits(height, min.1, max.1, step.1)
            }
        }
    }
}

/// One pixel format a device offers, with its sizes (empty when the driver does not list them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFormat {
    pub fourcc: [u8; 4],
    pub description: String,
    pub sizes: Vec<SizeRange>,
}

/// The format negotiation settled on, and whether the device offers it natively at the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatChoice {
    pub fourcc: [u8; 4],
    pub native_at_size: bool,
}

/// Picks the pixel format: the configured one if any (it must be offered), else among the
/// decodable formats the device offers, the first in [`SUPPORTED`] order that it lists at
/// `size` (no scaling or cropping by the driver), else the first it offers at all.
pub fn choose_format(
    offered: &[OfferedFormat],
    wanted: Option<[u8; 4]>,
    size: (u32, u32),
) -> Result<FormatChoice, String> {
    let names = || {
        offered
            .iter()
            .map(|f| String::from_utf8_lossy(&f.fourcc).into_owned())
            .collect::<Vec<_>>()
    };
    let candidates: Vec<&OfferedFormat> = match wanted {
        Some(w) => offered.iter().filter(|f| f.fourcc == w).collect(),
        None => SUPPORTED
            .iter()
            .filter_map(|s| offered.iter().find(|f| &f.fourcc == *s))
            .collect(),
    };
    let Some(first) = candidates.first() else {
        return Err(match wanted {
            Some(w) => format!(
                "fourcc {} was asked for (source.v4l2.fourcc) but the device offers {:?}",
                String::from_utf8_lossy(&w),
                names()
            ),
            None => format!(
                "the device offers {:?}, none of which this build decodes ({})",
                names(),
                supported_names()
            ),
        });
    };
    let native = candidates
        .iter()
        .find(|f| f.sizes.iter().any(|s| s.contains(size.0, size.1)));
    Ok(match native {
        Some(f) => FormatChoice {
            fourcc: f.fourcc,
            native_at_size: true,
        },
        None => FormatChoice {
            fourcc: first.fourcc,
            native_at_size: false,
        },
    })
}

/// Every format the device lists, with its frame sizes.
pub fn offered_formats(dev: &Device) -> std::io::Result<Vec<OfferedFormat>> {
    Ok(dev
        .enum_formats()?
        .into_iter()
        .map(|f| {
            // A driver that cannot list sizes still offers the format; it is just not "native".
            let sizes = dev
                .enum_framesizes(f.fourcc)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match s.size {
                    FrameSizeEnum::Discrete(d) => SizeRange::Discrete {
                        width: d.width,
                        height: d.height,
                    },
                    FrameSizeEnum::Stepwise(s) => SizeRange::Stepwise {
                        min: (s.min_width, s.min_height),
                        max: (s.max_width, s.max_height),
                        step: (s.step_width, s.step_height),
                    },
                })
                .collect();
            OfferedFormat {
                fourcc: f.fourcc.repr,
                description: f.description,
                sizes,
            }
        })
        .collect())
}

/// Counters of what the driver delivered, for `probe-capture` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    /// Frames missing from the driver's sequence numbers (dropped before this process saw them).
    pub sequence_gaps: u64,
    /// Buffers refused: flagged corrupt, empty, or not decodable.
    pub bad_buffers: u64,
    /// Frames whose timestamps were flagged MONOTONIC, and those that were not.
    pub monotonic_timestamps: u64,
    pub other_timestamps: u64,
}

/// Longest plausible age of a driver timestamp at dequeue; older means a clock the process does
/// not share, and the dequeue time is used instead.
const MAX_TIMESTAMP_AGE: Duration = Duration::from_secs(10);

pub struct V4l2Source {
    config: V4l2Config,
    stream: Option<v4l::io::mmap::Stream<'static>>,
    device: Option<Device>,
    negotiated: Option<Negotiated>,
    native_at_size: bool,
    fps: Option<f64>,
    /// First driver timestamp seen (monotonic path) and first dequeue time (fallback path):
    /// media time counts from them, across reopenings.
    first_timestamp: Option<Duration>,
    first_dequeue: Option<Instant>,
    /// Driver sequence number of this stream's first frame, and the frame number it maps to.
    stream_first_sequence: Option<u32>,
    seq_base: u64,
    last_seq: Option<u64>,
    counts: CaptureCounts,
    /// Why the device was last lost or could not be opened, until it opens again.
    last_failure: Option<String>,
    /// The last read timed out: the stream must be restarted before the next (see next_frame).
    restart_stream: bool,
}

impl V4l2Source {
    pub fn new(config: V4l2Config) -> Self {
        Self {
            config,
            stream: None,
            device: None,
            negotiated: None,
            native_at_size: false,
            fps: None,
            first_timestamp: None,
            first_dequeue: None,
            stream_first_sequence: None,
            seq_base: 0,
            last_seq: None,
            counts: CaptureCounts::default(),
            last_failure: None,
            restart_stream: false,
        }
    }

    fn name(&self) -> String {
        self.config.device.display().to_string()
    }

    fn lost(&self, reason: String) -> SourceError {
        SourceError::Disconnected {
            source_name: self.name(),
            reason,
        }
    }

    fn fatal(&self, reason: String) -> SourceError {
        SourceError::Fatal {
            source_name: self.name(),
            reason,
        }
    }

    /// The negotiated format, once started.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Whether the negotiated format is listed by the device at the negotiated size.
    pub fn native_at_size(&self) -> bool {
        self.native_at_size
    }

    pub fn counts(&self) -> CaptureCounts {
        self.counts
    }

    fn wanted_fourcc(&self) -> Result<Option<[u8; 4]>, SourceError> {
        let Some(f) = &self.config.fourcc else {
            return Ok(None);
        };
        let b = f.as_bytes();
        match SUPPORTED.iter().find(|s| s.as_slice() == b) {
            Some(s) => Ok(Some(**s)),
            None => Err(self.fatal(format!(
                "source.v4l2.fourcc {f:?} is not one of {}",
                supported_names()
            ))),
        }
    }

    fn open(&mut self) -> Result<(), SourceError> {
        let wanted = self.wanted_fourcc()?;
        let path = &self.config.device;
        let dev = Device::with_path(path).map_err(|e| self.lost(format!("cannot open: {e}")))?;
        let offered =
            offered_formats(&dev).map_err(|e| self.lost(format!("cannot list formats: {e}")))?;
        let mut fmt = dev
            .format()
            .map_err(|e| self.lost(format!("cannot read the format: {e}")))?;
        let size = (
            self.config.width.unwrap_or(fmt.width),
            self.config.height.unwrap_or(fmt.height),
        );
        let choice = choose_format(&offered, wanted, size).map_err(|r| self.fatal(r))?;
        fmt.fourcc = FourCC::new(&choice.fourcc);
        (fmt.width, fmt.height) = size;
        let fmt = dev
            .set_format(&fmt)
            .map_err(|e| self.lost(format!("cannot set the format: {e}")))?;
        if fmt.fourcc.repr != choice.fourcc {
            return Err(self.fatal(format!(
                "asked for {} but the driver chose {}",
                String::from_utf8_lossy(&choice.fourcc),
                fmt.fourcc
            )));
        }
        if (fmt.width, fmt.height) != size {
            tracing::warn!(
                device = %path.display(),
                "asked for {}x{}, the driver gave {}x{}", size.0, size.1, fmt.width, fmt.height
            );
        }
        self.fps = dev.params().ok().and_then(|p| {
            let (n, d) = (p.interval.numerator, p.interval.denominator);
            (n > 0 && d > 0).then(|| d as f64 / n as f64)
        });
        let mut stream = v4l::io::mmap::Stream::with_buffers(
            &dev,
            Type::VideoCapture,
            self.config.buffers.max(2),
        )
        .map_err(|e| self.lost(format!("cannot start mmap streaming: {e}")))?;
        // Without a timeout a dequeue blocks forever on a stalled device.
        stream.set_timeout(Duration::from_millis(
            self.config.timeout_ms.clamp(1, 600_000),
        ));
        let negotiated = Negotiated {
            fourcc: choice.fourcc,
            width: fmt.width as usize,
            height: fmt.height as usize,
            stride: fmt.stride as usize,
        };
        self.native_at_size = choice.native_at_size && (fmt.width, fmt.height) == size;
        tracing::info!(
            device = %path.display(), format = %String::from_utf8_lossy(&choice.fourcc),
            width = negotiated.width, height = negotiated.height, stride = negotiated.stride,
            fps = ?self.fps, native_at_size = self.native_at_size,
            "V4L2 format negotiated"
        );
        self.negotiated = Some(negotiated);
        self.stream = Some(stream);
        self.device = Some(dev);
        // Frame numbers go on from the last stream's; the driver restarts its own at STREAMON.
        self.stream_first_sequence = None;
        self.seq_base = self.last_seq.map_or(0, |s| s + 1);
        Ok(())
    }

    /// Stops and frees the stream, then closes the device. The v4l crate's destructors panic when
    /// STREAMOFF or freeing the buffers fails with anything but ENODEV (EIO after a USB reset,
    /// say), and a failing device must not take the daemon down: the stream is stopped here
    /// first, and one that cannot be stopped is left as it is (its buffers stay mapped, a few MB,
    /// and its descriptor open; logged) rather than dropped; a panic while freeing is caught and logged.
    fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            match stream.stop() {
                Err(e) if e.raw_os_error() != Some(libc::ENODEV) => {
                    tracing::warn!(
                        device = %self.config.device.display(),
                        "stopping the stream failed ({e}); its buffers and descriptor are left open"
                    );
                    std::mem::forget(stream);
                }
                _ => {
                    let freed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        drop(stream)
                    }));
                    if freed.is_err() {
                        tracing::warn!(
                            device = %self.config.device.display(),
                            "freeing the stream's buffers failed"
                        );
                    }
                }
            }
        }
        self.device = None;
    }

    /// The frame number of a driver sequence number: continuous across reopenings, gaps where
    /// the driver dropped frames (counted), never going backwards.
    fn frame_number(&mut self, sequence: u32) -> u64 {
        let first = *self.stream_first_sequence.get_or_insert(sequence);
        let mut seq = self.seq_base + sequence.wrapping_sub(first) as u64;
        if let Some(last) = self.last_seq {
            if seq <= last {
                seq = last + 1; // a driver that does not count: number the frames ourselves
            } else {
                self.counts.sequence_gaps += seq - last - 1;
            }
        }
        self.last_seq = Some(seq);
        seq
    }
}

/// CLOCK_MONOTONIC now, the clock V4L2 MONOTONIC timestamps (and `Instant`) are on.
fn monotonic_now() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (r == 0 && ts.tv_sec >= 0 && ts.tv_nsec >= 0)
        .then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// What one dequeued buffer gave, copied out before the next call invalidates the buffer.
struct Dequeued {
    decoded: Result<crate::frame::Image, String>,
    timestamp: Option<Duration>,
    sequence: u32,
}

fn take_buffer(n: &Negotiated, buf: &[u8], meta: &v4l::buffer::Metadata) -> Dequeued {
    let used = meta.bytesused as usize;
    let decoded = if meta.flags.contains(Flags::ERROR) {
        Err("the driver flagged the buffer as corrupt (V4L2_BUF_FLAG_ERROR)".to_string())
    } else if used == 0 {
        Err("the driver returned an empty buffer (bytesused 0)".to_string())
    } else if used > buf.len() {
        Err(format!(
            "bytesused {used} is larger than the {}-byte buffer",
            buf.len()
        ))
    } else {
        decode_buffer(n, &buf[..used])
    };
    let monotonic =
        meta.flags.bits() & Flags::TIMESTAMP_MASK.bits() == Flags::TIMESTAMP_MONOTONIC.bits();
    let (sec, usec) = (meta.timestamp.sec, meta.timestamp.usec);
    let timestamp =
        (monotonic && sec >= 0 && (0..1_000_000).contains(&usec) && (sec, usec) != (0, 0))
            .then(|| Duration::new(sec as u64, usec as u32 * 1000));
    Dequeued {
        decoded,
        timestamp,
        sequence: meta.sequence,
    }
}

/// Errors that mean the device went away (unplugged, driver reset): reopen rather than give up.
fn is_device_loss(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ENXIO | libc::EIO | libc::ESHUTDOWN)
    )
}

impl FrameSource for V4l2Source {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "v4l2",
            name: self.name(),
            format: match &self.negotiated {
                Some(n) => format!(
                    "{} {}x{}",
                    String::from_utf8_lossy(&n.fourcc),
                    n.width,
                    n.height
                ),
                None => "not negotiated".into(),
            },
            nominal_fps: self.fps,
            frame_count: None,
        }
    }

    fn start(&mut self) -> Result<(), SourceError> {
        self.restart_stream = false;
        self.close();
        let opened = self.open();
        self.last_failure = match &opened {
            Ok(()) => None,
            Err(SourceError::Disconnected { reason, .. }) => Some(reason.clone()),
            Err(e) => Some(e.to_string()),
        };
        opened
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.restart_stream {
            // v4l 0.14's `Stream::next` queues the previous buffer again before it dequeues;
            // after a timeout that buffer is still queued, and a second VIDIOC_QBUF of it fails
            // with EINVAL (videobuf2 refuses it) on every later read. Restarting the stream
            // (STREAMOFF, new buffers, STREAMON) is the way out; frame numbers and media time go on.
            self.restart_stream = false;
            self.close();
            self.open()?;
        }
        let (Some(stream), Some(n)) = (self.stream.as_mut(), self.negotiated) else {
            // Say why: the pipeline publishes this as the stale notice's reason.
            return Err(self.lost(match &self.last_failure {
                Some(why) => format!("not reopened yet ({why})"),
                None => "not open".into(),
            }));
        };
        // The buffer is only valid until the next call on the stream: decode it right here.
        let result = stream.next().map(|(buf, meta)| take_buffer(&n, buf, meta));
        // Read together, so a driver timestamp's age maps onto `Instant` without the decode time.
        let dequeued_at = Instant::now();
        let dequeued_mono = monotonic_now();
        let dequeued_wall = SystemTime::now();
        let got = match result {
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.restart_stream = true;
                return Err(SourceError::Timeout {
                    source_name: self.name(),
                    timeout: Duration::from_millis(self.config.timeout_ms),
                });
            }
            Err(e) => {
                // Any other read error: close the stream so the pipeline's reopen starts clean.
                self.close();
                let kind = if is_device_loss(&e) {
                    "the device went away"
                } else {
                    "reading a frame failed"
                };
                let why = format!("{kind}: {e}");
                self.last_failure = Some(why.clone());
                return Err(self.lost(why));
            }
        };
        let seq = self.frame_number(got.sequence);
        let image = match got.decoded {
            Ok(image) => image,
            Err(reason) => {
                self.counts.bad_buffers += 1;
                return Err(SourceError::BadFrame {
                    source_name: self.name(),
                    seq,
                    reason,
                });
            }
        };
        // The driver's capture time, when it is on our clock and plausible.
        let age = got.timestamp.and_then(|ts| {
            let age = dequeued_mono?.checked_sub(ts)?;
            (age <= MAX_TIMESTAMP_AGE).then_some((ts, age))
        });
        let (media_time, captured_at, captured_wall) = match age {
            Some((ts, age)) => {
                self.counts.monotonic_timestamps += 1;
                let first = *self.first_timestamp.get_or_insert(ts);
                (
                    ts.saturating_sub(first),
                    dequeued_at.checked_sub(age).unwrap_or(dequeued_at),
                    dequeued_wall.checked_sub(age).unwrap_or(dequeued_wall),
                )
            }
            None => {
                self.counts.other_timestamps += 1;
                let first = *self.first_dequeue.get_or_insert(dequeued_at);
                (
                    dequeued_at.saturating_duration_since(first),
                    dequeued_at,
                    dequeued_wall,
                )
            }
        };
        Ok(Some(Frame {
            seq,
            media_time,
            captured_at,
            captured_wall,
            image,
            geometry: Arc::new(SourceGeometry::default()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(fourcc: &[u8; 4], sizes: &[(u32, u32)]) -> OfferedFormat {
        OfferedFormat {
            fourcc: *fourcc,
            description: String::new(),
            sizes: sizes
                .iter()
                .map(|&(width, height)| SizeRange::Discrete { width, height })
                .collect(),
        }
    }

    #[test]
    fn negotiation_prefers_a_format_native_at_the_size() {
        // A USB2 grabber: MJPG at 1280x720, YUYV only at 640x480.
        let offered = [
            offer(b"MJPG", &[(640, 480), (1280, 720)]),
            offer(b"YUYV", &[(640, 480)]),
        ];
        let at = |w, h| choose_format(&offered, None, (w, h)).unwrap();
        assert_eq!(
            at(1280, 720),
            FormatChoice {
                fourcc: *b"MJPG",
                native_at_size: true
            }
        );
        assert_eq!(at(640, 480).fourcc, *b"YUYV");
        // No format at this size: the preferred one, which the driver will scale or crop.
        assert_eq!(
            at(1920, 1080),
            FormatChoice {
                fourcc: *b"YUYV",
                native_at_size: false
            }
        );
    }

    #[test]
    fn negotiation_orders_raw_formats_and_honours_the_configured_one() {
        let offered = [
            offer(b"H264", &[(1920, 1080)]),
            offer(b"NV12", &[(1920, 1080)]),
            offer(b"UYVY", &[(1920, 1080)]),
        ];
        assert_eq!(
            choose_format(&offered, None, (1920, 1080)).unwrap().fourcc,
            *b"UYVY"
        );
        assert_eq!(
            choose_format(&offered, Some(*b"NV12"), (1920, 1080))
                .unwrap()
                .fourcc,
            *b"NV12"
        );
        let e = choose_format(&offered, Some(*b"MJPG"), (1920, 1080)).unwrap_err();
        assert!(e.contains("MJPG") && e.contains("H264"), "{e}");
        let e = choose_format(&[offer(b"H264", &[])], None, (1, 1)).unwrap_err();
        assert!(e.contains("none of which") && e.contains("YU12"), "{e}");
    }

    #[test]
    fn stepwise_sizes_count_their_steps() {
        let s = SizeRange::Stepwise {
            min: (320, 240),
            max: (1920, 1080),
            step: (16, 8),
        };
        assert!(s.contains(640, 480) && s.contains(320, 240) && s.contains(1920, 1080));
        assert!(!s.contains(641, 480) && !s.contains(2000, 480) && !s.contains(640, 236));
        let zero_step = SizeRange::Stepwise {
            min: (1, 1),
            max: (10, 10),
            step: (0, 0),
        };
        assert!(zero_step.contains(5, 5));
    }

    #[test]
    fn frame_numbers_follow_the_driver_and_count_its_gaps() {
        let mut s = V4l2Source::new(V4l2Config::default());
        assert_eq!(s.frame_number(100), 0);
        assert_eq!(s.frame_number(101), 1);
        assert_eq!(s.frame_number(104), 4);
        assert_eq!(s.counts().sequence_gaps, 2);
        // A driver that does not count (always 0): numbered in order, no gaps invented.
        assert_eq!(s.frame_number(100), 5);
        // A new stream after a reopen goes on from the last number.
        s.stream_first_sequence = None;
        s.seq_base = s.last_seq.map_or(0, |l| l + 1);
        assert_eq!(s.frame_number(0), 6);
        assert_eq!(s.counts().sequence_gaps, 2);
    }

    #[test]
    fn bad_fourcc_setting_is_fatal_and_names_the_key() {
        let mut s = V4l2Source::new(V4l2Config {
            device: "/dev/video-does-not-exist".into(),
            fourcc: Some("H264".into()),
            ..Default::default()
        });
        let e = s.start().unwrap_err();
        assert!(matches!(e, SourceError::Fatal { .. }), "{e}");
        assert!(e.to_string().contains("source.v4l2.fourcc"), "{e}");
    }

    #[test]
    fn missing_device_is_reported_as_lost_with_its_path() {
        let mut s = V4l2Source::new(V4l2Config {
            device: "/dev/video-does-not-exist".into(),
            ..Default::default()
        });
        let e = s.start().unwrap_err();
        assert!(matches!(e, SourceError::Disconnected { .. }));
        assert!(e.to_string().contains("/dev/video-does-not-exist"));
        let e = s.next_frame().unwrap_err();
        assert!(
            e.to_string()
                .contains("not reopened yet (cannot open: No such file"),
            "{e}"
        );
    }
}
