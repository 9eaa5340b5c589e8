//! What a compiled expression refers to: the attribute roots and attributes it names (each
//! checked against Envoy's), the headers it reads, and the syntax Envoy's runtime does not allow.

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue, MapExpr, StructExpr};

use super::attributes::{Side, REQUEST_OWN, RESPONSE_OWN};
use super::{FilterError, ENV};

/// Envoy's attribute roots the waypoint provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Root {
    Request,
    Response,
    Source,
    Destination,
    Connection,
    Upstream,
    Xds,
}

/// Envoy's TLS attributes, under `connection` and `upstream` (`context.cc`, `SslExtractorsValues`).
const TLS_FIELDS: &str = "tls_version subject_local_certificate subject_peer_certificate \
    uri_san_local_certificate uri_san_peer_certificate dns_san_local_certificate \
    dns_san_peer_certificate sha256_peer_certificate_digest peer_certificate";

impl Root {
    pub(super) fn parse(name: &str) -> Option<Root> {
        Some(match name {
            "request" => Root::Request,
            "response" => Root::Response,
            "source" => Root::Source,
            "destination" => Root::Destination,
            "connection" => Root::Connection,
            "upstream" => Root::Upstream,
            "xds" => Root::Xds,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Root::Request => "request",
            Root::Response => "response",
            Root::Source => "source",
            Root::Destination => "destination",
            Root::Connection => "connection",
            Root::Upstream => "upstream",
            Root::Xds => "xds",
        }
    }

    pub(super) fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether Envoy has attribute `field` under this root (`context.h`, `context.cc`).
    fn has_field(self, field: &str) -> bool {
        let own = match self {
            Root::Request => {
                "path url_path host scheme method headers headers_bytes referer useragent time id \
                 protocol query duration size total_size"
            }
            Root::Response => {
                "code code_details flags grpc_status headers headers_bytes trailers size \
                 total_size backend_latency"
            }
            Root::Source | Root::Destination => "address port",
            Root::Connection => {
                "id mtls requested_server_name termination_details transport_failure_reason"
            }
            Root::Upstream => {
                "address port local_address transport_failure_reason request_attempt_count \
                 cx_pool_ready_duration locality num_endpoints"
            }
            Root::Xds => {
                "node cluster_name cluster_metadata listener_direction listener_metadata \
                 route_name route_metadata virtual_host_name virtual_host_metadata \
                 upstream_host_metadata upstream_host_locality_metadata filter_chain_name"
            }
        };
        let tls = matches!(self, Root::Connection | Root::Upstream);
        own.split_whitespace().any(|f| f == field)
            || (tls && TLS_FIELDS.split_whitespace().any(|f| f == field))
    }
}

/// What a compiled expression refers to.
pub(super) struct References<'e> {
    pub(super) expression: &'e str,
    /// [`Root::bit`]s of the roots named.
    pub(super) roots: u8,
    pub(super) request_headers: Vec<String>,
    pub(super) response_headers: Vec<String>,
}

/// `root.field`, `has(root.field)` or `root['field']`, with `root` an attribute root.
fn attribute_of(e: &IdedExpr) -> Option<(Root, &str)> {
    match &e.expr {
        Expr::Select(s) => match &s.operand.expr {
            Expr::Ident(root) => Some((Root::parse(root)?, s.field.as_str())),
            _ => None,
        },
        Expr::Call(c) if c.func_name == operators::INDEX && c.target.is_none() => {
            match (&c.args.first()?.expr, string_literal(c.args.get(1)?)) {
                (Expr::Ident(root), Some(field)) => Some((Root::parse(root)?, field)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// `a.b.c` as written, for a chain of selections on an identifier.
fn qualified_name(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", qualified_name(&s.operand)?, s.field)),
        _ => None,
    }
}

impl References<'_> {
    pub(super) fn walk(&mut self, e: &IdedExpr) -> Result<(), FilterError> {
        if let Some((root, field)) = attribute_of(e) {
            self.attribute(root, field)?;
        }
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => self.ident(name),
            Expr::Select(s) => {
                // A type's qualified name, `google.protobuf.Duration`.
                if let Some(name) = qualified_name(e) {
                    if ENV.types().find_type(&name).is_some() {
                        return Ok(());
                    }
                }
                // `request.headers.x_b`, `has(request.headers.x)`: a header, named as a field.
                if let Some(side) = headers_of(&s.operand) {
                    self.header(side, &s.field);
                }
                self.walk(&s.operand)
            }
            Expr::Call(c) => {
                match (c.func_name.as_str(), c.args.as_slice()) {
                    (operators::INDEX, [map, key]) | (operators::IN, [key, map]) => {
                        if let (Some(side), Some(name)) = (headers_of(map), string_literal(key)) {
                            self.header(side, name);
                        }
                    }
                    _ => {}
                }
                if let Some(target) = &c.target {
                    self.walk(target)?;
                }
                c.args.iter().try_for_each(|a| self.walk(a))
            }
            Expr::Comprehension(_) => Err(FilterError::Unsupported {
                expression: self.expression.to_owned(),
                what: "comprehensions (all, exists, exists_one, map, filter) are disabled",
            }),
            Expr::List(l) => l.elements.iter().try_for_each(|a| self.walk(a)),
            Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
                entries.iter().try_for_each(|entry| match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        self.walk(&m.key)?;
                        self.walk(&m.value)
                    }
                    EntryExpr::StructField(f) => self.walk(&f.value),
                })
            }
        }
    }

    fn ident(&mut self, name: &str) -> Result<(), FilterError> {
        if let Some(root) = Root::parse(name) {
            self.roots |= root.bit();
            return Ok(());
        }
        // A type name, as in `type(x) == int`.
        if ENV.types().find_type(name).is_some() {
            return Ok(());
        }
        let hint = match name {
            "metadata" | "filter_state" | "upstream_filter_state" => {
                ", an Envoy attribute the waypoint does not provide"
            }
            _ => "",
        };
        Err(FilterError::UnknownRoot {
            expression: self.expression.to_owned(),
            name: name.to_owned(),
            hint,
        })
    }

    fn attribute(&mut self, root: Root, field: &str) -> Result<(), FilterError> {
        if !root.has_field(field) {
            return Err(FilterError::UnknownField {
                expression: self.expression.to_owned(),
                root: root.name(),
                field: field.to_owned(),
            });
        }
        // Attributes read from a header the line carries only when captured.
        match (root, field) {
            (Root::Request, "referer") => self.header(Side::Request, "referer"),
            (Root::Request, "scheme") => self.header(Side::Request, ":scheme"),
            (Root::Request, "size") => self.header(Side::Request, "content-length"),
            (Root::Response, "grpc_status") => self.header(Side::Response, "grpc-status"),
            _ => {}
        }
        Ok(())
    }

    /// A header the expression reads, unless the line has a field for it.
    fn header(&mut self, side: Side, name: &str) {
        let name = name.to_ascii_lowercase();
        let (own, list): (&[&str], _) = match side {
            Side::Request => (&REQUEST_OWN, &mut self.request_headers),
            Side::Response => (&RESPONSE_OWN, &mut self.response_headers),
        };
        if !own.contains(&name.as_str()) && !list.contains(&name) {
            list.push(name);
        }
    }
}

/// `request.headers` / `response.headers`: which side's.
fn headers_of(e: &IdedExpr) -> Option<Side> {
    match attribute_of(e)? {
        (Root::Request, "headers") => Some(Side::Request),
        (Root::Response, "headers") => Some(Side::Response),
        _ => None,
    }
}
