//! The discovery responses as the client decodes them: the fields it reads of
//! `envoy.service.discovery.v3.{Delta,}DiscoveryResponse`, `Resource` and `ResourceName`, with
//! each `google.protobuf.Any` as [`WireAny`], kept as a [`crate::Payload`] (bytes as [`Bytes`]; field
//! numbers from `envoy/service/discovery/v3/discovery.proto` and `google/protobuf/any.proto`;
//! fields not listed are skipped by the decoder).
//!
//! With `Bytes` a payload can be a slice of the received message instead of a copy: see
//! [`Payloads::settle`] for when it is.

use bytes::Bytes;

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DeltaResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub removed_resource_names: Vec<ResourceName>,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `envoy.service.discovery.v3.Resource` (also the wrapper a state-of-the-world server may put
/// around a resource).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DeltaResource {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(message, optional, tag = "8")]
    pub resource_name: Option<ResourceName>,
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<WireAny>,
}

/// `envoy.service.discovery.v3.ResourceName`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResourceName {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `envoy.service.discovery.v3.DiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SotwResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<WireAny>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `google.protobuf.Any` as the responses carry it; kept as a [`crate::Payload`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// A response whose payloads may be slices of the message they were decoded from.
pub(crate) trait Payloads {
    fn payloads(&mut self) -> impl Iterator<Item = &mut Bytes>;

    /// Decoded from `message` (the whole response, in an allocation of its own: the stream
    /// reads a message of 64 KiB or more into one of exactly its length and copies a shorter
    /// one out, `ads/inbound.rs`), each payload is a slice of it. Keep a slice only where it
    /// pins little more than itself: the message is at least [`SHARED_MIN`] and the payload
    /// is more than half of it (one `main_internal` listener; never one of 15 000 clusters,
    /// whose slice would hold the whole response). Every other payload is copied out, so a
    /// message is freed once its one large payload is.
    fn settle(&mut self, message_len: usize) {
        for payload in self.payloads() {
            if message_len < SHARED_MIN || payload.len() * 2 <= message_len {
                *payload = Bytes::copy_from_slice(payload);
            }
        }
    }
}

/// The smallest message whose payload may stay a slice of it (see [`Payloads::settle`]).
pub(crate) const SHARED_MIN: usize = 64 << 10;

impl Payloads for DeltaResponse {
    fn payloads(&mut self) -> impl Iterator<Item = &mut Bytes> {
        self.resources
            .iter_mut()
            .filter_map(|r| r.resource.as_mut().map(|a| &mut a.value))
    }
}

impl Payloads for SotwResponse {
    fn payloads(&mut self) -> impl Iterator<Item = &mut Bytes> {
        self.resources.iter_mut().map(|a| &mut a.value)
    }
}

/// `message` (an envoy-types response, as tests build them) as the client decodes it.
#[cfg(test)]
pub(crate) fn decoded<M: prost::Message, W: prost::Message + Default>(message: &M) -> W {
    W::decode(message.encode_to_vec().as_slice()).expect("a response re-encodes")
}
