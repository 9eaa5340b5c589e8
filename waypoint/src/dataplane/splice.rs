//! The byte splice of a TCP tunnel, within its cluster's DestinationRule limits:
//! `connectionPool.tcp.idleTimeout` ends it after that long without a byte in either direction,
//! `connectionPool.tcp.maxConnectionDuration` after that long in all.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Limits of one splice; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpliceLimits {
    pub idle_timeout: Option<Duration>,
    pub max_duration: Option<Duration>,
}

/// Why a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed, or one failed (see the result).
    Closed,
    IdleTimeout,
    MaxDuration,
}

/// What a splice moved and how it ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    pub end: SpliceEnd,
    pub result: io::Result<()>,
    /// Which side's read or write failed (a reset peer), when the result is an error.
    pub a_failed: bool,
    pub b_failed: bool,
}

/// Copy both ways between `a` and `b` until both close, one fails or a limit is reached.
pub async fn splice<A, B>(a: &mut A, b: &mut B, limits: SpliceLimits) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_byte_ms = AtomicU64::new(0);
    let (a_read, b_read) = (AtomicU64::new(0), AtomicU64::new(0));
    let (a_failed, b_failed) = (AtomicBool::new(false), AtomicBool::new(false));
    let mut ma = Metered {
        inner: a,
        read: &a_read,
        failed: &a_failed,
        last_byte_ms: &last_byte_ms,
        start,
    };
    let mut mb = Metered {
        inner: b,
        read: &b_read,
        failed: &b_failed,
        last_byte_ms: &last_byte_ms,
        start,
    };
    let watchdog = async {
        loop {
            let idle_at = limits.idle_timeout.map(|idle| {
                (
                    Duration::from_millis(last_byte_ms.load(Ordering::Relaxed)) + idle,
                    SpliceEnd::IdleTimeout,
                )
            });
            let max_at = limits.max_duration.map(|max| (max, SpliceEnd::MaxDuration));
            let next = match (idle_at, max_at) {
                (Some(i), Some(m)) => Some(if i.0 <= m.0 { i } else { m }),
                (i, m) => i.or(m),
            };
            let Some((at, why)) = next else {
                return std::future::pending().await;
            };
            let now = start.elapsed();
            if now >= at {
                return why;
            }
            tokio::time::sleep(at - now).await;
        }
    };
    let (end, result) = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut ma, &mut mb) => (SpliceEnd::Closed, r.map(|_| ())),
        why = watchdog => (why, Ok(())),
    };
    Spliced {
        a_to_b: a_read.load(Ordering::Relaxed),
        b_to_a: b_read.load(Ordering::Relaxed),
        end,
        result,
        a_failed: a_failed.load(Ordering::Relaxed),
        b_failed: b_failed.load(Ordering::Relaxed),
    }
}

/// Counts what is read from a stream and when the last byte moved, and notes its failures.
struct Metered<'a, S> {
    inner: &'a mut S,
    read: &'a AtomicU64,
    failed: &'a AtomicBool,
    last_byte_ms: &'a AtomicU64,
    start: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.fetch_add(n, Ordering::Relaxed);
            self.last_byte_ms
                .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        self.noted(result)
    }
}

impl<S> Metered<'_, S> {
    fn noted<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &result {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.noted(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.inner).poll_flush(cx);
        self.noted(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.inner).poll_shutdown(cx);
        self.noted(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_until_closed() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let run =
            tokio::spawn(async move { splice(&mut a, &mut b, SpliceLimits::default()).await });
        a_peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b_peer.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        a_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!");
        drop((a_peer, b_peer));
        let s = run.await.unwrap();
        assert_eq!((s.a_to_b, s.b_to_a, s.end), (4, 5, SpliceEnd::Closed));
    }

    /// A reader that fails once its peer is gone, as an HBONE stream the client reset.
    struct Resets(tokio::io::ReadHalf<tokio::io::DuplexStream>);

    impl AsyncRead for Resets {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => Poll::Ready(Err(
                    io::Error::new(io::ErrorKind::ConnectionReset, "stream reset"),
                )),
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn a_reset_side_is_named_and_the_bytes_that_flowed_are_kept() {
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let (read, write) = tokio::io::split(a);
        let mut a = tokio::io::join(Resets(read), write);
        let run =
            tokio::spawn(async move { splice(&mut a, &mut b, SpliceLimits::default()).await });
        a_peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b_peer.read_exact(&mut got).await.unwrap();
        b_peer.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        a_peer.read_exact(&mut got).await.unwrap();
        drop(a_peer);
        let s = run.await.unwrap();
        assert!(s.result.is_err());
        assert!(s.a_failed && !s.b_failed, "{s:?}");
        assert_eq!((s.a_to_b, s.b_to_a), (5, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_byte() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, _b_peer) = tokio::io::duplex(64);
        let limits = SpliceLimits {
            idle_timeout: Some(Duration::from_secs(10)),
            max_duration: None,
        };
        let run = tokio::spawn(async move { splice(&mut a, &mut b, limits).await });
        tokio::time::sleep(Duration::from_secs(8)).await;
        a_peer.write_all(b"keepalive").await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!run.is_finished(), "a byte 8 s ago keeps it open");
        let s = run.await.unwrap();
        assert_eq!(s.end, SpliceEnd::IdleTimeout);
        assert_eq!(s.a_to_b, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_ends_a_busy_splice() {
        let (mut a, mut a_peer) = tokio::io::duplex(1 << 16);
        let (mut b, mut b_peer) = tokio::io::duplex(1 << 16);
        let limits = SpliceLimits {
            idle_timeout: Some(Duration::from_secs(5)),
            max_duration: Some(Duration::from_secs(12)),
        };
        let run = tokio::spawn(async move { splice(&mut a, &mut b, limits).await });
        let chatter = tokio::spawn(async move {
            let mut sink = [0u8; 16];
            for _ in 0..30 {
                if a_peer.write_all(b"tick").await.is_err() {
                    break;
                }
                let _ = b_peer.read(&mut sink).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let s = run.await.unwrap();
        assert_eq!(s.end, SpliceEnd::MaxDuration);
        chatter.abort();
    }
}
