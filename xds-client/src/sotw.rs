//! State-of-the-world ADS (`StreamAggregatedResources`) on one stream.
//!
//! Per type: an ACK echoes the response's `version_info` and `nonce`; a NACK echoes the nonce
//! with the *previous* accepted `version_info` and an `error_detail`. A response of a wildcard
//! type (CDS, LDS) holds the whole set, so names missing from it are removed; a response of a
//! named type (EDS, RDS) holds some of the requested names and removes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
#[cfg(test)]
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::ads::Ads;
use crate::client::StreamError;
use crate::config::Mode;
use crate::resource::{type_url as urls, Handler, Payload, Rejection, Resource};
use crate::session::{
    drive, judge, nack_detail, payload_name, Answer, Core, Flavour, Outbox, PayloadError, Prepared,
    Refusal,
};
use crate::wire::{DeltaResource as WrappedResource, SotwResponse, WireAny};

struct Stream<'a, H> {
    core: &'a mut Core<H>,
    out: Outbox<DiscoveryRequest>,
    /// Named types: the names requested on this stream.
    sent: BTreeMap<String, crate::resource::Names>,
    /// Last nonce received per type (echoed by subscription changes).
    nonces: BTreeMap<String, String>,
}

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
        nonces: BTreeMap::new(),
    };
    let call = |request| async move { client.state_of_the_world(request).await };
    drive(&mut stream, rx, metadata, call, shutdown).await
}

impl<H: Handler> Flavour for Stream<'_, H> {
    type Response = SotwResponse;

    fn initial_requests(&mut self) -> Result<(), StreamError> {
        Stream::initial_requests(self)
    }

    fn connected(&mut self) {
        self.core.set_connected(Mode::StateOfTheWorld);
    }

    fn on_responses(&mut self, responses: Vec<SotwResponse>) -> Result<(), StreamError> {
        judge(self, responses)
    }
}

/// What a state-of-the-world response's answer echoes.
struct Meta {
    nonce: String,
    /// The type's version accepted before (a NACK carries it).
    previous_version: String,
}

impl<H: Handler> Answer for Stream<'_, H> {
    type Response = SotwResponse;
    type Meta = Meta;
    type Handler = H;

    fn core(&mut self) -> &mut Core<H> {
        self.core
    }

    fn type_of(response: &SotwResponse) -> &str {
        &response.type_url
    }

    fn prepare(
        &mut self,
        response: SotwResponse,
        _earlier: &dyn Fn(&str) -> Option<bool>,
    ) -> Result<Prepared<Meta>, Refusal> {
        Stream::prepare(self, response)
    }

    fn refuse(&mut self, (type_url, nonce, rejections): Refusal) -> Result<(), StreamError> {
        Stream::nack(self, &type_url, &nonce, &rejections)
    }

    fn ack(&mut self, p: &Prepared<Meta>) -> Result<(), StreamError> {
        let type_url = &p.type_url;
        let request = DiscoveryRequest {
            version_info: p.version_info.clone(),
            response_nonce: p.meta.nonce.clone(),
            resource_names: self.names_for(type_url),
            type_url: type_url.clone(),
            ..Default::default()
        };
        self.out.send(request)?;
        self.core
            .record_ack(type_url, &p.version_info, &p.meta.nonce);
        Ok(())
    }

    fn partial(&mut self, p: &Prepared<Meta>, refused: &[Rejection]) -> Result<(), StreamError> {
        // What could be used serves; the NACK carries the version accepted before, as Envoy's
        // does after a partly invalid update.
        let type_url = &p.type_url;
        self.core.accepted.type_mut(type_url).version_info = p.meta.previous_version.clone();
        self.nack_at(type_url, &p.meta.nonce, &p.meta.previous_version, refused)
    }

    fn nack(&mut self, p: &Prepared<Meta>, rejections: &[Rejection]) -> Result<(), StreamError> {
        Stream::nack(self, &p.type_url, &p.meta.nonce, rejections)
    }

    fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        Stream::sync_subscriptions(self)
    }
}

impl<H: Handler> Stream<'_, H> {
    fn names_for(&self, type_url: &str) -> Vec<String> {
        self.sent
            .get(type_url)
            .map(|n| n.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }

    /// Wildcard types in configured order, with the version we hold, then named types.
    fn initial_requests(&mut self) -> Result<(), StreamError> {
        for type_url in self.core.cfg.wildcard_types.clone() {
            let version_info = self.core.accepted.version_info(&type_url).to_string();
            self.out.send(DiscoveryRequest {
                type_url,
                version_info,
                ..Default::default()
            })?;
        }
        self.sync_subscriptions()
    }

    fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        let mut types: BTreeSet<String> = self.sent.keys().cloned().collect();
        types.extend(self.core.subs.iter().map(|(t, _)| t.to_string()));
        for type_url in types {
            if self.core.is_wildcard(&type_url) {
                continue;
            }
            let want = self.core.subs.shared(&type_url);
            match self.sent.get_mut(&type_url) {
                Some(had) if *had == want => {
                    // The same names in a new set: kept, so the next comparison is by pointer.
                    *had = want;
                    continue;
                }
                // An empty first request would be a wildcard.
                None if want.is_empty() => continue,
                _ => {}
            }
            self.sent.insert(type_url.clone(), want);
            let request = DiscoveryRequest {
                version_info: self.core.accepted.version_info(&type_url).to_string(),
                response_nonce: self.nonces.get(&type_url).cloned().unwrap_or_default(),
                resource_names: self.names_for(&type_url),
                type_url,
                ..Default::default()
            };
            self.out.send(request)?;
        }
        Ok(())
    }

    /// Check one response; `Err` NACKs it alone.
    fn prepare(&mut self, response: SotwResponse) -> Result<Prepared<Meta>, Refusal> {
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        self.nonces.insert(type_url.clone(), nonce.clone());
        let sent_types: BTreeSet<String> = self.sent.keys().cloned().collect();
        if !self.core.is_known(&type_url, &sent_types) {
            let rejection = Rejection::new(&type_url, "*", "type URL was not subscribed");
            return Err((type_url, nonce, vec![rejection]));
        }
        let mut rejections = Vec::new();
        let mut incoming = BTreeMap::new();
        for (i, any) in response.resources.into_iter().enumerate() {
            match unwrap_resource(&type_url, any) {
                Ok((name, value)) => {
                    let resource = Resource {
                        name: name.as_str().into(),
                        version: response.version_info.clone(),
                        value: value.kept(self.core.cfg.compact),
                    };
                    if incoming.insert(name.clone(), Arc::new(resource)).is_some() {
                        rejections.push(Rejection::new(&type_url, &name, "duplicate name"));
                    }
                }
                Err((name, reason)) => {
                    let name = name.unwrap_or_else(|| format!("#{i}"));
                    rejections.push(Rejection::new(&type_url, &name, reason.to_string()));
                }
            }
        }
        if !rejections.is_empty() {
            return Err((type_url, nonce, rejections));
        }
        let previous_version = self.core.accepted.version_info(&type_url).to_string();
        Ok(Prepared {
            whole: self.core.is_wildcard(&type_url),
            type_url,
            upserts: incoming.into_values().collect(),
            removals: Vec::new(),
            upserts_always_change: false,
            version_info: response.version_info,
            meta: Meta {
                nonce,
                previous_version,
            },
        })
    }

    fn nack(
        &mut self,
        type_url: &str,
        nonce: &str,
        rejections: &[Rejection],
    ) -> Result<(), StreamError> {
        let version = self.core.accepted.version_info(type_url).to_string();
        self.nack_at(type_url, nonce, &version, rejections)
    }

    fn nack_at(
        &mut self,
        type_url: &str,
        nonce: &str,
        version: &str,
        rejections: &[Rejection],
    ) -> Result<(), StreamError> {
        let detail = nack_detail(rejections);
        self.core.record_nack(type_url, &detail);
        let request = DiscoveryRequest {
            version_info: version.to_string(),
            response_nonce: nonce.to_string(),
            resource_names: self.names_for(type_url),
            type_url: type_url.to_string(),
            error_detail: Some(detail),
            ..Default::default()
        };
        self.out.send(request)
    }
}

/// The name and payload of one state-of-the-world resource: a bare resource of `type_url` (name
/// read from field 1), or one wrapped in `envoy.service.discovery.v3.Resource`.
fn unwrap_resource(
    type_url: &str,
    any: WireAny,
) -> Result<(String, Payload), (Option<String>, PayloadError)> {
    let any = if any.type_url == urls::RESOURCE_WRAPPER {
        let wrapped = WrappedResource::decode(any.value.clone())
            .map_err(|e| (None, PayloadError::WrapperUndecodable(e)))?;
        let name = wrapped.name.clone();
        let inner = wrapped
            .resource
            .ok_or_else(|| (Some(name.clone()), PayloadError::WrapperWithoutPayload))?;
        if inner.type_url != type_url {
            return Err((
                Some(name),
                PayloadError::WrongType {
                    payload: inner.type_url,
                    response: type_url.to_string(),
                },
            ));
        }
        payload_name(&inner.value).map_err(|reason| (Some(name.clone()), reason))?;
        if name.is_empty() {
            return Err((None, PayloadError::WrapperWithoutName));
        }
        return Ok((name, inner.into()));
    } else {
        any
    };
    if any.type_url != type_url {
        return Err((
            None,
            PayloadError::WrongType {
                payload: any.type_url,
                response: type_url.to_string(),
            },
        ));
    }
    let name = payload_name(&any.value).map_err(|reason| (None, reason))?;
    if name.is_empty() {
        return Err((None, PayloadError::WithoutName));
    }
    Ok((name, any.into()))
}

/// Answer `responses` as if they had arrived back to back on a fresh stream; the requests sent.
#[cfg(test)]
pub(crate) fn answer_together<H: Handler>(
    core: &mut Core<H>,
    responses: Vec<DiscoveryResponse>,
) -> Vec<DiscoveryRequest> {
    let (out, mut rx) = Outbox::new(core.cfg.node.to_node());
    let mut stream = Stream {
        core,
        out,
        sent: BTreeMap::new(),
        nonces: BTreeMap::new(),
    };
    let responses = responses.iter().map(crate::wire::decoded).collect();
    stream.on_responses(responses).expect("the outbox is open");
    drop(stream);
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}
