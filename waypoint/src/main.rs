use clap::Parser;

/// jemalloc: its `stats.allocated` is the overload manager's memory measure (overload.rs), and
/// freed memory counts as freed at once, so the overload actions turn off when pressure is gone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    waypoint::control::memory::set_trim(return_freed_pages);
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

#[cfg(test)]
mod tests {
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
}
