use clap::Parser;

fn main() {
    if let Err(e) = waypoint::cli::main_with(waypoint::cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
