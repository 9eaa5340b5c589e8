//! What the proxy reads of a pingora request (for routing and hashing) and how route header
//! operations write to pingora headers.

use std::net::IpAddr;

use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use routing::RequestView;

/// What routing sees of a request: its headers, the service port it came in on, and its source
/// (namespace from the tunnel's SPIFFE id, labels of the source workload when the config knows it).
pub(super) struct HeaderView<'a> {
    pub(super) req: &'a RequestHeader,
    pub(super) port: u16,
    pub(super) source_namespace: Option<&'a str>,
    pub(super) source_labels: Option<&'a routing::Labels>,
}

impl RequestView for HeaderView<'_> {
    fn path(&self) -> &str {
        self.req.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        if name == ":authority" || name == "host" {
            return authority(self.req);
        }
        self.req.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn method(&self) -> &str {
        self.req.method.as_str()
    }

    fn scheme(&self) -> &str {
        self.req.uri.scheme_str().unwrap_or("http")
    }

    fn authority(&self) -> Option<&str> {
        authority(self.req)
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn source_labels(&self) -> Option<&routing::Labels> {
        self.source_labels
    }

    fn source_namespace(&self) -> Option<&str> {
        self.source_namespace
    }
}

pub(super) fn authority(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

pub(super) fn header_str<'a>(req: &'a RequestHeader, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A gRPC request by its content type, as Envoy tells (`Grpc::Common::hasGrpcContentType`):
/// `application/grpc`, or followed by `+` (`application/grpc+proto`) or `;`. gRPC-Web is not.
pub(super) fn is_grpc(req: &RequestHeader) -> bool {
    let ct = header_str(req, "content-type").as_bytes();
    const GRPC: &[u8] = b"application/grpc";
    ct.len() >= GRPC.len()
        && ct[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(ct.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// Envoy's `HeaderMap::byteSize()` of a request's headers: each name and value, the pseudo
/// headers included (`:method`, `:path`, `:authority`, `:scheme`; `host` is `:authority`), no
/// separators. `istio_request_bytes` is this plus the body (istio/proxy `istio_stats.cc`).
pub(super) fn request_header_bytes(req: &RequestHeader) -> u64 {
    let pseudo = ":method".len()
        + req.method.as_str().len()
        + ":path".len()
        + req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + ":authority".len()
        + authority(req).map_or(0, str::len)
        + ":scheme".len()
        + req.uri.scheme_str().map_or("http".len(), str::len);
    let rest: usize = req
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    (pseudo + rest) as u64
}

/// [`request_header_bytes`] of a response: `:status` and its three digits, and each header.
pub(super) fn response_header_bytes(resp: &pingora_http::ResponseHeader) -> u64 {
    let rest: usize = resp
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    (":status".len() + 3 + rest) as u64
}

/// The headers an access log template asks for, by lowercase name.
pub(super) fn capture(headers: &http::HeaderMap, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| {
            let v = headers.get(n.as_str())?.to_str().ok()?;
            Some((n.clone(), v.to_string()))
        })
        .collect()
}

pub(super) fn status_error(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// What kind of failure an error after connecting is, for `retry_on`; `None` for errors no
/// `retry_on` word covers.
pub(super) fn retry_failure(e: &Error) -> Option<routing::RetryFailure> {
    use ErrorType::*;
    let refused = e
        .root_cause()
        .downcast_ref::<h2::Error>()
        .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM));
    match e.etype() {
        _ if refused => Some(routing::RetryFailure::RefusedStream),
        ReadTimedout | WriteTimedout => Some(routing::RetryFailure::Timeout),
        ReadError | WriteError | ConnectionClosed | H2Error => Some(routing::RetryFailure::Reset),
        _ => None,
    }
}

/// Route header operations applied to a pingora request or response header (the two types have
/// the same inherent methods but no common trait).
macro_rules! header_sink {
    ($name:ident, $header:ty) => {
        pub(super) struct $name<'a>(pub(super) &'a mut $header);

        impl routing::HeaderSink for $name<'_> {
            fn set_header(&mut self, name: &str, value: &str) {
                let _ = self.0.insert_header(name.to_string(), value);
            }

            fn append_header(&mut self, name: &str, value: &str) {
                let _ = self.0.append_header(name.to_string(), value);
            }

            fn remove_header(&mut self, name: &str) {
                let _ = self.0.remove_header(name);
            }
        }
    };
}

header_sink!(RequestSink, RequestHeader);
header_sink!(ResponseSink, pingora_http::ResponseHeader);

/// What consistent hashing reads of a request.
pub(super) struct HashView<'a> {
    pub(super) req: &'a RequestHeader,
    pub(super) source: IpAddr,
}

impl routing::HashRequest for HashView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.req.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn path(&self) -> &str {
        self.req.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn source_ip(&self) -> Option<IpAddr> {
        Some(self.source)
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    #[test]
    fn grpc_by_content_type_as_envoy() {
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("", false),
        ] {
            let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
            if !ct.is_empty() {
                r.insert_header("content-type", ct).unwrap();
            }
            assert_eq!(is_grpc(&r), grpc, "{ct:?}");
        }
    }

    #[test]
    fn header_bytes_count_names_values_and_pseudo_headers() {
        let mut r = RequestHeader::build("GET", b"/ratings/1", None).unwrap();
        r.insert_header("host", "ratings:9080").unwrap();
        r.insert_header("x-a", "bc").unwrap();
        // :method GET, :path /ratings/1, :authority ratings:9080, :scheme http, x-a bc.
        assert_eq!(
            request_header_bytes(&r),
            7 + 3 + 5 + 10 + 10 + 12 + 7 + 4 + 3 + 2
        );
        let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", "12").unwrap();
        assert_eq!(response_header_bytes(&resp), 7 + 3 + 14 + 2);
    }
}
