//! What outlives a stream: the accepted state, the handler, the named subscriptions it asked for,
//! and the status. Both protocol flavours build a candidate and call [`Core::offer`].

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc;
use futures::channel::mpsc;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::client::StreamError;

use crate::config::{ClientConfig, Mode};
use crate::resource::{type_url, Handler, Rejection, ResourceState, Subscriptions, Update};
use crate::status::Status;

/// gRPC `INVALID_ARGUMENT`, the code a NACK's `error_detail` carries.
const INVALID_ARGUMENT: i32 = 3;

pub(crate) struct Core<H> {
    pub cfg: ClientConfig,
    pub handler: H,
    pub accepted: ResourceState,
    /// Named subscriptions from the last accepted update.
    pub subs: Subscriptions,
    pub status: watch::Sender<Status>,
}

pub(crate) enum Outcome {
    /// The candidate is the accepted state; `refused` (NACKed when not empty) are the
    /// resources the handler left out of it.
    Accepted { refused: Vec<Rejection> },
    /// The last accepted state stays.
    Rejected(Vec<Rejection>),
}

impl<H: Handler> Core<H> {
    pub fn new(cfg: ClientConfig, handler: H, status: watch::Sender<Status>) -> Self {
        let subs = handler.initial_subscriptions();
        Self {
            cfg,
            handler,
            accepted: ResourceState::default(),
            subs,
            status,
        }
    }

    pub fn is_wildcard(&self, type_url: &str) -> bool {
        self.cfg.wildcard_types.iter().any(|t| t == type_url)
    }

    /// A type this client asked for (wildcard, or named now or earlier: a response may cross an
    /// unsubscribe).
    pub fn is_known(&self, type_url: &str, sent_named: &BTreeSet<String>) -> bool {
        self.is_wildcard(type_url)
            || self.subs.names(type_url).is_some()
            || sent_named.contains(type_url)
    }

    /// Offer `candidate` (built from the accepted state and one response of `type_url`). Problems
    /// the client found itself (`rejections`) reject without asking the handler.
    pub fn offer(
        &mut self,
        type_url: &str,
        candidate: ResourceState,
        updated: &[String],
        removed: &[String],
        rejections: Vec<Rejection>,
    ) -> Outcome {
        if !rejections.is_empty() {
            return Outcome::Rejected(rejections);
        }
        let update = Update {
            type_url,
            updated,
            removed,
            state: &candidate,
        };
        match self.handler.apply(&update) {
            Ok(applied) => {
                self.accepted = candidate;
                self.subs = applied.subscriptions;
                self.drop_unsubscribed();
                Outcome::Accepted {
                    refused: applied.refused,
                }
            }
            Err(rejections) if rejections.is_empty() => Outcome::Rejected(vec![Rejection::new(
                type_url,
                "*",
                "rejected by the handler without a reason",
            )]),
            Err(rejections) => Outcome::Rejected(rejections),
        }
    }

    /// Resources of named types that are no longer subscribed: the handler asked not to have them.
    fn drop_unsubscribed(&mut self) {
        let named: Vec<String> = self
            .accepted
            .type_urls()
            .filter(|t| !self.is_wildcard(t))
            .map(str::to_string)
            .collect();
        for t in named {
            let keep = self.subs.names(&t).cloned().unwrap_or_default();
            let held = self.accepted.type_mut(&t);
            held.resources.retain(|name, _| keep.contains(name));
        }
    }

    pub fn record_ack(&self, type_url: &str, version: &str, nonce: &str) {
        let resources = self.accepted.len(type_url);
        self.status.send_modify(|s| {
            s.acks += 1;
            let t = s.types.entry(type_url.to_string()).or_default();
            t.acks += 1;
            t.acked_version = version.to_string();
            t.acked_nonce = nonce.to_string();
            t.resources = resources;
            t.last_nack = None;
        });
    }

    pub fn record_nack(&self, type_url: &str, detail: &rpc::Status) {
        tracing::warn!(
            type_url,
            "xDS: rejecting {} update: {}",
            type_url::short(type_url),
            detail.message
        );
        self.status.send_modify(|s| {
            s.nacks += 1;
            let t = s.types.entry(type_url.to_string()).or_default();
            t.nacks += 1;
            t.last_nack = Some(detail.message.clone());
        });
    }

    pub fn set_connected(&self, mode: Mode) {
        self.status.send_modify(|s| {
            s.connected = true;
            s.mode = Some(mode);
        });
    }
}

/// `error_detail` of a NACK: `INVALID_ARGUMENT`, one `Type name: reason` per rejection.
pub(crate) fn nack_detail(rejections: &[Rejection]) -> rpc::Status {
    let message = rejections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    rpc::Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// Why a resource in a response is rejected before the handler sees it (the NACK's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("payload does not decode: {0}")]
    Undecodable(prost::DecodeError),
    #[error("wrapped resource does not decode: {0}")]
    WrapperUndecodable(prost::DecodeError),
    #[error("wrapped resource has no payload")]
    WrapperWithoutPayload,
    #[error("wrapped resource has no name")]
    WrapperWithoutName,
    #[error("resource has no name")]
    WithoutName,
    #[error("payload is {payload} in a {response} response")]
    WrongType { payload: String, response: String },
}

/// Field 1 must decode as a string: a cheap check that the payload is a protobuf message of an
/// xDS resource type, and its name for state-of-the-world responses.
pub(crate) fn payload_name(bytes: &[u8]) -> Result<String, PayloadError> {
    use prost::Message;
    crate::resource::NameField::decode(bytes)
        .map(|f| f.name)
        .map_err(PayloadError::Undecodable)
}

/// A request type that carries the node on the first request of a stream.
pub(crate) trait NodeRequest {
    fn set_node(&mut self, node: Node);
}

impl NodeRequest for DeltaDiscoveryRequest {
    fn set_node(&mut self, node: Node) {
        self.node = Some(node);
    }
}

impl NodeRequest for DiscoveryRequest {
    fn set_node(&mut self, node: Node) {
        self.node = Some(node);
    }
}

/// The sending half of one ADS stream: the node goes on its first request only.
pub(crate) struct Outbox<R> {
    tx: mpsc::UnboundedSender<R>,
    node: Option<Node>,
}

impl<R: NodeRequest> Outbox<R> {
    pub(crate) fn new(node: Node) -> (Self, mpsc::UnboundedReceiver<R>) {
        let (tx, rx) = mpsc::unbounded();
        (
            Self {
                tx,
                node: Some(node),
            },
            rx,
        )
    }

    pub(crate) fn send(&mut self, mut request: R) -> Result<(), StreamError> {
        if let Some(node) = self.node.take() {
            request.set_node(node);
        }
        self.tx
            .unbounded_send(request)
            .map_err(|_| StreamError::Closed)
    }
}

/// How one ADS flavour (Delta, state of the world) handles its stream.
pub(crate) trait Flavour {
    type Response;
    /// Queue the requests that open the stream.
    fn initial_requests(&mut self) -> Result<(), StreamError>;
    /// The server answered the call.
    fn connected(&mut self);
    fn on_response(&mut self, response: Self::Response) -> Result<(), StreamError>;
}

/// Open the ADS call with the queued requests `rx` and feed every response to `flavour` until the
/// stream fails (`Err`) or shutdown is asked (`Ok`).
pub(crate) async fn drive<F, Req, Fut>(
    flavour: &mut F,
    rx: mpsc::UnboundedReceiver<Req>,
    metadata: MetadataMap,
    call: impl FnOnce(tonic::Request<mpsc::UnboundedReceiver<Req>>) -> Fut,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StreamError>
where
    F: Flavour,
    Fut: std::future::Future<
        Output = Result<tonic::Response<tonic::Streaming<F::Response>>, tonic::Status>,
    >,
{
    flavour.initial_requests()?;
    let mut request = tonic::Request::new(rx);
    *request.metadata_mut() = metadata;
    let Some(mut inbound) = open(call(request), shutdown).await? else {
        return Ok(());
    };
    flavour.connected();
    while let Some(response) = next(&mut inbound, shutdown).await? {
        flavour.on_response(response)?;
    }
    Ok(())
}

/// Wait for the ADS call to be answered; `Ok(None)` when shutdown comes first.
pub(crate) async fn open<R>(
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<R>>, tonic::Status>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<tonic::Streaming<R>>, crate::client::StreamError> {
    use crate::client::stopped;
    tokio::select! {
        _ = stopped(shutdown) => Ok(None),
        response = call => Ok(Some(response.map_err(StreamError::from_status)?.into_inner())),
    }
}

/// The next response of the stream; `Ok(None)` when shutdown comes first, an error when the
/// stream ends or fails.
pub(crate) async fn next<R>(
    inbound: &mut tonic::Streaming<R>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<R>, crate::client::StreamError> {
    use crate::client::stopped;
    tokio::select! {
        _ = stopped(shutdown) => Ok(None),
        message = inbound.message() => match message {
            Ok(Some(response)) => Ok(Some(response)),
            Ok(None) => Err(StreamError::Closed),
            Err(status) => Err(StreamError::from_status(status)),
        },
    }
}
