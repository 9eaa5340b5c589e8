//! The two ADS calls on tonic's channel. The requests are framed by prost's encoder as tonic
//! frames them; the responses are read by [`Inbound`], which gives each large message an
//! allocation of its own (see `inbound.rs` for why not tonic's `Streaming`).
//!
//! The payloads are decoded as slices of the message, and [`Payloads::settle`] keeps a slice
//! only where it is most of its message (a large `main_internal`): what the client holds then
//! is the message it received, not a copy of it beside it.

mod inbound;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tower::{Service, ServiceExt};

pub(crate) use inbound::Inbound;

use crate::transport::MAX_MESSAGE_SIZE;
use crate::wire::{DeltaResponse, Payloads, SotwResponse};

const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const STATE_OF_THE_WORLD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// An ADS client on one channel to istiod.
pub(crate) struct Ads {
    channel: Channel,
}

impl Ads {
    pub(crate) fn new(channel: Channel) -> Self {
        Self { channel }
    }

    /// `DeltaAggregatedResources`.
    pub(crate) async fn delta<S>(
        &mut self,
        requests: Request<S>,
    ) -> Result<Inbound<DeltaResponse>, Status>
    where
        S: Stream<Item = DeltaDiscoveryRequest> + Send + 'static,
    {
        self.call(requests, DELTA).await
    }

    /// `StreamAggregatedResources` (state of the world).
    pub(crate) async fn state_of_the_world<S>(
        &mut self,
        requests: Request<S>,
    ) -> Result<Inbound<SotwResponse>, Status>
    where
        S: Stream<Item = DiscoveryRequest> + Send + 'static,
    {
        self.call(requests, STATE_OF_THE_WORLD).await
    }

    /// Open the call: the request's metadata as headers, each request message gRPC-framed in
    /// the body; the answer's headers checked (an HTTP error or a trailers-only error status is
    /// the call's error), its body read by [`Inbound`].
    async fn call<S, Req, Resp>(
        &mut self,
        requests: Request<S>,
        path: &'static str,
    ) -> Result<Inbound<Resp>, Status>
    where
        S: Stream<Item = Req> + Send + 'static,
        Req: Message + 'static,
        Resp: Message + Default + Payloads,
    {
        let (metadata, _, requests) = requests.into_parts();
        let frames = requests.map(|m| Ok::<_, Status>(http_body::Frame::data(framed(&m))));
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(frames));
        let mut request = http::Request::post(path)
            .version(http::Version::HTTP_2)
            .body(body)
            .map_err(|e| Status::internal(format!("cannot make the ADS request: {e}")))?;
        let headers = request.headers_mut();
        *headers = metadata.into_headers();
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let channel = self
            .channel
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("the channel to istiod is not ready: {e}")))?;
        let response = channel
            .call(request)
            .await
            .map_err(|e| Status::from_error(Box::new(e)))?;
        if let Some(status) = Status::from_header_map(response.headers()) {
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
        }
        if response.status() != http::StatusCode::OK {
            return Err(inbound::http_status(response.status()));
        }
        Ok(Inbound::new(response.into_body(), MAX_MESSAGE_SIZE))
    }
}

/// One request as gRPC frames it: flag 0 (not compressed), the length, the message.
fn framed<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    m.encode(&mut buf)
        .expect("the buffer has room for the message");
    buf.freeze()
}

#[cfg(test)]
#[allow(unsafe_code)] // a counting `GlobalAlloc`
mod tests;
