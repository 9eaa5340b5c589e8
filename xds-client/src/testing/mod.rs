//! Test support (feature `testing`): an in-process ADS server over TLS and a throwaway PKI.
//!
//! ```ignore
//! let pki = TestPki::new();
//! let server = AdsServer::start("127.0.0.1:0".parse()?, &pki, AdsServerOptions::with_token("t")).await?;
//! let v = server.set(type_url::CLUSTER, "outbound|80||a.ns.svc.cluster.local", any);
//! assert!(server.wait_for_ack(type_url::CLUSTER, &v, Duration::from_secs(5)).await);
//! ```

mod pki;
mod server;
mod streams;

pub use pki::{Issued, TestPki};
pub use server::{AdsServer, AdsServerOptions, Received};

use envoy_types::pb::google::protobuf::Any;

/// Pack a message as `Any` with its canonical type URL.
pub fn any<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}
