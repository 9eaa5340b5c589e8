//! Every field name of the API messages the YAML structs model, as the real
//! APIs define them (JSON / camelCase names). A key of a document that is in
//! its message's list but not handled by the loader is a warning ("not
//! supported yet"); a key that is in no list is an unknown field, an error
//! (Kubernetes applies Istio and Gateway API CRDs with strict field
//! validation).

// ---------------------------------------------------------------------------
// Top level of every enforced document (Kubernetes object).
// ---------------------------------------------------------------------------

pub(crate) const DOCUMENT: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

// ---------------------------------------------------------------------------
// istio/api networking/v1alpha3/virtual_service.proto
// ---------------------------------------------------------------------------

/// `VirtualService`
pub(crate) const VIRTUAL_SERVICE: &[&str] =
    &["hosts", "gateways", "http", "tls", "tcp", "exportTo"];
/// `HTTPRoute` (Istio's)
pub(crate) const VS_HTTP_ROUTE: &[&str] = &[
    "name",
    "match",
    "route",
    "redirect",
    "directResponse",
    "delegate",
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercent",
    "mirrorPercentage",
    "corsPolicy",
    "headers",
];
/// `HTTPMatchRequest`
pub(crate) const HTTP_MATCH_REQUEST: &[&str] = &[
    "name",
    "uri",
    "scheme",
    "method",
    "authority",
    "headers",
    "port",
    "sourceLabels",
    "gateways",
    "queryParams",
    "ignoreUriCase",
    "withoutHeaders",
    "sourceNamespace",
    "statPrefix",
];
/// `StringMatch`
pub(crate) const STRING_MATCH: &[&str] = &["exact", "prefix", "regex"];
/// `HTTPRouteDestination`
pub(crate) const HTTP_ROUTE_DESTINATION: &[&str] = &["destination", "weight", "headers"];
/// `RouteDestination` (TCP and TLS routes)
pub(crate) const ROUTE_DESTINATION: &[&str] = &["destination", "weight"];
/// `Destination`
pub(crate) const DESTINATION: &[&str] = &["host", "subset", "port"];
/// `PortSelector`
pub(crate) const PORT_SELECTOR: &[&str] = &["number"];
/// `TCPRoute`
pub(crate) const TCP_ROUTE: &[&str] = &["match", "route"];
/// `L4MatchAttributes`
pub(crate) const L4_MATCH_ATTRIBUTES: &[&str] = &[
    "destinationSubnets",
    "port",
    "sourceSubnet",
    "sourceLabels",
    "gateways",
    "sourceNamespace",
];
/// `HTTPMirrorPolicy`
pub(crate) const HTTP_MIRROR_POLICY: &[&str] = &["destination", "percentage"];
/// `HTTPRedirect`
pub(crate) const HTTP_REDIRECT: &[&str] = &[
    "uri",
    "authority",
    "port",
    "derivePort",
    "scheme",
    "redirectCode",
    "prefixRewrite",
];
/// `HTTPDirectResponse`
pub(crate) const HTTP_DIRECT_RESPONSE: &[&str] = &["status", "body"];
/// `HTTPBody`
pub(crate) const HTTP_BODY: &[&str] = &["string", "bytes"];
/// `HTTPRewrite`
pub(crate) const HTTP_REWRITE: &[&str] = &["uri", "authority", "uriRegexRewrite"];
/// `RegexRewrite`
pub(crate) const REGEX_REWRITE: &[&str] = &["match", "rewrite"];
/// `Headers`
pub(crate) const HEADERS: &[&str] = &["request", "response"];
/// `Headers.HeaderOperations`
pub(crate) const HEADER_OPERATIONS: &[&str] = &["set", "add", "remove"];
/// `HTTPRetry`
pub(crate) const HTTP_RETRY: &[&str] = &[
    "attempts",
    "perTryTimeout",
    "retryOn",
    "retryRemoteLocalities",
    "retryIgnorePreviousHosts",
    "backoff",
];
/// `HTTPFaultInjection`
pub(crate) const HTTP_FAULT_INJECTION: &[&str] = &["delay", "abort"];
/// `HTTPFaultInjection.Delay`
pub(crate) const FAULT_DELAY: &[&str] =
    &["fixedDelay", "exponentialDelay", "percentage", "percent"];
/// `HTTPFaultInjection.Abort`
pub(crate) const FAULT_ABORT: &[&str] = &["httpStatus", "grpcStatus", "http2Error", "percentage"];
/// `Percent`
pub(crate) const PERCENT: &[&str] = &["value"];
/// `CorsPolicy`
pub(crate) const CORS_POLICY: &[&str] = &[
    "allowOrigin",
    "allowOrigins",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "maxAge",
    "allowCredentials",
    "unmatchedPreflights",
];

// ---------------------------------------------------------------------------
// istio/api networking/v1alpha3/destination_rule.proto
// ---------------------------------------------------------------------------

/// `DestinationRule`
pub(crate) const DESTINATION_RULE: &[&str] = &[
    "host",
    "trafficPolicy",
    "subsets",
    "exportTo",
    "workloadSelector",
];
/// `TrafficPolicy`
pub(crate) const TRAFFIC_POLICY: &[&str] = &[
    "loadBalancer",
    "connectionPool",
    "outlierDetection",
    "tls",
    "portLevelSettings",
    "tunnel",
    "proxyProtocol",
    "retryBudget",
];
/// `TrafficPolicy.PortTrafficPolicy`
pub(crate) const PORT_TRAFFIC_POLICY: &[&str] = &[
    "port",
    "loadBalancer",
    "connectionPool",
    "outlierDetection",
    "tls",
];
/// `Subset`
pub(crate) const SUBSET: &[&str] = &["name", "labels", "trafficPolicy"];
/// `ClientTLSSettings`
pub(crate) const CLIENT_TLS_SETTINGS: &[&str] = &[
    "mode",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "sni",
    "insecureSkipVerify",
    "caCrl",
];
/// `LoadBalancerSettings`
pub(crate) const LOAD_BALANCER_SETTINGS: &[&str] = &[
    "simple",
    "consistentHash",
    "localityLbSetting",
    "zoneAwareLbSetting",
    "warmupDurationSecs",
    "warmup",
];
/// `WarmupConfiguration`
pub(crate) const WARMUP_CONFIGURATION: &[&str] = &["duration", "minimumPercent", "aggression"];
/// `LoadBalancerSettings.ConsistentHashLB`
pub(crate) const CONSISTENT_HASH_LB: &[&str] = &[
    "httpHeaderName",
    "httpCookie",
    "useSourceIp",
    "httpQueryParameterName",
    "ringHash",
    "maglev",
    "minimumRingSize",
];
/// `ConsistentHashLB.HTTPCookie`
pub(crate) const HTTP_COOKIE: &[&str] = &["name", "path", "ttl", "attributes"];
/// `ConsistentHashLB.RingHash`
pub(crate) const RING_HASH: &[&str] = &["minimumRingSize"];
/// `ConsistentHashLB.MagLev`
pub(crate) const MAGLEV: &[&str] = &["tableSize"];
/// `ConnectionPoolSettings`
pub(crate) const CONNECTION_POOL_SETTINGS: &[&str] = &["tcp", "http"];
/// `ConnectionPoolSettings.TCPSettings`
pub(crate) const TCP_SETTINGS: &[&str] = &[
    "maxConnections",
    "connectTimeout",
    "tcpKeepalive",
    "maxConnectionDuration",
    "idleTimeout",
];
/// `ConnectionPoolSettings.HTTPSettings`
pub(crate) const HTTP_SETTINGS: &[&str] = &[
    "http1MaxPendingRequests",
    "http2MaxRequests",
    "maxRequestsPerConnection",
    "maxRetries",
    "idleTimeout",
    "h2UpgradePolicy",
    "useClientProtocol",
    "maxConcurrentStreams",
    "http2KeepAlive",
];
/// `OutlierDetection`
pub(crate) const OUTLIER_DETECTION: &[&str] = &[
    "consecutiveErrors",
    "splitExternalLocalOriginErrors",
    "consecutiveLocalOriginFailures",
    "consecutiveGatewayErrors",
    "consecutive5xxErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
    "outlierDetectionHttpErrorCodes",
];

// ---------------------------------------------------------------------------
// istio/api networking/v1alpha3/service_entry.proto (and `WorkloadSelector`
// of networking/v1alpha3/sidecar.proto)
// ---------------------------------------------------------------------------

/// `ServiceEntry`
pub(crate) const SERVICE_ENTRY: &[&str] = &[
    "hosts",
    "addresses",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "workloadSelector",
    "exportTo",
    "subjectAltNames",
];
/// `ServicePort`
pub(crate) const SERVICE_PORT: &[&str] = &["number", "protocol", "name", "targetPort"];
/// `WorkloadSelector` (networking/v1alpha3/sidecar.proto)
pub(crate) const WORKLOAD_SELECTOR: &[&str] = &["labels"];

// ---------------------------------------------------------------------------
// istio/api networking/v1alpha3/workload_entry.proto
// ---------------------------------------------------------------------------

/// `WorkloadEntry` (also the items of `ServiceEntry.endpoints`)
pub(crate) const WORKLOAD_ENTRY: &[&str] = &[
    "address",
    "ports",
    "labels",
    "network",
    "locality",
    "weight",
    "serviceAccount",
];

// ---------------------------------------------------------------------------
// Gateway API v1: apis/v1/httproute_types.go, shared_types.go,
// object_reference_types.go (kubernetes-sigs/gateway-api)
// ---------------------------------------------------------------------------

/// `HTTPRouteSpec` (with the inlined `CommonRouteSpec`)
pub(crate) const HTTP_ROUTE_SPEC: &[&str] =
    &["parentRefs", "useDefaultGateways", "hostnames", "rules"];
/// `ParentReference`
pub(crate) const PARENT_REFERENCE: &[&str] =
    &["group", "kind", "namespace", "name", "sectionName", "port"];
/// `HTTPRouteRule`
pub(crate) const HTTP_ROUTE_RULE: &[&str] = &[
    "name",
    "matches",
    "filters",
    "backendRefs",
    "timeouts",
    "retry",
    "sessionPersistence",
];
/// `HTTPRouteMatch`
pub(crate) const HTTP_ROUTE_MATCH: &[&str] = &["path", "headers", "queryParams", "method"];
/// `HTTPPathMatch`
pub(crate) const HTTP_PATH_MATCH: &[&str] = &["type", "value"];
/// `HTTPHeaderMatch` and `HTTPQueryParamMatch`
pub(crate) const HTTP_NAMED_MATCH: &[&str] = &["type", "name", "value"];
/// `HTTPRouteFilter`
pub(crate) const HTTP_ROUTE_FILTER: &[&str] = &[
    "type",
    "requestHeaderModifier",
    "responseHeaderModifier",
    "requestMirror",
    "requestRedirect",
    "urlRewrite",
    "cors",
    "externalAuth",
    "extensionRef",
];
/// `HTTPHeaderFilter`
pub(crate) const HTTP_HEADER_FILTER: &[&str] = &["set", "add", "remove"];
/// `HTTPHeader`
pub(crate) const HTTP_HEADER: &[&str] = &["name", "value"];
/// `HTTPRequestRedirectFilter`
pub(crate) const HTTP_REQUEST_REDIRECT_FILTER: &[&str] =
    &["scheme", "hostname", "path", "port", "statusCode"];
/// `HTTPURLRewriteFilter`
pub(crate) const HTTP_URL_REWRITE_FILTER: &[&str] = &["hostname", "path"];
/// `HTTPPathModifier`
pub(crate) const HTTP_PATH_MODIFIER: &[&str] = &["type", "replaceFullPath", "replacePrefixMatch"];
/// `HTTPRequestMirrorFilter`
pub(crate) const HTTP_REQUEST_MIRROR_FILTER: &[&str] = &["backendRef", "percent", "fraction"];
/// `BackendObjectReference` (a mirror's `backendRef`)
pub(crate) const BACKEND_OBJECT_REFERENCE: &[&str] =
    &["group", "kind", "name", "namespace", "port"];
/// `HTTPBackendRef` (`BackendRef` inlined: `BackendObjectReference` and `weight`)
pub(crate) const HTTP_BACKEND_REF: &[&str] = &[
    "group",
    "kind",
    "name",
    "namespace",
    "port",
    "weight",
    "filters",
];
/// `HTTPRouteTimeouts`
pub(crate) const HTTP_ROUTE_TIMEOUTS: &[&str] = &["request", "backendRequest"];

/// The nearest of `known` to `name` when it is close enough to be a likely
/// misspelling: same name up to case and `_`/`-` (`max_connections`), or a
/// small Damerau-Levenshtein distance (one edit for short names, two for
/// names of 8+ characters).
pub(crate) fn suggest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let n = norm(name);
    if let Some(k) = known.iter().find(|k| norm(k) == n) {
        return Some(k);
    }
    let limit = if name.chars().count() >= 8 { 2 } else { 1 };
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&n, &norm(k)), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `unknown field `x`` with, when one is close, ` (did you mean `y`?)`.
pub(crate) fn unknown_field(key: &str, known: &[&str]) -> String {
    match suggest(key, known) {
        Some(k) => format!("unknown field `{key}` (did you mean `{k}`?)"),
        None => format!("unknown field `{key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("weigth", ROUTE_DESTINATION), Some("weight"));
        assert_eq!(
            suggest("max_connections", TCP_SETTINGS),
            Some("maxConnections")
        );
        assert_eq!(suggest("Hosts", VIRTUAL_SERVICE), Some("hosts"));
        assert_eq!(
            suggest("destinaton", HTTP_ROUTE_DESTINATION),
            Some("destination")
        );
        assert_eq!(suggest("colour", ROUTE_DESTINATION), None);
        assert_eq!(
            unknown_field("colour", ROUTE_DESTINATION),
            "unknown field `colour`"
        );
    }
}
