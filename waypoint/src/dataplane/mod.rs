//! The data plane: what a tunnel is (classification, who its client is), the HTTP hooks on
//! pingora, the TCP splice, upstream selection, direct (non-mesh) dialing, mirroring, and the
//! process-wide admission state (overload, drain).

pub mod direct;
pub mod drain;
pub mod inbound;
pub mod mirror;
pub mod outcome;
pub mod overload;
pub mod proxy;
pub mod source;
pub mod splice;
pub mod tunnel;
pub mod upstream;
