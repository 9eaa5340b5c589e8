//! Envoy RBAC (`envoy.config.rbac.v3.RBAC`, as istiod fills the
//! `envoy.filters.http.rbac` and `envoy.filters.network.rbac` filters of a
//! waypoint's `main_internal` chains) → [`crate::authz`] policies.
//!
//! istiod (`pilot/pkg/security/authz/builder/builder.go`, `model/*.go`) names
//! each RBAC policy `ns[NS]-policy[NAME]-rule[I]` (CUSTOM ones with an
//! `istio-ext-authz[-<provider>]-` prefix): one per AuthorizationPolicy rule.
//! The keys are grouped back into one [`Policy`] per (NS, NAME), rules ordered
//! by I; the rule name is the key verbatim, so a denial reports
//! `rbac_access_denied_matched_policy[<key>]` as Envoy does.
//!
//! Every Permission and Principal kind istiod emits is translated exactly;
//! anything else (CEL conditions, custom matchers, other filter-state keys,
//! metadata of other filters, …) becomes [`Expr::Unknown`] with a warning
//! naming the chain, the policy key and the construct: unknown makes an ALLOW
//! rule not match and a DENY/CUSTOM rule match, so it never fails open.
//!
//! JWT claims: istiod matches `request.auth.*` as dynamic metadata of
//! `envoy.filters.http.jwt_authn` at path `payload, <claim…>`. When a
//! `jwt_authn` filter runs before the RBAC filter the claims would come from
//! a token this proxy does not validate, so every such test is
//! [`Expr::Unknown`] (strict whatever the data path reports). Without a
//! `jwt_authn` filter before it, Envoy has no payload metadata and the test is
//! false; it is kept as a [`Attr::RequestClaim`] test, which is false for a
//! request without validated claims.

use crate::authz::{Action, Attr, Expr, Matcher, Policy, Rule, StrMatch};
use crate::model::MatchRegex;
use crate::tcp::Cidr;
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as PermRule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy as EnvoyPolicy, Principal, Rbac as EnvoyRbac,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::filter_state_matcher::Matcher as FsMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, StringMatcher, ValueMatcher,
};
use std::collections::BTreeMap;

/// The filter-state key istiod's `connect_authority` filter sets to the HBONE
/// peer's URI SAN (`spiffe://td/ns/NS/sa/SA`); RBAC on waypoint chains matches
/// identities against it (`principal.go` `principalAuthenticated`).
pub(crate) const PEER_PRINCIPAL_KEY: &str = "io.istio.peer_principal";
/// The filter whose dynamic metadata carries validated JWT payloads.
pub(crate) const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// What translating one policy key found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Constructs that became [`Expr::Unknown`].
    pub(crate) unknown: Vec<String>,
    /// Input Envoy rejects (invalid regex, …).
    pub(crate) invalid: Vec<String>,
}

/// Translation context of one RBAC filter.
pub(crate) struct Cx {
    /// A `jwt_authn` filter runs before this RBAC filter.
    pub(crate) jwt_before: bool,
    /// Findings per policy key, in key order.
    pub(crate) findings: Vec<(String, Findings)>,
}

impl Cx {
    pub(crate) fn new(jwt_before: bool) -> Cx {
        Cx {
            jwt_before,
            findings: Vec::new(),
        }
    }

    fn cur(&mut self) -> &mut Findings {
        &mut self
            .findings
            .last_mut()
            .expect("a key is being translated")
            .1
    }

    fn unknown(&mut self, what: impl Into<String>) -> Expr {
        let what = what.into();
        self.cur().unknown.push(what.clone());
        Expr::Unknown(what)
    }

    fn invalid(&mut self, what: impl Into<String>) -> Expr {
        let what = what.into();
        self.cur().invalid.push(what.clone());
        Expr::Unknown(what)
    }
}

/// Envoy's RBAC action enum → [`Action`] (`None`: a value Envoy rejects).
pub(crate) fn action(value: i32) -> Option<Action> {
    match value {
        0 => Some(Action::Allow),
        1 => Some(Action::Deny),
        2 => Some(Action::Audit),
        _ => None,
    }
}

/// `ns[NS]-policy[NAME]-rule[I]`, with any prefix before `ns[` (istiod's
/// `istio-ext-authz[-<provider>]-` for CUSTOM): (NS, NAME, I).
pub(crate) fn parse_key(key: &str) -> Option<(&str, &str, usize)> {
    let rest = key.strip_suffix(']')?;
    let (rest, index) = rest.rsplit_once("]-rule[")?;
    let index = index.parse().ok()?;
    let (rest, name) = rest.rsplit_once("]-policy[")?;
    let start = rest.rfind("ns[")?;
    let prefix = &rest[..start];
    if !(prefix.is_empty() || prefix.ends_with('-')) {
        return None;
    }
    Some((&rest[start + 3..], name, index))
}

/// The policies of one `rules`/`shadow_rules` block: one [`Policy`] per
/// (namespace, name) in key order, rules ordered by index. Keys that do not
/// parse are a policy each, named after the key, in namespace `""`.
pub(crate) fn policies(
    rbac: &EnvoyRbac,
    action: &Action,
    dry_run: bool,
    cx: &mut Cx,
) -> Vec<Policy> {
    let mut keys: Vec<&String> = rbac.policies.keys().collect();
    keys.sort();
    let mut grouped: BTreeMap<(String, String), Vec<(usize, Rule)>> = BTreeMap::new();
    for key in keys {
        let p = &rbac.policies[key];
        cx.findings.push((key.clone(), Findings::default()));
        let rule = rule(key, p, cx);
        let (ns, name, index) = match parse_key(key) {
            Some((ns, name, i)) => (ns.to_string(), name.to_string(), i),
            None => (String::new(), key.clone(), 0),
        };
        grouped.entry((ns, name)).or_default().push((index, rule));
    }
    grouped
        .into_iter()
        .map(|((namespace, name), mut rules)| {
            rules.sort_by_key(|(i, _)| *i);
            Policy {
                namespace,
                name,
                action: action.clone(),
                rules: rules.into_iter().map(|(_, r)| r).collect(),
                dry_run,
            }
        })
        .collect()
}

/// One Envoy policy: `or(principals) and or(permissions)` (an empty list is
/// false, as Envoy requires at least one).
fn rule(key: &str, p: &EnvoyPolicy, cx: &mut Cx) -> Rule {
    let principal = Expr::or(p.principals.iter().map(|x| principal(x, cx)).collect());
    let mut permission = Expr::or(p.permissions.iter().map(|x| permission(x, cx)).collect());
    if p.condition.is_some() || p.checked_condition.is_some() {
        permission = Expr::and(vec![permission, cx.unknown("CEL condition")]);
    }
    Rule {
        name: key.to_string(),
        principal,
        permission,
    }
}

fn never() -> Expr {
    Expr::Or(Vec::new())
}

// `metadata` is deprecated for `sourced_metadata`; istiod still sends it.
#[allow(deprecated)]
fn permission(p: &Permission, cx: &mut Cx) -> Expr {
    let Some(rule) = &p.rule else {
        return cx.invalid("permission without a rule");
    };
    match rule {
        PermRule::Any(true) => Expr::Any,
        PermRule::Any(false) => cx.invalid("permission any: false"),
        PermRule::AndRules(s) => Expr::And(s.rules.iter().map(|r| permission(r, cx)).collect()),
        PermRule::OrRules(s) => Expr::or(s.rules.iter().map(|r| permission(r, cx)).collect()),
        PermRule::NotRule(r) => Expr::negate(permission(r, cx)),
        PermRule::Header(h) => header(h, cx),
        PermRule::UrlPath(m) => url_path(m, cx),
        PermRule::UriTemplate(t) => uri_template(t, cx),
        PermRule::DestinationIp(c) => cidr(Attr::DestinationIp, c, cx),
        PermRule::DestinationPort(port) => match u16::try_from(*port) {
            Ok(p) => Expr::Test(Attr::DestinationPort, Matcher::Port(p)),
            Err(_) => cx.invalid(format!("destination_port {port}")),
        },
        PermRule::DestinationPortRange(r) => {
            let clamp = |v: i32| v.clamp(0, 65536) as u32;
            let (start, end) = (clamp(r.start), clamp(r.end));
            if start > 65535 {
                never()
            } else if end > 65535 {
                // [start, 65536): every port from start (u16 cannot say 65536).
                Expr::or(vec![
                    Expr::Test(
                        Attr::DestinationPort,
                        Matcher::PortRange(start.min(65535) as u16, 65535),
                    ),
                    Expr::Test(Attr::DestinationPort, Matcher::Port(65535)),
                ])
            } else {
                Expr::Test(
                    Attr::DestinationPort,
                    Matcher::PortRange(start as u16, end as u16),
                )
            }
        }
        PermRule::RequestedServerName(m) => string_test(Attr::Sni, m, "requested_server_name", cx),
        PermRule::Metadata(m) => metadata(m, cx),
        PermRule::Matcher(m) => cx.unknown(format!("permission matcher extension {}", m.name)),
        PermRule::SourcedMetadata(_) => cx.unknown("permission sourced_metadata"),
    }
}

#[allow(deprecated)]
fn principal(p: &Principal, cx: &mut Cx) -> Expr {
    let Some(id) = &p.identifier else {
        return cx.invalid("principal without an identifier");
    };
    match id {
        Identifier::Any(true) => Expr::Any,
        Identifier::Any(false) => cx.invalid("principal any: false"),
        Identifier::AndIds(s) => Expr::And(s.ids.iter().map(|i| principal(i, cx)).collect()),
        Identifier::OrIds(s) => Expr::or(s.ids.iter().map(|i| principal(i, cx)).collect()),
        Identifier::NotId(i) => Expr::negate(principal(i, cx)),
        // The peer certificate's URI SAN. istiod uses it only where the mTLS
        // peer is on the connection itself (1.30's layered termination
        // filters); on `main_internal` it sends `filter_state` instead.
        Identifier::Authenticated(a) => match &a.principal_name {
            Some(m) => string_test(Attr::SourcePrincipal, m, "authenticated", cx),
            None => Expr::Test(
                Attr::SourcePrincipal,
                Matcher::Str {
                    m: StrMatch::Present,
                    ignore_case: false,
                },
            ),
        },
        Identifier::FilterState(fs) => match (&fs.matcher, fs.key.as_str()) {
            (Some(FsMatcher::StringMatch(m)), PEER_PRINCIPAL_KEY) => {
                string_test(Attr::SourcePrincipal, m, "filter_state", cx)
            }
            (_, key) => cx.unknown(format!("filter_state {key:?} matcher")),
        },
        Identifier::DirectRemoteIp(c) | Identifier::SourceIp(c) => cidr(Attr::SourceIp, c, cx),
        Identifier::RemoteIp(c) => cidr(Attr::RemoteIp, c, cx),
        Identifier::Header(h) => header(h, cx),
        Identifier::UrlPath(m) => url_path(m, cx),
        Identifier::Metadata(m) => metadata(m, cx),
        Identifier::SourcedMetadata(_) => cx.unknown("principal sourced_metadata"),
        Identifier::Custom(c) => cx.unknown(format!("custom principal {}", c.name)),
    }
}

fn cidr(attr: Attr, c: &CidrRange, cx: &mut Cx) -> Expr {
    let text = match &c.prefix_len {
        Some(len) => format!("{}/{}", c.address_prefix, len.value),
        None => c.address_prefix.clone(),
    };
    match Cidr::parse(&text) {
        Ok(cidr) => Expr::Test(attr, Matcher::Cidr(cidr)),
        Err(e) => cx.invalid(e.to_string()),
    }
}

/// An Envoy `StringMatcher` as a model matcher (`Err`: what it is, when it
/// cannot be one).
fn str_matcher(m: &StringMatcher, cx: &mut Cx) -> Result<Matcher, Expr> {
    let ic = m.ignore_case;
    let (m, ignore_case) = match &m.match_pattern {
        None => return Err(cx.invalid("string matcher without a pattern")),
        Some(MatchPattern::Exact(s)) => (StrMatch::Exact(s.clone()), ic),
        Some(MatchPattern::Prefix(s)) => (StrMatch::Prefix(s.clone()), ic),
        Some(MatchPattern::Suffix(s)) => (StrMatch::Suffix(s.clone()), ic),
        Some(MatchPattern::Contains(s)) => (StrMatch::Contains(s.clone()), ic),
        // Envoy ignores `ignore_case` for regexes.
        Some(MatchPattern::SafeRegex(r)) => match MatchRegex::new(&r.regex) {
            Ok(re) => (StrMatch::Regex(re), false),
            Err(e) => return Err(cx.invalid(format!("invalid regex {:?}: {e}", r.regex))),
        },
        Some(MatchPattern::Custom(c)) => {
            return Err(cx.unknown(format!("custom string matcher {}", c.name)))
        }
    };
    Ok(Matcher::Str { m, ignore_case })
}

fn string_test(attr: Attr, m: &StringMatcher, _what: &str, cx: &mut Cx) -> Expr {
    match str_matcher(m, cx) {
        Ok(m) => Expr::Test(attr, m),
        Err(e) => e,
    }
}

fn url_path(m: &PathMatcher, cx: &mut Cx) -> Expr {
    match &m.rule {
        Some(PathRule::Path(s)) => string_test(Attr::Path, s, "url_path", cx),
        None => cx.invalid("url_path without a rule"),
    }
}

/// `envoy.path.match.uri_template`: `*` is one path segment, `**` zero or
/// more (the rest of the path); matched against the path without its query.
fn uri_template(
    t: &envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig,
    cx: &mut Cx,
) -> Expr {
    let Some(any) = &t.typed_config else {
        return cx.invalid("uri_template without typed_config");
    };
    let cfg = match super::decode_any::<UriTemplateMatchConfig>(any) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return cx.invalid(e.to_string()),
        None => return cx.unknown(format!("uri_template of type {}", any.type_url)),
    };
    match template_regex(&cfg.path_template) {
        Some(re) => match MatchRegex::new(&re) {
            Ok(re) => Expr::Test(
                Attr::Path,
                Matcher::Str {
                    m: StrMatch::Regex(re),
                    ignore_case: false,
                },
            ),
            Err(e) => cx.invalid(format!("uri_template {:?}: {e}", cfg.path_template)),
        },
        None => cx.unknown(format!(
            "uri_template {:?} (only literal text, * and ** are supported)",
            cfg.path_template
        )),
    }
}

/// The regex of a path template made of literals, `*` and a last `**`.
/// Segment characters are RFC 3986 `pchar`s, as Envoy's template matcher
/// allows (percent-encoded bytes included).
pub(crate) fn template_regex(template: &str) -> Option<String> {
    const PCHAR: &str = r"[A-Za-z0-9\-._~%!$&'()*+,;=:@]";
    if !template.starts_with('/') || template.contains(['{', '}']) {
        return None;
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('*') {
        out.push_str(&regex::escape(&rest[..i]));
        if rest[i..].starts_with("**") {
            if rest[i + 2..].contains('*') {
                return None; // `**` must be the last operator
            }
            out.push_str(&format!(r"(?:{PCHAR}|/)*"));
            rest = &rest[i + 2..];
        } else {
            out.push_str(&format!("{PCHAR}+"));
            rest = &rest[i + 1..];
        }
    }
    out.push_str(&regex::escape(rest));
    Some(out)
}

/// A header condition as Envoy evaluates it (`HeaderUtility::matchHeaders`):
/// a missing header matches only an inverted `present_match: true` or a
/// non-inverted `present_match: false`, unless
/// `treat_missing_header_as_empty`.
#[allow(deprecated)]
fn header(h: &HeaderMatcher, cx: &mut Cx) -> Expr {
    let name = h.name.to_ascii_lowercase();
    let present = |attr: &Attr| {
        Expr::Test(
            attr.clone(),
            Matcher::Str {
                m: StrMatch::Present,
                ignore_case: false,
            },
        )
    };
    let str_m = |m: StrMatch| Matcher::Str {
        m,
        ignore_case: false,
    };
    let cond: Result<Matcher, Expr> = match &h.header_match_specifier {
        None | Some(HeaderMatchSpecifier::PresentMatch(true)) => Ok(str_m(StrMatch::Present)),
        Some(HeaderMatchSpecifier::PresentMatch(false)) => Err(Expr::Any), // marker: absence
        Some(HeaderMatchSpecifier::ExactMatch(s)) => Ok(str_m(StrMatch::Exact(s.clone()))),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => Ok(str_m(StrMatch::Prefix(s.clone()))),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => Ok(str_m(StrMatch::Suffix(s.clone()))),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => Ok(str_m(StrMatch::Contains(s.clone()))),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => match MatchRegex::new(&r.regex) {
            Ok(re) => Ok(str_m(StrMatch::Regex(re))),
            Err(e) => return cx.invalid(format!("invalid regex {:?}: {e}", r.regex)),
        },
        Some(HeaderMatchSpecifier::StringMatch(m)) => match str_matcher(m, cx) {
            Ok(m) => Ok(m),
            Err(e) => return e,
        },
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return cx.unknown(format!("header {name} range_match"))
        }
    };
    let is_present = matches!(
        &cond,
        Ok(Matcher::Str {
            m: StrMatch::Present,
            ..
        })
    );
    let attr = match name.as_str() {
        ":authority" | "host" => Attr::Host,
        ":method" => Attr::Method,
        // `:path` carries the query, Attr::Path does not: only conditions
        // that cannot tell them apart are translated.
        ":path" => match &cond {
            Ok(Matcher::Str {
                m: StrMatch::Prefix(p),
                ..
            }) if !p.contains('?') => Attr::Path,
            _ if is_present => Attr::Path,
            _ => return cx.unknown(format!("header :path condition {cond:?} (query string)")),
        },
        n if n.starts_with(':') => return cx.unknown(format!("pseudo-header {n}")),
        n => Attr::Header(n.to_string()),
    };
    let cond = match cond {
        Ok(m) => m,
        // present_match: false matches the header's absence; inverted, its presence.
        Err(_) => {
            return if h.invert_match {
                present(&attr)
            } else {
                Expr::negate(present(&attr))
            };
        }
    };
    if h.treat_missing_header_as_empty {
        let empty = match &cond {
            Matcher::Str { m, ignore_case } => m.matches("", *ignore_case),
            _ => false,
        };
        let e = Expr::or(vec![
            Expr::Test(attr.clone(), cond),
            Expr::and(vec![
                Expr::negate(present(&attr)),
                if empty { Expr::Any } else { never() },
            ]),
        ]);
        return if h.invert_match { Expr::negate(e) } else { e };
    }
    if !h.invert_match {
        Expr::Test(attr, cond)
    } else if is_present {
        Expr::negate(present(&attr))
    } else {
        // Inverted: the header must be there and not match.
        Expr::and(vec![present(&attr), Expr::negate(Expr::Test(attr, cond))])
    }
}

/// Dynamic metadata: only `jwt_authn`'s `payload` is known (istiod's
/// `request.auth.*`); see the module docs.
fn metadata(m: &MetadataMatcher, cx: &mut Cx) -> Expr {
    let keys: Option<Vec<&str>> = m
        .path
        .iter()
        .map(|s| s.segment.as_ref().map(|Segment::Key(k)| k.as_str()))
        .collect();
    let described = format!(
        "metadata {} {:?}",
        m.filter,
        keys.clone().unwrap_or_default()
    );
    let claim = match keys.as_deref() {
        Some(["payload", claim @ ..]) if m.filter == JWT_AUTHN_FILTER && !claim.is_empty() => {
            claim.iter().map(|c| c.to_string()).collect::<Vec<_>>()
        }
        _ => return cx.unknown(described),
    };
    if cx.jwt_before {
        return cx.unknown(format!(
            "JWT claim {} (jwt_authn runs before this filter and this proxy does not validate tokens)",
            claim.join(".")
        ));
    }
    let Some(v) = &m.value else {
        return cx.invalid(format!("{described} without a value matcher"));
    };
    // `iss` and `sub` are strings: a bare string match is exact on them.
    let any_element = matches!(claim.as_slice(), [c] if c == "iss" || c == "sub");
    let e = value(&Attr::RequestClaim(claim), v, any_element, &described, cx);
    if m.invert {
        Expr::negate(e)
    } else {
        e
    }
}

/// A value matcher on a claim. A claim test matches a string claim or any
/// element of a list claim: exactly istiod's `orMatch[listMatch.oneOf(V), V]`
/// (`any_element` inside it) and, for `iss`/`sub`, its bare `stringMatch`.
/// Elsewhere a string match would also match list elements where Envoy does
/// not, so it is unknown.
fn value(attr: &Attr, v: &ValueMatcher, any_element: bool, what: &str, cx: &mut Cx) -> Expr {
    match &v.match_pattern {
        Some(ValuePattern::StringMatch(s)) if any_element => string_test(attr.clone(), s, what, cx),
        Some(ValuePattern::OrMatch(o)) => {
            if let [ValueMatcher {
                match_pattern: Some(ValuePattern::ListMatch(l)),
            }, scalar] = o.value_matchers.as_slice()
            {
                if let Some(ListPattern::OneOf(inner)) = &l.match_pattern {
                    if **inner == *scalar {
                        return value(attr, scalar, true, what, cx);
                    }
                }
            }
            Expr::or(
                o.value_matchers
                    .iter()
                    .map(|m| value(attr, m, any_element, what, cx))
                    .collect(),
            )
        }
        _ => cx.unknown(format!("{what} value matcher {:?}", v.match_pattern)),
    }
}
