//! The model's own invariants.

use super::*;

#[test]
fn protocol_from_port() {
    assert_eq!(Protocol::from_port("http", None), Protocol::Http);
    assert_eq!(Protocol::from_port("http-web", None), Protocol::Http);
    assert_eq!(Protocol::from_port("HTTP2", None), Protocol::Http2);
    assert_eq!(Protocol::from_port("grpc", None), Protocol::Grpc);
    assert_eq!(Protocol::from_port("grpc-web", None), Protocol::Http);
    assert_eq!(Protocol::from_port("tcp-mongo", None), Protocol::Tcp);
    assert_eq!(Protocol::from_port("tls", None), Protocol::Tcp);
    assert_eq!(Protocol::from_port("https", None), Protocol::Tcp);
    assert_eq!(Protocol::from_port("mongo", None), Protocol::Unknown);
    assert_eq!(Protocol::from_port("web", None), Protocol::Unknown);
    assert_eq!(Protocol::from_port("tcp", Some("HTTP")), Protocol::Http);
    assert_eq!(Protocol::from_port("x", Some("GRPC-Web")), Protocol::Http);
    assert!(Protocol::Grpc.is_http());
    assert!(!Protocol::Tcp.is_http());
    assert!(!Protocol::Unknown.is_http());
}

/// A snapshot holds a route per service at least, each with a match block: the rare parts
/// (redirects, direct responses, rewrites, CORS, regexes) are boxed, so that a plain route
/// is 368 bytes and not 744, and a match block 304 and not 400. Then the fault went behind a
/// box, the retry policy behind a shared `Arc` and a header list became a boxed slice: 216.
#[test]
fn routes_box_their_rare_parts() {
    use std::mem::size_of;
    assert!(
        size_of::<StringMatch>() <= 32,
        "{}",
        size_of::<StringMatch>()
    );
    assert!(
        size_of::<RouteMatch>() <= 304,
        "{}",
        size_of::<RouteMatch>()
    );
    assert!(size_of::<HttpRoute>() <= 216, "{}", size_of::<HttpRoute>());
    assert!(
        size_of::<RouteDestination>() <= 112,
        "{}",
        size_of::<RouteDestination>()
    );
}

#[test]
fn label_superset() {
    let mut l = BTreeMap::new();
    l.insert("app".to_string(), "r".to_string());
    l.insert("version".to_string(), "v1".to_string());
    let mut s = BTreeMap::new();
    let l = crate::Labels::from(l);
    assert!(labels_superset(&l, &s));
    s.insert("app".to_string(), "r".to_string());
    assert!(labels_superset(&l, &s));
    s.insert("version".to_string(), "v2".to_string());
    assert!(!labels_superset(&l, &s));
}
