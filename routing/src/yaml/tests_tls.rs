//! DestinationRule `tls` in files mode: parsing into the upstream TLS settings the xDS path
//! produces, Istio's precedence, ISTIO_MUTUAL, validation errors and rejected rules.

use crate::model::StringMatch;
use crate::upstream::{ClientTls, SanKind, SanMatcher, TlsMode, Transport, UpstreamTls};
use crate::{load_str, Snapshot};

const HOST: &str = "ext.example.com";

/// `ext.example.com` on ports 80 (HTTP) and 81 (HTTP2): `ext-ep0` outside the mesh (dialled
/// directly), `ext-ep1` in it (HBONE); versions v1 / v2.
const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example.com]
  addresses: [10.9.0.1]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8443}
  - {number: 81, name: h2, protocol: HTTP2, targetPort: 8444}
  endpoints:
  - address: 10.9.1.1
    labels: {istio.io/dataplane-mode: none, version: v1}
  - address: 10.9.1.2
    serviceAccount: ext
    labels: {version: v2}
";

fn files(dr_spec: &str) -> Vec<(String, String)> {
    vec![
        ("se.yaml".to_string(), SE.to_string()),
        (
            "dr.yaml".to_string(),
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ext, namespace: default}}\nspec:\n  host: ext.example.com\n{dr_spec}"
            ),
        ),
    ]
}

fn load(dr_spec: &str) -> Snapshot {
    load_str(&files(dr_spec), "cluster.local").unwrap_or_else(|e| panic!("{e}"))
}

fn error(dr_spec: &str) -> String {
    match load_str(&files(dr_spec), "cluster.local") {
        Ok(_) => panic!("loaded:\n{dr_spec}"),
        Err(e) => e.to_string(),
    }
}

fn tls(s: &Snapshot, port: u16, subset: Option<&str>) -> Option<ClientTls> {
    s.cluster(HOST, port, subset).unwrap().policy.tls.clone()
}

fn sni(s: &Snapshot, port: u16, subset: Option<&str>) -> Option<String> {
    match tls(s, port, subset) {
        Some(ClientTls::Originate(t)) => t.sni,
        other => panic!("port {port} subset {subset:?}: {other:?}"),
    }
}

/// (name, transport) of a cluster's endpoints.
fn endpoints(s: &Snapshot, port: u16, subset: Option<&str>) -> Vec<(String, Transport)> {
    s.cluster(HOST, port, subset)
        .unwrap()
        .endpoints
        .iter()
        .map(|e| (e.endpoint.workload.name.to_string(), e.endpoint.transport))
        .collect()
}

#[test]
fn simple_and_mutual_become_the_settings_the_xds_path_produces() {
    let s = load(
        "  trafficPolicy:
    tls:
      mode: SIMPLE
      sni: ext.example.com
      subjectAltNames: [ext.example.com, spiffe://other/ns/x/sa/y]
      caCertificates: /etc/ext/ca.pem
",
    );
    // istiod: `sni`, untyped exact `match_subject_alt_names`, `file-root:<path>` (what
    // routing/src/xds/cluster.rs reads back into these fields).
    let want = UpstreamTls {
        mode: TlsMode::Simple,
        sni: Some(HOST.into()),
        subject_alt_names: vec![
            SanMatcher {
                kind: SanKind::Any,
                matcher: StringMatch::Exact(HOST.into()),
            },
            SanMatcher {
                kind: SanKind::Any,
                matcher: StringMatch::Exact("spiffe://other/ns/x/sa/y".into()),
            },
        ],
        ca_certificates: Some("/etc/ext/ca.pem".into()),
        client_certificate: None,
        private_key: None,
        insecure_skip_verify: false,
        alpn_h2: false,
    };
    assert_eq!(tls(&s, 80, None), Some(ClientTls::Originate(want.clone())));
    // An HTTP/2 port offers h2 (istiod's ALPNH2Only on an HTTP/2 cluster).
    assert_eq!(
        tls(&s, 81, None),
        Some(ClientTls::Originate(UpstreamTls {
            alpn_h2: true,
            ..want
        }))
    );
    // The endpoint outside the mesh is dialled directly, the mesh one over HBONE.
    assert_eq!(
        endpoints(&s, 80, None),
        vec![
            ("ext-ep0".to_string(), Transport::Direct),
            ("ext-ep1".to_string(), Transport::Hbone)
        ]
    );

    // Defaults: no sni (the request's host), no SANs (the SNI name), the system roots.
    let s = load(
        "  trafficPolicy:
    tls: {mode: MUTUAL, clientCertificate: /c/cert.pem, privateKey: /c/key.pem}
",
    );
    assert_eq!(
        tls(&s, 80, None),
        Some(ClientTls::Originate(UpstreamTls {
            mode: TlsMode::Mutual,
            sni: None,
            subject_alt_names: vec![],
            ca_certificates: None,
            client_certificate: Some("/c/cert.pem".into()),
            private_key: Some("/c/key.pem".into()),
            insecure_skip_verify: false,
            alpn_h2: false,
        }))
    );

    // insecureSkipVerify: nothing verified (istiod's bare validation context).
    let s = load(
        "  trafficPolicy:\n    tls: {mode: SIMPLE, insecureSkipVerify: true, sni: x.example}\n",
    );
    let Some(ClientTls::Originate(t)) = tls(&s, 80, None) else {
        panic!()
    };
    assert!(
        t.insecure_skip_verify && t.subject_alt_names.is_empty() && t.ca_certificates.is_none()
    );
    assert_eq!(t.sni.as_deref(), Some("x.example"));

    // DISABLE is plaintext; no tls at all too.
    let s = load("  trafficPolicy:\n    tls: {mode: DISABLE}\n");
    assert_eq!(tls(&s, 80, None), Some(ClientTls::Disable));
    assert_eq!(
        s.cluster(HOST, 80, None).unwrap().policy.originate_tls(),
        None
    );
}

#[test]
fn precedence_subset_port_level_then_subset_then_port_level_then_top() {
    let s = load(
        "  trafficPolicy:
    tls: {mode: SIMPLE, sni: top}
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: port80}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: SIMPLE, sni: v1}
      portLevelSettings:
      - port: {number: 81}
        tls: {mode: SIMPLE, sni: v1-81}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
  - name: plain
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: DISABLE}
  - name: lb81
    labels: {version: v1}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 81}
        loadBalancer: {simple: RANDOM}
",
    );
    let some = |v: &str| Some(v.to_string());
    // Rule level: the port-level entry replaces the top-level policy for its port.
    assert_eq!(sni(&s, 80, None), some("port80"));
    assert_eq!(sni(&s, 81, None), some("top"));
    // A subset's tls beats the rule's port-level one; its own port-level entry beats both.
    assert_eq!(sni(&s, 80, Some("v1")), some("v1"));
    assert_eq!(sni(&s, 81, Some("v1")), some("v1-81"));
    // A subset without tls inherits the rule's (port-level first).
    assert_eq!(sni(&s, 80, Some("v2")), some("port80"));
    assert_eq!(sni(&s, 81, Some("v2")), some("top"));
    // A subset's DISABLE overrides the rule's SIMPLE.
    assert_eq!(tls(&s, 80, Some("plain")), Some(ClientTls::Disable));
    assert_eq!(tls(&s, 81, Some("plain")), Some(ClientTls::Disable));
    // A subset port-level entry without tls replaces everything for its port: no TLS
    // (Istio's MergeTrafficPolicy with hasPortLevel).
    assert_eq!(tls(&s, 81, Some("lb81")), None);
    assert_eq!(sni(&s, 80, Some("lb81")), some("port80"));
}

#[test]
fn istio_mutual_dials_direct_endpoints_in_istio_mtls_and_leaves_hbone_ones() {
    let s = load(
        "  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 81}
      tls: {mode: DISABLE}
",
    );
    assert_eq!(tls(&s, 80, None), Some(ClientTls::IstioMutual));
    assert_eq!(
        endpoints(&s, 80, None),
        vec![
            ("ext-ep0".to_string(), Transport::IstioMutual),
            ("ext-ep1".to_string(), Transport::Hbone)
        ]
    );
    // Per cluster: port 81 is DISABLE, the same endpoint plaintext there.
    assert_eq!(endpoints(&s, 81, None)[0].1, Transport::Direct);
    // The workload itself is unchanged (pod-addressed traffic has no DestinationRule).
    assert_eq!(s.endpoints(HOST)[0].transport, Transport::Direct);
    // config_dump shows each cluster endpoint's transport.
    let dump = s.to_json();
    let c = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "inbound-vip|80|http|ext.example.com")
        .unwrap();
    assert_eq!(c["endpoints"][0]["transport"], "istio_mutual");
    assert_eq!(c["policy"]["tls"], "istio_mutual");
}

#[test]
fn invalid_tls_is_an_error_naming_the_field() {
    let at = "dr.yaml doc 0 DestinationRule default/ext: spec.trafficPolicy.tls";
    let cases: &[(&str, &str)] = &[
        ("{mode: STRICT}", ".mode: unknown value \"STRICT\" (expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)"),
        ("{mode: MUTUAL, privateKey: /k}", ".clientCertificate: required for mode MUTUAL"),
        ("{mode: MUTUAL, clientCertificate: /c}", ".privateKey: required for mode MUTUAL"),
        ("{mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca}", ".insecureSkipVerify: cannot specify caCertificates"),
        ("{mode: MUTUAL, insecureSkipVerify: true, subjectAltNames: [a], clientCertificate: /c, privateKey: /k}", ".insecureSkipVerify: cannot specify"),
        ("{mode: SIMPLE, credentialName: s, caCertificates: /ca}", ".credentialName: cannot specify clientCertificate"),
        ("{mode: SIMPLE, insecureSkipVerify: maybe}", ".insecureSkipVerify: must be true or false"),
        ("{mode: SIMPLE, subjectAltNames: ['']}", ".subjectAltNames[0]: must not be empty"),
        ("{mode: SIMPLE, snii: x}", ".snii: unknown field"),
    ];
    for (t, want) in cases {
        let e = error(&format!("  trafficPolicy:\n    tls: {t}\n"));
        let want = format!("{at}{want}");
        assert!(e.contains(&want), "{t}\n  want: {want}\n  got:  {e}");
    }
    // Port-level and subset tls are checked the same way.
    let e = error("  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      tls: {mode: MUTUAL}\n");
    assert!(
        e.contains("spec.trafficPolicy.portLevelSettings[0].tls.clientCertificate: required"),
        "{e}"
    );
    let e = error("  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {tls: {mode: BOGUS}}\n");
    assert!(
        e.contains("spec.subsets[0].trafficPolicy.tls.mode: unknown value"),
        "{e}"
    );
}

#[test]
fn credential_name_and_ca_crl_reject_the_rule_never_plaintext() {
    for (t, why) in [
        (
            "{mode: SIMPLE, credentialName: ext-secret}",
            "spec.subsets[0].trafficPolicy.tls.credentialName: Kubernetes secrets are not read in files mode",
        ),
        (
            "{mode: SIMPLE, caCertificates: /ca.pem, caCrl: /crl.pem}",
            "spec.subsets[0].trafficPolicy.tls.caCrl: certificate revocation lists are not checked",
        ),
    ] {
        let mut f = files(&format!(
            "  trafficPolicy:\n    loadBalancer: {{simple: RANDOM}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n    trafficPolicy: {{tls: {t}}}\n"
        ));
        // Other resources keep loading, and a route naming the rejected rule's subset resolves.
        f.push((
            "vs.yaml".into(),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ext, namespace: default}\nspec:\n  hosts: [ext.example.com]\n  http:\n  - route:\n    - destination: {host: ext.example.com, subset: v1}\n".into(),
        ));
        let s = load_str(&f, "cluster.local").unwrap_or_else(|e| panic!("{t}: {e}"));
        let w = s.warnings().join("\n");
        let want = format!("dr.yaml doc 0 DestinationRule default/ext: rejected: {why}");
        assert!(w.contains(&want), "{t}\n  want: {want}\n  in:\n{w}");
        assert!(w.contains("never dialled in plaintext"), "{w}");
        // Every cluster of the host: the direct endpoint left out, the HBONE one kept; none of
        // the rule's other policies applied.
        for (port, subset) in [(80, None), (81, None), (80, Some("v1"))] {
            let c = s.cluster(HOST, port, subset).unwrap();
            assert!(
                matches!(c.policy.tls, Some(ClientTls::Refused(ref r)) if r.starts_with(why.split(':').next().unwrap())),
                "{:?}",
                c.policy.tls
            );
            assert!(c.policy.load_balancer.is_none());
            assert!(
                c.endpoints.iter().all(|e| e.endpoint.transport != Transport::Direct),
                "{port} {subset:?}: a direct endpoint is still dialled"
            );
        }
        assert_eq!(endpoints(&s, 80, None), vec![("ext-ep1".to_string(), Transport::Hbone)]);
        assert!(s.service_by_host(HOST).is_some());
    }
}

#[test]
fn tls_warnings_hbone_endpoints_and_unused_fields() {
    let s = load(
        "  trafficPolicy:
    tls: {mode: SIMPLE, clientCertificate: /c.pem}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL, sni: x}
",
    );
    let w = s.warnings().join("\n");
    let at = "dr.yaml doc 0 DestinationRule default/ext: ";
    for want in [
        "spec.trafficPolicy.tls.clientCertificate: ignored with mode SIMPLE",
        "spec.subsets[0].trafficPolicy.tls.sni: ignored with mode ISTIO_MUTUAL",
        "spec.trafficPolicy.tls: applies only to the endpoints of ext.example.com outside the mesh",
    ] {
        assert!(
            w.contains(&format!("{at}{want}")),
            "missing {want}\nin:\n{w}"
        );
    }
    // ISTIO_MUTUAL on HBONE endpoints: nothing to warn about (istiod ignores it too).
    assert!(
        !w.contains("spec.subsets[0].trafficPolicy.tls: applies only"),
        "{w}"
    );
    assert!(!w.contains("not supported yet"), "{w}");
}
