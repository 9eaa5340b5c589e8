//! VirtualService route actions (`redirect`, `directResponse`, `rewrite`,
//! `headers`, `timeout`, `retries`, `fault`, `mirror(s)`, `corsPolicy`) and
//! `tcp` routes: parsing, errors and warnings, as table tests; plus the
//! snapshot lookups (`route_with_match`, `tcp_route`) and `explain_route`.

use super::tests::files;
use crate::{
    load_str, Abort, Cidr, HeaderOpKind, Percent, RedirectPath, RedirectPort, RetryOn, RetryPolicy,
    RouteAction, RouteDecision, SimpleRequest, Snapshot, StringMatch, TcpConnection,
    UnmatchedPreflights, UriRewrite,
};
use std::time::Duration;

mod errors;
mod explain;
mod tcp;

const FQDN: &str = "reviews.default.svc.cluster.local";
const AT: &str = "reviews.yaml doc 0 VirtualService default/reviews: ";

/// `ratings` (HTTP, namespace default) for mirrors and `mongo` (TCP) for tcp routes.
const MORE_SERVICES: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings]
  addresses: [10.0.0.20]
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.10.4, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo}
spec:
  hosts: [mongo]
  addresses: [10.0.0.30]
  ports: [{number: 27017, name: tcp-mongo}, {number: 27018, name: tcp-other}]
  endpoints: [{address: 127.0.10.5}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets: [{name: v2, labels: {version: v2}}]
";

fn try_load(vs_yaml: &str) -> Result<Snapshot, String> {
    let mut f = files(&[("more.yaml", MORE_SERVICES)]);
    f.retain(|(n, _)| n != "reviews.yaml");
    f.push(("reviews.yaml".into(), vs_yaml.into()));
    load_str(&f, "cluster.local").map_err(|e| e.to_string())
}

fn load(vs_yaml: &str) -> Snapshot {
    try_load(vs_yaml).unwrap_or_else(|e| panic!("load failed:\n{e}\n---\n{vs_yaml}"))
}

fn error(vs_yaml: &str) -> String {
    match try_load(vs_yaml) {
        Ok(_) => panic!("load unexpectedly succeeded:\n{vs_yaml}"),
        Err(e) => e,
    }
}

/// The `reviews` VirtualService with this `http` list (YAML lines, indented by 2).
fn vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
}

/// One http entry: `- <fields>` plus a route to subset v1 when `route`.
fn entry(fields: &str, route: bool) -> String {
    let mut s = format!("  - {fields}\n");
    if route {
        s += "    route: [{destination: {host: reviews, subset: v1}}]\n";
    }
    s
}

/// Like [`entry`]; `{a: .., b: ..}` (several fields) becomes one flow mapping.
fn item(fields: &str, route: bool) -> String {
    let Some(inner) = fields.strip_prefix('{') else {
        return entry(fields, route);
    };
    let inner = &inner[..inner.len() - 1];
    let route = if route {
        ", route: [{destination: {host: reviews, subset: v1}}]"
    } else {
        ""
    };
    format!("  - {{{inner}{route}}}\n")
}

/// The first http route of the reviews VirtualService.
fn first(s: &Snapshot) -> &crate::HttpRoute {
    &s.virtual_services()[0].http[0]
}

#[test]
fn redirects_parse() {
    // (http entry fields, path, authority, scheme, port, code)
    type Want<'a> = (
        &'a str,
        Option<RedirectPath>,
        Option<&'a str>,
        Option<&'a str>,
        Option<RedirectPort>,
        u16,
    );
    let uri = |s: &str| Some(RedirectPath::Uri(s.into()));
    let cases: Vec<Want> = vec![
        (
            "redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local}",
            uri("/v1/bookRatings"),
            Some("newratings.default.svc.cluster.local"),
            None,
            None,
            301,
        ),
        (
            "redirect: {scheme: https, redirectCode: 308}",
            None,
            None,
            Some("https"),
            None,
            308,
        ),
        (
            "redirect: {port: 8443}",
            None,
            None,
            None,
            Some(RedirectPort::Port(8443)),
            301,
        ),
        (
            "redirect: {derivePort: FROM_REQUEST_PORT}",
            None,
            None,
            None,
            Some(RedirectPort::FromRequestPort),
            301,
        ),
        (
            "redirect: {derivePort: FROM_PROTOCOL_DEFAULT, scheme: http}",
            None,
            None,
            Some("http"),
            Some(RedirectPort::FromProtocolDefault),
            301,
        ),
        (
            "redirect: {uri: /x, redirectCode: 302}",
            uri("/x"),
            None,
            None,
            None,
            302,
        ),
        (
            "redirect: {uri: /x, redirectCode: 303}",
            uri("/x"),
            None,
            None,
            None,
            303,
        ),
        (
            "redirect: {uri: /x, redirectCode: 307}",
            uri("/x"),
            None,
            None,
            None,
            307,
        ),
        (
            "{match: [{uri: {prefix: /old}}], redirect: {prefixRewrite: /new}}",
            Some(RedirectPath::Prefix("/new".into())),
            None,
            None,
            None,
            301,
        ),
    ];
    for (fields, path, authority, scheme, port, code) in cases {
        let body = item(fields, false);
        let s = load(&vs(&body));
        let RouteAction::Redirect(r) = &first(&s).action else {
            panic!("{fields}: not a redirect");
        };
        assert_eq!(r.path, path, "{fields}");
        assert_eq!(r.authority.as_deref(), authority, "{fields}");
        assert_eq!(r.scheme.as_deref(), scheme, "{fields}");
        assert_eq!(r.port, port, "{fields}");
        assert_eq!(r.code, code, "{fields}");
        assert!(first(&s).destinations.is_empty());
        assert!(!first(&s).retries.is_enabled(), "no retries on a redirect");
    }
}

#[test]
fn redirect_through_the_snapshot() {
    let s = load(&vs(
        "  - match: [{uri: {prefix: /old/}}]\n    redirect: {prefixRewrite: /new/, derivePort: FROM_REQUEST_PORT, redirectCode: 307}\n",
    ));
    let svc = s.service_by_host(FQDN).unwrap();
    let req = SimpleRequest::new("/old/page?x=1").with_authority("reviews:9080");
    let (decision, matched) = s.route_with_match(svc, 9080, &req);
    let RouteDecision::Route { route, .. } = decision else {
        panic!("{decision:?}");
    };
    let RouteAction::Redirect(r) = &route.action else {
        panic!()
    };
    let prefix = crate::Rewrite::matched_prefix(matched);
    assert_eq!(prefix, Some("/old/"));
    assert_eq!(
        r.location("http", "reviews:9080", "/old/page?x=1", 9080, prefix),
        (307, "http://reviews:9080/new/page?x=1".to_string())
    );
    let x = s.explain_route(svc, 9080, &req);
    assert!(
        x.actions
            .iter()
            .any(|l| l == "action: redirect 307 port FROM_REQUEST_PORT, prefixRewrite \"/new/\" → 307 http://reviews:9080/new/page?x=1"),
        "{:?}",
        x.actions
    );
}

#[test]
fn direct_responses_parse() {
    let cases: &[(&str, u16, Option<&[u8]>)] = &[
        (
            "directResponse: {status: 503, body: {string: unavailable}}",
            503,
            Some(b"unavailable"),
        ),
        (
            "directResponse: {status: 200, body: {bytes: aGVsbG8=}}",
            200,
            Some(b"hello"),
        ),
        ("directResponse: {status: 204}", 204, None),
        ("directResponse: {status: '404'}", 404, None),
    ];
    for (fields, status, body) in cases {
        let s = load(&vs(&entry(fields, false)));
        let RouteAction::DirectResponse(d) = &first(&s).action else {
            panic!("{fields}");
        };
        assert_eq!(d.status, *status, "{fields}");
        assert_eq!(d.body.as_deref(), *body, "{fields}");
    }
    // a large body is a warning
    let big = "x".repeat(200 * 1024);
    let s = load(&vs(&entry(
        &format!("directResponse: {{status: 200, body: {{string: {big}}}}}"),
        false,
    )));
    assert!(s.warnings().iter().any(|w| w.contains(
        "spec.http[0].directResponse.body: body of 204800 bytes: large direct responses"
    )));
}

#[test]
fn rewrites_parse_and_apply() {
    let s = load(&vs("  - match: [{uri: {prefix: /v1/}}]\n    rewrite: {uri: /v2/, authority: reviews-v2}\n    route: [{destination: {host: reviews, subset: v1}}]\n"));
    let r = first(&s);
    let rw = r.rewrite.as_ref().unwrap();
    assert_eq!(rw.uri, Some(UriRewrite::Prefix("/v2/".into())));
    assert_eq!(rw.authority.as_deref(), Some("reviews-v2"));
    let svc = s.service_by_host(FQDN).unwrap();
    let req = SimpleRequest::new("/v1/reviews?id=1");
    let (_, matched) = s.route_with_match(svc, 9080, &req);
    assert_eq!(
        r.rewritten_path(matched, "/v1/reviews?id=1").as_deref(),
        Some("/v2/reviews?id=1")
    );
    assert_eq!(
        r.authority_rewrite(r.destinations.first()),
        Some("reviews-v2")
    );

    let s = load(&vs(&entry(
        "rewrite: {uriRegexRewrite: {match: '^/service/([^/]+)/(.*)$', rewrite: '/x/\\2/\\1'}}",
        true,
    )));
    let r = first(&s);
    assert_eq!(
        r.rewritten_path(None, "/service/a/b/c?q").as_deref(),
        Some("/x/b/c/a?q")
    );
    // exact match: the whole path is replaced
    let s = load(&vs(
        "  - match: [{uri: {exact: /old}}]\n    rewrite: {uri: /new}\n    route: [{destination: {host: reviews}}]\n",
    ));
    let svc = s.service_by_host(FQDN).unwrap();
    let (_, matched) = s.route_with_match(svc, 9080, &SimpleRequest::new("/old?a"));
    assert_eq!(
        first(&s).rewritten_path(matched, "/old?a").as_deref(),
        Some("/new?a")
    );
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    // no uri condition: the implicit prefix "/" is replaced (with a warning)
    let s = load(&vs(&entry("rewrite: {uri: /v2}", true)));
    assert_eq!(
        first(&s).rewritten_path(None, "/a").as_deref(),
        Some("/v2a")
    );
    assert!(s.warnings().iter().any(|w| w.contains(
        "spec.http[0].rewrite.uri: replaces the prefix \"/\" of requests matched without a uri condition"
    )), "{:?}", s.warnings());
}

#[test]
fn headers_parse_route_and_destination() {
    let yaml = vs("  - headers:
      request:
        set: {X-Env: prod, host: reviews.internal}
        add: {x-trace: 'on'}
        remove: [x-debug]
      response:
        set: {x-served-by: waypoint, x-pct: '100%%'}
        remove: [server]
    route:
    - destination: {host: reviews, subset: v1}
      weight: 90
      headers:
        request: {set: {x-version: v1}}
        response: {add: {x-from: v1}}
    - destination: {host: reviews, subset: v2}
      weight: 10
");
    let s = load(&yaml);
    let r = first(&s);
    assert_eq!(r.headers.authority.as_deref(), Some("reviews.internal"));
    assert_eq!(
        r.headers.request.to_string(),
        "remove x-debug; set x-env: prod; add x-trace: on"
    );
    assert_eq!(
        r.headers.response.to_string(),
        "remove server; set x-pct: 100%; set x-served-by: waypoint"
    );
    let v1 = &r.destinations[0];
    assert_eq!(v1.headers.request.to_string(), "set x-version: v1");
    assert_eq!(v1.headers.response.ops[0].kind, HeaderOpKind::Add);
    assert!(r.destinations[1].headers.is_empty());
    assert_eq!(r.authority_rewrite(Some(v1)), Some("reviews.internal"));
    let mut h: Vec<(String, String)> = vec![("x-debug".into(), "1".into())];
    r.apply_request_headers(Some(v1), &mut h);
    let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        h,
        [("x-env", "prod"), ("x-trace", "on"), ("x-version", "v1")]
    );
    // a destination's own authority applies when the route sets none
    let s = load(&vs("  - route:\n    - destination: {host: reviews}\n      headers: {request: {add: {':authority': other}}}\n"));
    let r = first(&s);
    assert_eq!(r.authority_rewrite(r.destinations.first()), Some("other"));
    // command operators are kept as written, with a warning
    let s = load(&vs(&entry(
        "headers: {request: {set: {x-host: '%HOSTNAME%'}}}",
        true,
    )));
    assert_eq!(first(&s).headers.request.ops[0].value, "%HOSTNAME%");
    assert!(s.warnings().iter().any(|w| w.contains("are not expanded")));
}

#[test]
fn timeouts_parse() {
    let cases: &[(&str, Option<Duration>)] = &[
        ("timeout: 5s", Some(Duration::from_secs(5))),
        ("timeout: 1m30s", Some(Duration::from_secs(90))),
        ("timeout: 250ms", Some(Duration::from_millis(250))),
        ("timeout: 0s", None),
        ("name: x", None),
    ];
    for (fields, want) in cases {
        let s = load(&vs(&entry(fields, true)));
        assert_eq!(first(&s).timeout, *want, "{fields}");
    }
    let s = load(&vs(&entry("timeout: 0s", true)));
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.contains("spec.http[0].timeout: 0s: no timeout")));
}

#[test]
fn retries_parse() {
    use RetryOn::*;
    // (fields, attempts, per try, conditions, codes, default?)
    type Want<'a> = (&'a str, u32, Option<Duration>, Vec<RetryOn>, Vec<u16>, bool);
    let default_on = RetryPolicy::DEFAULT_RETRY_ON.to_vec();
    let cases: Vec<Want> = vec![
        ("name: unset", 2, None, default_on.clone(), vec![], true),
        ("retries: {attempts: 3}", 3, None, default_on.clone(), vec![], false),
        ("retries: {attempts: 3, perTryTimeout: 2s, retryOn: '5xx,reset'}", 3, Some(Duration::from_secs(2)), vec![FiveXx, Reset], vec![], false),
        ("retries: {attempts: 1, retryOn: '503,gateway-error,429'}", 1, None, vec![GatewayError, RetriableStatusCodes], vec![503, 429], false),
        ("retries: {attempts: 2, retryOn: 'retriable-status-codes,504'}", 2, None, vec![RetriableStatusCodes], vec![504], false),
        ("retries: {attempts: 2, retryOn: 'cancelled,deadline-exceeded,internal,resource-exhausted,unavailable'}", 2, None, vec![Cancelled, DeadlineExceeded, Internal, ResourceExhausted, Unavailable], vec![], false),
        ("retries: {attempts: 0}", 0, None, vec![], vec![], false),
        ("retries: {}", 0, None, vec![], vec![], false),
    ];
    for (fields, attempts, per_try, on, codes, default) in cases {
        let s = load(&vs(&entry(fields, true)));
        let r = &first(&s).retries;
        assert_eq!(r.attempts, attempts, "{fields}");
        assert_eq!(r.per_try_timeout, per_try, "{fields}");
        assert_eq!(r.retry_on, on, "{fields}");
        assert_eq!(r.retriable_status_codes, codes, "{fields}");
        assert_eq!(r.is_default, default, "{fields}");
    }
    let s = load(&vs(&entry(
        "retries: {attempts: 4, retryRemoteLocalities: true, retryIgnorePreviousHosts: false, backoff: 100ms}",
        true,
    )));
    let r = &*first(&s).retries;
    assert!(r.retry_remote_localities && !r.retry_ignore_previous_hosts);
    assert_eq!(r.backoff, Some(Duration::from_millis(100)));
    assert_eq!(
        r,
        &RetryPolicy {
            attempts: 4,
            retry_remote_localities: true,
            retry_ignore_previous_hosts: false,
            backoff: Some(Duration::from_millis(100)),
            is_default: false,
            ..RetryPolicy::istio_default()
        }
    );
}

#[test]
fn faults_parse() {
    let s = load(&vs(&entry(
        "fault: {delay: {fixedDelay: 5s, percentage: {value: 10}}, abort: {httpStatus: 500, percentage: {value: 0.5}}}",
        true,
    )));
    let f = first(&s).fault.as_ref().unwrap();
    let d = f.delay.as_ref().unwrap();
    assert_eq!(d.fixed_delay, Duration::from_secs(5));
    assert_eq!(d.percentage, Percent::from_value(10.0).unwrap());
    let a = f.abort.as_ref().unwrap();
    assert_eq!(a.abort, Abort::Http(500));
    assert_eq!(a.percentage.per_million(), 5_000);
    assert_eq!(f.to_string(), "delay 5s for 10%, abort HTTP 500 for 0.5%");

    let s = load(&vs(&entry(
        "fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}",
        true,
    )));
    let a = first(&s).fault.clone().unwrap().abort.unwrap();
    assert_eq!(
        a.abort,
        Abort::Grpc {
            code: 14,
            name: "UNAVAILABLE"
        }
    );
    // deprecated integer percent, with a warning
    let s = load(&vs(&entry(
        "fault: {delay: {fixedDelay: 2s, percent: 30}}",
        true,
    )));
    let d = first(&s).fault.as_ref().unwrap().delay.clone().unwrap();
    assert_eq!(d.percentage, Percent::from_int(30));
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.contains("spec.http[0].fault.delay.percent: deprecated")));
    // no percentage: 0 %, with a warning
    let s = load(&vs(&entry("fault: {abort: {httpStatus: 503}}", true)));
    assert_eq!(
        first(&s).fault.clone().unwrap().abort.unwrap().percentage,
        Percent::ZERO
    );
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.contains("spec.http[0].fault.abort: no percentage: no request is aborted")),
        "{:?}",
        s.warnings()
    );
}

#[test]
fn mirrors_parse() {
    type Got<'a> = (&'a str, Option<&'a str>, Option<u16>, f64);
    let cases: &[(&str, &[Got])] = &[
        ("mirror: {host: ratings}", &[("ratings.default.svc.cluster.local", None, None, 100.0)]),
        ("{mirror: {host: ratings, subset: v2}, mirrorPercentage: {value: 12.5}}", &[("ratings.default.svc.cluster.local", Some("v2"), None, 12.5)]),
        ("{mirror: {host: ratings, port: {number: 9080}}, mirrorPercent: 40}", &[("ratings.default.svc.cluster.local", None, Some(9080), 40.0)]),
        ("mirrors: [{destination: {host: ratings}}, {destination: {host: reviews, subset: v2}, percentage: {value: 5}}]",
            &[("ratings.default.svc.cluster.local", None, None, 100.0), ("reviews.default.svc.cluster.local", Some("v2"), None, 5.0)]),
        ("{mirror: {host: ratings}, mirrorPercentage: {value: 0}}", &[]),
        ("mirrors: [{destination: {host: ratings}, percentage: {value: 0}}]", &[]),
    ];
    for (fields, want) in cases {
        let body = item(fields, true);
        let s = load(&vs(&body));
        let got: Vec<Got> = first(&s)
            .mirrors
            .iter()
            .map(|m| {
                (
                    m.host.as_str(),
                    m.subset.as_deref(),
                    m.port,
                    m.percentage.value(),
                )
            })
            .collect();
        assert_eq!(got, *want, "{fields}");
    }
}

#[test]
fn cors_parses() {
    let s = load(&vs(&entry(
        "corsPolicy: {allowOrigins: [{exact: 'https://a.example'}, {regex: 'https://.*\\.b\\.example'}], allowMethods: [GET, POST], allowHeaders: [x-token], exposeHeaders: ['*'], maxAge: 24h, allowCredentials: true, unmatchedPreflights: IGNORE}",
        true,
    )));
    let c = first(&s).cors.as_ref().unwrap();
    assert_eq!(
        c.allow_origins[0],
        StringMatch::Exact("https://a.example".into())
    );
    assert!(c.origin_allowed("https://x.b.example"));
    assert_eq!(c.allow_methods, ["GET", "POST"]);
    assert_eq!(c.max_age, Some(Duration::from_secs(86400)));
    assert!(c.allow_credentials);
    assert_eq!(c.unmatched_preflights, UnmatchedPreflights::Ignore);
    // deprecated allowOrigin: exact matches
    let s = load(&vs(&entry(
        "corsPolicy: {allowOrigin: ['https://old.example']}",
        true,
    )));
    let c = first(&s).cors.as_ref().unwrap();
    assert_eq!(
        c.allow_origins,
        [StringMatch::Exact("https://old.example".into())]
    );
    assert_eq!(c.unmatched_preflights, UnmatchedPreflights::Forward);
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.contains("corsPolicy.allowOrigin: deprecated")));
}
