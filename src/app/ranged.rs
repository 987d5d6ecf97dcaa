//! A big part from the CDN in ranges fetched several at a time. One HTTP
//! stream is often slower than everything behind it: a CDN limits each
//! connection, and an S3 server serves one request from one thread. The
//! first request (the whole object, which also tells its length and version)
//! serves the first segment; the next segments are ranged GETs of the same
//! version, `parallel - 1` of them in flight (`futures`' `buffered` over
//! spawned tasks), handed on strictly in order.
//! Memory per download: at most `parallel` segments (16 MiB by default).
//!
//! Some servers answer a ranged GET by reading the whole object first (moto,
//! a CDN edge that fetches from its origin before it answers): there every
//! range costs a whole read, and parallel ranges turn seconds into minutes
//! (issue 16, P10). So only one ranged GET, the probe, goes out with the
//! first GET, and it is given a bounded patience, measured against how long
//! the plain stream took for the first segment: if it is late, it is
//! dropped and the first GET, held open and already positioned after the
//! first segment, is read on to the end; if it is on time, the other ranges
//! follow. One probe, not `parallel - 1` ranges, because such a server goes
//! on reading for a range its client has dropped, and that work slows the
//! plain GET it falls back to (moto: 6.5 s for 1 GiB with three ranges
//! dropped, against a plain GET of 1.2 s).

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt, future, stream};
use tokio_util::task::AbortOnDropHandle;

use crate::domain::names::Folder;
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

/// The probe (the first ranged segment, alone in flight) may take
/// `parallel` times as long as the plain stream took for the first segment,
/// plus [`PATIENCE_SLACK`] for the jitter of a request's first byte, before
/// the ranges are given up. So ranges are kept only when `parallel` of them
/// at once would at least keep up with the plain stream. A server that
/// reads the whole object per range answers in the time of a whole read,
/// hundreds of segment times for a large object; a false fallback costs
/// parallelism, never bytes.
const PATIENCE_SLACK: std::time::Duration = std::time::Duration::from_millis(200);

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

/// The big part whose first GET answered `first`, read `reads.parallel`
/// requests at a time when it is longer than one segment: the first body
/// streams straight through while the next `parallel - 1` segments are
/// already being fetched, each in a task of its own; `buffered` hands them
/// on strictly in order and starts the next as one is taken. Dropping the
/// stream (a client that went away, or an error) aborts every fetch in
/// flight, so the CDN is not asked for what nobody reads.
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
    let source = Arc::new(Source {
        store,
        bucket,
        key,
        version: first.version,
    });
    let spawn = move |(from, to): (u64, u64)| {
        AbortOnDropHandle::new(tokio::spawn(fetch_segment(source.clone(), from, to)))
    };
    let segment = reads.segment;
    let mut ranges =
        (1..total.div_ceil(segment)).map(move |i| (i * segment, ((i + 1) * segment).min(total)));
    // The probe starts now, not when the first segment has been read; the
    // others when it has come back (`later` is not polled before).
    let probe = ranges.next().map(&spawn);
    let later = stream::iter(ranges).map(spawn).buffered(reads.parallel - 1);
    let rest = stream::iter(probe)
        .buffered(1)
        .chain(later)
        .map(|joined| match joined {
            Ok(Ok(slices)) => Ok(stream::iter(slices.into_iter().map(Ok))),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(io::Error::other(e)),
        })
        .try_flatten();
    let adaptive = Adaptive {
        first: Some(first.stream),
        first_left: segment,
        spare: None,
        rest: Some(rest.boxed()),
        phase: Phase::First,
        opened: std::time::Instant::now(),
        parallel: reads.parallel,
    };
    stream::unfold(adaptive, |mut a| async move {
        let item = a.next().await?;
        Some((item, a))
    })
    // Nothing after a failure: the reader sees the error last.
    .scan(false, |failed, item| {
        if *failed {
            return future::ready(None);
        }
        *failed = item.is_err();
        future::ready(Some(item))
    })
    .boxed()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first segment, from the first (plain) GET.
    First,
    /// Waiting, with patience, for the first ranged segment.
    FirstRange,
    /// The ranges keep up: the rest comes from them.
    Ranged,
    /// The ranges were too slow: the rest comes from the first GET.
    Plain,
}

/// The first segment from the plain GET, then the ranged segments, or the
/// plain GET to the end when the first ranged one is late.
struct Adaptive {
    first: Option<ByteStream>,
    /// Bytes of the first segment not yet handed on.
    first_left: u64,
    /// Bytes the plain GET sent past the first segment (kept for a fallback).
    spare: Option<Bytes>,
    rest: Option<futures::stream::BoxStream<'static, io::Result<Bytes>>>,
    phase: Phase,
    opened: std::time::Instant,
    parallel: usize,
}

impl Adaptive {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            match self.phase {
                Phase::First if self.first_left == 0 => self.phase = Phase::FirstRange,
                Phase::First => {
                    let stream = self.first.as_mut()?;
                    return Some(match stream.next().await {
                        Some(Ok(mut chunk)) => {
                            if chunk.len() as u64 > self.first_left {
                                // `first_left` is below a chunk's length: it fits in usize.
                                let at = usize::try_from(self.first_left).unwrap_or(chunk.len());
                                self.spare = Some(chunk.split_off(at));
                            }
                            self.first_left -= chunk.len() as u64;
                            Ok(chunk)
                        }
                        Some(Err(e)) => Err(e),
                        None => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the body ended {} bytes early", self.first_left),
                        )),
                    });
                }
                Phase::FirstRange => {
                    let took = self.opened.elapsed();
                    let patience = took
                        .saturating_mul(u32::try_from(self.parallel).unwrap_or(16))
                        .saturating_add(PATIENCE_SLACK);
                    let rest = self.rest.as_mut()?;
                    match tokio::time::timeout(patience, rest.next()).await {
                        Ok(item) => {
                            // The ranges keep up: the plain GET is not needed any more.
                            self.first = None;
                            self.spare = None;
                            self.phase = Phase::Ranged;
                            return item;
                        }
                        Err(_) => {
                            tracing::warn!(
                                patience_ms = patience.as_millis() as u64,
                                "the CDN is slow to answer ranged reads (it may read the whole object for each): \
                                 reading the big part in one GET"
                            );
                            // Dropping them aborts the ranged reads in flight.
                            self.rest = None;
                            self.phase = Phase::Plain;
                        }
                    }
                }
                Phase::Ranged => return self.rest.as_mut()?.next().await,
                Phase::Plain => {
                    if let Some(spare) = self.spare.take().filter(|s| !s.is_empty()) {
                        return Some(Ok(spare));
                    }
                    return self.first.as_mut()?.next().await;
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fakes::FakeObjectStore;
    use std::time::Duration;

    const SEGMENT: u64 = 64 * 1024;

    async fn setup(len: usize) -> (Arc<FakeObjectStore>, Vec<u8>, ObjectBody) {
        let store = Arc::new(FakeObjectStore::new());
        store.create_bucket("models");
        let data = crate::test_support::pattern(len, 9);
        store.put_object("models", "m.big", data.clone());
        let first = store
            .get(&Folder::parse("models").unwrap(), "m.big", 0)
            .await
            .unwrap();
        (store, data, first)
    }

    /// `m.big` read in segments of `SEGMENT`, `parallel` at a time.
    fn body(store: &Arc<FakeObjectStore>, first: ObjectBody, parallel: usize) -> ByteStream {
        let reads = CdnReads {
            segment: SEGMENT,
            parallel,
        };
        let store: Arc<dyn ObjectStore> = store.clone();
        parallel_body(
            store,
            Folder::parse("models").unwrap(),
            "m.big".into(),
            first,
            reads,
        )
    }

    #[tokio::test]
    async fn segments_come_back_in_order_whatever_order_they_finish_in() {
        let (store, data, first) = setup(10 * SEGMENT as usize + 77).await;
        // The first ranged reads are slow, the later ones fast.
        store.stall_next_gets(2, Duration::from_millis(150));
        let mut body = body(&store, first, 4);
        let mut got = Vec::new();
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, data);
        let mut offsets: Vec<u64> = store.gets().into_iter().map(|(_, at)| at).collect();
        offsets.sort_unstable();
        let expected: Vec<u64> = (0..data.len() as u64).step_by(SEGMENT as usize).collect();
        assert_eq!(offsets, expected, "one read per segment");
    }

    #[tokio::test]
    async fn dropping_the_body_aborts_the_reads_in_flight() {
        let (store, _, first) = setup(40 * SEGMENT as usize).await;
        // Every ranged read stalls; the first body (already open) does not.
        store.stall_next_gets(3, Duration::from_millis(400));
        let mut body = body(&store, first, 4);
        body.next().await.unwrap().unwrap();
        // The probe was asked for at once, before the first segment was read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.gets().len(), 2, "{:?}", store.gets());
        drop(body);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            store.answered_gets(),
            1,
            "a stalled read ran on after its body was dropped"
        );
        assert_eq!(store.gets().len(), 2, "no read was started after the drop");
    }

    #[tokio::test]
    async fn nothing_follows_a_failed_segment() {
        let (store, data, first) = setup(8 * SEGMENT as usize).await;
        store.fail_next_gets(3, crate::ports::StoreError::Unavailable("down".into()));
        let mut body = body(&store, first, 2);
        let mut got = Vec::new();
        let mut errors = 0;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(_) => errors += 1,
            }
        }
        assert_eq!(errors, 1, "the stream ends at its first error");
        assert_eq!(got, data[..SEGMENT as usize], "the first segment only");
    }

    #[tokio::test]
    async fn one_read_at_a_time_is_one_plain_get_with_no_ranges() {
        let (store, data, first) = setup(5 * SEGMENT as usize + 3).await;
        let mut body = body(&store, first, 1);
        let read_all = async {
            let mut got = Vec::new();
            while let Some(chunk) = body.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            got
        };
        let got = tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .expect("the body ends");
        assert_eq!(got, data);
        assert_eq!(
            store.gets(),
            [("m.big".to_owned(), 0)],
            "ranged reads with parallel = 1"
        );
    }

    // Paused time: the probe's stall (150 ms) is within its patience (0.2 s
    // plus 4 times the first segment's time), whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn only_the_probe_goes_out_before_it_is_back_then_parallel_minus_one_ranges() {
        let (store, _, first) = setup(40 * SEGMENT as usize).await;
        // The probe (the second segment) stalls for a while.
        store.stall_next_gets(1, Duration::from_millis(150));
        let mut body = body(&store, first, 4);
        let mut read = 0u64;
        while read < SEGMENT {
            read += body.next().await.unwrap().unwrap().len() as u64;
        }
        assert_eq!(read, SEGMENT);
        let next = tokio::time::timeout(Duration::from_millis(100), body.next()).await;
        assert!(next.is_err(), "the stalled probe came early");
        assert_eq!(
            store.gets().len(),
            2,
            "the first body and the probe, nothing more while it is out: {:?}",
            store.gets()
        );
        // The probe comes back in time; the next segments stall: polling them
        // must not start more than parallel - 1 = 3 ranged reads.
        store.stall_next_gets(10, Duration::from_millis(2000));
        let mut read = 0u64;
        while read < SEGMENT {
            read += body.next().await.unwrap().unwrap().len() as u64;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), body.next()).await;
        assert!(next.is_err(), "the stalled segment came early");
        assert_eq!(
            store.gets().len(),
            5,
            "the first body, the probe and parallel - 1 = 3 ranged reads: {:?}",
            store.gets()
        );
    }

    /// How a test CDN answers a ranged GET, given the fake store and the range.
    type RangeAnswer = Box<
        dyn Fn(
                Arc<FakeObjectStore>,
                Folder,
                String,
                u64,
                u64,
            )
                -> futures::future::BoxFuture<'static, Result<ObjectBody, crate::ports::StoreError>>
            + Send
            + Sync,
    >;

    /// The fake store with its ranged GETs answered by `answer`.
    struct Ranges(Arc<FakeObjectStore>, RangeAnswer);

    #[async_trait::async_trait]
    impl ObjectStore for Ranges {
        async fn get(
            &self,
            bucket: &Folder,
            key: &str,
            from: u64,
        ) -> Result<ObjectBody, crate::ports::StoreError> {
            self.0.get(bucket, key, from).await
        }

        async fn get_range(
            &self,
            bucket: &Folder,
            key: &str,
            from: u64,
            to: u64,
            _version: Option<&str>,
        ) -> Result<ObjectBody, crate::ports::StoreError> {
            (self.1)(self.0.clone(), bucket.clone(), key.to_owned(), from, to).await
        }

        async fn put_tagged(
            &self,
            bucket: &Folder,
            key: &str,
            body: ByteStream,
            small_sha256: Option<&str>,
        ) -> Result<(), crate::ports::StoreError> {
            self.0.put_tagged(bucket, key, body, small_sha256).await
        }
    }

    /// A CDN that answers a range with the right length but sends on past its end.
    fn oversending(store: &Arc<FakeObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Ranges(
            store.clone(),
            Box::new(|store, bucket, key, from, to| {
                Box::pin(async move {
                    let mut body = store.get(&bucket, &key, from).await?;
                    body.len = to - from;
                    Ok(body)
                })
            }),
        ))
    }

    /// A CDN that answers a range with the right length but ends it early.
    fn undersending(store: &Arc<FakeObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Ranges(
            store.clone(),
            Box::new(|store, bucket, key, from, to| {
                Box::pin(async move {
                    let body = store.get(&bucket, &key, from).await?;
                    Ok(ObjectBody {
                        len: to - from,
                        stream: crate::ports::object_store::take_bytes(
                            body.stream,
                            (to - from) / 2,
                        ),
                        ..body
                    })
                })
            }),
        ))
    }

    /// An S3 server that reads the whole object before it answers a range
    /// (moto does; so may a CDN edge that goes to its origin first): a minute a range.
    fn ranges_cost_a_whole_read(store: &Arc<FakeObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Ranges(
            store.clone(),
            Box::new(|store, bucket, key, from, to| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    store.get_range(&bucket, &key, from, to, None).await
                })
            }),
        ))
    }

    #[tokio::test]
    async fn a_range_answered_with_more_bytes_than_asked_for_is_refused_as_such() {
        let (store, data, first) = setup(3 * SEGMENT as usize).await;
        let oversending = oversending(&store);
        let mut body = parallel_body(
            oversending,
            Folder::parse("models").unwrap(),
            "m.big".into(),
            first,
            CdnReads {
                segment: SEGMENT,
                parallel: 2,
            },
        );
        let mut got = Vec::new();
        let error = loop {
            match body.next().await {
                Some(Ok(chunk)) => got.extend_from_slice(&chunk),
                Some(Err(e)) => break e,
                None => panic!("an oversent range was taken"),
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("more than the range"), "{error}");
        assert_eq!(got, data[..SEGMENT as usize], "only the first segment");
    }

    #[tokio::test]
    async fn a_range_that_ends_early_is_asked_again_and_never_handed_on_short() {
        let (store, data, first) = setup(3 * SEGMENT as usize).await;
        let undersending = undersending(&store);
        let mut body = parallel_body(
            undersending,
            Folder::parse("models").unwrap(),
            "m.big".into(),
            first,
            CdnReads {
                segment: SEGMENT,
                parallel: 2,
            },
        );
        let mut got = Vec::new();
        let error = loop {
            match body.next().await {
                Some(Ok(chunk)) => got.extend_from_slice(&chunk),
                Some(Err(e)) => break e,
                None => panic!("a short range was handed on as whole"),
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        assert_eq!(got, data[..SEGMENT as usize], "only the first segment");
        // Each try picks up where the last stopped: SEGMENT_ATTEMPTS ranged reads
        // for the second segment (the third may have started too).
        let second: Vec<u64> = store
            .gets()
            .into_iter()
            .map(|(_, at)| at)
            .filter(|&at| (SEGMENT..2 * SEGMENT).contains(&at))
            .collect();
        assert_eq!(second.len(), SEGMENT_ATTEMPTS as usize, "{second:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_ranges_are_given_up_for_the_first_plain_get_read_to_the_end() {
        let (store, data, first) = setup(40 * SEGMENT as usize + 123).await;
        let slow = ranges_cost_a_whole_read(&store);
        let mut body = parallel_body(
            slow,
            Folder::parse("models").unwrap(),
            "m.big".into(),
            first,
            CdnReads {
                segment: SEGMENT,
                parallel: 4,
            },
        );
        let started = tokio::time::Instant::now();
        let mut got = Vec::new();
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert!(got == data, "{} bytes of {}", got.len(), data.len());
        // Every byte came from the one plain GET: no range was answered.
        assert_eq!(store.gets(), [("m.big".to_owned(), 0)]);
        // (Paused time: the patience ran out, not the minute of a range.)
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_range_whose_declared_length_is_not_the_range_is_refused() {
        let (store, data, first) = setup(3 * SEGMENT as usize).await;
        // The right bytes, under a length that is one more than the range.
        let misdeclaring: Arc<dyn ObjectStore> = Arc::new(Ranges(
            store.clone(),
            Box::new(|store, bucket, key, from, to| {
                Box::pin(async move {
                    let body = store.get_range(&bucket, &key, from, to, None).await?;
                    Ok(ObjectBody {
                        len: body.len + 1,
                        ..body
                    })
                })
            }),
        ));
        let mut body = parallel_body(
            misdeclaring,
            Folder::parse("models").unwrap(),
            "m.big".into(),
            first,
            CdnReads {
                segment: SEGMENT,
                parallel: 2,
            },
        );
        let mut got = Vec::new();
        let error = loop {
            match body.next().await {
                Some(Ok(chunk)) => got.extend_from_slice(&chunk),
                Some(Err(e)) => break e,
                None => panic!("a range of the wrong declared length was taken"),
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("for a range of"), "{error}");
        assert_eq!(got, data[..SEGMENT as usize], "only the first segment");
    }
}
