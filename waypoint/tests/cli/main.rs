//! The `waypoint` binary and process-level behaviour, as one test binary (one link of pingora
//! instead of one per file).

mod common;

mod abuse;
mod binary;
mod binary_identity;
mod canary_ui;
mod certs_curl;
mod config_load;
mod config_reload;
mod docker;
mod drain;
mod envoy_admin;
mod files_dns;
mod files_tls;
mod first_contact;
mod identity_reload;
mod ipv6;
mod istio_ca;
mod istio_template;
mod manifests;
mod manifests_check;
mod memory;
mod metrics_source;
mod overload;
mod ports;
mod tracing;
mod validate;
mod workers;
mod xds;
mod xds_authz;
mod xds_dns;
mod xds_dump;
mod xds_locality;
mod xds_outbound;
mod xds_path;
mod xds_releases;
mod xds_retry;
mod xds_saved;
mod xds_splice;
mod xds_telemetry;
mod xds_upstreams;
