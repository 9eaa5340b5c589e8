//! upstreams.json and route_fields.json: cluster TLS, SAN matchers, direct endpoints, route fields.

use super::*;

#[test]
fn cross_namespace_waypoint_verifies_by_every_san_matcher() {
    let t = bookinfo_with_upstreams();
    let sans = t.snapshot.hbone_peer_sans().expect("SAN matchers").clone();
    assert_eq!(sans.len(), 2, "{sans:?}");
    let pod = |id: &str| vec![(routing::SanKind::Uri, id.to_string())];
    // The backend in `default` passes on the trust-domain prefix, as with Envoy (any-of); the
    // namespace matcher alone (what was kept before) would refuse it.
    assert!(routing::SanMatcher::any_matches(
        &sans,
        &pod("spiffe://example.org/ns/default/sa/bookinfo-ratings")
    ));
    assert!(!sans[1].matches(&pod("spiffe://example.org/ns/default/sa/bookinfo-ratings")));
    assert!(!routing::SanMatcher::any_matches(
        &sans,
        &pod("spiffe://evil.org/ns/istio-waypoint/sa/x")
    ));
}

#[test]
fn mixed_cluster_dials_plain_endpoints_directly_with_dr_tls() {
    let t = bookinfo_with_upstreams();
    let s = &t.snapshot;
    let c = s
        .cluster("ratings.default.svc.cluster.local", 9080, None)
        .unwrap();
    let mut eps: Vec<(String, routing::Transport)> = c
        .endpoints
        .iter()
        .map(|e| (e.target().to_string(), e.endpoint.transport))
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![
            ("10.0.0.5:9080".to_string(), routing::Transport::Direct),
            ("10.244.1.6:9080".to_string(), routing::Transport::Hbone),
        ]
    );
    let tls = c
        .policy
        .originate_tls()
        .expect("DestinationRule tls SIMPLE");
    assert_eq!(tls.mode, routing::TlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("ratings.example.com"));
    assert_eq!(
        tls.ca_certificates.as_deref(),
        Some("/etc/certs/ratings-ca.pem")
    );
    assert_eq!(tls.subject_alt_names.len(), 1);
    assert!(tls.subject_alt_names[0]
        .matches(&[(routing::SanKind::Dns, "ratings.example.com".to_string())]));
    assert!(!tls.alpn_h2);
    // raw_buffer inside internal_upstream: no TLS.
    let plain = s
        .cluster("productpage.default.svc.cluster.local", 9080, None)
        .unwrap();
    assert!(plain.policy.tls.is_none());
}

/// Files-mode parity: the DestinationRule istiod 1.30.3 turned into upstreams.json's ratings
/// cluster (`tls: {mode: SIMPLE, sni, subjectAltNames, caCertificates}`), loaded from YAML with
/// the same endpoints, gives the same cluster TLS and the same transports.
#[test]
fn files_destination_rule_tls_matches_what_istiods_cluster_translates_to() {
    let t = bookinfo_with_upstreams();
    let host = "ratings.default.svc.cluster.local";
    let from_xds = t.snapshot.cluster(host, 9080, None).unwrap();
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: [10.96.0.11]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.5, labels: {istio.io/dataplane-mode: none}}
  - {address: 10.244.1.6}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: SIMPLE
      sni: ratings.example.com
      subjectAltNames: [ratings.example.com]
      caCertificates: /etc/certs/ratings-ca.pem
";
    let files = routing::load_str(&[("r.yaml".into(), yaml.into())], "cluster.local").unwrap();
    let from_files = files.cluster(host, 9080, None).unwrap();
    assert!(from_xds.policy.tls.is_some());
    assert_eq!(from_files.policy.tls, from_xds.policy.tls);
    let transports = |c: &routing::Cluster| {
        let mut v: Vec<(String, routing::Transport)> = c
            .endpoints
            .iter()
            .map(|e| (e.target().to_string(), e.endpoint.transport))
            .collect();
        v.sort();
        v
    };
    assert_eq!(transports(from_files), transports(from_xds));
}

/// A DestinationRule `credentialName` (istiod: SDS `kubernetes://…` secrets) or `caCrl` on the
/// waypoint's cluster cannot be honoured: the cluster is refused, never dialled with the system
/// roots, without the client certificate or without the revocation check.
#[test]
fn credential_name_and_crl_refuse_the_cluster() {
    let ratings = "inbound-vip|9080|http|ratings.default.svc.cluster.local";
    let text = fixture("upstreams.json");
    let cases = [
        (
            text.replace("file-root:/etc/certs/ratings-ca.pem", "kubernetes://ratings-cacert"),
            "validation secret \"kubernetes://ratings-cacert\" (a DestinationRule credentialName)",
        ),
        (
            text.replace(
                r#""match_subject_alt_names""#,
                r#""crl": {"filename": "/etc/certs/ratings.crl"}, "match_subject_alt_names""#,
            ),
            "certificate revocation list (DestinationRule caCrl)",
        ),
        (
            text.replace(
                r#""combined_validation_context""#,
                r#""tls_certificate_sds_secret_configs": [{"name": "kubernetes://ratings-cred"}], "combined_validation_context""#,
            ),
            "client certificate secret \"kubernetes://ratings-cred\"",
        ),
    ];
    for (overlay, reason) in cases {
        assert_ne!(overlay, text, "{reason}: the fixture changed");
        let errs = bookinfo_with_overlay_text(&overlay).expect_err(reason);
        assert!(
            errs.iter()
                .any(|r| r.name == ratings && r.reason.contains(reason)),
            "{reason}: {errs:?}"
        );
    }
}

/// route_fields.json (istiod 1.24.6): the default route's retry policy and a VirtualService's
/// retries, CORS and fault exactly as istiod writes them.
#[test]
fn route_fields_are_taken_as_written() {
    let t = load("route_fields.json");
    let s = &t.snapshot;
    assert!(
        t.warnings
            .iter()
            .all(|w| w.message.contains("without a known identity")),
        "{:?}",
        t.warnings
    );
    // No VirtualService: the default route, with its own retry policy (not Istio's default).
    for vip in ["10.96.6.1:9080", "10.96.6.2:9080"] {
        let Some(Destination::Service { service, port }) = s.resolve_destination(addr(vip)) else {
            panic!("{vip}");
        };
        assert!(matches!(
            s.route(service, port.number, &SimpleRequest::new("/")),
            RouteDecision::Default
        ));
        let p = port.default_retry_policy();
        assert_eq!(p.attempts, 2, "{vip}");
        assert_eq!(p.retry_on, vec![RetryOn::ResetBeforeRequest]);
        assert!(!p.is_default && !p.avoids_tried_endpoints());
        assert!(p.should_retry(None, RetryFailure::ConnectFailure, None));
        assert!(!p.should_retry(Some(503), RetryFailure::Response, None));
    }
    const WEB: &str = "10.96.6.3:9080";
    // retries {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,503,gateway-error"} + corsPolicy.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/api/x")));
    assert_eq!(&*r.name, "api");
    assert_eq!(r.retries.attempts, 3);
    assert_eq!(r.retries.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        r.retries.retry_on,
        vec![
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::RetriableStatusCodes
        ]
    );
    assert_eq!(r.retries.retriable_status_codes, vec![503]);
    assert!(r.retries.retry_ignore_previous_hosts);
    assert_eq!(r.retries.host_selection_retry_max_attempts, 5);
    let cors = r.cors.as_ref().expect("CORS from typed_per_filter_config");
    assert_eq!(
        cors.allow_origins,
        vec![
            StringMatch::Exact("https://app.example".into()),
            StringMatch::Prefix("https://dev.".into())
        ]
    );
    assert_eq!(cors.allow_methods, vec!["GET", "POST"]);
    assert_eq!(cors.allow_headers, vec!["x-token", "content-type"]);
    assert_eq!(cors.expose_headers, vec!["x-trace"]);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert!(cors.allow_credentials);
    assert_eq!(cors.unmatched_preflights, UnmatchedPreflights::Forward);
    assert!(r.fault.is_none());
    // fault {abort: {httpStatus: 418, percentage: 100}}, no retries: the mesh default.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/teapot")));
    let abort = r.fault.as_ref().and_then(|f| f.abort.as_ref()).unwrap();
    assert_eq!(abort.abort, Abort::Http(418));
    assert_eq!(abort.percentage.per_million(), 1_000_000);
    assert!(r.retries.is_default, "{:?}", r.retries);
    assert!(r.cors.is_none());
    // retries {attempts: 1, retryOn: "reset,retriable-4xx", retryRemoteLocalities: true}.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/other")));
    assert_eq!(&*r.name, "rest");
    assert_eq!(r.retries.attempts, 1);
    assert_eq!(
        r.retries.retry_on,
        vec![RetryOn::Reset, RetryOn::Retriable4xx]
    );
    assert!(r.retries.retry_remote_localities);
    assert!(r
        .retries
        .should_retry(Some(409), RetryFailure::Response, None));
}
