//! Resources as the client holds them, the state offered to the handler, and the handler's
//! contract.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;

/// Type URLs of the resources a waypoint asks istiod for.
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const CLUSTER_LOAD_ASSIGNMENT: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const ROUTE_CONFIGURATION: &str =
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// The wrapper a state-of-the-world server may put around a resource to carry its name and
    /// version (`envoy.service.discovery.v3.Resource`).
    pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

    /// The last segment of a type URL (`Cluster`, `Listener`), for logs and messages.
    pub fn short(type_url: &str) -> &str {
        type_url.rsplit(['.', '/']).next().unwrap_or(type_url)
    }
}

/// One resource as received: its name, the version the server gave it, and the payload as it
/// came (`type_url` + bytes). The caller decodes it, e.g. with [`Resource::decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: Name,
    /// Delta: the resource's own version. State-of-the-world: the response's `version_info`.
    pub version: String,
    pub value: Payload,
}

/// A resource's name: one string for the resource and the key its type's map holds it under.
pub type Name = Arc<str>;

/// A resource's payload, a `google.protobuf.Any` as the client keeps it: the bytes may be a
/// slice of the response they came in (see `wire::Payloads::settle`), and the type URL is
/// shared ([`TypeUrl`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub type_url: TypeUrl,
    pub value: Bytes,
}

/// A payload's type URL. The known ones (the [`type_url`] constants) are one allocation each for
/// the whole process: a mesh's 60 000 resources each had their own copy of a 52- to 68-byte
/// string (80 bytes allocated), half a KiB per service.
pub type TypeUrl = Arc<str>;

/// `type_url` as a [`TypeUrl`]: the process's shared one when it is a known type.
pub fn intern_type_url(type_url: &str) -> TypeUrl {
    static KNOWN: std::sync::OnceLock<Vec<TypeUrl>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        [
            type_url::CLUSTER,
            type_url::LISTENER,
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            type_url::ROUTE_CONFIGURATION,
            type_url::SECRET,
        ]
        .into_iter()
        .map(Arc::from)
        .collect()
    });
    known
        .iter()
        .find(|k| ***k == *type_url)
        .cloned()
        .unwrap_or_else(|| Arc::from(type_url))
}

impl From<Any> for Payload {
    fn from(any: Any) -> Self {
        Self {
            type_url: intern_type_url(&any.type_url),
            value: any.value.into(),
        }
    }
}

impl Payload {
    /// This payload as the client keeps it: in `compact`'s form when the hook gives one for
    /// it ([`crate::ClientConfig::compact`]). After the checks that read the payload's bytes
    /// (its name). A large payload kept as a slice of its response (`wire::Payloads::settle`)
    /// no longer holds the response once the hook gave it a form of its own.
    pub(crate) fn kept(mut self, compact: Option<crate::Compact>) -> Self {
        if let Some(c) = compact {
            if let Some(kept) = c(&self.type_url, &self.value) {
                self.value = kept;
            }
        }
        self
    }
}

impl From<crate::wire::WireAny> for Payload {
    fn from(any: crate::wire::WireAny) -> Self {
        Self {
            type_url: intern_type_url(&any.type_url),
            value: any.value,
        }
    }
}

impl Resource {
    /// Decode the payload as `M`, checking its type URL. The error is a [`Rejection`] naming this
    /// resource, ready to hand back from [`Handler::apply`]. The bytes are decoded as kept: a
    /// client with a [`crate::ClientConfig::compact`] hook reads them with its owner's reader.
    pub fn decode<M: prost::Message + prost::Name + Default>(&self) -> Result<M, Rejection> {
        let expected = M::type_url();
        if *self.value.type_url != *expected {
            return Err(Rejection::new(
                &self.value.type_url,
                &self.name,
                format!("payload is {}, expected {expected}", self.value.type_url),
            ));
        }
        M::decode(self.value.value.as_ref()).map_err(|e| {
            Rejection::new(
                &self.value.type_url,
                &self.name,
                format!("cannot decode {}: {e}", M::full_name()),
            )
        })
    }
}

/// The resources of one type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeState {
    /// State-of-the-world: `version_info` of the last accepted response. Delta:
    /// `system_version_info` of the last accepted response (informational).
    pub version_info: String,
    /// A persistent map: a copy shares it, and a change to the copy copies only the path to
    /// what changed (a push of one assignment among 10 000 is cheap to make a candidate of).
    pub resources: imbl::OrdMap<Name, Arc<Resource>>,
}

/// Everything the client holds, by type URL. Cheap to clone: each type is shared until changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceState {
    types: BTreeMap<String, Arc<TypeState>>,
}

impl ResourceState {
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Resource> {
        self.types
            .get(type_url)
            .and_then(|t| t.resources.get(name))
            .map(|r| r.as_ref())
    }

    /// The resources of `type_url`, by name.
    pub fn resources<'a>(&'a self, type_url: &str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.types
            .get(type_url)
            .into_iter()
            .flat_map(|t| t.resources.values().map(|r| r.as_ref()))
    }

    pub fn len(&self, type_url: &str) -> usize {
        self.types.get(type_url).map_or(0, |t| t.resources.len())
    }

    pub fn is_empty(&self) -> bool {
        self.types.values().all(|t| t.resources.is_empty())
    }

    pub fn version_info(&self, type_url: &str) -> &str {
        self.types
            .get(type_url)
            .map_or("", |t| t.version_info.as_str())
    }

    /// Type URLs with state (possibly empty).
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// `type_url`'s resources that differ from `earlier`'s, in name order: each name with its
    /// resource now, `None` when it is gone. Found without visiting what the two states share (a
    /// candidate shares every unchanged part of the state it was made from), so a push of one
    /// service's clusters among 30 000 costs those clusters.
    pub fn changed_since<'a>(
        &'a self,
        earlier: &'a ResourceState,
        type_url: &str,
    ) -> Vec<(&'a str, Option<&'a Resource>)> {
        use imbl::ordmap::DiffItem;
        let now = self.types.get(type_url).map(|t| &t.resources);
        let then = earlier.types.get(type_url).map(|t| &t.resources);
        match (then, now) {
            (None, None) => Vec::new(),
            (None, Some(now)) => now.iter().map(|(n, r)| (&**n, Some(&**r))).collect(),
            (Some(then), None) => then.keys().map(|n| (&**n, None)).collect(),
            (Some(then), Some(now)) => then
                .diff(now)
                .map(|d| match d {
                    DiffItem::Add(n, r) | DiffItem::Update { new: (n, r), .. } => {
                        (&**n, Some(&**r))
                    }
                    DiffItem::Remove(n, _) => (&**n, None),
                })
                .collect(),
        }
    }

    /// `name -> version` of `type_url`: Delta's `initial_resource_versions` on reconnect.
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.resources(type_url)
            .map(|r| (r.name.to_string(), r.version.clone()))
            .collect()
    }

    /// A copy of `type_url`'s state (empty if none), to change into a candidate's.
    pub(crate) fn type_state(&self, type_url: &str) -> TypeState {
        self.types
            .get(type_url)
            .map(|t| TypeState::clone(t))
            .unwrap_or_default()
    }

    pub(crate) fn type_mut(&mut self, type_url: &str) -> &mut TypeState {
        Arc::make_mut(self.types.entry(type_url.to_string()).or_default())
    }

    /// The name string the state already holds for `name` when a resource of `type_url` comes:
    /// an EDS assignment is named after its cluster, and takes the cluster's string (at 5 000
    /// services, 15 000 names of 60 to 80 bytes held once instead of twice). `None` for the
    /// other types. One lookup per assignment.
    pub(crate) fn held_name(&self, type_url: &str, name: &str) -> Option<Name> {
        if type_url != type_url::CLUSTER_LOAD_ASSIGNMENT {
            return None;
        }
        let clusters = self.types.get(type_url::CLUSTER)?;
        let (held, _) = clusters.resources.get_key_value(name)?;
        Some(held.clone())
    }

    /// The shared resource `name` of `type_url`.
    pub fn get_shared(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.types.get(type_url).and_then(|t| t.resources.get(name))
    }

    /// Put `resource` in place of the resource of that name (a handler's own copy of a state).
    pub fn insert(&mut self, type_url: &str, resource: Arc<Resource>) {
        self.type_mut(type_url)
            .resources
            .insert(resource.name.clone(), resource);
    }

    pub fn remove(&mut self, type_url: &str, name: &str) -> Option<Arc<Resource>> {
        self.type_mut(type_url).resources.remove(name)
    }
}

/// A resource the client or the handler refuses, and why. NACKs carry these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub type_url: String,
    /// The resource name; for a payload whose name could not be read, `#<index>` in the response.
    pub name: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(type_url: &str, name: &str, reason: impl Into<String>) -> Self {
        Self {
            type_url: type_url.to_string(),
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            type_url::short(&self.type_url),
            self.name,
            self.reason
        )
    }
}

/// Resource names in order, as a persistent set: a clone shares the set's structure, so a
/// handler that adds one service's names to the last set of 30 000 hands over a set that cost
/// those names, and the client finds what changed between two such sets without visiting
/// what they share ([`imbl::OrdSet::diff`]).
pub type Names = imbl::OrdSet<std::sync::Arc<str>>;

/// Named subscriptions the handler wants: for each non-wildcard type (EDS, RDS), the exact set of
/// names. Types absent have no names subscribed. Wildcard types are set in the client config.
/// Cheap to clone: each type's set is shared, so a handler can hand back the same subscriptions
/// push after push, and the client sees they are the same without comparing every name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    named: BTreeMap<String, Names>,
}

impl Subscriptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribe `type_url` to exactly `names` (replacing any earlier set).
    pub fn with<I, S>(mut self, type_url: &str, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set(type_url, names);
        self
    }

    pub fn set<I, S>(&mut self, type_url: &str, names: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set_names(type_url, names.into_iter().map(Into::into).collect());
    }

    /// Subscribe `type_url` to exactly `names`, a set the caller may share (no name copied).
    pub fn with_names(mut self, type_url: &str, names: Names) -> Self {
        self.set_names(type_url, names);
        self
    }

    pub fn set_names(&mut self, type_url: &str, names: Names) {
        self.named.insert(type_url.to_string(), names);
    }

    pub fn names(&self, type_url: &str) -> Option<&Names> {
        self.named.get(type_url)
    }

    /// `type_url`'s names, shared (empty when none are subscribed).
    pub(crate) fn shared(&self, type_url: &str) -> Names {
        self.named.get(type_url).cloned().unwrap_or_default()
    }

    /// Whether `type_url`'s names are the very set `other` has (a clone of the same
    /// subscriptions): equal without comparing them.
    pub(crate) fn same_set(&self, other: &Subscriptions, type_url: &str) -> bool {
        match (self.named.get(type_url), other.named.get(type_url)) {
            (Some(a), Some(b)) => a.ptr_eq(b),
            (None, None) => true,
            _ => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Names)> {
        self.named.iter().map(|(t, n)| (t.as_str(), n))
    }
}

/// What one response changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub type_url: String,
    /// Names added or changed by the response.
    pub updated: Vec<String>,
    /// Names removed by the response.
    pub removed: Vec<String>,
}

/// What arrived, with the candidate state to judge.
#[derive(Debug)]
pub struct Update<'a> {
    /// What each response changed, in arrival order: one response, or several that had all
    /// arrived when the first was taken (istiod pushes the CDS, EDS, LDS and RDS of one change
    /// back to back; endpoint churn queues EDS responses while one is judged). Each applies on
    /// top of the ones before it, the same type possibly more than once. They are judged
    /// together, so a push costs the handler one translation, not one per response; each is
    /// still ACKed or NACKed on its own, by what the handler refused of it.
    pub changes: &'a [Change],
    /// The candidate: the last accepted state with these responses applied.
    pub state: &'a ResourceState,
}

impl Update<'_> {
    /// Whether one of the responses is of `type_url`.
    pub fn has_type(&self, type_url: &str) -> bool {
        self.changes.iter().any(|c| c.type_url == type_url)
    }
}

/// A candidate the handler took: the named subscriptions wanted from now on, and the resources
/// it could not use. When some were refused the response is still NACKed naming them, but the
/// candidate becomes the accepted state, as Envoy applies the valid resources of an update and
/// rejects the others: one bad resource does not freeze the rest.
#[derive(Debug, Default)]
pub struct Applied {
    pub subscriptions: Subscriptions,
    /// Resources the handler left out of what it serves (NACKed, each with its reason).
    pub refused: Vec<Rejection>,
}

impl From<Subscriptions> for Applied {
    fn from(subscriptions: Subscriptions) -> Self {
        Self {
            subscriptions,
            refused: Vec::new(),
        }
    }
}

/// Judges candidate states. Called on the client's task after each response (or group of
/// responses that arrived together, see [`Update::changes`]), one at a time.
pub trait Handler: Send + 'static {
    /// Accept the candidate, whole or in part (returning the named subscriptions wanted from now
    /// on, e.g. EDS names = the EDS clusters in the candidate, and the resources it refused), or
    /// reject it whole naming each bad resource and why (the last accepted state stays).
    /// Resource extension types the handler does not know are its own decision: ignore, or reject.
    fn apply(&mut self, update: &Update<'_>) -> Result<Applied, Vec<Rejection>>;

    /// Named subscriptions before any response (e.g. restored from elsewhere). None by default.
    fn initial_subscriptions(&self) -> Subscriptions {
        Subscriptions::new()
    }
}

/// Reads field 1 of a message, which is the name in every xDS resource type a waypoint uses
/// (`Listener.name`, `Cluster.name`, `ClusterLoadAssignment.cluster_name`,
/// `RouteConfiguration.name`, `Secret.name`). Other fields are skipped unread.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NameField {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_type_names() {
        assert_eq!(type_url::short(type_url::CLUSTER), "Cluster");
        assert_eq!(
            type_url::short(type_url::CLUSTER_LOAD_ASSIGNMENT),
            "ClusterLoadAssignment"
        );
        assert_eq!(type_url::short("weird"), "weird");
    }

    /// A payload is kept in the hook's form when it gives one, whatever its size (a large one
    /// too: a mesh's `main_internal`); one the hook declines, as it came.
    #[test]
    fn kept_offers_every_payload_to_the_hook() {
        fn half(_: &str, raw: &[u8]) -> Option<Bytes> {
            Some(Bytes::copy_from_slice(&raw[..raw.len() / 2]))
        }
        fn never(_: &str, _: &[u8]) -> Option<Bytes> {
            None
        }
        let payload = |len: usize| Payload {
            type_url: intern_type_url(type_url::CLUSTER),
            value: vec![7u8; len].into(),
        };
        let len = |p: Payload| p.value.len();
        assert_eq!(len(payload(1000).kept(Some(half))), 500);
        let large = crate::wire::SHARED_MIN * 4;
        assert_eq!(len(payload(large).kept(Some(half))), large / 2);
        assert_eq!(len(payload(1000).kept(Some(never))), 1000);
        assert_eq!(len(payload(1000).kept(None)), 1000);
    }

    #[test]
    fn decode_checks_type_and_bytes() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::Message;
        let cluster = Cluster {
            name: "c1".into(),
            ..Default::default()
        };
        let good = Resource {
            name: "c1".into(),
            version: "1".into(),
            value: Payload {
                type_url: type_url::CLUSTER.into(),
                value: cluster.encode_to_vec().into(),
            },
        };
        assert_eq!(good.decode::<Cluster>().unwrap().name, "c1");
        let wrong_type = Resource {
            value: Payload {
                type_url: type_url::LISTENER.into(),
                value: Bytes::new(),
            },
            ..good.clone()
        };
        let err = wrong_type.decode::<Cluster>().unwrap_err();
        assert!(err.reason.contains("expected"), "{err}");
        let garbage = Resource {
            value: Payload {
                type_url: type_url::CLUSTER.into(),
                value: Bytes::from_static(&[0x0a, 0xff]),
            },
            ..good
        };
        assert!(garbage.decode::<Cluster>().is_err());
    }

    /// What a candidate changed against the state it was made from: the names added, changed
    /// and gone, and nothing for a type it left alone or for an equal state.
    #[test]
    fn changed_since_lists_what_differs() {
        let resource = |name: &str, bytes: &'static [u8]| {
            Arc::new(Resource {
                name: name.into(),
                version: "1".into(),
                value: Payload {
                    type_url: intern_type_url(type_url::CLUSTER),
                    value: Bytes::from_static(bytes),
                },
            })
        };
        let mut before = ResourceState::default();
        for i in 0..500 {
            before.insert(type_url::CLUSTER, resource(&format!("c{i:03}"), b"a"));
        }
        before.insert(type_url::LISTENER, resource("main_internal", b"l"));
        let mut after = before.clone();
        after.insert(type_url::CLUSTER, resource("c100", b"b"));
        after.insert(type_url::CLUSTER, resource("new", b"a"));
        after.remove(type_url::CLUSTER, "c200");
        let changed: Vec<(&str, Option<&[u8]>)> = after
            .changed_since(&before, type_url::CLUSTER)
            .into_iter()
            .map(|(n, r)| (n, r.map(|r| &r.value.value[..])))
            .collect();
        assert_eq!(
            changed,
            [
                ("c100", Some(&b"b"[..])),
                ("c200", None),
                ("new", Some(&b"a"[..]))
            ]
        );
        assert!(after.changed_since(&before, type_url::LISTENER).is_empty());
        assert!(after
            .changed_since(&after.clone(), type_url::CLUSTER)
            .is_empty());
        let empty = ResourceState::default();
        assert_eq!(after.changed_since(&empty, type_url::LISTENER).len(), 1);
        assert_eq!(
            empty.changed_since(&after, type_url::LISTENER)[0],
            ("main_internal", None)
        );
    }
}
