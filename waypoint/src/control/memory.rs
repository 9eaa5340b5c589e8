//! Freed pages go back to the kernel once a config change has settled. Translating a large
//! mesh's state and replacing its snapshot free tens of MiB at once (the translation's scratch,
//! the old snapshot), and jemalloc keeps freed pages resident for reuse: it returns them only
//! as later allocations in the same arena let its decay clock run, and the config thread's
//! arena sees no allocations until the next push. So without a trim the resident set stays at
//! the peak of the last change for as long as the config does not change.
//!
//! The trim itself belongs to the binary, whose allocator it is ([`set_trim`], from `main.rs`);
//! without one (tests, another allocator) nothing is trimmed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Returns the allocator's freed pages to the kernel; the resident bytes before and after, or
/// `None` when the allocator could not do it.
pub type Trim = fn() -> Option<Resident>;

/// The allocator's resident bytes before and after a trim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    pub before: u64,
    pub after: u64,
}

/// How long no replaced snapshot may arrive before the trim: pushes that come back to back
/// (endpoint churn) are trimmed once, after the last, and between them the allocator reuses
/// what they free.
pub const QUIET: Duration = Duration::from_millis(200);

static TRIM: OnceLock<Trim> = OnceLock::new();

/// Trims done, and the bytes they returned (`waypoint_memory_trims`,
/// `waypoint_memory_returned_bytes`).
pub static TRIMS: AtomicU64 = AtomicU64::new(0);
pub static RETURNED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The binary's trim; the first one set stays.
pub fn set_trim(trim: Trim) {
    let _ = TRIM.set(trim);
}

/// Trim now, if the binary set a trim; counted and logged at debug level.
pub(crate) fn trim() {
    let Some(trim) = TRIM.get() else { return };
    let Some(r) = trim() else {
        tracing::debug!("memory: the allocator could not return its freed pages");
        return;
    };
    let returned = r.before.saturating_sub(r.after);
    TRIMS.fetch_add(1, Ordering::Relaxed);
    RETURNED_BYTES.fetch_add(returned, Ordering::Relaxed);
    tracing::debug!(
        before_mib = r.before >> 20,
        after_mib = r.after >> 20,
        "memory: freed pages returned to the kernel after a config change"
    );
}
