//! Cluster policies shared between the clusters that have equal ones, and the placements
//! every unplaced endpoint shares.

use std::cell::RefCell;
use std::sync::Arc;

use crate::recent::Recent;

use super::{ClusterPolicy, Placement, TrafficPolicy};

impl ClusterPolicy {
    /// `policy` to hold in a cluster, shared with the clusters built with an equal one: istiod
    /// gives every cluster of a waypoint the same timeouts, breakers and LB policy, so a mesh
    /// has a few distinct policies for thousands of clusters (448 bytes each). The last
    /// [`SHARED_POLICIES`] distinct ones this thread built are found by value (a snapshot is
    /// built on one thread); nothing is kept alive for them.
    pub fn shared(policy: ClusterPolicy) -> Arc<ClusterPolicy> {
        thread_local! {
            static RECENT: RefCell<Recent<ClusterPolicy>> =
                const { RefCell::new(Recent::new(SHARED_POLICIES)) };
        }
        RECENT.with_borrow_mut(|recent| recent.shared(policy))
    }
}

impl TrafficPolicy {
    /// `policy` without spare capacity, shared with the rules built with an equal one: the
    /// xDS front-end makes each service's DestinationRule from its clusters' policies, which
    /// istiod makes alike (a subset's policy is one port's, about 930 bytes). Found as
    /// [`ClusterPolicy::shared`] finds them.
    pub fn shared(mut policy: TrafficPolicy) -> Arc<TrafficPolicy> {
        thread_local! {
            static RECENT: RefCell<Recent<TrafficPolicy>> =
                const { RefCell::new(Recent::new(SHARED_POLICIES)) };
        }
        policy.port_level_settings.shrink_to_fit();
        RECENT.with_borrow_mut(|recent| recent.shared(policy))
    }
}

/// How many distinct cluster policies [`ClusterPolicy::shared`] looks among.
pub const SHARED_POLICIES: usize = 8;

type SharedPlacement = std::sync::OnceLock<Arc<Placement>>;

impl Placement {
    /// [`Placement::default`] as one `Arc` the whole process shares.
    pub fn shared_default() -> Arc<Placement> {
        static DEFAULT: SharedPlacement = SharedPlacement::new();
        Self::unknown_locality(&DEFAULT, 0)
    }

    /// Where an endpoint no assignment placed is: priority 0 in the unknown locality with
    /// weight 1. One `Arc` the whole process shares.
    pub fn unplaced() -> Arc<Placement> {
        static UNPLACED: SharedPlacement = SharedPlacement::new();
        Self::unknown_locality(&UNPLACED, 1)
    }

    /// Priority 0 in the unknown locality with `locality_weight`, made once in `slot`.
    fn unknown_locality(slot: &SharedPlacement, locality_weight: u32) -> Arc<Placement> {
        slot.get_or_init(|| {
            Arc::new(Placement {
                locality_weight,
                ..Default::default()
            })
        })
        .clone()
    }
}
