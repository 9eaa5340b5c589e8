//! SPIFFE identities: the type lives in `routing` (a cluster endpoint's expected identity is
//! parsed there, once, when the snapshot is built); re-exported so `crate::identity::SpiffeId`
//! keeps naming it.

pub use routing::{SpiffeId, SpiffeIdError};
