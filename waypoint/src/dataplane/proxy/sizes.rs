//! The futures every request allocates and copies. pingora boxes each hook's future (its
//! traits are `async_trait`) and each upstream connect's, and a future is as large as the
//! largest state any of its awaits can leave it in. A rare path's future awaited inline (a
//! JWT key fetch, an ext_authz call, a new tunnel's handshake) made every request's filter
//! future 10 KiB and its connect future 5 KiB, allocated and copied at each call and again at
//! each level of nesting. Boxed where they are taken, they cost only the requests that take
//! them.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_proxy::{ProxyHttp, Session};

use super::Waypoint;
use crate::app::{App, Settings};
use crate::control::identity::{Ca, PeerCheck, SpiffeId};
use crate::telemetry::access_log::{AccessLog, Format, Sink};
use crate::transport::hbone::connector::TunnelConnector;
use crate::transport::hbone::pool::TunnelPolicy;

/// The request filter's future (routing, path normalization, authorization): it was 10 288
/// bytes with the JWT and ext_authz calls inline, 2 912 with them boxed (release build).
const FILTER_MAX: usize = 4 * 1024;

/// An upstream connect's future (the tunnel pool's checkout, or the h2c pool's): 5 280 bytes
/// with a new tunnel's handshake inline, 560 with it boxed (release build).
const CONNECT_MAX: usize = 1024;

fn waypoint() -> Waypoint {
    let ca = Ca::new("sizes").unwrap();
    let cert = ca
        .issue(&SpiffeId::new("cluster.local", "default", "waypoint"))
        .unwrap();
    let log = Arc::new(AccessLog::new(Format::Text, Sink::Off));
    let app = App::new(
        cert.workload,
        routing::Snapshot::empty(),
        &Settings::new("cluster.local"),
        log.clone(),
    )
    .unwrap();
    Waypoint {
        snapshot: app.snapshot.clone(),
        pool: app.pool.clone(),
        access_log: log,
        telemetry: app.telemetry.clone(),
        path_normalization: Default::default(),
        jwks: Default::default(),
        authorizers: Default::default(),
        drain: app.drain.clone(),
        telemetry_api: app.telemetry_api.clone(),
    }
}

#[tokio::test]
async fn the_futures_each_request_allocates_stay_small() {
    let wp = waypoint();
    let (_client, server) = tokio::io::duplex(1024);
    let mut session = Session::new_h1(Box::new(server));
    let mut ctx = wp.new_ctx();
    let filter = wp.request_filter(&mut session, &mut ctx);
    let size = std::mem::size_of_val(&*filter);
    assert!(
        size <= FILTER_MAX,
        "request_filter's future is {size} bytes (at most {FILTER_MAX}): box the rare path \
         that made it grow"
    );
    drop(filter);

    let target = PingoraAddr::Inet("127.0.0.1:9080".parse::<SocketAddr>().unwrap());
    for h2 in [false, true] {
        let connector = TunnelConnector {
            pool: wp.pool.clone(),
            identity: PeerCheck::Identity(Arc::new(SpiffeId::new(
                "cluster.local",
                "default",
                "reviews",
            ))),
            lease: Arc::default(),
            policy: TunnelPolicy::default(),
            failure: Arc::default(),
            h2,
        };
        let connect = connector.connect(&target);
        let size = std::mem::size_of_val(&*connect);
        assert!(
            size <= CONNECT_MAX,
            "the connect future (h2 {h2}) is {size} bytes (at most {CONNECT_MAX}): box the \
             rare path that made it grow"
        );
    }
}
