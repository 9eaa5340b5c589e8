//! Cluster policies shared between the clusters that have equal ones.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use super::ClusterPolicy;

impl ClusterPolicy {
    /// `policy` to hold in a cluster, shared with the clusters built with an equal one: istiod
    /// gives every cluster of a waypoint the same timeouts, breakers and LB policy, so a mesh
    /// has a few distinct policies for thousands of clusters (448 bytes each). The last
    /// [`SHARED_POLICIES`] distinct ones this thread built are found by value (a snapshot is
    /// built on one thread); nothing is kept alive for them.
    pub fn shared(policy: ClusterPolicy) -> Arc<ClusterPolicy> {
        thread_local! {
            static RECENT: RefCell<Vec<Weak<ClusterPolicy>>> = const { RefCell::new(Vec::new()) };
        }
        RECENT.with_borrow_mut(|recent| {
            if let Some(found) = recent
                .iter()
                .filter_map(Weak::upgrade)
                .find(|p| **p == policy)
            {
                return found;
            }
            let policy = Arc::new(policy);
            recent.retain(|w| w.strong_count() > 0);
            if recent.len() >= SHARED_POLICIES {
                recent.remove(0);
            }
            recent.push(Arc::downgrade(&policy));
            policy
        })
    }
}

/// How many distinct cluster policies [`ClusterPolicy::shared`] looks among.
pub const SHARED_POLICIES: usize = 8;
