//! Freed pages go back to the kernel once a config change has settled. Translating a large
//! mesh's state and replacing its snapshot free tens of MiB at once (the translation's scratch,
//! the old snapshot), and jemalloc keeps freed pages resident for reuse: it returns them only
//! as later allocations in the same arena let its decay clock run, and the config thread's
//! arena sees no allocations until the next push. So without a trim the resident set stays at
//! the peak of the last change for as long as the config does not change.
//!
//! The trim itself belongs to the binary, whose allocator it is ([`set_trim`], from `main.rs`);
//! without one (tests, another allocator) nothing is trimmed. The same trim takes the clean code
//! pages out of the resident set ([`clean_file_mappings`]) when they have grown since it last
//! did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Returns the allocator's freed pages to the kernel; the resident bytes before and after, or
/// `None` when the allocator could not do it.
pub type Trim = fn() -> Option<Resident>;

/// Takes the [`clean_file_mappings`]' pages out of the resident set; their resident bytes.
pub type Release = fn() -> u64;

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

/// How much the resident file pages must have grown since the last release for a trim to
/// release them again. A release reads /proc/self/smaps, which walks the page tables of the
/// whole process (about 5 ms at 300 MiB): not worth it when next to nothing came back (an idle
/// waypoint whose config changes). Under traffic the data path's code comes back after each
/// release, and each trim releases again what the config change ran (measured: after the
/// pushes at 1 000 services, 42 MiB of RSS against 54 with a rule that kept what came back).
pub const CODE_GROWTH: u64 = 1 << 20;

static TRIM: OnceLock<(Trim, Release)> = OnceLock::new();

/// Trims done, the bytes they returned (`waypoint_memory_trims`,
/// `waypoint_memory_returned_bytes`), and the resident code and read-only data they took out of
/// the resident set (`waypoint_memory_code_released_bytes`, see [`clean_file_mappings`]).
pub static TRIMS: AtomicU64 = AtomicU64::new(0);
pub static RETURNED_BYTES: AtomicU64 = AtomicU64::new(0);
pub static CODE_RELEASED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The resident file pages after the last release (`u64::MAX`: none yet).
static FILE_AFTER_RELEASE: AtomicU64 = AtomicU64::new(u64::MAX);

/// The binary's trim and code release; the first ones set stay.
pub fn set_trim(trim: Trim, release: Release) {
    let _ = TRIM.set((trim, release));
}

/// Trim now, if the binary set a trim; counted and logged at debug level.
pub(crate) fn trim() {
    let Some((trim, release)) = TRIM.get() else {
        return;
    };
    let Some(r) = trim() else {
        tracing::debug!("memory: the allocator could not return its freed pages");
        return;
    };
    // Trims run on one thread (the retiring thread's), one after the other.
    let code = match resident_file_pages() {
        Some(now) if release_due(FILE_AFTER_RELEASE.load(Ordering::Relaxed), now) => {
            let code = release();
            let after = resident_file_pages().unwrap_or(now);
            FILE_AFTER_RELEASE.store(after, Ordering::Relaxed);
            code
        }
        _ => 0,
    };
    // Counted once whole: a trim seen in the metrics has also released what it released.
    CODE_RELEASED_BYTES.fetch_add(code, Ordering::Relaxed);
    RETURNED_BYTES.fetch_add(r.before.saturating_sub(r.after), Ordering::Relaxed);
    TRIMS.fetch_add(1, Ordering::Release);
    tracing::debug!(
        before_mib = r.before >> 20,
        after_mib = r.after >> 20,
        code_kib = code >> 10,
        "memory: freed pages returned to the kernel after a config change"
    );
}

/// Whether the resident file pages, `now`, grew enough since `last` (after the last release,
/// `u64::MAX` before the first) for another release.
fn release_due(last: u64, now: u64) -> bool {
    last == u64::MAX || now >= last.saturating_add(CODE_GROWTH)
}

/// The process's resident file pages (`RssFile`), in bytes.
fn resident_file_pages() -> Option<u64> {
    let status = procfs::process::Process::myself().ok()?.status().ok()?;
    status.rssfile.map(|kib| kib << 10)
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

/// The files mapped when the process started: the executable and the libraries it was linked
/// against (device and inode). Those are never unloaded, so their addresses never map anything
/// else while the process runs; a library loaded later could be unloaded and its addresses
/// reused between a listing of the mappings and the release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedFiles(Vec<((i32, i32), u64)>);

impl LoadedFiles {
    /// The files mapped now; called at the start of `main`, before anything can load a library.
    #[cfg(target_os = "linux")]
    pub fn now() -> std::io::Result<Self> {
        let maps = procfs::process::Process::myself()
            .and_then(|p| p.maps())
            .map_err(std::io::Error::other)?;
        let mut files: Vec<_> = maps
            .into_iter()
            .filter(|m| matches!(m.pathname, procfs::process::MMapPath::Path(_)) && m.inode != 0)
            .map(|m| (m.dev, m.inode))
            .collect();
        files.sort_unstable();
        files.dedup();
        Ok(Self(files))
    }

    /// The executable alone.
    #[cfg(target_os = "linux")]
    pub fn executable() -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let exe = std::fs::metadata("/proc/self/exe")?;
        let dev = (libc::major(exe.dev()) as i32, libc::minor(exe.dev()) as i32);
        Ok(Self(vec![(dev, exe.ino())]))
    }

    /// Not Linux: none.
    #[cfg(not(target_os = "linux"))]
    pub fn now() -> std::io::Result<Self> {
        Ok(Self::default())
    }

    /// Not Linux: none.
    #[cfg(not(target_os = "linux"))]
    pub fn executable() -> std::io::Result<Self> {
        Ok(Self::default())
    }

    #[cfg(target_os = "linux")]
    fn holds(&self, dev: (i32, i32), inode: u64) -> bool {
        self.0.binary_search(&(dev, inode)).is_ok()
    }
}

/// The clean mappings with resident pages of `files`: the code and read-only data of the
/// executable and of the libraries it was linked against. Start-up (argument and YAML parsing,
/// TLS set-up) and a large translation run code the data path never runs again, and the kernel
/// maps code 64 KiB around each page used: measured, 23 of a release binary's 30 MiB of RSS at
/// 1 000 requests a second were such pages (docs/benchmarks.md). The binary's trim takes them out
/// of the resident set (`MADV_DONTNEED`); the ones it runs come back on their next use, from
/// the page cache.
///
/// A mapping is listed only when it maps one of `files`, is private, cannot be written and holds
/// no page of its own (`Anonymous: 0`; a relocated read-only segment does, and is left alone).
/// Dropping such a mapping's pages only unmaps them: the next access maps the file's same bytes
/// again.
#[cfg(target_os = "linux")]
pub fn clean_file_mappings(files: &LoadedFiles) -> std::io::Result<Vec<CleanMapping>> {
    use procfs::process::{MMPermissions, MMapPath, Process};
    let maps = Process::myself()
        .and_then(|p| p.smaps())
        .map_err(std::io::Error::other)?;
    Ok(maps
        .into_iter()
        .filter(|m| {
            matches!(m.pathname, MMapPath::Path(_))
                && files.holds(m.dev, m.inode)
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
pub fn clean_file_mappings(_: &LoadedFiles) -> std::io::Result<Vec<CleanMapping>> {
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
    fn code_is_released_first_then_once_some_came_back() {
        const MIB: u64 = 1 << 20;
        assert!(release_due(u64::MAX, 0), "the first trim releases");
        assert!(!release_due(10 * MIB, 10 * MIB), "nothing came back");
        assert!(!release_due(10 * MIB, 11 * MIB - 1));
        assert!(release_due(10 * MIB, 11 * MIB));
        assert!(!release_due(10 * MIB, MIB), "shrunk");
        assert!(resident_file_pages().is_some_and(|b| b > 0));
    }

    #[test]
    fn clean_mappings_are_the_code_and_never_written_pages() {
        let exe = LoadedFiles::executable().unwrap();
        let mappings = clean_file_mappings(&exe).expect("/proc/self/smaps");
        let code = clean_file_mappings as fn(_) -> _ as usize;
        assert!(listed(&mappings, code), "the code running: {mappings:?}");
        assert!(mappings.iter().all(|m| m.resident > 0 && m.len > 0));
        let table = std::hint::black_box(RELOCATED).as_ptr() as usize;
        assert!(
            !listed(&mappings, table),
            "a relocated (written) segment is not released: {table:#x} in {mappings:?}"
        );
        let data = std::hint::black_box(&TRIMS) as *const AtomicU64 as usize;
        assert!(!listed(&mappings, data), "writable data is not released");
        let library = std::hint::black_box(libc::getpid as unsafe extern "C" fn() -> _) as usize;
        assert!(!listed(&mappings, library), "not a file of the set");
        // The libraries loaded with the executable: libc's code is released too.
        let loaded = LoadedFiles::now().unwrap();
        assert!(loaded.holds(exe.0[0].0, exe.0[0].1));
        let mappings = clean_file_mappings(&loaded).unwrap();
        assert!(listed(&mappings, library), "libc: {mappings:?}");
        assert!(!listed(&mappings, table) && !listed(&mappings, data));
    }
}
