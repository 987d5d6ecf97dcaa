//! Bounds on an upload body before the multipart parser sees it (PROTOCOL
//! §5.3): its size (`LOADER_MAX_UPLOAD_BYTES`), its pauses (30 s without a
//! byte), and its shape: the first boundary, and the header block of every
//! part, must each come within 64 KiB. A parser looking for a boundary keeps
//! everything until it finds one, so without this a body with none would
//! grow the loader's memory as fast as a client can send.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use memchr::memmem;

/// The first boundary, and each part's header block, must end this soon.
pub const SHAPE_WINDOW: usize = 64 * 1024;
/// A request body that sends nothing for this long is cut off.
pub const BODY_IDLE: Duration = Duration::from_secs(30);

/// Why a guarded body was cut off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormViolation {
    #[error("the upload is larger than {0} bytes (LOADER_MAX_UPLOAD_BYTES)")]
    TooLarge(u64),
    #[error("no multipart boundary within the first 64 KiB of the body")]
    NoBoundary,
    #[error("a multipart part header does not end within 64 KiB")]
    HeaderTooLong,
    #[error("the client sent nothing for {} s", .0.as_secs())]
    Idle(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter: `--` closes the body, anything else starts headers.
    AfterDelimiter { first: Option<u8> },
    /// Inside a part's header block, up to its blank line.
    Headers,
    /// Inside a part's data, up to the next delimiter.
    Data,
    /// After the closing delimiter: nothing more is checked.
    Done,
}

/// Follows a multipart body's structure over chunks of any size.
pub struct FormScanner {
    delimiter: Vec<u8>,
    data_end: Vec<u8>,
    state: State,
    /// Bytes seen in the current bounded state (preamble or headers).
    window: usize,
    /// The last bytes of the previous chunk: a needle may straddle chunks.
    carry: Vec<u8>,
}

impl FormScanner {
    pub fn new(boundary: &str) -> Self {
        let delimiter = [b"--", boundary.as_bytes()].concat();
        let data_end = [b"\r\n", delimiter.as_slice()].concat();
        Self {
            delimiter,
            data_end,
            state: State::Preamble,
            window: 0,
            carry: Vec::new(),
        }
    }

    /// Takes the next chunk of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), FormViolation> {
        while !chunk.is_empty() {
            match self.state {
                State::Done => return Ok(()),
                State::AfterDelimiter { first: None } => {
                    self.state = State::AfterDelimiter {
                        first: Some(chunk[0]),
                    };
                    chunk = &chunk[1..];
                }
                State::AfterDelimiter { first: Some(first) } => {
                    let second = chunk[0];
                    chunk = &chunk[1..];
                    if first == b'-' && second == b'-' {
                        self.state = State::Done;
                    } else {
                        self.state = State::Headers;
                        self.window = 2;
                        self.carry = vec![first, second];
                    }
                }
                State::Preamble | State::Headers | State::Data => {
                    let (needle, bounded): (&[u8], _) = match self.state {
                        State::Preamble => (&self.delimiter, Some(FormViolation::NoBoundary)),
                        State::Headers => (b"\r\n\r\n", Some(FormViolation::HeaderTooLong)),
                        _ => (&self.data_end, None),
                    };
                    match find_across(&self.carry, chunk, needle) {
                        Some(end) => {
                            if let Some(violation) = bounded
                                && self.window + end > SHAPE_WINDOW
                            {
                                return Err(violation);
                            }
                            chunk = &chunk[end..];
                            self.carry.clear();
                            self.window = 0;
                            self.state = match self.state {
                                State::Headers => State::Data,
                                _ => State::AfterDelimiter { first: None },
                            };
                        }
                        None => {
                            if let Some(violation) = bounded {
                                self.window += chunk.len();
                                if self.window > SHAPE_WINDOW {
                                    return Err(violation);
                                }
                            }
                            let keep = needle.len() - 1;
                            let mut joined = std::mem::take(&mut self.carry);
                            joined.extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
                            let start = joined.len().saturating_sub(keep);
                            self.carry = joined.split_off(start);
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where `needle` ends in `chunk`, counting a match that starts in `carry`
/// (the previous chunk's last bytes, shorter than the needle).
fn find_across(carry: &[u8], chunk: &[u8], needle: &[u8]) -> Option<usize> {
    if !carry.is_empty() {
        let head = &chunk[..chunk.len().min(needle.len() - 1)];
        let joined = [carry, head].concat();
        if let Some(at) = memmem::find(&joined, needle) {
            return Some(at + needle.len() - carry.len());
        }
    }
    memmem::find(chunk, needle).map(|at| at + needle.len())
}

/// Where a guarded body records why it was cut off, for the handler's answer.
pub type ViolationSlot = Arc<Mutex<Option<FormViolation>>>;

/// A request body under the guard: passes chunks through while they keep to
/// the bounds, else ends in an error and records the violation.
pub struct GuardedBody<S> {
    inner: S,
    scanner: FormScanner,
    max_bytes: u64,
    seen: u64,
    clock: super::write_idle::IdleClock,
    violation: ViolationSlot,
    ended: bool,
}

impl<S> GuardedBody<S> {
    pub fn new(inner: S, boundary: &str, max_bytes: u64, idle: Duration) -> (Self, ViolationSlot) {
        let violation = ViolationSlot::default();
        (
            Self {
                inner,
                scanner: FormScanner::new(boundary),
                max_bytes,
                seen: 0,
                clock: super::write_idle::IdleClock::new(idle),
                violation: violation.clone(),
                ended: false,
            },
            violation,
        )
    }

    fn cut(&mut self, violation: FormViolation) -> Poll<Option<io::Result<Bytes>>> {
        self.ended = true;
        let message = violation.to_string();
        *self.violation.lock().unwrap_or_else(|p| p.into_inner()) = Some(violation);
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            message,
        ))))
    }
}

impl<S, E> Stream for GuardedBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.clock.reset();
                this.seen += chunk.len() as u64;
                if this.seen > this.max_bytes {
                    return this.cut(FormViolation::TooLarge(this.max_bytes));
                }
                if let Err(violation) = this.scanner.feed(&chunk) {
                    return this.cut(violation);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                Poll::Ready(Some(Err(io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The clock runs only while the body is waited for: a slow
                // consumer (the CDN) is not the client's fault.
                if this.clock.expired(cx) {
                    let idle = this.clock.idle();
                    return this.cut(FormViolation::Idle(idle));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use proptest::prelude::*;

    fn form(boundary: &str, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\nmodels\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"a\"\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }

    fn scan(body: &[u8], boundary: &str, piece: usize) -> Result<(), FormViolation> {
        let mut scanner = FormScanner::new(boundary);
        for chunk in body.chunks(piece.max(1)) {
            scanner.feed(chunk)?;
        }
        Ok(())
    }

    #[test]
    fn a_well_formed_form_passes_in_chunks_of_any_size() {
        let body = form("XyZ", &vec![7u8; 300_000]);
        for piece in [1, 2, 3, 5, 64, 4096, 1 << 20] {
            assert_eq!(scan(&body, "XyZ", piece), Ok(()), "{piece}");
        }
    }

    #[test]
    fn a_body_without_a_boundary_fails_within_64_kib() {
        let mut scanner = FormScanner::new("X");
        let junk = vec![b'A'; 1024];
        let mut fed = 0;
        let err = loop {
            if let Err(e) = scanner.feed(&junk) {
                break e;
            }
            fed += junk.len();
            assert!(fed <= SHAPE_WINDOW, "accepted {fed} bytes with no boundary");
        };
        assert_eq!(err, FormViolation::NoBoundary);
    }

    #[test]
    fn an_endless_part_header_fails_within_64_kib() {
        let mut body = b"--X\r\nContent-Disposition: form-data; name=\"data\"\r\nX-Pad: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', SHAPE_WINDOW + 10));
        assert_eq!(scan(&body, "X", 1000), Err(FormViolation::HeaderTooLong));
        // The same in a later part, after some data.
        let mut later = form("X", b"abc");
        later.truncate(later.len() - "--\r\n".len());
        later.extend_from_slice(b"\r\nX-Pad: ");
        later.extend(std::iter::repeat_n(b'a', SHAPE_WINDOW + 10));
        assert_eq!(scan(&later, "X", 777), Err(FormViolation::HeaderTooLong));
    }

    #[test]
    fn a_preamble_and_headers_just_under_the_window_pass() {
        let mut body = vec![b'p'; SHAPE_WINDOW - 100];
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&form("B", b"data"));
        assert_eq!(scan(&body, "B", 4096), Ok(()));
    }

    proptest! {
        #[test]
        fn the_verdict_does_not_depend_on_the_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            preamble in 0usize..(SHAPE_WINDOW + 2000),
            piece in 1usize..9000,
        ) {
            let mut body = vec![b'.'; preamble];
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(&form("bNd", &data));
            let whole = scan(&body, "bNd", body.len());
            prop_assert_eq!(scan(&body, "bNd", piece), whole.clone());
            prop_assert_eq!(whole.is_ok(), preamble + 2 + 5 <= SHAPE_WINDOW);
        }
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    #[tokio::test]
    async fn the_guard_cuts_an_oversized_body_and_says_why() {
        let body = form("B", &vec![1u8; 10_000]);
        let (mut guarded, why) = GuardedBody::new(
            body_of(body.chunks(1000).map(<[u8]>::to_vec).collect()),
            "B",
            5000,
            BODY_IDLE,
        );
        let mut passed = 0;
        let mut failed = false;
        while let Some(item) = guarded.next().await {
            match item {
                Ok(chunk) => passed += chunk.len(),
                Err(_) => failed = true,
            }
        }
        assert!(failed && passed <= 5000, "{passed}");
        assert_eq!(*why.lock().unwrap(), Some(FormViolation::TooLarge(5000)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_cuts_a_body_that_pauses_too_long() {
        let stalled = futures::stream::iter(vec![Ok::<_, String>(Bytes::from_static(b"--B\r\n"))])
            .chain(futures::stream::pending());
        let (mut guarded, why) = GuardedBody::new(Box::pin(stalled), "B", 1 << 20, BODY_IDLE);
        assert!(guarded.next().await.unwrap().is_ok());
        assert!(guarded.next().await.unwrap().is_err());
        assert_eq!(*why.lock().unwrap(), Some(FormViolation::Idle(BODY_IDLE)));
    }
}
