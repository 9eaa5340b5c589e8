//! The two ADS calls on tonic, with a response decoder that lets go of a large response's
//! receive buffer.
//!
//! tonic's `Streaming` reads every message of a stream into one receive buffer, which grows to
//! the largest message and is never made smaller: after the initial CDS of 5 000 services
//! (28 MiB) those 28 MiB stayed for the stream's life. [`Releasing`] splits each message off
//! that buffer (no copy) and holds it until the next message is decoded. While it is held the
//! buffer's allocation is shared, so when the stream next needs more room than what is left of
//! that allocation, `bytes` gives it a new one sized for what it needs instead of growing or
//! reusing the old; the old one is freed when the next message lets go of the one before.
//!
//! The payloads are decoded as slices of the message, and [`Payloads::settle`] keeps a slice
//! only where it is most of its message (a large `main_internal`): what the client holds then
//! is the message it received, not a copy of it beside a buffer of the same size.

use std::marker::PhantomData;

use bytes::Buf;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, Streaming};
use tonic::transport::Channel;
use tonic::{IntoStreamingRequest, Response, Status};

use crate::transport::MAX_MESSAGE_SIZE;
use crate::wire::{DeltaResponse, Payloads, SotwResponse};

const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const STATE_OF_THE_WORLD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// An ADS client on one channel to istiod.
pub(crate) struct Ads {
    grpc: tonic::client::Grpc<Channel>,
}

impl Ads {
    pub(crate) fn new(channel: Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE),
        }
    }

    /// `DeltaAggregatedResources`.
    pub(crate) async fn delta(
        &mut self,
        requests: impl IntoStreamingRequest<Message = DeltaDiscoveryRequest>,
    ) -> Result<Response<Streaming<DeltaResponse>>, Status> {
        self.call(requests, DELTA).await
    }

    /// `StreamAggregatedResources` (state of the world).
    pub(crate) async fn state_of_the_world(
        &mut self,
        requests: impl IntoStreamingRequest<Message = DiscoveryRequest>,
    ) -> Result<Response<Streaming<SotwResponse>>, Status> {
        self.call(requests, STATE_OF_THE_WORLD).await
    }

    async fn call<Req, Resp>(
        &mut self,
        requests: impl IntoStreamingRequest<Message = Req>,
        path: &'static str,
    ) -> Result<Response<Streaming<Resp>>, Status>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default + Payloads + Send + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("the channel to istiod is not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(path);
        let codec = AdsCodec::<Req, Resp>(PhantomData);
        self.grpc
            .streaming(requests.into_streaming_request(), path, codec)
            .await
    }
}

/// prost's encoder for the requests, [`Releasing`] for the responses.
struct AdsCodec<Req, Resp>(PhantomData<fn(Req) -> Resp>);

impl<Req, Resp> Codec for AdsCodec<Req, Resp>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Payloads + Send + 'static,
{
    type Encode = Req;
    type Decode = Resp;
    type Encoder = tonic_prost::ProstEncoder<Req>;
    type Decoder = Releasing<Resp>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Releasing::default()
    }
}

/// Decodes each message from its own bytes, split off the stream's receive buffer, and holds
/// those bytes until the next message (see the module's note for why).
pub(crate) struct Releasing<M> {
    held: Option<bytes::Bytes>,
    message: PhantomData<fn() -> M>,
}

impl<M> Default for Releasing<M> {
    fn default() -> Self {
        Self {
            held: None,
            message: PhantomData,
        }
    }
}

impl<M: Message + Default + Payloads> Decoder for Releasing<M> {
    type Item = M;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<M>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let mut message = M::decode(bytes.clone()).map_err(|e| Status::internal(e.to_string()))?;
        message.settle(bytes.len());
        self.held = Some(bytes);
        Ok(Some(message))
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // a counting `GlobalAlloc`
mod tests;
