//! Routing model, matching, weighted choice, load balancing and the two
//! front-ends for the waypoint proxy: Istio YAML ([`yaml`]) and Envoy xDS
//! ([`xds`]). Pure: no I/O besides reading config files.
#![forbid(unsafe_code)]

mod actions;
pub mod authz;
mod builder;
mod chunked;
pub mod dns;
mod error;
mod explain;
mod hash;
mod hosts;
mod labels;
mod lb;
mod matching;
mod model;
mod outlier;
pub mod path;
mod policy;
mod pool;
mod recent;
pub mod runtime;
mod shards;
mod snapshot;
mod spiffe;
mod tcp;
pub mod telemetry;
mod upstream;
mod weighted;
pub mod xds;
pub mod yaml;

pub use actions::{
    Abort, Cors, DirectResponse, Fault, FaultAbort, FaultDecision, FaultDelay, HeaderOp,
    HeaderOpKind, HeaderOps, HeaderSink, Headers, Mirror, Percent, Redirect, RedirectPath,
    RedirectPort, RegexRewrite, RetryFailure, RetryOn, RetryPolicy, Rewrite, RouteAction,
    UnmatchedPreflights, UriRewrite, GRPC_STATUS_CODES,
};
pub use builder::SnapshotBuilder;
pub use error::{DocRef, LoadError, LoadErrors, LoadWarning};
pub use explain::{ExplainedDecision, RouteExplanation, RouteTrace};
pub use hash::{
    cookie_to_set, cookie_value, hash_bytes, hash_key, HashRequest, RequestHash, SetCookie,
    SimpleHashRequest,
};
pub use hosts::{expand_host, normalize_authority, CLUSTER_DOMAIN};
pub use labels::Labels;
pub use lb::{cluster_name, ActiveGuard, Cluster, ClusterEndpoint, ClusterStats};
pub use matching::{query_param, Miss, RequestView, SimpleRequest};
pub use model::{
    labels_superset, spiffe_identity, DestinationRule, Endpoint, HttpRoute, LbPolicy, Locality,
    MatchRegex, Protocol, RegexError, RouteDestination, RouteMatch, Service, ServicePort,
    StringMatch, Subset, VirtualService, Workload,
};
pub use outlier::{Ejection, EjectionKind, Outcome};
pub use policy::{
    format_duration, ClusterPolicy, ConnectionPool, ConsistentHash, HashAlgorithm, HashKey,
    HttpCookie, HttpSettings, LoadBalancer, LocalityLb, OutlierDetection, OutlierSettings,
    Placement, PoolLimits, PortTrafficPolicy, TcpSettings, TrafficPolicy, Warmup,
};
pub use pool::{Overflow, PoolGuard, PoolHandle, PoolResource};
pub use snapshot::{Destination, RouteDecision, Snapshot};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tcp::{Cidr, TcpConnection, TcpMatch, TcpRoute};
pub use telemetry::TelemetryConfig;
pub use upstream::{ClientTls, SanKind, SanMatcher, TlsMode, Transport, UpstreamTls};
pub use weighted::pick_weighted;
pub use yaml::{
    check_files_with, check_path, check_path_with, check_str, config_entries, is_config_name,
    load_dir, load_dir_with, load_str, read_config_dir, ConfigEntry, ConfigFiles, InputLimits,
    LoadOptions, ReadError, Report, Unreadable, WaypointRef, DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Snapshot>();
        assert_send_sync::<std::sync::Arc<Snapshot>>();
        assert_send_sync::<ActiveGuard>();
        assert_send_sync::<PoolGuard>();
    }

    #[test]
    fn empty_snapshot() {
        let s = Snapshot::empty();
        assert_eq!(s.version(), 0);
        assert_eq!(s.services().count(), 0);
        assert!(s
            .resolve_destination("10.0.0.1:80".parse().unwrap())
            .is_none());
        assert!(s.service_by_host("reviews").is_none());
    }
}
