//! Delta ADS (`DeltaAggregatedResources`) on one stream.
//!
//! istiod's rules (`pilot/pkg/xds/delta.go`): the first request of a type with no
//! `resource_names_subscribe` is a wildcard subscription; `initial_resource_versions` on the
//! first request tells it what the client already holds; a request carrying `error_detail` is a
//! NACK and gets no answer; and an ACK (non-empty `response_nonce`) must not change
//! subscriptions, so subscription changes go in a separate request with an empty nonce.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
#[cfg(test)]
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::ads::Ads;
use crate::client::StreamError;
use crate::config::Mode;
use crate::resource::{Handler, Payload, Rejection, Resource};
use crate::session::{
    drive, judge, nack_detail, payload_name, Answer, Core, Flavour, Outbox, PayloadError, Prepared,
    Refusal,
};
use crate::wire::DeltaResponse;

struct Stream<'a, H> {
    core: &'a mut Core<H>,
    out: Outbox<DeltaDiscoveryRequest>,
    /// Named types: the names subscribed on this stream.
    sent: BTreeMap<String, crate::resource::Names>,
}

/// Run one stream until it fails (`Err`) or shutdown is asked (`Ok`).
pub(crate) async fn run<H: Handler>(
    core: &mut Core<H>,
    mut client: Ads,
    metadata: MetadataMap,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let (out, rx) = Outbox::new(core.cfg.node.to_node());
    let mut stream = Stream {
        core,
        out,
        sent: BTreeMap::new(),
    };
    let call = |request| async move { client.delta(request).await };
    drive(&mut stream, rx, metadata, call, shutdown).await
}

impl<H: Handler> Flavour for Stream<'_, H> {
    type Response = DeltaResponse;

    fn initial_requests(&mut self) -> Result<(), StreamError> {
        Stream::initial_requests(self)
    }

    fn connected(&mut self) {
        self.core.set_connected(Mode::Delta);
    }

    fn on_responses(&mut self, responses: Vec<DeltaResponse>) -> Result<(), StreamError> {
        judge(self, responses)
    }
}

/// What a Delta response's answer echoes.
struct Meta {
    nonce: String,
}

impl<H: Handler> Answer for Stream<'_, H> {
    type Response = DeltaResponse;
    type Meta = Meta;
    type Handler = H;

    fn core(&mut self) -> &mut Core<H> {
        self.core
    }

    fn type_of(response: &DeltaResponse) -> &str {
        &response.type_url
    }

    fn prepare(
        &mut self,
        response: DeltaResponse,
        earlier: &dyn Fn(&str) -> Option<bool>,
    ) -> Result<Prepared<Meta>, Refusal> {
        Stream::prepare(self, response, earlier)
    }

    fn refuse(&mut self, (type_url, nonce, rejections): Refusal) -> Result<(), StreamError> {
        Stream::nack(self, &type_url, &nonce, &rejections)
    }

    fn ack(&mut self, p: &Prepared<Meta>) -> Result<(), StreamError> {
        let type_url = &p.type_url;
        self.out.send(DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: p.meta.nonce.clone(),
            ..Default::default()
        })?;
        self.core
            .record_ack(type_url, &p.version_info, &p.meta.nonce);
        Ok(())
    }

    fn partial(&mut self, p: &Prepared<Meta>, refused: &[Rejection]) -> Result<(), StreamError> {
        self.nack(&p.type_url, &p.meta.nonce, refused)
    }

    fn nack(&mut self, p: &Prepared<Meta>, rejections: &[Rejection]) -> Result<(), StreamError> {
        Stream::nack(self, &p.type_url, &p.meta.nonce, rejections)
    }

    fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        Stream::sync_subscriptions(self)
    }
}

impl<H: Handler> Stream<'_, H> {
    /// Wildcard types in configured order (CDS, LDS) with what we hold, then named types.
    fn initial_requests(&mut self) -> Result<(), StreamError> {
        for type_url in self.core.cfg.wildcard_types.clone() {
            let initial_resource_versions = self.core.accepted.versions(&type_url);
            self.out.send(DeltaDiscoveryRequest {
                type_url,
                initial_resource_versions,
                ..Default::default()
            })?;
        }
        self.sync_subscriptions()
    }

    /// Bring the stream's named subscriptions to what the handler last asked for.
    fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        let mut types: BTreeSet<String> = self.sent.keys().cloned().collect();
        types.extend(self.core.subs.iter().map(|(t, _)| t.to_string()));
        for type_url in types {
            if self.core.is_wildcard(&type_url) {
                continue;
            }
            let want = self.core.subs.shared(&type_url);
            let first = !self.sent.contains_key(&type_url);
            let had = self.sent.get(&type_url).cloned().unwrap_or_default();
            // The set asked for last time, unchanged (no name compared).
            if want.ptr_eq(&had) {
                continue;
            }
            // What changed, without visiting what the two sets share (a handler grows the last
            // set it handed over).
            let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
            for change in had.diff(&want) {
                match change {
                    imbl::ordset::DiffItem::Add(name) => subscribe.push(name.to_string()),
                    imbl::ordset::DiffItem::Remove(name) => unsubscribe.push(name.to_string()),
                }
            }
            // An empty first subscribe would be a wildcard.
            if subscribe.is_empty() && unsubscribe.is_empty() {
                if !first {
                    // The same names in a new set: kept, so the next comparison is by pointer.
                    self.sent.insert(type_url, want);
                }
                continue;
            }
            let initial_resource_versions: HashMap<String, String> = if first {
                self.core
                    .accepted
                    .resources(&type_url)
                    .filter(|r| want.contains(&*r.name))
                    .map(|r| (r.name.to_string(), r.version.clone()))
                    .collect()
            } else {
                HashMap::new()
            };
            self.sent.insert(type_url.clone(), want);
            self.out.send(DeltaDiscoveryRequest {
                type_url,
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions,
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// Check one response (`earlier`: see [`Answer::prepare`]); `Err` (type, nonce, rejections)
    /// NACKs it alone.
    fn prepare(
        &mut self,
        response: DeltaResponse,
        earlier: &dyn Fn(&str) -> Option<bool>,
    ) -> Result<Prepared<Meta>, Refusal> {
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        let sent_types: BTreeSet<String> = self.sent.keys().cloned().collect();
        if !self.core.is_known(&type_url, &sent_types) {
            let rejection = Rejection::new(&type_url, "*", "type URL was not subscribed");
            return Err((type_url, nonce, vec![rejection]));
        }
        let mut rejections = Vec::new();
        let mut upserts = Vec::new();
        for (i, resource) in response.resources.into_iter().enumerate() {
            let name = if resource.name.is_empty() {
                resource.resource_name.map(|n| n.name).unwrap_or_default()
            } else {
                resource.name
            };
            if name.is_empty() {
                rejections.push(Rejection::new(&type_url, &format!("#{i}"), "no name"));
                continue;
            }
            let Some(value) = resource.resource else {
                // A TTL heartbeat for something held changes nothing.
                let held = earlier(&name)
                    .unwrap_or_else(|| self.core.accepted.get(&type_url, &name).is_some());
                if !held {
                    rejections.push(Rejection::new(&type_url, &name, "no resource payload"));
                }
                continue;
            };
            if value.type_url != type_url {
                let wrong = PayloadError::WrongType {
                    payload: value.type_url,
                    response: type_url.clone(),
                };
                rejections.push(Rejection::new(&type_url, &name, wrong.to_string()));
                continue;
            }
            if let Err(reason) = payload_name(&value.value) {
                rejections.push(Rejection::new(&type_url, &name, reason.to_string()));
                continue;
            }
            upserts.push(Arc::new(Resource {
                name: name.into(),
                version: resource.version,
                value: Payload::from(value).kept(self.core.cfg.compact),
            }));
        }
        if !rejections.is_empty() {
            return Err((type_url, nonce, rejections));
        }
        let removals = response
            .removed_resources
            .into_iter()
            .chain(response.removed_resource_names.into_iter().map(|n| n.name))
            .collect();
        Ok(Prepared {
            type_url,
            upserts,
            removals,
            whole: false,
            upserts_always_change: true,
            version_info: response.system_version_info,
            meta: Meta { nonce },
        })
    }

    fn nack(
        &mut self,
        type_url: &str,
        nonce: &str,
        rejections: &[Rejection],
    ) -> Result<(), StreamError> {
        let detail = nack_detail(rejections);
        self.core.record_nack(type_url, &detail);
        self.out.send(DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: Some(detail),
            ..Default::default()
        })
    }
}

/// Answer `responses` as if they had arrived back to back on a fresh stream; the requests sent.
#[cfg(test)]
pub(crate) fn answer_together<H: Handler>(
    core: &mut Core<H>,
    responses: Vec<DeltaDiscoveryResponse>,
) -> Vec<DeltaDiscoveryRequest> {
    let (out, mut rx) = Outbox::new(core.cfg.node.to_node());
    let mut stream = Stream {
        core,
        out,
        sent: BTreeMap::new(),
    };
    let responses = responses.iter().map(crate::wire::decoded).collect();
    stream.on_responses(responses).expect("the outbox is open");
    drop(stream);
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}
