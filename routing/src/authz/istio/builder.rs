//! The `Builder`: Istio rule fields → [`Expr`] trees, errors collected with their field.

use super::*;

impl Builder<'_> {
    pub(super) fn error(&mut self, field: String, message: impl Into<String>) {
        self.errors.push(SpecError {
            field,
            message: message.into(),
        });
    }

    /// A value in Istio's string syntax: `*`, `prefix*`, `*suffix` or exact; `*` elsewhere is
    /// not Istio's and is refused.
    fn string(&mut self, field: &str, v: &str) -> Option<StrMatch> {
        if v.is_empty() {
            self.error(field.into(), "empty value");
            return None;
        }
        let inner = v.strip_prefix('*').unwrap_or(v);
        let inner = inner.strip_suffix('*').unwrap_or(inner);
        if inner.contains('*') || (v.len() > 1 && v.starts_with('*') && v.ends_with('*')) {
            self.error(
                field.into(),
                format!("{v:?}: `*` is only allowed alone, as a prefix or as a suffix"),
            );
            return None;
        }
        Some(StrMatch::istio(v))
    }

    /// `values` of `field` as one OR-ed expression; `not` negates it.
    fn field(
        &mut self,
        at: &str,
        name: &str,
        values: &Values,
        not: bool,
        mut one: impl FnMut(&mut Self, &str, &str) -> Option<Expr>,
    ) -> Option<Expr> {
        let values = values.as_ref()?;
        let field = format!("{at}.{name}");
        if values.is_empty() {
            self.error(field, "must not be an empty list");
            return Some(Expr::Unknown(format!("{at}.{name} is empty")));
        }
        let parts: Vec<Expr> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| one(self, &format!("{field}[{i}]"), v))
            .collect();
        let any = Expr::or(parts);
        Some(if not { Expr::negate(any) } else { any })
    }

    fn str_test(&mut self, attr: Attr, field: &str, v: &str, ignore_case: bool) -> Option<Expr> {
        let m = self.string(field, v)?;
        Some(Expr::Test(attr, Matcher::Str { m, ignore_case }))
    }

    /// `principals` / `source.principal`: istiod matches `spiffe://` + value (a suffix value
    /// as is).
    fn principal(&mut self, field: &str, v: &str) -> Option<Expr> {
        let m = match self.string(field, v)? {
            StrMatch::Exact(s) => StrMatch::Exact(format!("spiffe://{s}")),
            StrMatch::Prefix(s) => StrMatch::Prefix(format!("spiffe://{s}")),
            other => other,
        };
        Some(Expr::Test(
            Attr::SourcePrincipal,
            Matcher::Str {
                m,
                ignore_case: false,
            },
        ))
    }

    /// `serviceAccounts` (Istio 1.25+): `SA` (the policy's namespace) or `NS/SA`, any trust
    /// domain (istiod `serviceAccountRegex`).
    fn service_account(&mut self, field: &str, v: &str) -> Option<Expr> {
        let (ns, sa) = v.split_once('/').unwrap_or((self.namespace, v));
        if ns.is_empty() || sa.is_empty() || sa.contains('/') || v.contains('*') {
            self.error(
                field.into(),
                format!("{v:?} is not SERVICE_ACCOUNT or NAMESPACE/SERVICE_ACCOUNT"),
            );
            return None;
        }
        let pattern = format!(
            "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
            regex_escape(ns),
            regex_escape(sa)
        );
        let m = StrMatch::Regex(MatchRegex::new(&pattern).ok()?);
        Some(Expr::Test(
            Attr::SourcePrincipal,
            Matcher::Str {
                m,
                ignore_case: false,
            },
        ))
    }

    fn cidr(&mut self, attr: Attr, field: &str, v: &str) -> Option<Expr> {
        match Cidr::parse(v) {
            Ok(c) => Some(Expr::Test(attr, Matcher::Cidr(c))),
            Err(e) => {
                self.error(field.into(), e.to_string());
                None
            }
        }
    }

    fn port(&mut self, field: &str, v: &str) -> Option<Expr> {
        match v.parse::<u16>() {
            Ok(p) => Some(Expr::Test(Attr::DestinationPort, Matcher::Port(p))),
            Err(_) => {
                self.error(
                    field.into(),
                    format!("{v:?} is not a port number (0-65535)"),
                );
                None
            }
        }
    }

    /// `hosts` (istiod `HostMatcher`): `:authority`, case-insensitive, `*` present; the port is
    /// part of the authority (`reviews` does not match `reviews:9080`).
    fn host(&mut self, field: &str, v: &str) -> Option<Expr> {
        self.header_test(Attr::Host, field, v, true)
    }

    /// Header-like values (istiod `HeaderMatcher`): as [`StrMatch::istio`], but `*` is
    /// `present_match`.
    fn header_test(&mut self, attr: Attr, field: &str, v: &str, ignore_case: bool) -> Option<Expr> {
        let m = match self.string(field, v)? {
            StrMatch::NonEmpty => StrMatch::Present,
            m => m,
        };
        Some(Expr::Test(attr, Matcher::Str { m, ignore_case }))
    }

    /// `paths`: Istio's string syntax, or a template with `{*}` (one segment) and `{**}` (any
    /// rest of the path).
    fn path(&mut self, field: &str, v: &str) -> Option<Expr> {
        if !v.starts_with('/') && !v.starts_with('*') {
            self.error(
                field.into(),
                format!("{v:?} must start with `/` (or be `*` or `*suffix`)"),
            );
            return None;
        }
        let m = if v.contains('{') {
            let mut pattern = String::new();
            let mut rest = v;
            while let Some(i) = rest.find('{') {
                pattern.push_str(&regex_escape(&rest[..i]));
                let tail = &rest[i..];
                if let Some(r) = tail.strip_prefix("{**}") {
                    pattern.push_str(".*");
                    rest = r;
                } else if let Some(r) = tail.strip_prefix("{*}") {
                    pattern.push_str("[^/]+");
                    rest = r;
                } else {
                    self.error(
                        field.into(),
                        format!("{v:?}: only {{*}} and {{**}} are path template operators"),
                    );
                    return None;
                }
            }
            pattern.push_str(&regex_escape(rest));
            match MatchRegex::new(&pattern) {
                Ok(r) => StrMatch::Regex(r),
                Err(e) => {
                    self.error(field.into(), e.to_string());
                    return None;
                }
            }
        } else {
            self.string(field, v)?
        };
        Some(Expr::Test(
            Attr::Path,
            Matcher::Str {
                m,
                ignore_case: false,
            },
        ))
    }

    pub(super) fn source(&mut self, at: &str, s: &SourceY) -> Expr {
        let mut parts = Vec::new();
        macro_rules! add {
            ($values:expr, $name:literal, $not:expr, $f:expr) => {
                if let Some(e) = self.field(at, $name, &$values, $not, $f) {
                    parts.push(e);
                }
            };
        }
        add!(s.principals, "principals", false, |b, f, v| b
            .principal(f, v));
        add!(s.not_principals, "notPrincipals", true, |b, f, v| b
            .principal(f, v));
        add!(
            s.request_principals,
            "requestPrincipals",
            false,
            |b, f, v| b.str_test(Attr::RequestPrincipal, f, v, false)
        );
        add!(
            s.not_request_principals,
            "notRequestPrincipals",
            true,
            |b, f, v| b.str_test(Attr::RequestPrincipal, f, v, false)
        );
        add!(s.namespaces, "namespaces", false, |b, f, v| b.str_test(
            Attr::SourceNamespace,
            f,
            v,
            false
        ));
        add!(s.not_namespaces, "notNamespaces", true, |b, f, v| b
            .str_test(Attr::SourceNamespace, f, v, false));
        add!(s.service_accounts, "serviceAccounts", false, |b, f, v| b
            .service_account(f, v));
        add!(
            s.not_service_accounts,
            "notServiceAccounts",
            true,
            |b, f, v| b.service_account(f, v)
        );
        add!(s.ip_blocks, "ipBlocks", false, |b, f, v| b.cidr(
            Attr::SourceIp,
            f,
            v
        ));
        add!(s.not_ip_blocks, "notIpBlocks", true, |b, f, v| b.cidr(
            Attr::SourceIp,
            f,
            v
        ));
        add!(s.remote_ip_blocks, "remoteIpBlocks", false, |b, f, v| b
            .cidr(Attr::RemoteIp, f, v));
        add!(
            s.not_remote_ip_blocks,
            "notRemoteIpBlocks",
            true,
            |b, f, v| b.cidr(Attr::RemoteIp, f, v)
        );
        if parts.is_empty() {
            self.error(at.into(), "must not be empty");
            return Expr::Unknown(format!("{at} is empty"));
        }
        Expr::and(parts)
    }

    pub(super) fn operation(&mut self, at: &str, o: &OperationY) -> Expr {
        let mut parts = Vec::new();
        macro_rules! add {
            ($values:expr, $name:literal, $not:expr, $f:expr) => {
                if let Some(e) = self.field(at, $name, &$values, $not, $f) {
                    parts.push(e);
                }
            };
        }
        add!(o.hosts, "hosts", false, |b, f, v| b.host(f, v));
        add!(o.not_hosts, "notHosts", true, |b, f, v| b.host(f, v));
        add!(o.ports, "ports", false, |b, f, v| b.port(f, v));
        add!(o.not_ports, "notPorts", true, |b, f, v| b.port(f, v));
        add!(o.methods, "methods", false, |b, f, v| b.str_test(
            Attr::Method,
            f,
            v,
            false
        ));
        add!(o.not_methods, "notMethods", true, |b, f, v| b.str_test(
            Attr::Method,
            f,
            v,
            false
        ));
        add!(o.paths, "paths", false, |b, f, v| b.path(f, v));
        add!(o.not_paths, "notPaths", true, |b, f, v| b.path(f, v));
        if parts.is_empty() {
            self.error(at.into(), "must not be empty");
            return Expr::Unknown(format!("{at} is empty"));
        }
        Expr::and(parts)
    }

    /// A `when` condition; the key decides the attribute (istiod's `validateAttribute`).
    pub(super) fn condition(&mut self, at: &str, c: &ConditionY) -> Expr {
        let Some(key) = c.key.as_deref() else {
            self.error(format!("{at}.key"), "missing required field");
            return Expr::Unknown(format!("{at} has no key"));
        };
        if c.values.is_none() && c.not_values.is_none() {
            self.error(at.into(), "values or notValues is required");
            return Expr::Unknown(format!("{at} has no values"));
        }
        type One<'k> = Box<dyn FnMut(&mut Builder<'_>, &str, &str) -> Option<Expr> + 'k>;
        let str_attr = |attr: Attr| -> One<'_> {
            Box::new(move |b: &mut Builder<'_>, f: &str, v: &str| {
                b.str_test(attr.clone(), f, v, false)
            })
        };
        let one: One<'_> = if let Some(name) = bracketed(key, "request.headers") {
            let attr = Attr::Header(name.to_ascii_lowercase());
            Box::new(move |b: &mut Builder<'_>, f: &str, v: &str| {
                b.header_test(attr.clone(), f, v, false)
            })
        } else if let Some(path) = claim_path(key) {
            str_attr(Attr::RequestClaim(path))
        } else {
            match key {
                "source.ip" => {
                    Box::new(|b: &mut Builder<'_>, f: &str, v: &str| b.cidr(Attr::SourceIp, f, v))
                }
                "remote.ip" => {
                    Box::new(|b: &mut Builder<'_>, f: &str, v: &str| b.cidr(Attr::RemoteIp, f, v))
                }
                "destination.ip" => Box::new(|b: &mut Builder<'_>, f: &str, v: &str| {
                    b.cidr(Attr::DestinationIp, f, v)
                }),
                "destination.port" => {
                    Box::new(|b: &mut Builder<'_>, f: &str, v: &str| b.port(f, v))
                }
                "source.namespace" => str_attr(Attr::SourceNamespace),
                "source.principal" => {
                    Box::new(|b: &mut Builder<'_>, f: &str, v: &str| b.principal(f, v))
                }
                "request.auth.principal" => str_attr(Attr::RequestPrincipal),
                "request.auth.audiences" => str_attr(Attr::RequestAudiences),
                "request.auth.presenter" => str_attr(Attr::RequestPresenter),
                "connection.sni" => str_attr(Attr::Sni),
                _ => {
                    self.error(
                        format!("{at}.key"),
                        format!("unknown attribute {key:?} (istiod: validateAttribute)"),
                    );
                    return Expr::Unknown(format!("attribute {key}"));
                }
            }
        };
        let one = std::cell::RefCell::new(one);
        let mut parts = Vec::new();
        if let Some(e) = self.field(at, "values", &c.values, false, |b, f, v| {
            (one.borrow_mut())(b, f, v)
        }) {
            parts.push(e);
        }
        if let Some(e) = self.field(at, "notValues", &c.not_values, true, |b, f, v| {
            (one.borrow_mut())(b, f, v)
        }) {
            parts.push(e);
        }
        Expr::and(parts)
    }
}

/// `NAME` of `prefix[NAME]`.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
        .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
}

/// `request.auth.claims[a][b]` → `["a", "b"]`.
fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while let Some(r) = rest.strip_prefix('[') {
        let end = r.find(']')?;
        if end == 0 {
            return None;
        }
        path.push(r[..end].to_string());
        rest = &r[end + 1..];
    }
    (rest.is_empty() && !path.is_empty()).then_some(path)
}

fn regex_escape(s: &str) -> String {
    regex::escape(s)
}
