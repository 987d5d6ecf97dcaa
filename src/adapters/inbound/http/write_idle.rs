//! A connection whose client reads nothing of a response for a while is cut
//! off (PROTOCOL §5.3: 60 s), so a slow reader cannot hold a transfer slot,
//! a cache reader or a decrypting task forever. The clock runs only while a
//! write waits for the client (the socket's buffer is full), never while the
//! loader itself waits for its upstream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a write may wait for the client to read.
pub const RESPONSE_WRITE_IDLE: Duration = Duration::from_secs(60);

/// A clock that runs only while something waits: started by the first
/// `Pending` after progress, stopped by progress. Shared by the write side
/// here and the request-body guards.
pub struct IdleClock {
    idle: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleClock {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            deadline: None,
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Progress was made: the clock stops.
    pub fn reset(&mut self) {
        self.deadline = None;
    }

    /// Still waiting: starts the clock if it is stopped; true once it ran out
    /// (the waker is registered until then).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.deadline = None;
            return true;
        }
        false
    }
}

pub struct WriteIdle<T> {
    inner: T,
    clock: IdleClock,
}

impl<T> WriteIdle<T> {
    pub fn new(inner: T, idle: Duration) -> Self {
        Self {
            inner,
            clock: IdleClock::new(idle),
        }
    }

    /// `poll` made progress: stop the clock; it is still waiting: start or
    /// check the clock.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.clock.reset();
                Poll::Ready(result)
            }
            Poll::Pending if self.clock.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} s",
                    self.clock.idle().as_secs()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteIdle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteIdle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_idle_time() {
        // A 64-byte pipe whose other end never reads.
        let (near, _far) = tokio::io::duplex(64);
        let mut conn = WriteIdle::new(near, Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let err = conn.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_reading_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 16];
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                match tokio::io::AsyncReadExt::read(&mut far, &mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        let mut conn = WriteIdle::new(near, Duration::from_secs(60));
        conn.write_all(&[1u8; 256]).await.unwrap();
        drop(conn);
        assert_eq!(reader.await.unwrap(), 256);
    }
}
