//! What the commands print on stdout. `println!` panics when stdout is closed (`waypoint
//! translate FILE | head -1`); these writers end the process quietly instead: the reader has
//! gone, so nobody wants the rest. Any other write error ends it with exit 1 and the reason.

use std::fmt;
use std::io::{self, Write};

/// Write `text` to stdout and flush it.
pub fn write(text: impl fmt::Display) {
    let mut out = io::stdout().lock();
    if let Err(e) = write!(out, "{text}").and_then(|()| out.flush()) {
        closed(e)
    }
}

/// Write raw bytes (a response body) to stdout and flush them.
pub fn bytes(data: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
        closed(e)
    }
}

/// Write `text` and a newline to stdout.
pub fn line(text: impl fmt::Display) {
    write(format_args!("{text}\n"))
}

fn closed(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0)
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1)
}

/// `println!` for command output: see the module docs.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::commands::output::line("")
    };
    ($($arg:tt)*) => {
        $crate::commands::output::line(format_args!($($arg)*))
    };
}
