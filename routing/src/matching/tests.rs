use super::*;
use crate::model::MatchRegex;

fn ex(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_string())
}
fn pre(s: &str) -> StringMatch {
    StringMatch::Prefix(s.to_string())
}
fn re(s: &str) -> StringMatch {
    StringMatch::Regex(MatchRegex::new(s).unwrap())
}

#[test]
fn uri_exact_vs_prefix() {
    let r = SimpleRequest::new("/reviews/1?x=y");
    assert!(!ex("/reviews").matches_uri(r.path()));
    assert!(ex("/reviews/1").matches_uri(r.path()));
    assert!(pre("/reviews").matches_uri(r.path()));
    assert!(pre("/reviews/1?x").matches_uri(r.path()));
    assert!(!pre("/ratings").matches_uri(r.path()));
    assert!(re("/reviews/[0-9]+").matches_uri(r.path()));
    assert!(!re("/reviews").matches_uri(r.path()));
}

#[test]
fn uri_case_folding_is_ascii_and_safe_on_char_boundaries() {
    assert!(pre("/API").matches_uri_case("/api/x", true));
    assert!(!pre("/API").matches_uri_case("/api/x", false));
    assert!(!pre("/ab").matches_uri_case("/é", true));
    assert!(ex("/A").matches_uri_case("/a?q", true));
}

#[test]
fn query_params_are_raw() {
    assert_eq!(query_param("/p?a=1&b&c=&a=2", "a"), Some("1"));
    assert_eq!(query_param("/p?a=1&b&c=", "b"), Some(""));
    assert_eq!(query_param("/p?a=1&b&c=", "c"), Some(""));
    assert_eq!(query_param("/p?a=1", "d"), None);
    assert_eq!(query_param("/p", "a"), None);
    assert_eq!(query_param("/p?q=a%20b#frag", "q"), Some("a%20b"));
}

#[test]
fn headers_exact_prefix_and_missing() {
    let r = SimpleRequest::new("/").with_header("End-User", "jason-x");
    let m = |h: StringMatch| RouteMatch {
        headers: vec![("end-user".to_string(), h)],
        ..Default::default()
    };
    assert!(!m(ex("jason")).matches(&r));
    assert!(m(ex("jason-x")).matches(&r));
    assert!(m(pre("jason")).matches(&r));
    assert!(!m(pre("bob")).matches(&r));
    assert!(m(StringMatch::Present).matches(&r));
    let missing = RouteMatch {
        headers: vec![("x-missing".to_string(), pre(""))],
        ..Default::default()
    };
    assert!(!missing.matches(&r));
}

#[test]
fn conditions_and_within_match_or_across() {
    let and = RouteMatch {
        uri: Some(pre("/a")),
        headers: vec![("x".to_string(), ex("1"))],
        ..Default::default()
    };
    assert!(and.matches(&SimpleRequest::new("/a").with_header("x", "1")));
    assert!(!and.matches(&SimpleRequest::new("/a")));
    assert!(!and.matches(&SimpleRequest::new("/b").with_header("x", "1")));
    let route = HttpRoute::new(
        "r",
        vec![
            RouteMatch {
                uri: Some(ex("/a")),
                ..Default::default()
            },
            RouteMatch {
                uri: Some(ex("/b")),
                ..Default::default()
            },
        ],
        vec![],
    );
    assert!(route.matches(&SimpleRequest::new("/b")));
    assert!(!route.matches(&SimpleRequest::new("/c")));
    let all = HttpRoute::new("all", vec![], vec![]);
    assert!(all.matches(&SimpleRequest::new("/anything")));
}

#[test]
fn miss_words() {
    let m = RouteMatch {
        uri: Some(pre("/v2")),
        ..Default::default()
    };
    let r = SimpleRequest::new("/v1/reviews");
    assert_eq!(
        m.mismatch(&r, 0).unwrap(),
        "uri prefix \"/v2\" does not match \"/v1/reviews\""
    );
    let m = RouteMatch {
        headers: vec![("end-user".into(), ex("jason"))],
        ..Default::default()
    };
    assert_eq!(m.mismatch(&r, 0).unwrap(), "header end-user: absent");
    assert!(m
        .mismatch(&r.clone().with_header("end-user", "jason"), 0)
        .is_none());
}
