//! The test ADS server's streams: Delta and state of the world, driven by one loop that answers
//! requests and pushes resource changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use futures::channel::mpsc;
use tonic::{Status, Streaming};

use super::server::{Caller, Received, State};

/// One ADS stream of either flavour, as [`serve_stream`] drives it.
pub(super) trait AdsStream {
    type Request;
    fn state(&self) -> &Arc<State>;
    /// The types this stream has asked for.
    fn types(&self) -> Vec<String>;
    /// Send what changed of `type_url`; false when the stream is gone.
    fn push(&mut self, type_url: &str, force: bool) -> bool;
    /// False when the stream is gone.
    fn on_request(&mut self, request: Self::Request) -> bool;
}

/// Answer requests and push resource changes until the client goes or the server stops.
pub(super) async fn serve_stream<S: AdsStream>(mut stream: S, mut inbound: Streaming<S::Request>) {
    let mut generation = stream.state().generation.subscribe();
    let mut epoch = stream.state().epoch.subscribe();
    loop {
        tokio::select! {
            _ = epoch.changed() => return,
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                for type_url in stream.types() {
                    if !stream.push(&type_url, false) {
                        return;
                    }
                }
            }
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    if !stream.on_request(request) {
                        return;
                    }
                }
                _ => return,
            },
        }
    }
}

/// Delta: per type, the subscription and what the server believes the client holds.
#[derive(Default)]
pub(super) struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    known: BTreeMap<String, String>,
    /// The type's version every resource was last compared at, for this subscription: the
    /// next push compares only what changed after it. `None`: compare everything.
    synced: Option<u64>,
}

pub(super) struct DeltaStream {
    pub(super) state: Arc<State>,
    pub(super) caller: Caller,
    pub(super) tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    pub(super) subs: BTreeMap<String, DeltaSub>,
}

impl AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    fn state(&self) -> &Arc<State> {
        &self.state
    }

    fn types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.subs.keys().cloned().collect();
        for t in &self.state.options.lock().unsolicited {
            if !types.contains(t) {
                types.push(t.clone());
            }
        }
        types
    }

    /// False when the stream is gone.
    fn on_request(&mut self, request: DeltaDiscoveryRequest) -> bool {
        self.state.record(Received {
            stream: self.caller.stream,
            delta: true,
            type_url: request.type_url.clone(),
            node: request.node.clone(),
            response_nonce: request.response_nonce.clone(),
            version_info: String::new(),
            responded_version: self.state.responded_version(&request.response_nonce),
            error_detail: request.error_detail.clone(),
            resource_names: Vec::new(),
            subscribe: request.resource_names_subscribe.clone(),
            unsubscribe: request.resource_names_unsubscribe.clone(),
            initial_resource_versions: request.initial_resource_versions.clone(),
            cluster_id: self.caller.cluster_id.clone(),
            client_cert: self.caller.client_cert,
        });
        if request.error_detail.is_some() {
            return true;
        }
        let first = !self.subs.contains_key(&request.type_url);
        let sub = self.subs.entry(request.type_url.clone()).or_default();
        if first {
            sub.wildcard = request.resource_names_subscribe.is_empty()
                || request.resource_names_subscribe.iter().any(|n| n == "*");
            sub.known = request.initial_resource_versions.into_iter().collect();
        }
        let changed = !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        for name in request.resource_names_subscribe {
            if name != "*" {
                sub.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            sub.names.remove(&name);
            sub.known.remove(&name);
        }
        if first || changed {
            sub.synced = None;
            return self.push(&request.type_url, first);
        }
        true
    }

    /// Send what `type_url`'s subscriber lacks; `always` sends even an empty response.
    fn push(&mut self, type_url: &str, always: bool) -> bool {
        if !self.subs.contains_key(type_url)
            && self
                .state
                .options
                .lock()
                .unsolicited
                .iter()
                .any(|t| t == type_url)
        {
            let unasked = DeltaSub {
                wildcard: true,
                ..DeltaSub::default()
            };
            self.subs.insert(type_url.to_string(), unasked);
        }
        let Some(sub) = self.subs.get_mut(type_url) else {
            return true;
        };
        let snapshot = self.state.snapshot(type_url, sub.synced);
        let (items, version) = (&snapshot.items, snapshot.version.to_string());
        let wanted = |name: &str| sub.wildcard || sub.names.contains(name);
        // What may differ from what the client holds: what changed since the last comparison,
        // or everything.
        let candidates: Box<dyn Iterator<Item = &String>> = match &snapshot.changed {
            Some(changed) => Box::new(changed.iter()),
            None => Box::new(items.keys().chain(sub.known.keys())),
        };
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut seen = BTreeSet::new();
        for name in candidates {
            if !seen.insert(name) {
                continue;
            }
            match items.get(name) {
                // Held as it is: nothing to send.
                Some((resource_version, _))
                    if wanted(name) && sub.known.get(name) == Some(resource_version) => {}
                Some((resource_version, value)) if wanted(name) => {
                    resources.push(DeltaResource {
                        name: name.clone(),
                        version: resource_version.clone(),
                        resource: Some(value.clone()),
                        ..Default::default()
                    });
                }
                _ if sub.known.contains_key(name) => removed.push(name.clone()),
                _ => {}
            }
        }
        removed.sort();
        sub.synced = Some(snapshot.version);
        if resources.is_empty() && removed.is_empty() && !always {
            return true;
        }
        for r in &resources {
            sub.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            sub.known.remove(name);
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: self.state.next_nonce(&version),
            ..Default::default()
        };
        self.tx.unbounded_send(Ok(response)).is_ok()
    }
}

/// State of the world: per type, the names asked for (empty: all) and the version last sent.
#[derive(Default)]
pub(super) struct SotwSub {
    names: BTreeSet<String>,
    sent_version: Option<String>,
}

pub(super) struct SotwStream {
    pub(super) state: Arc<State>,
    pub(super) caller: Caller,
    pub(super) tx: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    pub(super) subs: BTreeMap<String, SotwSub>,
}

impl AdsStream for SotwStream {
    type Request = DiscoveryRequest;

    fn state(&self) -> &Arc<State> {
        &self.state
    }

    fn types(&self) -> Vec<String> {
        self.subs.keys().cloned().collect()
    }

    fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        self.state.record(Received {
            stream: self.caller.stream,
            delta: false,
            type_url: request.type_url.clone(),
            node: request.node.clone(),
            response_nonce: request.response_nonce.clone(),
            version_info: request.version_info.clone(),
            responded_version: self.state.responded_version(&request.response_nonce),
            error_detail: request.error_detail.clone(),
            resource_names: request.resource_names.clone(),
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            initial_resource_versions: HashMap::new(),
            cluster_id: self.caller.cluster_id.clone(),
            client_cert: self.caller.client_cert,
        });
        if request.error_detail.is_some() {
            return true;
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let first = !self.subs.contains_key(&request.type_url);
        let sub = self.subs.entry(request.type_url.clone()).or_default();
        let changed = sub.names != names;
        sub.names = names;
        if first || changed {
            return self.push(&request.type_url, true);
        }
        true
    }

    fn push(&mut self, type_url: &str, always: bool) -> bool {
        let snapshot = self.state.snapshot(type_url, None);
        let (version, items) = (snapshot.version.to_string(), snapshot.items);
        let Some(sub) = self.subs.get_mut(type_url) else {
            return true;
        };
        if !always && sub.sent_version.as_deref() == Some(version.as_str()) {
            return true;
        }
        sub.sent_version = Some(version.clone());
        let resources = items
            .iter()
            .filter(|(name, _)| sub.names.is_empty() || sub.names.contains(*name))
            .map(|(_, (_, value))| value.clone())
            .collect();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: self.state.next_nonce(&version),
            ..Default::default()
        };
        self.tx.unbounded_send(Ok(response)).is_ok()
    }
}
