//! An embedded S3 server (s3s over a folder, s3s-fs) for the local stack and the tests:
//! real HTTP and SigV4 on 127.0.0.1, buckets as folders, and faults to inject into reads.
//! It is a development peer: it must never be exposed beyond loopback or hold real data.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::stream::RemainingLength;
use s3s::{S3, S3Request, S3Response, S3Result, StdError, s3_error};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct S3ServerConfig {
    /// Folder holding the buckets (one sub-folder each); it must exist.
    pub root: PathBuf,
    /// Accepted key pairs: (access key, secret).
    pub credentials: Vec<(String, String)>,
}

impl std::fmt::Debug for S3ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access_keys: Vec<&str> = self.credentials.iter().map(|(a, _)| a.as_str()).collect();
        f.debug_struct("S3ServerConfig")
            .field("root", &self.root)
            .field("access_keys", &access_keys)
            .finish()
    }
}

/// A fault for the next GetObject to suffer.
#[derive(Debug, Clone, Copy)]
enum GetFault {
    /// The body breaks off (connection dropped) after this many bytes.
    CutAfter(u64),
    /// The body pauses for the duration after this many bytes, then goes on.
    StallAfter(u64, Duration),
    /// The response (headers included) starts only after the duration.
    Delay(Duration),
}

type Faults = Arc<Mutex<Option<GetFault>>>;

/// How ranged GETs are answered, for every request while set.
#[derive(Debug, Default)]
struct RangeMode {
    /// Bytes per second at which a ranged GET first reads the whole object
    /// (0: off), as moto does and a CDN edge that fetches from its origin.
    whole_read_rate: std::sync::atomic::AtomicU64,
    /// Ranged GETs received.
    ranged: std::sync::atomic::AtomicU64,
}

/// What UploadPart calls see and suffer, for every request while set.
#[derive(Debug, Default)]
struct PartWatch {
    /// UploadPart calls being served now, and the most at once so far.
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    /// Each UploadPart is answered only after this many milliseconds.
    delay_ms: std::sync::atomic::AtomicU64,
    /// This part number is refused with a 500 (0: none).
    refused: std::sync::atomic::AtomicI32,
}

/// A running server; dropping it shuts it down.
pub struct S3ServerHandle {
    addr: SocketAddr,
    root: PathBuf,
    faults: Faults,
    ranges: Arc<RangeMode>,
    parts: Arc<PartWatch>,
    shutdown: watch::Sender<bool>,
}

/// Serves the folder `config.root` over S3 on 127.0.0.1 at a free port.
pub async fn start(config: S3ServerConfig) -> io::Result<S3ServerHandle> {
    let root = tokio::fs::canonicalize(&config.root).await?;
    let fs = s3s_fs::FileSystem::new(&root)
        .map_err(|e| io::Error::other(format!("cannot serve {}: {e:?}", root.display())))?;
    let faults: Faults = Arc::default();
    let ranges: Arc<RangeMode> = Arc::default();
    let parts: Arc<PartWatch> = Arc::default();
    let store = CheckedBuckets {
        fs,
        root: root.clone(),
        faults: faults.clone(),
        ranges: ranges.clone(),
        parts: parts.clone(),
        keys: KeyLocks::default(),
    };

    let mut auth = SimpleAuth::new();
    let mut seen = HashSet::new();
    for (access_key, secret) in config.credentials {
        if seen.insert(access_key.clone()) {
            auth.register(access_key, secret.into());
        }
    }
    let mut builder = S3ServiceBuilder::new(store);
    builder.set_auth(auth);
    let service = builder.build();

    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (shutdown, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.changed() => break,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let service = service.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let builder = ConnBuilder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = stop.changed() => {}
                }
            });
        }
    });

    Ok(S3ServerHandle {
        addr,
        root,
        faults,
        ranges,
        parts,
        shutdown,
    })
}

impl S3ServerHandle {
    /// `http://127.0.0.1:PORT`, for `cdn.yaml`'s `host`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a bucket (a folder under the root); an existing one is fine.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        let valid = (3..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !name.contains("..");
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a bucket name",
            ));
        }
        std::fs::create_dir_all(self.root.join(name))
    }

    /// The next GetObject's body breaks off (the connection drops) after `bytes` bytes.
    pub fn cut_next_get_after(&self, bytes: u64) {
        self.set_fault(GetFault::CutAfter(bytes));
    }

    /// The next GetObject's body pauses for `pause` after `bytes` bytes, then goes on.
    pub fn stall_next_get_after(&self, bytes: u64, pause: Duration) {
        self.set_fault(GetFault::StallAfter(bytes, pause));
    }

    /// The next GetObject's response starts only after `pause`.
    pub fn delay_next_get(&self, pause: Duration) {
        self.set_fault(GetFault::Delay(pause));
    }

    fn set_fault(&self, fault: GetFault) {
        let mut slot = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(fault);
    }

    /// From now on every ranged GET first reads the whole object, at
    /// `bytes_per_sec` (a range-inefficient server: moto, or a CDN edge that
    /// fetches the whole object from its origin first); 0 turns it off.
    pub fn read_whole_object_per_range(&self, bytes_per_sec: u64) {
        self.ranges
            .whole_read_rate
            .store(bytes_per_sec, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on every UploadPart is answered only after `pause`.
    pub fn delay_upload_parts(&self, pause: Duration) {
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        self.parts
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on an UploadPart of part `number` is refused with a 500.
    pub fn refuse_upload_part(&self, number: i32) {
        self.parts
            .refused
            .store(number, std::sync::atomic::Ordering::Relaxed);
    }

    /// The most UploadPart calls served at once so far.
    pub fn most_parts_at_once(&self) -> usize {
        self.parts.most.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many ranged GETs the server has received.
    pub fn ranged_gets(&self) -> u64 {
        self.ranges
            .ranged
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting and drops every open connection.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for S3ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for S3ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3ServerHandle")
            .field("addr", &self.addr)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// s3s-fs with S3's bucket semantics: it would create a missing bucket's folder on a write
/// and answer NoSuchKey for a read from a missing bucket; this answers NoSuchBucket.
///
/// It also makes an object's bytes and metadata change as one, as S3 does:
/// s3s-fs renames the new bytes into place and writes the metadata after,
/// so a read between the two would pair new bytes with the old metadata
/// (and the loader's §5.4 tag with the wrong big part). Reads and writes of
/// one key take that key's lock.
struct CheckedBuckets {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    faults: Faults,
    ranges: Arc<RangeMode>,
    parts: Arc<PartWatch>,
    keys: KeyLocks,
}

/// One read-write lock per object key, made on first use.
#[derive(Default)]
struct KeyLocks(
    std::sync::Mutex<std::collections::HashMap<ObjectKey, Arc<tokio::sync::RwLock<()>>>>,
);

/// (bucket, key)
type ObjectKey = (String, String);

impl KeyLocks {
    fn of(&self, bucket: &str, key: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((bucket.to_owned(), key.to_owned()))
            .or_default()
            .clone()
    }
}

impl CheckedBuckets {
    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        // s3s has validated the name (no separators, no `..`) before any call reaches here.
        match tokio::fs::metadata(self.root.join(bucket)).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(s3_error!(NoSuchBucket)),
        }
    }

    fn take_fault(&self) -> Option<GetFault> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[async_trait]
impl S3 for CheckedBuckets {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        use std::sync::atomic::Ordering::Relaxed;
        /// Counts a call out also when its connection drops mid-way.
        struct Serving<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Serving<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        let watch = &self.parts;
        let now = watch.now.fetch_add(1, Relaxed) + 1;
        let _serving = Serving(&watch.now);
        watch.most.fetch_max(now, Relaxed);
        let delay = watch.delay_ms.load(Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if watch.refused.load(Relaxed) == req.input.part_number {
            Err(s3_error!(InternalError, "part refused for a test"))
        } else {
            self.fs.upload_part(req).await
        }
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        let lock = self.keys.of(&req.input.bucket, &req.input.key);
        let _reading = lock.read().await;
        self.fs.head_object(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        let lock = self.keys.of(&req.input.bucket, &req.input.key);
        let _writing = lock.write().await;
        self.fs.put_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        self.fs.delete_objects(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        self.fs.create_multipart_upload(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        let lock = self.keys.of(&req.input.bucket, &req.input.key);
        let _writing = lock.write().await;
        self.fs.complete_multipart_upload(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        if req.input.range.is_some() {
            use std::sync::atomic::Ordering;
            self.ranges.ranged.fetch_add(1, Ordering::Relaxed);
            let rate = self.ranges.whole_read_rate.load(Ordering::Relaxed);
            if rate > 0 && !req.input.key.split('/').any(|part| part == "..") {
                // The whole object, read before the range is answered.
                let path = self.root.join(&req.input.bucket).join(&req.input.key);
                let len = tokio::fs::read(&path).await.map_or(0, |b| b.len() as u64);
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / rate as f64)).await;
            }
        }
        let fault = self.take_fault();
        if let Some(GetFault::Delay(pause)) = fault {
            tokio::time::sleep(pause).await;
        }
        // Held until the object is open: its bytes then stream from that file.
        let lock = self.keys.of(&req.input.bucket, &req.input.key);
        let reading = lock.read().await;
        let mut response = self.fs.get_object(req).await?;
        drop(reading);
        let (after, action) = match fault {
            Some(GetFault::CutAfter(after)) => (after, Action::Cut),
            Some(GetFault::StallAfter(after, pause)) => (after, Action::Stall(pause)),
            Some(GetFault::Delay(_)) | None => return Ok(response),
        };
        if let Some(body) = response.output.body.take() {
            response.output.body = Some(StreamingBlob::new(FaultyBody::new(body, after, action)));
        }
        Ok(response)
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Cut,
    Stall(Duration),
}

/// A body that, after `remaining` bytes, breaks off or pauses.
struct FaultyBody {
    inner: StreamingBlob,
    /// Bytes read past the fault point, handed out once the pause is over.
    held: Option<Bytes>,
    remaining: u64,
    action: Option<Action>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: bool,
}

impl FaultyBody {
    fn new(inner: StreamingBlob, after: u64, action: Action) -> Self {
        Self {
            inner,
            held: None,
            remaining: after,
            action: Some(action),
            sleep: None,
            cut: false,
        }
    }
}

impl s3s::stream::ByteStream for FaultyBody {
    fn remaining_length(&self) -> RemainingLength {
        let held = self.held.as_ref().map_or(0, Bytes::len);
        match self.inner.remaining_length().exact() {
            Some(inner) if !self.cut => RemainingLength::new_exact(inner + held),
            _ => RemainingLength::unknown(),
        }
    }
}

#[derive(Debug)]
struct CutOff;

impl std::fmt::Display for CutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: body cut off")
    }
}

impl std::error::Error for CutOff {}

impl Stream for FaultyBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(None);
        }
        if this.remaining == 0 {
            match this.action {
                Some(Action::Cut) => {
                    this.cut = true;
                    return Poll::Ready(Some(Err(Box::new(CutOff))));
                }
                Some(Action::Stall(pause)) => {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                    this.action = None;
                }
                None => {}
            }
        }
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(Ok(held)));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(mut chunk))) if this.action.is_some() => {
                // `remaining` > 0 here: the fault point lies in or after this chunk.
                match usize::try_from(this.remaining) {
                    Ok(keep) if keep < chunk.len() => {
                        this.held = Some(chunk.split_off(keep));
                        this.remaining = 0;
                    }
                    _ => this.remaining -= chunk.len() as u64,
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}
