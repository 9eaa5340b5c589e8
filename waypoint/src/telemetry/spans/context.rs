//! Trace context in request headers: W3C Trace Context (`traceparent`, `tracestate`) and B3
//! (the `x-b3-*` headers, or the single `b3` header), read from the request and written to the
//! upstream request with the waypoint's span as the parent.
//!
//! Formats: W3C `traceparent` `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (bit 0:
//! sampled); B3 as openzipkin/b3-propagation specifies it (64- or 128-bit trace ids,
//! `x-b3-sampled: 1|0|true|false`, `x-b3-flags: 1` = debug, which samples; single header
//! `b3: {trace}-{span}[-{sampled}[-{parent}]]` or `b3: 0|1|d`).

use pingora_http::RequestHeader;

/// What the request's headers say about the trace it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's trace and span, when the headers carry them.
    pub parent: Option<Parent>,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A B3 trace id: 16 hex digits (64 bits, left-padded to 128) or 32.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex::<16>(s),
        16 => {
            let low = hex::<8>(s)?;
            let mut out = [0u8; 16];
            out[8..].copy_from_slice(&low);
            Some(out)
        }
        _ => None,
    }
}

fn nonzero(id: &[u8]) -> bool {
    id.iter().any(|&b| b != 0)
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `00-<trace>-<span>-<flags>`; any other version is read by its first four fields, as the
/// W3C spec asks of a newer version.
fn traceparent(v: &str) -> Option<(Parent, bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id = hex::<16>(trace).filter(|t| nonzero(t))?;
    let span_id = hex::<8>(span).filter(|s| nonzero(s))?;
    let flags = hex::<1>(flags)?[0];
    Some((Parent { trace_id, span_id }, flags & 1 == 1))
}

impl Incoming {
    /// W3C first (Envoy's OpenTelemetry tracer reads it), then B3's multi headers, then the
    /// single `b3` header. Malformed headers count as absent.
    pub fn read(req: &RequestHeader) -> Self {
        if let Some((parent, sampled)) = header(req, "traceparent").and_then(traceparent) {
            return Self {
                parent: Some(parent),
                sampled: Some(sampled),
            };
        }
        let flags_debug = header(req, "x-b3-flags") == Some("1");
        let sampled = if flags_debug {
            Some(true)
        } else {
            header(req, "x-b3-sampled").and_then(b3_sampled)
        };
        let parent = match (header(req, "x-b3-traceid"), header(req, "x-b3-spanid")) {
            (Some(t), Some(s)) => b3_trace_id(t)
                .filter(|t| nonzero(t))
                .zip(hex::<8>(s).filter(|s| nonzero(s)))
                .map(|(trace_id, span_id)| Parent { trace_id, span_id }),
            _ => None,
        };
        if parent.is_some() || sampled.is_some() {
            return Self { parent, sampled };
        }
        if let Some(b3) = header(req, "b3") {
            let mut f = b3.trim().split('-');
            let first = f.next().unwrap_or_default();
            let Some(second) = f.next() else {
                return Self {
                    parent: None,
                    sampled: b3_sampled(first),
                };
            };
            let parent = b3_trace_id(first)
                .filter(|t| nonzero(t))
                .zip(hex::<8>(second).filter(|s| nonzero(s)))
                .map(|(trace_id, span_id)| Parent { trace_id, span_id });
            return Self {
                parent,
                sampled: f.next().and_then(b3_sampled),
            };
        }
        Self {
            parent: None,
            sampled: None,
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Writes the waypoint's span as the parent of the upstream request: W3C `traceparent` (the
/// caller's `tracestate` passes through) and the B3 headers, all sampled. A single `b3`
/// header is rewritten in the same form.
pub fn inject(
    upstream: &mut RequestHeader,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
) {
    let (trace, span) = (to_hex(&trace_id), to_hex(&span_id));
    let set = |upstream: &mut RequestHeader, name: &'static str, value: String| {
        if let Err(e) = upstream.insert_header(name, value) {
            tracing::debug!(header = name, error = %e, "trace header not set");
        }
    };
    set(upstream, "traceparent", format!("00-{trace}-{span}-01"));
    set(upstream, "x-b3-traceid", trace.clone());
    set(upstream, "x-b3-spanid", span.clone());
    set(upstream, "x-b3-sampled", "1".to_string());
    match parent {
        Some(p) => set(upstream, "x-b3-parentspanid", to_hex(&p)),
        None => {
            upstream.remove_header("x-b3-parentspanid");
        }
    }
    upstream.remove_header("x-b3-flags");
    if upstream.headers.contains_key("b3") {
        let single = match parent {
            Some(p) => format!("{trace}-{span}-1-{}", to_hex(&p)),
            None => format!("{trace}-{span}-1"),
        };
        set(upstream, "b3", single);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn w3c_parent_and_flags() {
        let i = Incoming::read(&req(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]));
        let p = i.parent.unwrap();
        assert_eq!(to_hex(&p.trace_id), TRACE);
        assert_eq!(to_hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(i.sampled, Some(true));
        let i = Incoming::read(&req(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]));
        assert_eq!(i.sampled, Some(false));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            let i = Incoming::read(&req(&[("traceparent", bad)]));
            assert_eq!(i.parent, None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_and_single() {
        let i = Incoming::read(&req(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ]));
        let p = i.parent.unwrap();
        assert_eq!(to_hex(&p.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(i.sampled, Some(true));
        let i = Incoming::read(&req(&[("x-b3-flags", "1")]));
        assert_eq!((i.parent, i.sampled), (None, Some(true)), "debug samples");
        let i = Incoming::read(&req(&[(
            "b3",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0-05e3ac9a4f6e3b90",
        )]));
        assert_eq!(to_hex(&i.parent.unwrap().trace_id), TRACE);
        assert_eq!(i.sampled, Some(false));
        assert_eq!(Incoming::read(&req(&[("b3", "0")])).sampled, Some(false));
        let none = Incoming::read(&req(&[]));
        assert_eq!((none.parent, none.sampled), (None, None));
    }

    #[test]
    fn inject_writes_both_formats_with_the_span_as_parent() {
        let mut r = req(&[
            ("tracestate", "vendor=x"),
            ("x-b3-flags", "1"),
            ("b3", "whatever"),
        ]);
        let trace = hex::<16>(TRACE).unwrap();
        inject(&mut r, trace, [1, 2, 3, 4, 5, 6, 7, 8], Some([9; 8]));
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h("traceparent").unwrap(),
            format!("00-{TRACE}-0102030405060708-01")
        );
        assert_eq!(h("tracestate").unwrap(), "vendor=x");
        assert_eq!(h("x-b3-traceid").unwrap(), TRACE);
        assert_eq!(h("x-b3-spanid").unwrap(), "0102030405060708");
        assert_eq!(h("x-b3-parentspanid").unwrap(), "0909090909090909");
        assert_eq!(h("x-b3-sampled").unwrap(), "1");
        assert_eq!(h("x-b3-flags"), None);
        assert_eq!(
            h("b3").unwrap(),
            format!("{TRACE}-0102030405060708-1-0909090909090909")
        );
    }
}
