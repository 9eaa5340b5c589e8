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

/// The allocator's resident bytes before and after a trim, and the resident bytes of the clean
/// file mappings it released ([`clean_file_mappings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    pub before: u64,
    pub after: u64,
    pub code: u64,
}

/// How long no replaced snapshot may arrive before the trim: pushes that come back to back
/// (endpoint churn) are trimmed once, after the last, and between them the allocator reuses
/// what they free.
pub const QUIET: Duration = Duration::from_millis(200);

static TRIM: OnceLock<Trim> = OnceLock::new();

/// Trims done, the bytes they returned (`waypoint_memory_trims`,
/// `waypoint_memory_returned_bytes`), and the resident code and read-only data they took out of
/// the resident set (`waypoint_memory_code_released_bytes`, see [`clean_file_mappings`]).
pub static TRIMS: AtomicU64 = AtomicU64::new(0);
pub static RETURNED_BYTES: AtomicU64 = AtomicU64::new(0);
pub static CODE_RELEASED_BYTES: AtomicU64 = AtomicU64::new(0);

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
    CODE_RELEASED_BYTES.fetch_add(r.code, Ordering::Relaxed);
    tracing::debug!(
        before_mib = r.before >> 20,
        after_mib = r.after >> 20,
        code_kib = r.code >> 10,
        "memory: freed pages returned to the kernel after a config change"
    );
}

/// A mapping whose resident pages can be taken out of the resident set without changing what
/// the program sees ([`clean_file_mappings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanMapping {
    pub start: usize,
    pub len: usize,
    /// Its resident bytes when it was read.
    pub resident: u64,
}

/// The process's clean file-backed mappings with resident pages: code and read-only data of
/// the executable and its libraries. Start-up (argument and YAML parsing, TLS set-up) and a
/// large translation run code the data path never runs again, and the kernel maps code 64 KiB
/// around each page used: measured, 23 of a release binary's 30 MiB of RSS at 1 000 requests
/// a second were such pages (docs/benchmarks.md). The binary's trim takes them out of the
/// resident set (`MADV_DONTNEED`); the ones it runs come back on their next use, from the page
/// cache.
///
/// A mapping is listed only when it is private, cannot be written and holds no page of its own
/// (`Anonymous: 0`; a relocated read-only segment does, and is left alone). Dropping such a
/// mapping's pages only unmaps them: the next access maps the file's same bytes again.
#[cfg(target_os = "linux")]
pub fn clean_file_mappings() -> std::io::Result<Vec<CleanMapping>> {
    use procfs::process::{MMPermissions, MMapPath, Process};
    let maps = Process::myself()
        .and_then(|p| p.smaps())
        .map_err(std::io::Error::other)?;
    Ok(maps
        .into_iter()
        .filter(|m| {
            matches!(m.pathname, MMapPath::Path(_))
                && m.inode != 0
                && m.perms.contains(MMPermissions::PRIVATE)
                && !m.perms.contains(MMPermissions::WRITE)
                && m.extension.map.get("Anonymous") == Some(&0)
        })
        .filter_map(|m| {
            let resident = m.extension.map.get("Rss").copied().filter(|r| *r > 0)?;
            let (start, end) = m.address;
            Some(CleanMapping {
                start: usize::try_from(start).ok()?,
                len: usize::try_from(end.checked_sub(start)?).ok()?,
                resident,
            })
        })
        .collect())
}

/// Not Linux: none is listed.
#[cfg(not(target_os = "linux"))]
pub fn clean_file_mappings() -> std::io::Result<Vec<CleanMapping>> {
    Ok(Vec::new())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Pointers in a static: under PIE the dynamic linker writes their addresses into the
    /// read-only-after-relocation segment, whose pages are then the process's own.
    static RELOCATED: &[&str] = &["a", "relocated", "table"];

    fn listed(mappings: &[CleanMapping], addr: usize) -> bool {
        mappings
            .iter()
            .any(|m| (m.start..m.start + m.len).contains(&addr))
    }

    #[test]
    fn clean_mappings_are_the_code_and_never_written_pages() {
        let mappings = clean_file_mappings().expect("/proc/self/smaps");
        let code = clean_file_mappings as fn() -> _ as usize;
        assert!(listed(&mappings, code), "the code running: {mappings:?}");
        assert!(mappings.iter().all(|m| m.resident > 0 && m.len > 0));
        let table = std::hint::black_box(RELOCATED).as_ptr() as usize;
        assert!(
            !listed(&mappings, table),
            "a relocated (written) segment is not released: {table:#x} in {mappings:?}"
        );
        let data = std::hint::black_box(&TRIMS) as *const AtomicU64 as usize;
        assert!(!listed(&mappings, data), "writable data is not released");
    }
}
