//! The display server's wire layer: accepting connections up to a limit, reading one HTTP/1.x
//! request head within a size, header-count and time budget, discarding a small body, and writing
//! one response per connection (`Connection: close`).
//!
//! Why our own instead of tiny_http: tiny_http 0.12 allocates a client's declared
//! `Content-Length` when it discards an unread body (one request aborted the daemon), reads header
//! lines without a length limit, has no read deadline and spawns a thread per connection without
//! a bound, and none of that can be guarded from outside it. The display only ever needs GET/HEAD
//! with no body, so a strict reader of ~200 lines with every input bounded is smaller than any
//! maintained server crate (which would bring an async runtime) and leaves nothing unbounded.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Request line plus headers, bytes.
    pub max_head_bytes: usize,
    /// Header lines.
    pub max_headers: usize,
    /// A declared body larger than this is refused (413) without reading it; a smaller one is read
    /// and discarded.
    pub max_body_bytes: u64,
    /// The whole request (head and body) must arrive within this.
    pub request_timeout: Duration,
}

/// Why a request was refused before it reached a handler; each maps to a status and a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The peer closed (or reset) before a complete head: nothing to answer.
    Closed,
    /// The head or body did not arrive within the request timeout.
    Timeout,
    HeadTooLarge(usize),
    TooManyHeaders(usize),
    BodyTooLarge(u64),
    Malformed(String),
    UnsupportedVersion(String),
    ChunkedBody,
}

impl WireError {
    /// The status to answer with, None for a peer that is gone.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Closed => None,
            Self::Timeout => Some(408),
            Self::HeadTooLarge(_) | Self::TooManyHeaders(_) => Some(431),
            Self::BodyTooLarge(_) => Some(413),
            Self::Malformed(_) => Some(400),
            Self::UnsupportedVersion(_) => Some(505),
            Self::ChunkedBody => Some(501),
        }
    }

    /// The label of the refusal counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::HeadTooLarge(_) => "head_too_large",
            Self::TooManyHeaders(_) => "too_many_headers",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedVersion(_) => "bad_version",
            Self::ChunkedBody => "chunked_body",
        }
    }

    pub fn reason(&self, limits: &WireLimits) -> String {
        match self {
            Self::Closed => "the client closed the connection".into(),
            Self::Timeout => format!(
                "the request did not arrive within {:.1} s",
                limits.request_timeout.as_secs_f64()
            ),
            Self::HeadTooLarge(n) => format!(
                "request head over {n} bytes (limit {})",
                limits.max_head_bytes
            ),
            Self::TooManyHeaders(n) => {
                format!("{n} header lines (limit {})", limits.max_headers)
            }
            Self::BodyTooLarge(n) => format!(
                "declared body of {n} bytes (limit {}); this API takes no request bodies",
                limits.max_body_bytes
            ),
            Self::Malformed(what) => format!("malformed request: {what}"),
            Self::UnsupportedVersion(v) => format!("HTTP version {v:?}: expected HTTP/1.0 or 1.1"),
            Self::ChunkedBody => "Transfer-Encoding bodies are not accepted".into(),
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form: path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
}

/// Counts the open connections; a slot is held for as long as its guard lives.
#[derive(Debug, Default)]
pub struct ConnectionSlots {
    open: AtomicUsize,
    pub rejected: AtomicU64,
}

pub struct SlotGuard {
    slots: Arc<ConnectionSlots>,
}

impl ConnectionSlots {
    /// A slot, or None when `max` are already open.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<SlotGuard> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SlotGuard {
                slots: Arc::clone(self),
            })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads one request head (and discards a small body) from `stream` within `limits`. `stop` is
/// checked between reads so a server shutdown does not wait for a slow client.
pub fn read_request(
    stream: &mut TcpStream,
    limits: &WireLimits,
    stop: &dyn Fn() -> bool,
) -> Result<RequestHead, WireError> {
    let deadline = Instant::now() + limits.request_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > limits.max_head_bytes {
            return Err(WireError::HeadTooLarge(buf.len()));
        }
        // Never read more than the head may still hold (plus one byte to see it overflow).
        let room = (limits.max_head_bytes + 1 - buf.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, stop)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > limits.max_head_bytes {
        return Err(WireError::HeadTooLarge(head_end));
    }
    let head = parse_head(&buf[..head_end], limits)?;
    let declared = content_length(&head.headers)?;
    if declared > limits.max_body_bytes {
        return Err(WireError::BodyTooLarge(declared));
    }
    // Discard the (small) body so the peer sees an orderly close rather than a reset.
    let mut remaining = declared.saturating_sub((buf.len() - head_end) as u64);
    while remaining > 0 {
        let want = remaining.min(chunk.len() as u64) as usize;
        let n = read_some(stream, &mut chunk[..want], deadline, stop)?;
        remaining -= n as u64;
    }
    Ok(head)
}

/// One read before `deadline`; Ok(n > 0), or the reason there is nothing more.
fn read_some(
    stream: &mut TcpStream,
    into: &mut [u8],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<usize, WireError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop() {
            return Err(WireError::Timeout);
        }
        // Short slices, so `stop` is seen within a fraction of a second.
        let slice = left.min(Duration::from_millis(200));
        if stream.set_read_timeout(Some(slice)).is_err() {
            return Err(WireError::Closed);
        }
        match stream.read(into) {
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(WireError::Closed),
        }
    }
}

/// The length of the head including its blank line (CRLF CRLF, or bare LF LF, which RFC 9112
/// lets a server accept).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + pos;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_head(head: &[u8], limits: &WireLimits) -> Result<RequestHead, WireError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| WireError::Malformed("the head is not UTF-8 text".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WireError::Malformed(
            "request line is not `METHOD TARGET HTTP/1.x`".into(),
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(WireError::Malformed("bad method".into()));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(WireError::Malformed(
            "the target must be a path starting with /".into(),
        ));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(WireError::UnsupportedVersion(
            version.chars().take(16).collect(),
        ));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(WireError::TooManyHeaders(headers.len() + 1));
        }
        if line.starts_with([' ', '\t']) {
            return Err(WireError::Malformed("folded header line".into()));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| WireError::Malformed("header line without ':'".into()))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(WireError::Malformed("bad header name".into()));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    })
}

/// The declared body length: 0 without Content-Length; refused for any Transfer-Encoding, for a
/// value that is not a plain number, and for several values that disagree (request smuggling).
fn content_length(headers: &[(String, String)]) -> Result<u64, WireError> {
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(WireError::ChunkedBody);
    }
    let mut length: Option<u64> = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WireError::Malformed(format!(
                    "Content-Length {:?} is not a number",
                    part.chars().take(24).collect::<String>()
                )));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| WireError::Malformed("Content-Length out of range".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed(
                    "conflicting Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(length.unwrap_or(0))
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a complete response and closes the connection. `head_only` (HEAD) keeps the
/// Content-Length of the body but not the body.
pub fn write_response(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        // Our own constants and numbers; a stray line break would split the response.
        if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()?;
    linger_close(stream);
    Ok(())
}

/// Half-closes and drains a little of what the client still sends (bounded in bytes and time),
/// so unread input does not turn the close into a reset that destroys the response in flight.
pub fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_millis(250);
    let mut drained = 0usize;
    let mut sink = [0u8; 4096];
    while drained < 64 * 1024 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> WireLimits {
        WireLimits {
            max_head_bytes: 256,
            max_headers: 4,
            max_body_bytes: 16,
            request_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn head_end_accepts_crlf_and_bare_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn heads_parse_and_bad_ones_are_named() {
        let h = parse_head(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A:  v \r\n\r\n",
            &limits(),
        )
        .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/a?b=1");
        assert_eq!(h.headers[1], ("x-a".to_string(), "v".to_string()));
        let bad = |t: &[u8]| parse_head(t, &limits()).unwrap_err();
        assert_eq!(bad(b"GET /\r\n\r\n").label(), "malformed");
        assert_eq!(bad(b"GET http://x/ HTTP/1.1\r\n\r\n").label(), "malformed");
        assert_eq!(bad(b"GET / HTTP/2.0\r\n\r\n").label(), "bad_version");
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\n folded\r\n\r\n").label(),
            "malformed"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n").label(),
            "too_many_headers"
        );
    }

    #[test]
    fn content_length_is_strict() {
        let h = |v: &str| vec![("content-length".to_string(), v.to_string())];
        assert_eq!(content_length(&h("12")), Ok(12));
        assert_eq!(content_length(&h("99999999999")), Ok(99_999_999_999));
        assert_eq!(content_length(&h("5, 5")), Ok(5));
        assert!(content_length(&h("5, 6")).is_err());
        assert!(content_length(&h("-1")).is_err());
        assert!(content_length(&h("99999999999999999999999")).is_err());
        assert_eq!(
            content_length(&[("transfer-encoding".into(), "chunked".into())]),
            Err(WireError::ChunkedBody)
        );
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let slots = Arc::new(ConnectionSlots::default());
        let a = slots.try_take(2).unwrap();
        let _b = slots.try_take(2).unwrap();
        assert!(slots.try_take(2).is_none());
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.try_take(2).is_some());
    }
}
