//! `%START_TIME%`: Envoy's default timestamp written from a per-thread cache of the current
//! second, and `START_TIME(fmt)` formats.

use std::cell::Cell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Timelike, Utc};

use super::render::push_u64_padded;

/// The longest `%Y-%m-%dT%H:%M:%S` prefix kept in the cache (years of 4 digits take 19 bytes).
const PREFIX_MAX: usize = 24;

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS` (length 0: none).
    static SECOND: Cell<(u64, [u8; PREFIX_MAX], u8)> = const { Cell::new((0, [0; PREFIX_MAX], 0)) };
}

/// Writes `t` as Envoy's default `%START_TIME%` (`%Y-%m-%dT%H:%M:%S%.3fZ`, UTC): the part up to
/// the second comes from a per-thread cache of the last second formatted, the milliseconds are
/// written as digits. No allocation once per second.
pub fn write_timestamp(t: SystemTime, out: &mut impl std::io::Write) {
    let full = |out: &mut dyn std::io::Write| {
        let dt: DateTime<Utc> = t.into();
        let _ = write!(out, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    };
    // Before 1970: not worth a cache.
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        return full(out);
    };
    let secs = since.as_secs();
    let (mut cached, mut prefix, mut len) = SECOND.with(Cell::get);
    if len == 0 || cached != secs {
        let Some(dt) = i64::try_from(secs)
            .ok()
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        else {
            return full(out);
        };
        prefix = [0; PREFIX_MAX];
        let mut cursor = std::io::Cursor::new(&mut prefix[..]);
        if write!(cursor, "{}", dt.format("%Y-%m-%dT%H:%M:%S")).is_err() {
            return full(out);
        }
        len = cursor.position() as u8;
        cached = secs;
        SECOND.with(|c| c.set((cached, prefix, len)));
    }
    let ms = since.subsec_millis();
    let tail = [
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ];
    let _ = out.write_all(&prefix[..usize::from(len)]);
    let _ = out.write_all(&tail);
}

/// The instant a `START_TIME(fmt)` renders: what Envoy's default format would have carried
/// (milliseconds), so that a typed start time and its text form render alike.
pub fn to_millis(t: SystemTime) -> DateTime<Utc> {
    let dt: DateTime<Utc> = t.into();
    let ms = dt.nanosecond() % 1_000_000_000 / 1_000_000;
    dt.with_nanosecond(ms * 1_000_000).unwrap_or(dt)
}

/// A `START_TIME(...)` format, split into chrono strftime runs and Envoy's own specifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeFormat(Vec<TimePiece>);

#[derive(Debug, Clone, PartialEq)]
enum TimePiece {
    /// A run of chrono strftime, validated at parse time.
    Chrono(String),
    /// `%Nf`: N fractional-second digits, no dot.
    Fraction(u8),
    /// `%ENS`: two-digit seconds, then a dot and N fractional digits when N > 0.
    SecondsFraction(u8),
}

/// A strftime run of a `START_TIME(...)` format that chrono cannot write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported time format {0:?}")]
pub struct UnsupportedTimeFormat(String);

impl TimeFormat {
    pub fn parse(fmt: &str) -> Result<Self, UnsupportedTimeFormat> {
        let mut pieces = Vec::new();
        let mut run = String::new();
        let mut rest = fmt;
        while let Some(at) = rest.find('%') {
            run.push_str(&rest[..at]);
            let spec = &rest[at + 1..];
            let b = spec.as_bytes();
            let (piece, used) = match b {
                [b'f', ..] => (Some(TimePiece::Fraction(9)), 1),
                [d @ b'1'..=b'9', b'f', ..] => (Some(TimePiece::Fraction(d - b'0')), 2),
                [b'E', d @ b'0'..=b'9', b'S', ..] => {
                    (Some(TimePiece::SecondsFraction(d - b'0')), 3)
                }
                [b'E', b'*', b'S', ..] => (Some(TimePiece::SecondsFraction(9)), 3),
                _ => (None, 0),
            };
            match piece {
                Some(p) => {
                    if !run.is_empty() {
                        pieces.push(TimePiece::Chrono(std::mem::take(&mut run)));
                    }
                    pieces.push(p);
                    rest = &spec[used..];
                }
                None => {
                    // Keep `%` and the character after it together, so `%%`, `%.3f`, `%-d`
                    // reach chrono whole.
                    run.push('%');
                    match spec.chars().next() {
                        Some(c) => {
                            run.push(c);
                            rest = &spec[c.len_utf8()..];
                        }
                        None => rest = spec,
                    }
                }
            }
        }
        run.push_str(rest);
        if !run.is_empty() {
            pieces.push(TimePiece::Chrono(run));
        }
        for p in &pieces {
            if let TimePiece::Chrono(s) = p {
                let bad = chrono::format::StrftimeItems::new(s)
                    .any(|i| matches!(i, chrono::format::Item::Error));
                if bad {
                    return Err(UnsupportedTimeFormat(s.clone()));
                }
            }
        }
        Ok(Self(pieces))
    }

    /// Writes `dt` in this format.
    pub fn write(&self, dt: DateTime<Utc>, out: &mut Vec<u8>) {
        let mut nanos = [0u8; 9];
        let mut n = dt.nanosecond() % 1_000_000_000;
        for d in nanos.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        for p in &self.0 {
            match p {
                TimePiece::Chrono(s) => {
                    // Validated when parsed; an error here would only cut the value short.
                    let _ = write!(out, "{}", dt.format(s));
                }
                TimePiece::Fraction(n) => out.extend_from_slice(&nanos[..usize::from(*n)]),
                TimePiece::SecondsFraction(n) => {
                    push_u64_padded(out, u64::from(dt.second()), 2);
                    if *n > 0 {
                        out.push(b'.');
                        out.extend_from_slice(&nanos[..usize::from(*n)]);
                    }
                }
            }
        }
    }
}
