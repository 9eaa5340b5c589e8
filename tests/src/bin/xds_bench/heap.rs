//! A counting global allocator: live heap bytes and allocation counts, for the memory probe.
//! One relaxed atomic add per call on top of `System`; the push part does not notice it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Live bytes by size class (`size.next_power_of_two()`'s log2), for the probe's breakdown.
static BY_CLASS: [AtomicIsize; 48] = [const { AtomicIsize::new(0) }; 48];

fn class(size: usize) -> usize {
    (size.next_power_of_two().trailing_zeros() as usize).min(47)
}

/// Live blocks by size, in 64-byte steps below 8 KiB: which allocations a snapshot is made of.
static BY_STEP: [AtomicIsize; 128] = [const { AtomicIsize::new(0) }; 128];

fn add(size: usize, sign: isize) {
    LIVE.fetch_add(sign * size as isize, Relaxed);
    BY_CLASS[class(size)].fetch_add(sign * size as isize, Relaxed);
    if size < 8192 {
        BY_STEP[size / 64].fetch_add(sign, Relaxed);
    }
}

pub(super) fn by_step() -> Vec<isize> {
    BY_STEP.iter().map(|c| c.load(Relaxed)).collect()
}

pub(super) struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size(), 1);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size(), 1);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(layout.size(), -1);
            add(new_size, 1);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(layout.size(), -1);
    }
}

/// Live heap bytes (requested sizes, not the allocator's rounding) and allocations made so far.
#[derive(Clone, Copy)]
pub(super) struct Heap {
    pub(super) live: i64,
    pub(super) allocs: u64,
}

pub(super) fn heap() -> Heap {
    Heap {
        live: LIVE.load(Relaxed) as i64,
        allocs: ALLOCS.load(Relaxed),
    }
}

/// Live bytes per size class: entry `i` holds allocations of `2^(i-1) + 1 ..= 2^i` bytes.
pub(super) fn by_class() -> Vec<isize> {
    BY_CLASS.iter().map(|c| c.load(Relaxed)).collect()
}
