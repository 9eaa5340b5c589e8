//! End-to-end tests through a live waypoint on loopback, as one test binary (one link of pingora
//! instead of one per file).

mod actions;
mod authz;
mod canary;
mod ext_authz;
mod frames;
mod h2_pool;
mod http1;
mod http_route;
mod identity;
mod jwt;
mod matching;
mod observability;
mod pingora_contract;
mod policies;
mod protocols;
mod rejections;
mod trust;
mod upstream_pool;
