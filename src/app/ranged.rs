//! A big part from the CDN in ranges fetched several at a time. One HTTP
//! stream is often slower than everything behind it: a CDN limits each
//! connection, and an S3 server serves one request from one thread. The
//! first request (the whole object, which also tells its length and version)
//! serves the first segment; the next segments are ranged GETs of the same
//! version, `parallel - 1` of them in flight, handed on strictly in order.
//! Memory per download: at most `parallel` segments (16 MiB by default).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::domain::names::Folder;
use crate::ports::object_store::take_bytes;
use crate::ports::{ByteStream, ObjectBody, ObjectStore};

/// How a big part is read from the CDN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdnReads {
    /// Bytes per ranged GET.
    pub segment: u64,
    /// Requests in flight for one big part (1: one plain GET).
    pub parallel: usize,
}

impl Default for CdnReads {
    fn default() -> Self {
        Self {
            segment: 4 << 20,
            parallel: 4,
        }
    }
}

/// Tries per segment; a cut one is asked again from where it stopped.
const SEGMENT_ATTEMPTS: u32 = 3;

/// Size of the pieces a fetched segment is handed on in (slices of one
/// buffer, not copies), so that what follows sees chunks of the usual size.
const HAND_ON: usize = 256 << 10;

fn slices(segment: Bytes) -> Vec<Bytes> {
    (0..segment.len())
        .step_by(HAND_ON)
        .map(|at| segment.slice(at..(at + HAND_ON).min(segment.len())))
        .collect()
}

/// What a segment's fetch needs.
struct Source {
    store: Arc<dyn ObjectStore>,
    bucket: Folder,
    key: String,
    version: Option<String>,
}

struct Segments {
    source: Arc<Source>,
    reads: CdnReads,
    total: u64,
    /// Start of the next segment to ask for.
    next_from: u64,
    in_flight: VecDeque<JoinHandle<io::Result<Vec<Bytes>>>>,
    /// The first request's body, up to the end of the first segment.
    head: Option<ByteStream>,
    /// The chunks, as they arrived, still to hand on of the segment at the front.
    ready: std::vec::IntoIter<Bytes>,
}

impl Segments {
    fn spawn_next(&mut self) {
        if self.next_from >= self.total {
            return;
        }
        let from = self.next_from;
        let to = (from + self.reads.segment).min(self.total);
        self.next_from = to;
        let source = self.source.clone();
        self.in_flight
            .push_back(tokio::spawn(fetch_segment(source, from, to)));
    }

    /// Ends the stream after a failure: nothing more is read or asked for.
    fn stop(&mut self) {
        self.head = None;
        self.next_from = self.total;
        for fetch in self.in_flight.drain(..) {
            fetch.abort();
        }
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        // A client that went away: stop asking the CDN for what nobody reads.
        self.stop();
    }
}

/// The big part whose first GET answered `first`, read `reads.parallel`
/// requests at a time when it is longer than one segment.
pub fn parallel_body(
    store: Arc<dyn ObjectStore>,
    bucket: Folder,
    key: String,
    first: ObjectBody,
    reads: CdnReads,
) -> ByteStream {
    let total = first.len;
    if reads.parallel < 2 || reads.segment == 0 || total <= reads.segment {
        return first.stream;
    }
    let mut segments = Segments {
        source: Arc::new(Source {
            store,
            bucket,
            key,
            version: first.version,
        }),
        reads,
        total,
        next_from: reads.segment,
        in_flight: VecDeque::new(),
        head: Some(take_bytes(first.stream, reads.segment)),
        ready: Vec::new().into_iter(),
    };
    for _ in 1..reads.parallel {
        segments.spawn_next();
    }
    Box::pin(futures::stream::unfold(segments, |mut s| async move {
        if let Some(head) = s.head.as_mut() {
            match head.next().await {
                Some(Ok(chunk)) => return Some((Ok(chunk), s)),
                Some(Err(e)) => {
                    s.stop();
                    return Some((Err(e), s));
                }
                None => s.head = None,
            }
        }
        loop {
            if let Some(chunk) = s.ready.next() {
                return Some((Ok(chunk), s));
            }
            let fetch = s.in_flight.pop_front()?;
            s.spawn_next();
            let failure = match fetch.await {
                Ok(Ok(chunks)) => {
                    s.ready = chunks.into_iter();
                    continue;
                }
                Ok(Err(e)) => e,
                Err(e) => io::Error::other(e),
            };
            s.stop();
            return Some((Err(failure), s));
        }
    }))
}

/// Bytes `from..to` of the source's version, whole, copied into one buffer
/// of exactly the segment's size and handed on as `HAND_ON` slices of it,
/// or an error after
/// `SEGMENT_ATTEMPTS` tries (each picking up where the last one stopped).
async fn fetch_segment(source: Arc<Source>, from: u64, to: u64) -> io::Result<Vec<Bytes>> {
    // One buffer, not the chunks as they came: each chunk of an HTTP body
    // can pin a read buffer larger than itself, in an arena that keeps it.
    // Peak RSS of a 256 MiB load (debug build, tests/real/e2e.rs): 70 MiB
    // keeping the chunks, 57 MiB with this copy (4 MiB of memcpy per segment).
    let mut segment = BytesMut::with_capacity((to - from) as usize);
    let mut got = 0u64;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let at = from + got;
        let failure = match source
            .store
            .get_range(
                &source.bucket,
                &source.key,
                at,
                to,
                source.version.as_deref(),
            )
            .await
        {
            Ok(body) if body.len == to - at => {
                let mut stream = body.stream;
                let mut failure = None;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) if from + got + chunk.len() as u64 <= to => {
                            got += chunk.len() as u64;
                            segment.extend_from_slice(&chunk);
                        }
                        Ok(_) => {
                            failure = Some(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the CDN sent more than the range asked for",
                            ));
                            break;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                match failure {
                    None if from + got == to => return Ok(slices(segment.freeze())),
                    None => io::Error::new(io::ErrorKind::UnexpectedEof, "the range ended early"),
                    Some(e) => e,
                }
            }
            Ok(body) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the CDN answered {} bytes for a range of {}",
                    body.len,
                    to - at
                ),
            ),
            Err(e) => io::Error::other(format!("CDN read failed: {e}")),
        };
        if attempt >= SEGMENT_ATTEMPTS {
            return Err(failure);
        }
        tracing::warn!(key = %source.key, at = from + got, "CDN range read cut ({failure}); asking again");
    }
}
