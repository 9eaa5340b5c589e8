use clap::Parser;

/// jemalloc: its `stats.allocated` is the overload manager's memory measure (overload.rs), and
/// freed memory counts as freed at once, so the overload actions turn off when pressure is gone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads at its first allocation (`_RJEM_MALLOC_CONF` in the
/// environment still adds to them). `tcache_max:65536`: pingora reads each HTTP/1 body through
/// a 64 KiB buffer (`BODY_BUFFER_SIZE`), allocated and freed once per proxied request; above
/// jemalloc's default thread-cache limit (32 KiB) each of those went to the arena, under its
/// lock: 2 040 instructions a `malloc` with its callees under callgrind, a quarter of all
/// `malloc` work per request (docs/benchmarks.md, "The transport's floor; per-request copies
/// and allocations").
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: MallocConf = MallocConf(c"tcache_max:65536".as_ptr());

/// A C string pointer, as jemalloc declares `malloc_conf` (`const char *`).
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a `'static` C string literal, never written.
unsafe impl Sync for MallocConf {}

/// The files mapped when `main` began: the executable and the libraries it was linked against,
/// whose clean pages the code release may take out of the resident set.
static LOADED: std::sync::OnceLock<waypoint::control::memory::LoadedFiles> =
    std::sync::OnceLock::new();

fn main() {
    if let Ok(files) = waypoint::control::memory::LoadedFiles::now() {
        let _ = LOADED.set(files);
    }
    waypoint::control::memory::set_trim(return_freed_pages, release_code_pages);
    if let Err(e) = waypoint::commands::cli::main_with(waypoint::commands::cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// jemalloc's resident bytes (metadata, live allocations and freed pages it keeps).
fn resident() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::resident::read()
        .ok()
        .map(|r| r as u64)
}

/// Every arena's freed pages back to the kernel (`arena.<MALLCTL_ARENAS_ALL>.purge`), for
/// `waypoint::control::memory` after a config change.
fn return_freed_pages() -> Option<waypoint::control::memory::Resident> {
    let before = resident()?;
    // SAFETY: `arena.4096.purge` (4096 is MALLCTL_ARENAS_ALL) reads and writes nothing; jemalloc
    // requires exactly these null pointers and zero length for it.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(())?;
    Some(waypoint::control::memory::Resident {
        before,
        after: resident()?,
    })
}

/// Takes the clean pages of the executable and the libraries loaded with it (code and read-only
/// data no one ran since start-up or the last release) out of the resident set; the resident
/// bytes of the mappings released.
fn release_code_pages() -> u64 {
    use waypoint::control::memory::{clean_file_mappings, LoadedFiles};
    let files = match LOADED.get() {
        Some(files) => clean_file_mappings(files),
        None => LoadedFiles::executable().and_then(|exe| clean_file_mappings(&exe)),
    };
    let Ok(mappings) = files else {
        return 0;
    };
    mappings
        .iter()
        .filter(|m| {
            // SAFETY: `m` is one whole mapping, as /proc/self/smaps listed it, of a file mapped
            // before `main` (never unloaded, so never unmapped while the process runs): private,
            // not writable, with no anonymous (written) page. For such a mapping MADV_DONTNEED
            // only unmaps its pages, and the next access maps the file's same bytes again: no
            // memory the program can observe changes.
            unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) == 0 }
        })
        .map(|m| m.resident)
        .sum()
}

#[cfg(test)]
mod tests {
    /// The clean pages of the executable and its libraries leave the resident set, and the
    /// program runs on (the pages it runs are mapped again).
    #[test]
    fn code_pages_leave_the_resident_set() {
        let rss_file = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                << 10
        };
        let before = rss_file();
        let released = super::release_code_pages();
        let after = rss_file();
        assert!(released > 0, "nothing released");
        assert!(
            after + released / 2 < before + (1 << 20),
            "RssFile {before} -> {after} bytes, {released} released"
        );
        let again = super::release_code_pages();
        assert!(again < released, "{again} then {released}");
    }

    /// Pages freed by a large config change's scratch stay resident until the trim returns them.
    #[test]
    fn the_trim_returns_freed_pages_to_the_kernel() {
        const MIB: u64 = 1 << 20;
        // 64 MiB in 64 KiB blocks (jemalloc's large size classes, from its arenas' extents),
        // each written so that its pages are resident, then freed.
        let blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8 | 1; 64 << 10]).collect();
        let touched: u64 = blocks.iter().map(|b| u64::from(b[b.len() - 1])).sum();
        assert!(touched > 0);
        let live = super::resident().expect("jemalloc statistics");
        drop(blocks);
        let r = super::return_freed_pages().expect("the purge");
        assert!(
            r.before + 32 * MIB > live,
            "freed pages are still resident before the trim: {r:?}, {live} while live"
        );
        assert!(
            r.before >= r.after + 32 * MIB,
            "the trim returned less than half of 64 MiB freed: {r:?}"
        );
    }

    /// The binary's jemalloc options are in force: a 64 KiB allocation (pingora's body buffer)
    /// is served from the thread's cache.
    #[test]
    fn jemalloc_caches_pingoras_body_buffers_per_thread() {
        // SAFETY: `opt.tcache_max` is a `size_t`, the type read.
        let max: usize = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.tcache_max\0") }.unwrap();
        assert!(max >= 64 << 10, "opt.tcache_max is {max}");
    }

    /// Answering `/memory` allocates next to nothing: it decoded the embedded Envoy descriptors
    /// (about 11 MiB of heap) for each answer, and the freed pages stayed resident.
    #[test]
    fn answering_memory_allocates_next_to_nothing() {
        let allocated = tikv_jemalloc_ctl::thread::allocatedp::read().expect("jemalloc");
        let _ = waypoint::telemetry::envoy_admin::memory();
        let before = allocated.get();
        let json = waypoint::telemetry::envoy_admin::memory();
        let bytes = allocated.get() - before;
        assert!(json["allocated"].as_str().is_some(), "{json}");
        assert!(
            bytes < 64 << 10,
            "one /memory answer allocated {bytes} bytes"
        );
    }
}
