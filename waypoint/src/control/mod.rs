//! Control: where config and identity come from — local files (watched, hot-reloaded), istiod
//! over xDS, DNS clusters, Istio's container interface, and the workload identity.

pub mod dns;
pub mod identity;
pub mod istio;
pub mod memory;
pub mod priority;
pub mod reload;
pub(crate) mod retired;
pub(crate) mod watch;
pub mod xds;
