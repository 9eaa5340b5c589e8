//! What the hooks of one request share: [`RequestCtx`].

use super::AuthzNote;
use crate::dataplane::outcome::UpstreamOutcome;
use crate::dataplane::tunnel::TunnelInfo;
use crate::dataplane::upstream::{ClusterKey, PodTarget};
use crate::transport::hbone::Lease;
use parking_lot::Mutex;
use routing::{Protocol, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct RequestCtx {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) tunnel: Option<Arc<TunnelInfo>>,
    pub(super) started: Instant,
    pub(super) start_time: SystemTime,
    pub(super) request_id: String,
    pub(super) route_name: String,
    pub(super) cluster: Option<ClusterKey>,
    /// Endpoint to use directly (pod-addressed traffic outside any routed service).
    pub(super) direct: Option<PodTarget>,
    pub(super) protocol: Protocol,
    /// (hostname, namespace) of the service the request addressed.
    pub(super) service: Option<(String, String)>,
    pub(super) grpc_status: Option<String>,
    /// The request's span, when tracing is on and the request is sampled.
    pub(super) span: Option<crate::telemetry::spans::ActiveSpan>,
    /// A weighted route's pick, finished with the request's outcome (the canary page).
    pub(super) split: Option<crate::telemetry::splits::SplitTicket>,
    /// A gRPC request's messages in each direction, counted as its bodies pass.
    pub(super) grpc_messages: Option<(
        super::grpc_frames::GrpcFrames,
        super::grpc_frames::GrpcFrames,
    )>,
    /// The matched VirtualService route (its timeout, retries, header operations, CORS).
    pub(super) route: Option<Arc<routing::HttpRoute>>,
    /// The retry policy of the port's default route, when the request took it.
    pub(super) default_retries: Option<Arc<routing::RetryPolicy>>,
    /// The weighted destination picked (for its header operations).
    /// Its index in `route.destinations` (no copy per request).
    pub(super) destination: Option<usize>,
    /// `rewrite.uri` applied to the request's path.
    pub(super) rewrite_path: Option<String>,
    /// Headers added to the response (CORS).
    pub(super) extra_response_headers: Vec<(String, String)>,
    /// Consistent-hash key of this request, when its cluster hashes.
    pub(super) hash: Option<u64>,
    /// `set-cookie` value for a consistent-hash cookie the client did not send.
    pub(super) set_cookie: Option<String>,
    /// The request's slot in its cluster's connection pool (`http2MaxRequests`).
    pub(super) _request_slot: Option<routing::PoolGuard>,
    /// Retry slots (`maxRetries`), held until the request ends.
    pub(super) retry_slots: Vec<routing::PoolGuard>,
    pub(super) tried: Vec<SocketAddr>,
    pub(super) upstream_h2: bool,
    pub(super) upstream_started: Option<Instant>,
    pub(super) upstream_time: Option<Duration>,
    pub(super) lease: Option<Arc<Lease>>,
    /// Copies of the request body on their way to mirrors.
    pub(super) mirror_taps: Vec<crate::dataplane::mirror::BodyTap>,
    /// The upstream answered 101: its tunnel carries the upgraded protocol and is never reused.
    pub(super) upgraded: bool,
    pub(super) failure: Arc<Mutex<Option<String>>>,
    /// Cluster, endpoint, flags and details: what the access log and the metrics report.
    pub(super) outcome: UpstreamOutcome,
    /// The authorization decision, for the access log.
    pub(super) authz: AuthzNote,
    pub(super) _active: Option<routing::ActiveGuard>,
    /// The tunnel's HTTP/1.1 request-header deadline, restarted when this exchange ends.
    pub(super) header_clock: Option<Arc<crate::transport::header_deadline::HeaderClock>>,
}

impl RequestCtx {
    /// The weighted destination picked, in `route` (the request's matched route).
    pub(super) fn destination_in<'r>(
        &self,
        route: &'r routing::HttpRoute,
    ) -> Option<&'r routing::RouteDestination> {
        route.destinations.get(self.destination?)
    }

    /// The retry policy of the request's route as configured: the matched route's, or its
    /// port's default route's. `None` for pod-addressed requests outside any routed service.
    pub(super) fn retry_policy(&self) -> Option<&routing::RetryPolicy> {
        match (&self.route, &self.default_retries) {
            (Some(route), _) => Some(&route.retries),
            (None, Some(p)) => Some(p),
            (None, None) => None,
        }
    }
}

impl RequestCtx {
    /// A request's context at its start, on the current snapshot.
    pub(super) fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            tunnel: None,
            started: Instant::now(),
            start_time: SystemTime::now(),
            request_id: String::new(),
            route_name: String::new(),
            cluster: None,
            direct: None,
            protocol: Protocol::Unknown,
            service: None,
            grpc_status: None,
            span: None,
            grpc_messages: None,
            split: None,
            route: None,
            default_retries: None,
            destination: None,
            rewrite_path: None,
            extra_response_headers: Vec::new(),
            hash: None,
            set_cookie: None,
            _request_slot: None,
            retry_slots: Vec::new(),
            tried: Vec::new(),
            upstream_h2: false,
            upstream_started: None,
            upstream_time: None,
            lease: None,
            mirror_taps: Vec::new(),
            upgraded: false,
            failure: Arc::new(Mutex::new(None)),
            outcome: UpstreamOutcome::default(),
            authz: AuthzNote::default(),
            _active: None,
            header_clock: None,
        }
    }
}
