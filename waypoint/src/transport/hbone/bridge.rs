//! The in-memory HTTP/2 connection pingora gets for an h2c upstream: its one stream is forwarded
//! onto a pooled upstream h2c connection ([`super::mux`]), frames and flow control included
//! (DATA is passed on as the upstream window allows; the window pingora sees is released as
//! its data leaves). A reset on either side resets the other.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tracing::debug;

use super::mux::MuxSlot;

/// Bytes in flight in each direction of the in-memory connection.
const PIPE: usize = 256 * 1024;
/// Streams of pingora's in-memory connection: it puts one on it.
const ONE_STREAM: u32 = 1;

/// pingora's end of the in-memory connection.
#[derive(Debug)]
pub struct BridgeIo(DuplexStream);

impl AsyncRead for BridgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BridgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl VirtualSocket for BridgeIo {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

/// Something that finds another stream slot when the reserved one's connection turned out
/// closed before the request went out on it.
pub type Reslot =
    Box<dyn FnOnce() -> futures::future::BoxFuture<'static, Option<MuxSlot>> + Send + 'static>;

/// Start forwarding pingora's stream on `slot`; returns pingora's end of the connection.
pub fn start(slot: MuxSlot, reslot: Reslot) -> BridgeIo {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        if let Err(e) = serve(theirs, slot, reslot).await {
            debug!(error = %e, "h2c bridge ended");
        }
    });
    BridgeIo(ours)
}

async fn serve(io: DuplexStream, slot: MuxSlot, reslot: Reslot) -> Result<(), h2::Error> {
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(ONE_STREAM)
        .initial_window_size(PIPE as u32)
        .initial_connection_window_size(PIPE as u32)
        .max_header_list_size(64 * 1024)
        .handshake::<_, Bytes>(io)
        .await?;
    let Some(first) = conn.accept().await else {
        return Ok(());
    };
    let (req, respond) = first?;
    let forward = forward(req, respond, slot, reslot);
    tokio::pin!(forward);
    // The connection is driven by accepting; pingora opens no second stream.
    let mut forwarding = true;
    loop {
        tokio::select! {
            _ = &mut forward, if forwarding => forwarding = false,
            next = conn.accept() => match next {
                Some(Ok((_, mut extra))) => extra.send_reset(h2::Reason::REFUSED_STREAM),
                Some(Err(e)) => return Err(e),
                None => break,
            },
        }
    }
    if forwarding {
        forward.await;
    }
    Ok(())
}

/// The error an h2 failure resets the other side with.
fn reason(e: &h2::Error) -> h2::Reason {
    e.reason().unwrap_or(h2::Reason::INTERNAL_ERROR)
}

async fn forward(
    req: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    mut slot: MuxSlot,
    reslot: Reslot,
) {
    let (parts, body) = req.into_parts();
    let end = body.is_end_stream();
    let head = Request::from_parts(parts, ());
    // Nothing has gone out yet: a connection found closed (or in GOAWAY) is swapped for another.
    let mut reslot = Some(reslot);
    let (response, upstream_body) = loop {
        let sent = async {
            let mut send = slot.sender().ready().await?;
            send.send_request(copy_head(&head), end)
        };
        match sent.await {
            Ok(pair) => break pair,
            Err(e) => {
                slot.mark_closed();
                match reslot.take() {
                    Some(next) => match next().await {
                        Some(s) => {
                            debug!(error = %e, "upstream h2c connection closed before the request; another one takes it");
                            slot = s;
                        }
                        None => return respond.send_reset(h2::Reason::REFUSED_STREAM),
                    },
                    None => return respond.send_reset(h2::Reason::REFUSED_STREAM),
                }
            }
        }
    };
    let mut upstream_body = upstream_body;
    let request = async {
        if !end {
            if let Err(e) = pump(body, &mut upstream_body).await {
                upstream_body.send_reset(reason(&e));
            }
        }
    };
    let answer = async {
        let response = tokio::select! {
            response = response => response,
            // pingora gave up waiting (a timeout, a client gone): the upstream stream is dropped,
            // which resets it.
            _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "upstream h2c stream failed before its response");
                return respond.send_reset(reason(&e));
            }
        };
        let (parts, body) = response.into_parts();
        let end = body.is_end_stream();
        match respond.send_response(Response::from_parts(parts, ()), end) {
            Ok(mut down) if !end => {
                if let Err(e) = pump(body, &mut down).await {
                    down.send_reset(reason(&e));
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "pingora's stream went away before the response"),
        }
    };
    tokio::join!(request, answer);
    drop(slot);
}

/// DATA and trailers from `from` to `to`, as `to`'s window allows. Ends early when `to` is
/// reset (pingora gave up on its stream: a timeout, a client gone), so that `from` is dropped
/// and its side reset too, instead of waiting on a silent peer.
async fn pump(mut from: RecvStream, to: &mut SendStream<Bytes>) -> Result<(), h2::Error> {
    loop {
        let next = tokio::select! {
            next = from.data() => next,
            reset = poll_fn(|cx| to.poll_reset(cx)) => return Err(reset_error(reset)),
        };
        let Some(chunk) = next else { break };
        let mut chunk = chunk?;
        let len = chunk.len();
        while !chunk.is_empty() {
            to.reserve_capacity(chunk.len());
            let room = match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(room) => room?,
                None => return Err(h2::Error::from(h2::Reason::STREAM_CLOSED)),
            };
            if room > 0 {
                to.send_data(chunk.split_to(room.min(chunk.len())), false)?;
            }
        }
        from.flow_control().release_capacity(len)?;
    }
    let trailers = tokio::select! {
        trailers = from.trailers() => trailers?,
        reset = poll_fn(|cx| to.poll_reset(cx)) => return Err(reset_error(reset)),
    };
    match trailers {
        Some(trailers) => to.send_trailers(trailers),
        None => to.send_data(Bytes::new(), true),
    }
}

/// The peer reset its stream (with this reason), or its connection failed.
fn reset_error(reset: Result<h2::Reason, h2::Error>) -> h2::Error {
    reset.map_or_else(|e| e, h2::Error::from)
}

/// A copy of a request head (`http::Request` is not `Clone`), to send it again elsewhere.
fn copy_head(head: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}
