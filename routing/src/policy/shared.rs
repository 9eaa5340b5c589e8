//! Cluster policies shared between the clusters that have equal ones.

use std::cell::RefCell;
use std::sync::Arc;

use crate::recent::Recent;

use super::{ClusterPolicy, TrafficPolicy};

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
