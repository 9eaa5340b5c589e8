//! One filter chain of `main_internal` translated on its own: a *chain piece*. What the chain
//! is (a service chain, a `direct-*` chain, something ignored), its authorization, and, for a
//! service chain, its routes as the service's VirtualService-equivalent gets them. Built from
//! the chain alone plus which clusters exist, so [`super::pieces::Memo`] reuses it while the
//! chain's bytes and the answers to "does cluster X exist" it asked are the same (a weight
//! change re-translates one chain, not the listener).
//!
//! Diagnostics are kept in two parts, reported where a translation from scratch reports them:
//! `listener_diag` while the listener is read, `routes.diag` while services are assembled.

use super::access::{self, ChainAuthz};
use super::listener::{
    chain_name, chains::chain_hcm, chains::chain_kind, chains::path_policy, ChainKind, DIRECT_HTTP,
    DIRECT_TCP,
};
use super::names::ClusterName;
use super::route::{self, RouteCtx};
use super::telemetry::{self, HcmTelemetry};
use super::{At, Diag, LISTENER_TYPE, ROUTE_TYPE};
use crate::model::{HttpRoute, RouteDestination};
use crate::path::PathPolicy;
use crate::policy::HashKey;
use crate::tcp::{TcpMatch, TcpRoute};
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpSpecifier;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The names of the clusters a state has: the strings their pieces hold, looked up by `&str`.
pub(crate) type ClusterNames<'a> = std::collections::HashSet<Named<'a>, super::FastHash>;

/// A cluster's name as its piece holds it, in a [`ClusterNames`]: hashed and compared as the
/// `str`, so that a set of them is asked with a `&str` and answers with the piece's string.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Named<'a>(pub(crate) &'a Arc<str>);

impl std::borrow::Borrow<str> for Named<'_> {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl std::hash::Hash for Named<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self.0).hash(state);
    }
}

impl PartialEq for Named<'_> {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl Eq for Named<'_> {}

/// Which clusters exist, remembering what was asked (a chain piece is valid while the same
/// questions get the same answers): a known cluster by its piece's string, not a copy (a
/// chain asks for its service's clusters, three at 5 000 services' chains).
pub(crate) struct Known<'a> {
    set: &'a ClusterNames<'a>,
    asked: RefCell<Vec<(Arc<str>, bool)>>,
}

impl<'a> Known<'a> {
    pub(crate) fn new(set: &'a ClusterNames<'a>) -> Self {
        Known {
            set,
            asked: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn contains(&self, cluster: &str) -> bool {
        let (name, answer) = match self.set.get(cluster) {
            Some(known) => (known.0.clone(), true),
            None => (cluster.into(), false),
        };
        self.asked.borrow_mut().push((name, answer));
        answer
    }

    fn take(&self) -> Vec<(Arc<str>, bool)> {
        std::mem::take(&mut *self.asked.borrow_mut())
    }
}

/// One translated filter chain.
#[derive(Debug)]
pub(crate) struct ChainPiece {
    /// The chain's name as written, when it is not `name` (istiod before 1.24).
    raw_name: Option<Box<str>>,
    /// As istiod 1.24+ names it ([`chain_name`]); a service chain's parsed name holds the same
    /// string.
    pub(crate) name: Arc<str>,
    /// [`name_key`](crate::xds::pieces::name_key) of `name`, made once: a read of a listener
    /// of 10 000 chains checks every name for duplicates.
    pub(crate) name_key: u128,
    /// Route configurations its connection manager takes from RDS.
    pub(crate) rds: Vec<String>,
    pub(crate) role: ChainRole,
    /// Reported while the listener is read.
    pub(crate) listener_diag: super::HeldDiag,
    /// The clusters the routes were translated against, and whether each existed.
    pub(crate) asked: Vec<(Arc<str>, bool)>,
    /// Its connection manager's access logs and tracing (HTTP chains).
    pub(crate) telemetry: Option<Arc<HcmTelemetry>>,
}

// Most chains are service chains, and each role lives once in its piece: no box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum ChainRole {
    /// `direct-http` / `direct-tcp`: the waypoint-wide policies; `direct-http`'s path handling.
    Direct {
        authz: Arc<ChainAuthz>,
        path: Option<PathPolicy>,
    },
    /// A service chain (named like istiod's clusters); `routes`: `None` when it has neither a
    /// connection manager nor a tcp_proxy that can be used.
    Service {
        cluster: ClusterName,
        authz: Arc<ChainAuthz>,
        routes: Option<ChainRoutes>,
    },
    /// Not a service chain (warned about).
    Ignored,
}

/// What a service chain gives its service, and what translating it found.
#[derive(Debug)]
pub(crate) struct ChainRoutes {
    pub(crate) kind: RoutesKind,
    /// Hash keys its routes ask of their destination clusters, in route order.
    pub(crate) hash_keys: Vec<(String, HashKey)>,
    /// Reported while services are assembled.
    pub(crate) diag: super::HeldDiag,
}

#[derive(Debug)]
pub(crate) enum RoutesKind {
    Http {
        http2: bool,
        path: PathPolicy,
        /// `None`: its RDS route configuration has not arrived (or has no virtual host).
        table: Option<HttpTable>,
    },
    Tcp(Option<TcpRoute>),
}

/// An HTTP chain's routes.
#[derive(Debug)]
pub(crate) struct HttpTable {
    /// Shared with the VirtualService equivalents and the route tables made from them.
    pub(crate) routes: Vec<Arc<HttpRoute>>,
    /// The VirtualService the first route that names one belongs to (route metadata).
    pub(crate) virtual_service: Option<(String, String)>,
    /// The retry policy of the default route, when that is the only route.
    pub(crate) default_retries: Option<Arc<crate::actions::RetryPolicy>>,
}

impl ChainPiece {
    /// Translate `chain` of `main_internal` (`at`), its RDS route configuration (if any) from
    /// `routes`, against the clusters `known`.
    pub(crate) fn build(
        chain: &FilterChain,
        routes: &BTreeMap<&str, &RouteConfiguration>,
        known: &Known<'_>,
        at: At<'_>,
    ) -> ChainPiece {
        let mut diag = Diag::default();
        let name: Arc<str> = chain_name(&chain.name).into();
        let rds = super::listener::chain_rds_names(chain);
        let mut hcm_telemetry = None;
        let role = if *name == *DIRECT_TCP || *name == *DIRECT_HTTP {
            // Pod-IP access: the pods come from the matcher's workload range; the chain's
            // policies are the waypoint-wide ones.
            let authz = Arc::new(access::chain(chain, at, &mut diag));
            let path = match chain_hcm(chain).filter(|_| *name == *DIRECT_HTTP) {
                Some(hcm) => {
                    hcm_telemetry = Some(telemetry::from_hcm(&name, &hcm, at, &mut diag));
                    path_policy(&name, &hcm, at, &mut diag)
                }
                None => None,
            };
            ChainRole::Direct { authz, path }
        } else if let Some(cluster) = ClusterName::parse_shared(&name) {
            let mut kind = chain_kind(chain, routes, at, &mut diag);
            if let Some(ChainKind::Http { telemetry, .. }) = &mut kind {
                hcm_telemetry = telemetry.take();
            }
            let authz = Arc::new(access::chain(chain, at, &mut diag));
            let routes = kind.map(|k| chain_routes(&name, &cluster, &k, known));
            ChainRole::Service {
                cluster,
                authz,
                routes,
            }
        } else {
            at.warn(
                &mut diag,
                format!(
                    "filter chain {:?} is not a service chain; ignored",
                    chain.name
                ),
            );
            ChainRole::Ignored
        };
        ChainPiece {
            raw_name: (*name != *chain.name).then(|| chain.name.as_str().into()),
            name_key: crate::xds::pieces::name_key(&name),
            name,
            rds,
            role,
            listener_diag: super::HeldDiag::new(diag),
            asked: known.take(),
            telemetry: hcm_telemetry,
        }
    }

    /// The chain's name as written.
    pub(crate) fn raw_name(&self) -> &str {
        self.raw_name.as_deref().unwrap_or(&self.name)
    }

    /// Still what a build would give against the names it was read with and `added` (names
    /// those did not have): it found none of `added` missing.
    pub(crate) fn valid_grown(&self, added: &[&str]) -> bool {
        self.rds.is_empty()
            && self
                .asked
                .iter()
                .all(|(c, found)| *found || !added.contains(&&**c))
    }

    /// Still what a build against `known` would give (the bytes being the same).
    pub(crate) fn valid_for(&self, known: &ClusterNames<'_>) -> bool {
        self.rds.is_empty()
            && self
                .asked
                .iter()
                .all(|(c, answer)| known.contains(&**c) == *answer)
    }
}

/// A service chain's routes (an HTTP chain's route table, a TCP chain's destinations).
fn chain_routes(chain: &str, cn: &ClusterName, kind: &ChainKind, known: &Known<'_>) -> ChainRoutes {
    let mut diag = Diag::default();
    let mut hash_keys = Vec::new();
    let kind = match kind {
        ChainKind::Http {
            routes,
            rds,
            http2,
            default_fault,
            path,
            ..
        } => RoutesKind::Http {
            http2: *http2,
            path: *path,
            table: routes.as_ref().and_then(|rc| {
                let at = if *rds {
                    At {
                        type_url: ROUTE_TYPE,
                        name: &rc.name,
                    }
                } else {
                    At {
                        type_url: LISTENER_TYPE,
                        name: super::listener::MAIN_INTERNAL,
                    }
                };
                http_table(
                    chain,
                    cn,
                    rc,
                    *rds,
                    default_fault.as_ref(),
                    known,
                    at,
                    &mut hash_keys,
                    &mut diag,
                )
            }),
        },
        ChainKind::Tcp(tcp) => {
            let at = At {
                type_url: LISTENER_TYPE,
                name: super::listener::MAIN_INTERNAL,
            };
            let mut dests = Vec::new();
            match &tcp.cluster_specifier {
                Some(TcpSpecifier::Cluster(c)) if c == chain => {}
                Some(TcpSpecifier::Cluster(c)) => {
                    dests.push(tcp_destination(c, 100, known, at, &mut diag))
                }
                Some(TcpSpecifier::WeightedClusters(w)) => {
                    let sum: u64 = w.clusters.iter().map(|c| u64::from(c.weight)).sum();
                    if sum == 0 || sum > u64::from(u32::MAX) {
                        at.reject(
                            &mut diag,
                            format!("chain {chain}: tcp_proxy weights sum to {sum}"),
                        );
                    }
                    for c in w.clusters.iter().filter(|c| c.weight > 0) {
                        dests.push(tcp_destination(&c.name, c.weight, known, at, &mut diag));
                    }
                }
                None => at.reject(
                    &mut diag,
                    format!("chain {chain}: tcp_proxy without cluster"),
                ),
            }
            if let Some(key) = tcp.hash_policy.first().and_then(|h| {
                use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
                matches!(h.policy_specifier, Some(PolicySpecifier::SourceIp(_)))
                    .then_some(HashKey::SourceIp)
            }) {
                hash_keys.push((chain.to_string(), key));
            }
            RoutesKind::Tcp((!dests.is_empty()).then(|| TcpRoute {
                name: format!("{chain}.tcp"),
                matches: vec![TcpMatch {
                    port: Some(cn.port),
                    ..TcpMatch::default()
                }],
                destinations: dests,
            }))
        }
    };
    ChainRoutes {
        kind,
        hash_keys,
        diag: super::HeldDiag::new(diag),
    }
}

/// The route table of an HTTP chain; `None` when it has no virtual host.
#[allow(clippy::too_many_arguments)]
fn http_table(
    chain: &str,
    cn: &ClusterName,
    rc: &RouteConfiguration,
    rds: bool,
    default_fault: Option<&crate::actions::Fault>,
    known: &Known<'_>,
    at: At<'_>,
    hash_keys: &mut Vec<(String, HashKey)>,
    diag: &mut Diag,
) -> Option<HttpTable> {
    if rc.virtual_hosts.len() > 1 {
        at.warn(
            diag,
            format!("chain {chain}: only the first virtual host is used"),
        );
    }
    let Some(vh) = rc.virtual_hosts.first() else {
        at.warn(diag, format!("chain {chain}: no virtual host; no routes"));
        return None;
    };
    let ctx = RouteCtx {
        known_clusters: known,
        // Envoy: true for inline route configs unless set; istiod sets false.
        validate_clusters: rc.validate_clusters.as_ref().map_or(!rds, |v| v.value),
        port: cn.port,
        default_fault,
        vhost_retry: vh.retry_policy.as_ref(),
        vhost_filters: Some(&vh.typed_per_filter_config),
    };
    let vhost_authz = vh
        .typed_per_filter_config
        .iter()
        .any(|(f, any)| route::authz_override(f, any).is_some());
    let mut table = HttpTable {
        routes: Vec::new(),
        virtual_service: None,
        default_retries: None,
    };
    for (i, r) in vh.routes.iter().enumerate() {
        if route::is_default_route(r, chain) && vh.routes.len() == 1 && !vhost_authz {
            if let Some(key) = route::default_route_hash(r) {
                hash_keys.push((chain.to_string(), key));
            }
            // Its retry policy as written (istiod 1.24+: reset-before-request).
            table.default_retries = route::default_route_retries(r, &ctx, at, diag).map(Arc::new);
            continue;
        }
        let fallback = format!("{chain}.{i}");
        if let Some(t) = route::translate(r, &fallback, &ctx, at, diag) {
            if table.virtual_service.is_none() {
                table.virtual_service = t.virtual_service;
            }
            hash_keys.extend(t.hash_keys);
            table.routes.push(Arc::new(t.route));
        }
    }
    table.routes.shrink_to_fit();
    Some(table)
}

fn tcp_destination(
    cluster: &str,
    weight: u32,
    known: &Known<'_>,
    at: At<'_>,
    diag: &mut Diag,
) -> RouteDestination {
    if !known.contains(cluster) {
        at.warn(
            diag,
            format!("tcp_proxy cluster {cluster} is not (yet) known"),
        );
    }
    let (host, subset, port) = match ClusterName::parse(cluster) {
        Some(c) => (
            c.host().to_string(),
            c.subset().map(str::to_string),
            Some(c.port),
        ),
        None => (cluster.to_string(), None, None),
    };
    RouteDestination {
        host,
        subset,
        port,
        weight,
        headers: Default::default(),
    }
}
