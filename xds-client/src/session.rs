//! What outlives a stream: the accepted state, the handler, the named subscriptions it asked for,
//! and the status. Both protocol flavours build a candidate and call [`Core::offer`].

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc;
use futures::channel::mpsc;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::client::StreamError;

use crate::config::{ClientConfig, Mode};
use crate::resource::{
    type_url, Change, Handler, Rejection, Resource, ResourceState, Subscriptions, TypeState, Update,
};
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

    /// Offer `candidate`: the accepted state with the responses `changes` describe applied.
    pub fn offer(&mut self, changes: &[Change], candidate: ResourceState) -> Outcome {
        let update = Update {
            changes,
            state: &candidate,
        };
        match self.handler.apply(&update) {
            Ok(applied) => {
                self.accepted = candidate;
                let before = std::mem::replace(&mut self.subs, applied.subscriptions);
                self.drop_unsubscribed(&before, changes);
                Outcome::Accepted {
                    refused: applied.refused,
                }
            }
            Err(rejections) if rejections.is_empty() => {
                let type_url = changes.last().map_or("", |c| c.type_url.as_str());
                Outcome::Rejected(vec![Rejection::new(
                    type_url,
                    "*",
                    "rejected by the handler without a reason",
                )])
            }
            Err(rejections) => Outcome::Rejected(rejections),
        }
    }

    /// Resources of named types that are no longer subscribed: the handler asked not to have them.
    /// What was held was subscribed (`before`: each offer leaves only subscribed names held), so
    /// only the names `changes` brought and those the new set no longer has are looked at, found
    /// by [`imbl::OrdSet::diff`] without visiting what the two sets share: a handler that grows
    /// the last set by one service's names does not make this visit the 30 000 held.
    fn drop_unsubscribed(&mut self, before: &Subscriptions, changes: &[Change]) {
        let named: Vec<String> = self
            .accepted
            .type_urls()
            .filter(|t| !self.is_wildcard(t))
            .map(str::to_string)
            .collect();
        for t in named {
            let keep = self.subs.shared(&t);
            let brought = changes.iter().filter(|c| c.type_url == t);
            let mut unwanted: Vec<String> = brought
                .flat_map(|c| &c.updated)
                .filter(|n| !keep.contains(n.as_str()))
                .cloned()
                .collect();
            if !self.subs.same_set(before, &t) {
                let had = before.shared(&t);
                unwanted.extend(had.diff(&keep).filter_map(|d| match d {
                    imbl::ordset::DiffItem::Remove(name) => Some(name.to_string()),
                    imbl::ordset::DiffItem::Add(_) => None,
                }));
            }
            for name in unwanted {
                if self.accepted.get(&t, &name).is_some() {
                    self.accepted.remove(&t, &name);
                }
            }
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
    type Response: prost::Message + Default + crate::wire::Payloads;
    /// Queue the requests that open the stream.
    fn initial_requests(&mut self) -> Result<(), StreamError>;
    /// The server answered the call.
    fn connected(&mut self);
    /// Responses that arrived back to back, in order (see [`Update::changes`]).
    fn on_responses(&mut self, responses: Vec<Self::Response>) -> Result<(), StreamError>;
}

/// At most this many responses already received are judged together.
pub(crate) const MAX_BATCH: usize = 64;

/// Open the ADS call with the queued requests `rx` and feed every response to `flavour` until the
/// stream fails (`Err`) or shutdown is asked (`Ok`). Responses that are already there when one is
/// taken go with it (up to [`MAX_BATCH`]).
pub(crate) async fn drive<F, Req, Fut>(
    flavour: &mut F,
    rx: mpsc::UnboundedReceiver<Req>,
    metadata: MetadataMap,
    call: impl FnOnce(tonic::Request<mpsc::UnboundedReceiver<Req>>) -> Fut,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StreamError>
where
    F: Flavour,
    Fut: std::future::Future<Output = Result<crate::ads::Inbound<F::Response>, tonic::Status>>,
{
    flavour.initial_requests()?;
    let mut request = tonic::Request::new(rx);
    *request.metadata_mut() = metadata;
    let Some(mut inbound) = open(call(request), shutdown).await? else {
        return Ok(());
    };
    flavour.connected();
    while let Some(response) = next(&mut inbound, shutdown).await? {
        let (batch, end) = ready_after(&mut inbound, response);
        flavour.on_responses(batch)?;
        if let Some(error) = end {
            return Err(error);
        }
    }
    Ok(())
}

/// `first` and the responses already received after it (up to [`MAX_BATCH`] in all), and the
/// end of the stream if it came right after them (the batch is still handled first).
pub(crate) fn ready_after<R, S>(inbound: &mut S, first: R) -> (Vec<R>, Option<StreamError>)
where
    S: futures::Stream<Item = Result<R, tonic::Status>> + Unpin,
{
    use futures::{FutureExt, StreamExt};
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match inbound.next().now_or_never() {
            Some(Some(Ok(response))) => batch.push(response),
            Some(Some(Err(status))) => return (batch, Some(StreamError::from_status(status))),
            Some(None) => return (batch, Some(StreamError::Closed)),
            None => break,
        }
    }
    (batch, None)
}

/// One response of a group, checked by its flavour: what it does to its type's state, applied
/// on top of whatever state comes before it ([`Prepared::apply`]).
pub(crate) struct Prepared<M> {
    pub type_url: String,
    /// Resources it adds or replaces.
    pub upserts: Vec<Arc<Resource>>,
    /// Names it removes (Delta).
    pub removals: Vec<String>,
    /// It holds the type's whole set (state of the world, wildcard type): what it does not
    /// list is removed.
    pub whole: bool,
    /// Delta: an upsert counts as changed even when its bytes are the same (the server says it
    /// changed). State of the world: only what differs from the state before.
    pub upserts_always_change: bool,
    pub version_info: String,
    /// What the flavour needs to answer it (nonce, versions).
    pub meta: M,
}

impl<M> Prepared<M> {
    /// The type's state after this response on top of `base`, and what it changed there. A
    /// resource takes the name string `held_name` gives for it, when one is held already
    /// ([`crate::ResourceState::held_name`]).
    pub fn apply(
        &self,
        base: &TypeState,
        held_name: &dyn Fn(&str) -> Option<crate::resource::Name>,
    ) -> (TypeState, Change) {
        let mut held = base.clone();
        let mut removed = Vec::new();
        if self.whole {
            let listed: BTreeSet<&str> = self.upserts.iter().map(|r| &*r.name).collect();
            removed = held
                .resources
                .keys()
                .filter(|n| !listed.contains(&***n))
                .map(|n| n.to_string())
                .collect();
        }
        removed.extend(
            self.removals
                .iter()
                .filter(|n| held.resources.contains_key(n.as_str()))
                .cloned(),
        );
        for name in &removed {
            held.resources.remove(name.as_str());
        }
        let mut updated = Vec::new();
        for r in &self.upserts {
            let same = !self.upserts_always_change
                && held
                    .resources
                    .get(&r.name)
                    .is_some_and(|old| old.value == r.value);
            if !same {
                updated.push(r.name.to_string());
            }
            let r = match held_name(&r.name) {
                Some(name) if !Arc::ptr_eq(&name, &r.name) => Arc::new(Resource {
                    name,
                    version: r.version.clone(),
                    value: r.value.clone(),
                }),
                _ => r.clone(),
            };
            held.resources.insert(r.name.clone(), r);
        }
        held.version_info.clone_from(&self.version_info);
        let change = Change {
            type_url: self.type_url.clone(),
            updated,
            removed,
        };
        (held, change)
    }
}

/// Whether the responses of `group` of `type_url` leave `name` held (`Some`), or do not touch it
/// (`None`: as the accepted state has it). Scans back to the last response that decides.
fn held_after<M>(group: &[Prepared<M>], type_url: &str, name: &str) -> Option<bool> {
    for p in group.iter().rev().filter(|p| p.type_url == type_url) {
        // Within one response removals apply first, then upserts (`Prepared::apply`).
        if p.upserts.iter().any(|r| &*r.name == name) {
            return Some(true);
        }
        if p.whole || p.removals.iter().any(|n| n == name) {
            return Some(false);
        }
    }
    None
}

/// A response the client NACKs before the handler sees it: (type URL, nonce, why).
pub(crate) type Refusal = (String, String, Vec<Rejection>);

/// How a flavour checks and answers the responses of a group.
pub(crate) trait Answer {
    type Response;
    type Meta;
    type Handler: Handler;
    fn core(&mut self) -> &mut Core<Self::Handler>;
    fn type_of(response: &Self::Response) -> &str;
    /// Check one response; `earlier(name)` is what the responses before it in the group did to
    /// `name` of its type (`None`: nothing, the accepted state decides).
    fn prepare(
        &mut self,
        response: Self::Response,
        earlier: &dyn Fn(&str) -> Option<bool>,
    ) -> Result<Prepared<Self::Meta>, Refusal>;
    /// NACK a response [`Answer::prepare`] refused.
    fn refuse(&mut self, refusal: Refusal) -> Result<(), StreamError>;
    fn ack(&mut self, response: &Prepared<Self::Meta>) -> Result<(), StreamError>;
    /// Applied in part: what could be used serves, the response is NACKed naming the rest.
    fn partial(
        &mut self,
        response: &Prepared<Self::Meta>,
        refused: &[Rejection],
    ) -> Result<(), StreamError>;
    fn nack(
        &mut self,
        response: &Prepared<Self::Meta>,
        rejections: &[Rejection],
    ) -> Result<(), StreamError>;
    fn sync_subscriptions(&mut self) -> Result<(), StreamError>;
}

/// Judge `responses` (arrived back to back, in order) together ([`settle`]); a response the
/// client refuses itself is NACKed alone, after those before it are settled.
pub(crate) fn judge<A: Answer>(
    answer: &mut A,
    responses: Vec<A::Response>,
) -> Result<(), StreamError> {
    let mut group: Vec<Prepared<A::Meta>> = Vec::new();
    for response in responses {
        let type_url = A::type_of(&response).to_string();
        let earlier = |name: &str| held_after(&group, &type_url, name);
        match answer.prepare(response, &earlier) {
            Ok(prepared) => group.push(prepared),
            Err(refusal) => {
                settle(answer, std::mem::take(&mut group))?;
                answer.refuse(refusal)?;
            }
        }
    }
    settle(answer, group)
}

/// Offer the responses of `group` together, each applied on top of the ones before it, and
/// answer each: ACK, or NACK naming what the handler refused that is its own (the last response
/// of its type that changed it; else the last of its type; else the last one). When the handler
/// rejects the candidate whole, which response is at fault is not known: each is offered again
/// alone, in order, as if they had come one at a time.
pub(crate) fn settle<A: Answer>(
    answer: &mut A,
    group: Vec<Prepared<A::Meta>>,
) -> Result<(), StreamError> {
    if group.is_empty() {
        return Ok(());
    }
    let mut candidate = answer.core().accepted.clone();
    let mut changes = Vec::with_capacity(group.len());
    for p in &group {
        let held_name = |name: &str| candidate.held_name(&p.type_url, name);
        let (held, change) = p.apply(&candidate.type_state(&p.type_url), &held_name);
        *candidate.type_mut(&p.type_url) = held;
        changes.push(change);
    }
    match answer.core().offer(&changes, candidate) {
        Outcome::Accepted { refused } => {
            let mut own: Vec<Vec<Rejection>> = vec![Vec::new(); group.len()];
            for r in refused {
                let of_type = |i: &usize| changes[*i].type_url == r.type_url;
                let owner = (0..group.len())
                    .rev()
                    .find(|i| of_type(i) && changes[*i].updated.contains(&r.name))
                    .or_else(|| (0..group.len()).rev().find(of_type))
                    .unwrap_or(group.len() - 1);
                own[owner].push(r);
            }
            for (p, own) in group.iter().zip(&own) {
                if own.is_empty() {
                    answer.ack(p)?;
                } else {
                    answer.partial(p, own)?;
                }
            }
            answer.sync_subscriptions()
        }
        Outcome::Rejected(rejections) if group.len() == 1 => answer.nack(&group[0], &rejections),
        Outcome::Rejected(_) => {
            for p in group {
                settle(answer, vec![p])?;
            }
            Ok(())
        }
    }
}

/// Wait for the ADS call to be answered; `Ok(None)` when shutdown comes first.
pub(crate) async fn open<R>(
    call: impl std::future::Future<Output = Result<crate::ads::Inbound<R>, tonic::Status>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<crate::ads::Inbound<R>>, crate::client::StreamError> {
    use crate::client::stopped;
    tokio::select! {
        _ = stopped(shutdown) => Ok(None),
        response = call => Ok(Some(response.map_err(StreamError::from_status)?)),
    }
}

/// The next response of the stream; `Ok(None)` when shutdown comes first, an error when the
/// stream ends or fails.
pub(crate) async fn next<R>(
    inbound: &mut crate::ads::Inbound<R>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<R>, crate::client::StreamError>
where
    crate::ads::Inbound<R>: futures::Stream<Item = Result<R, tonic::Status>>,
{
    use crate::client::stopped;
    use futures::StreamExt;
    tokio::select! {
        _ = stopped(shutdown) => Ok(None),
        message = inbound.next() => match message {
            Some(Ok(response)) => Ok(Some(response)),
            None => Err(StreamError::Closed),
            Some(Err(status)) => Err(StreamError::from_status(status)),
        },
    }
}
