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
    pub(super) source_labels: Option<&'a std::collections::BTreeMap<String, String>>,
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

    fn source_labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
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
