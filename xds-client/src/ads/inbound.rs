//! The responses of one ADS call, read from the HTTP/2 response body frame by frame.
//!
//! gRPC frames each message as a flag byte (0: not compressed), a 4-byte big-endian length
//! and the message. A message of at least [`OWN_ALLOCATION`] bytes is read into an allocation
//! of exactly its length, made when its header arrives; shorter ones are copied out of a small
//! receive buffer. Once the client has copied out the payloads it keeps, a message's
//! allocation is freed with it, whatever comes next on the stream and whenever it comes.
//!
//! tonic's `Streaming` reads every message into one receive buffer instead, which grows to the
//! largest message. A message that fits in what that buffer has left after the one before is
//! placed there, and holding any of it holds the whole buffer: at 5 000 services the waypoint
//! held 28 MiB of it after the initial sync (the assignments, the last response, until the
//! next one came), which is why the client does not use it.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use prost::Message;
use tonic::Status;

use crate::wire::Payloads;

/// The shortest message that gets an allocation of its own.
pub(crate) const OWN_ALLOCATION: usize = 64 << 10;

/// The gRPC message header: a compression flag and a 4-byte length.
const HEADER: usize = 5;

/// The responses of one ADS call, as a stream of decoded `M`. It ends (`None`) when the server
/// ends the call with status OK, and yields the server's status as an error otherwise; a call
/// that ends without a status is an `Unknown` error (gRPC requires `grpc-status` in the
/// trailers; tonic and grpc-go read its absence the same way).
pub(crate) struct Inbound<M> {
    body: tonic::body::Body,
    /// Received bytes not yet part of a message read: headers and short messages.
    pending: BytesMut,
    /// A long message being read into its own allocation: its length and what came of it.
    long: Option<(usize, Vec<u8>)>,
    /// The largest message accepted.
    max: usize,
    /// The server's trailers said OK: what is pending must still be read, then the stream ends.
    ended: bool,
    /// The stream ended or failed: nothing more comes from it.
    done: bool,
    message: PhantomData<fn() -> M>,
}

impl<M> Inbound<M> {
    pub(crate) fn new(body: tonic::body::Body, max: usize) -> Self {
        Self {
            body,
            pending: BytesMut::new(),
            long: None,
            max,
            ended: false,
            done: false,
            message: PhantomData,
        }
    }

    /// The next whole message received, if there is one.
    fn take(&mut self) -> Result<Option<Bytes>, Status> {
        if let Some((len, long)) = &self.long {
            if long.len() < *len {
                return Ok(None);
            }
            return Ok(self.long.take().map(|(_, long)| Bytes::from(long)));
        }
        if self.pending.len() < HEADER {
            return Ok(None);
        }
        let flag = self.pending[0];
        let len = u32::from_be_bytes([
            self.pending[1],
            self.pending[2],
            self.pending[3],
            self.pending[4],
        ]) as usize;
        if flag != 0 {
            return Err(Status::internal(format!(
                "istiod sent a message with compression flag {flag}; no compression was negotiated"
            )));
        }
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "istiod sent a message of {len} bytes; the limit is {} bytes",
                self.max
            )));
        }
        if len >= OWN_ALLOCATION {
            self.pending.advance(HEADER);
            let mut long = Vec::with_capacity(len);
            let now = self.pending.len().min(len);
            long.extend_from_slice(&self.pending[..now]);
            self.pending.advance(now);
            self.long = Some((len, long));
            return self.take();
        }
        if self.pending.len() < HEADER + len {
            return Ok(None);
        }
        let message = Bytes::copy_from_slice(&self.pending[HEADER..HEADER + len]);
        self.pending.advance(HEADER + len);
        Ok(Some(message))
    }

    /// Add one DATA frame's bytes: to the long message being read first, the rest to `pending`.
    fn receive(&mut self, mut data: Bytes) {
        if let Some((len, long)) = &mut self.long {
            let now = (*len - long.len()).min(data.len());
            long.extend_from_slice(&data[..now]);
            data.advance(now);
        }
        if !data.is_empty() {
            self.pending.extend_from_slice(&data);
        }
    }

    /// Something was received that no message has taken yet.
    fn inside_a_message(&self) -> bool {
        self.long.is_some() || !self.pending.is_empty()
    }
}

impl<M: Message + Default + Payloads> futures::Stream for Inbound<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = ready!(self.as_mut().poll_message(cx));
        // After an error or the end, the stream is over.
        self.done = !matches!(next, Some(Ok(_)));
        Poll::Ready(next)
    }
}

impl<M: Message + Default + Payloads> Inbound<M> {
    fn poll_message(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<M, Status>>> {
        let this = &mut *self;
        loop {
            match this.take() {
                Ok(Some(bytes)) => {
                    let len = bytes.len();
                    let mut message = M::decode(bytes).map_err(|e| {
                        Status::internal(format!("a response does not decode: {e}"))
                    })?;
                    message.settle(len);
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
                Err(status) => return Poll::Ready(Some(Err(status))),
            }
            if this.ended {
                return Poll::Ready(if this.inside_a_message() {
                    Some(Err(Status::internal(
                        "istiod ended the call inside a message",
                    )))
                } else {
                    None
                });
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.receive(data),
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            match Status::from_header_map(trailers) {
                                Some(status) if status.code() == tonic::Code::Ok => {
                                    this.ended = true
                                }
                                Some(status) => return Poll::Ready(Some(Err(status))),
                                None => return Poll::Ready(Some(Err(no_status()))),
                            }
                        }
                    }
                },
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                // The body ended without trailers.
                None => return Poll::Ready(Some(Err(no_status()))),
            }
        }
    }
}

/// A call that ended without a `grpc-status`.
fn no_status() -> Status {
    Status::unknown("istiod ended the ADS call without a grpc-status")
}

/// The gRPC status for a response whose HTTP status is not 200 (the mapping gRPC's
/// `doc/http-grpc-status-mapping.md` gives).
pub(crate) fn http_status(status: http::StatusCode) -> Status {
    use tonic::Code;
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("istiod answered the ADS call with HTTP {status}"),
    )
}
