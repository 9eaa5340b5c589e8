use clap::Parser;

/// jemalloc: its `stats.allocated` is the overload manager's memory measure (overload.rs), and
/// freed memory counts as freed at once, so the overload actions turn off when pressure is gone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    if let Err(e) = waypoint::commands::cli::main_with(waypoint::commands::cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
