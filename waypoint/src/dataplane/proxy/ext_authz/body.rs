//! The request body that goes with a check (Envoy's `with_request_body`, Istio's
//! `includeRequestBodyInCheck`): read in `request_filter`, before the request is proxied.
//!
//! Reading consumes the body from the client; pingora sends the part read before proxying to the
//! upstream from its retry buffer (`enable_retry_buffering`, 64 KiB), then streams the rest. So
//! the read stops as soon as it has `max_bytes` (or the whole body), and a read the retry buffer
//! could not hold is never forwarded: the request is answered instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use pingora_error::Result;
use pingora_proxy::Session;
use routing::authz::ext::BodyBuffer;

/// Envoy's header on a check that carries a body: `true` when the body was cut at
/// `max_request_bytes`.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// The body the authorizer sees.
#[derive(Debug, Clone)]
pub struct CheckBody {
    /// At most `max_bytes`.
    pub bytes: Bytes,
    /// The request's body is longer than `bytes`.
    pub partial: bool,
}

#[derive(Debug)]
pub enum BodyRead {
    /// Ready for the check (`None`: the request has no body).
    Ready(Option<CheckBody>),
    /// Longer than `max_bytes` and partial bodies are not allowed: Envoy answers 413.
    TooLarge,
    /// More was read than pingora's retry buffer holds: the body could not reach the upstream
    /// whole, so the request must not be proxied.
    Unreplayable { read: usize },
}

/// Read `session`'s request body as `settings` say, keeping it for the upstream.
pub async fn read(session: &mut Session, settings: BodyBuffer) -> Result<BodyRead> {
    if session.is_body_empty() {
        return Ok(BodyRead::Ready(None));
    }
    session.enable_retry_buffering();
    let max = settings.max_bytes as usize;
    let mut buf = BytesMut::new();
    // Partial: enough once there are `max` bytes. Whole: one byte more tells "too large".
    let enough = if settings.allow_partial { max } else { max + 1 };
    while buf.len() < enough && !session.is_body_done() {
        match session.read_request_body().await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => break,
        }
    }
    let done = session.is_body_done();
    if !settings.allow_partial && buf.len() > max {
        return Ok(BodyRead::TooLarge);
    }
    if session.retry_buffer_truncated() {
        return Ok(BodyRead::Unreplayable { read: buf.len() });
    }
    let partial = !done || buf.len() > max;
    buf.truncate(max);
    Ok(BodyRead::Ready(Some(CheckBody {
        bytes: buf.freeze(),
        partial,
    })))
}

/// A warning for an unreplayable body, at most every 10 s (counting the ones left out): a
/// client sending large bodies must not flood the log.
pub fn warn_unreplayable(provider: &str, read: usize) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SKIPPED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            provider,
            read,
            limit = routing::authz::ext::MAX_BODY_BYTES,
            skipped = SKIPPED.swap(0, Ordering::Relaxed),
            "request denied: reading the body for the ext_authz check went past what pingora's \
             retry buffer can replay to the upstream; a smaller maxRequestBytes makes this rarer"
        );
    } else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing::authz::ext::MAX_BODY_BYTES;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    /// A pingora session whose client has sent `body` (with its content-length) already.
    async fn session(method: &str, body: &[u8]) -> (Session, DuplexStream) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let head = if body.is_empty() {
            format!("{method} / HTTP/1.1\r\nhost: a\r\n\r\n")
        } else {
            format!(
                "{method} / HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
        };
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(body).await.unwrap();
        let mut s = Session::new_h1(Box::new(server));
        assert!(s.read_request().await.unwrap());
        (s, client)
    }

    fn settings(max: u32, partial: bool) -> BodyBuffer {
        BodyBuffer::new(max, partial, false).unwrap()
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn whole_partial_too_large_and_none() {
        // Whole: the check's body, and what pingora replays upstream.
        let (mut s, _c) = session("POST", &bytes(16)).await;
        match read(&mut s, settings(16, false)).await.unwrap() {
            BodyRead::Ready(Some(b)) => {
                assert_eq!((&b.bytes[..], b.partial), (&bytes(16)[..], false))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.get_retry_buffer().as_deref(), Some(&bytes(16)[..]));
        // One byte over without allowPartialMessage.
        let (mut s, _c) = session("POST", &bytes(17)).await;
        assert!(matches!(
            read(&mut s, settings(16, false)).await.unwrap(),
            BodyRead::TooLarge
        ));
        // With it: the first max bytes, partial; the read part is replayed, the rest unread.
        let (mut s, _c) = session("PUT", &bytes(40_000)).await;
        match read(&mut s, settings(16, true)).await.unwrap() {
            BodyRead::Ready(Some(b)) => {
                assert_eq!((&b.bytes[..], b.partial), (&bytes(16)[..], true))
            }
            other => panic!("{other:?}"),
        }
        let replay = s.get_retry_buffer().unwrap();
        assert_eq!(&replay[..], &bytes(40_000)[..replay.len()]);
        // No body, nothing read.
        let (mut s, _c) = session("GET", b"").await;
        assert!(matches!(
            read(&mut s, settings(16, false)).await.unwrap(),
            BodyRead::Ready(None)
        ));
    }

    #[tokio::test]
    async fn a_read_past_the_retry_buffer_is_unreplayable() {
        // Whatever arrived with the headers, then a 64 KiB read: more than pingora replays.
        let (mut s, _c) = session("POST", &bytes(200_000)).await;
        assert!(matches!(
            read(&mut s, settings(MAX_BODY_BYTES, true)).await.unwrap(),
            BodyRead::Unreplayable { read } if read > MAX_BODY_BYTES as usize
        ));
    }

    /// Contract (pingora-core 0.9 `BODY_BUF_LIMIT`): a body read before proxying is replayed
    /// from the retry buffer up to 64 KiB, and not at all beyond.
    #[tokio::test]
    async fn pingora_retry_buffer_replays_64_kib() {
        for (len, replayed) in [(64 * 1024, true), (64 * 1024 + 1, false)] {
            let (mut s, _c) = session("POST", &bytes(len)).await;
            s.enable_retry_buffering();
            while s.read_request_body().await.unwrap().is_some() {}
            assert_eq!(s.get_retry_buffer().is_some(), replayed, "{len}");
            assert_eq!(s.retry_buffer_truncated(), !replayed, "{len}");
        }
        assert_eq!(MAX_BODY_BYTES, 64 * 1024);
    }
}
