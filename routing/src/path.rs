//! Path normalization before routing and authorization, as meshConfig `pathNormalization`
//! configures the HTTP connection manager (istiod `buildHTTPConnectionManager`): `NONE`,
//! `BASE` (the default: Envoy's `normalize_path`, RFC 3986 dot-segment removal, backslashes
//! as slashes, `%2E` as a dot), `MERGE_SLASHES` (also `merge_slashes`), and
//! `DECODE_AND_MERGE_SLASHES` (also `%2F`/`%5C` decoded: `UNESCAPE_AND_FORWARD`). So
//! `/x/../admin` meets policies and routes as `/admin`.
//!
//! Under xDS each service's HTTP connection manager says it directly ([`PathPolicy`]: its
//! `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`), and [`apply`] follows
//! Envoy's order; the meshConfig modes are the four combinations istiod writes.

use std::borrow::Cow;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    None,
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

/// A `--path-normalization` value that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")]
pub struct UnknownPathNormalization(pub String);

impl std::str::FromStr for PathNormalization {
    type Err = UnknownPathNormalization;

    fn from_str(s: &str) -> Result<Self, UnknownPathNormalization> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "NONE" => Ok(Self::None),
            "BASE" | "DEFAULT" => Ok(Self::Base),
            "MERGE_SLASHES" => Ok(Self::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Ok(Self::DecodeAndMergeSlashes),
            _ => Err(UnknownPathNormalization(s.to_string())),
        }
    }
}

/// Decode `%2F`/`%5C` (any case) in `path`.
fn decode_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).map(str::to_ascii_uppercase);
        match code.as_deref() {
            Some("2F") => out.push('/'),
            Some("5C") => out.push('\\'),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

fn is_dot(segment: &str) -> bool {
    segment == "." || segment.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(segment: &str) -> bool {
    let s = segment.as_bytes();
    match s.len() {
        2 => s == b"..",
        4 => s.eq_ignore_ascii_case(b".%2e") || s.eq_ignore_ascii_case(b"%2e."),
        6 => s.eq_ignore_ascii_case(b"%2e%2e"),
        _ => false,
    }
}

/// Dot-segment removal would give `path` (which starts with `/`) back unchanged: no backslash
/// and no `.` or `..` segment, `%2E` forms included. Most paths are; this look allocates nothing.
fn is_dot_free(path: &str) -> bool {
    !path.contains('\\')
        && path
            .split('/')
            .skip(1)
            .all(|segment| !is_dot(segment) && !is_dot_dot(segment))
}

/// What Envoy's connection manager does with `%2F`/`%5C` in the path
/// (`path_with_escaped_slashes_action`; `IMPLEMENTATION_SPECIFIC_DEFAULT` is Envoy's
/// `KEEP_UNCHANGED`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashes {
    #[default]
    KeepUnchanged,
    /// 400 (`path_normalization_failed`).
    RejectRequest,
    /// Unescaped, normalized, then a 307 to the new path (gRPC: rejected).
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// One connection manager's path handling: the HCM's `normalize_path`, `merge_slashes` and
/// `path_with_escaped_slashes_action`, applied in Envoy's order (escaped slashes, RFC 3986
/// normalization, slash merging).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathPolicy {
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl From<PathNormalization> for PathPolicy {
    /// As istiod's `buildHTTPConnectionManager` sets the HCM for meshConfig `pathNormalization`.
    fn from(mode: PathNormalization) -> Self {
        let (normalize_path, merge_slashes, escaped_slashes) = match mode {
            PathNormalization::None => (false, false, EscapedSlashes::KeepUnchanged),
            PathNormalization::Base => (true, false, EscapedSlashes::KeepUnchanged),
            PathNormalization::MergeSlashes => (true, true, EscapedSlashes::KeepUnchanged),
            PathNormalization::DecodeAndMergeSlashes => {
                (true, true, EscapedSlashes::UnescapeAndForward)
            }
        };
        PathPolicy {
            normalize_path,
            merge_slashes,
            escaped_slashes,
        }
    }
}

/// What becomes of a request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOutcome {
    /// Already normal (or not an origin-form path: `*`, absolute form).
    Unchanged,
    /// Continue with this path (and the original query).
    Rewrite(String),
    /// 400 `path_normalization_failed`.
    Reject,
    /// 307 with `location` = this path (and the original query).
    Redirect(String),
}

fn has_escaped_slash(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && (w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f')
                || w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
    })
}

/// RFC 3986 5.2.4 dot-segment removal (`%2E` as a dot), backslashes read as slashes.
fn remove_dot_segments(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        if is_dot(seg) {
            if i == last {
                out.push("");
            }
        } else if is_dot_dot(seg) {
            out.pop();
            if i == last {
                out.push("");
            }
        } else {
            out.push(seg);
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    normalized
}

/// `path_and_query` under `policy`, as Envoy's connection manager treats it before any filter
/// or route sees the request.
pub fn apply(path_and_query: &str, policy: &PathPolicy) -> PathOutcome {
    if !path_and_query.starts_with(['/', '\\']) {
        return PathOutcome::Unchanged;
    }
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut p: Cow<str> = Cow::Borrowed(path);
    let mut redirect = false;
    if policy.escaped_slashes != EscapedSlashes::KeepUnchanged && has_escaped_slash(&p) {
        match policy.escaped_slashes {
            EscapedSlashes::RejectRequest => return PathOutcome::Reject,
            EscapedSlashes::UnescapeAndRedirect => redirect = true,
            _ => {}
        }
        p = Cow::Owned(decode_slashes(&p));
    }
    if policy.normalize_path && !is_dot_free(&p) {
        p = Cow::Owned(remove_dot_segments(&p));
    }
    if policy.merge_slashes && p.contains("//") {
        let mut merged = String::with_capacity(p.len());
        for c in p.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        p = Cow::Owned(merged);
    }
    if let Cow::Borrowed(_) = p {
        // Nothing above changed it.
        return PathOutcome::Unchanged;
    }
    let mut out = p.into_owned();
    out.push_str(query);
    if redirect {
        PathOutcome::Redirect(out)
    } else if out != path_and_query {
        PathOutcome::Rewrite(out)
    } else {
        PathOutcome::Unchanged
    }
}

/// The normalized form of `path_and_query` under meshConfig `mode` (only the path part
/// changes), or `None` when it is already normal or is not an origin-form path.
pub fn normalize(path_and_query: &str, mode: PathNormalization) -> Option<String> {
    match apply(path_and_query, &mode.into()) {
        PathOutcome::Rewrite(p) => Some(p),
        // The meshConfig modes never reject or redirect.
        PathOutcome::Unchanged | PathOutcome::Reject | PathOutcome::Redirect(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::*;
    use super::*;

    #[test]
    fn modes() {
        let n = |p: &str, m| normalize(p, m).unwrap_or_else(|| p.to_string());
        for (input, base, merged, decoded) in [
            ("/x/../admin", "/admin", "/admin", "/admin"),
            ("/a/./b/", "/a/b/", "/a/b/", "/a/b/"),
            ("/a/b/..", "/a/", "/a/", "/a/"),
            ("/../../etc", "/etc", "/etc", "/etc"),
            (
                "/x/%2e%2E/admin?q=/../",
                "/admin?q=/../",
                "/admin?q=/../",
                "/admin?q=/../",
            ),
            ("/x\\..\\admin", "/admin", "/admin", "/admin"),
            ("//admin//x", "//admin//x", "/admin/x", "/admin/x"),
            (
                "/x%2F..%2Fadmin",
                "/x%2F..%2Fadmin",
                "/x%2F..%2Fadmin",
                "/admin",
            ),
            ("/plain", "/plain", "/plain", "/plain"),
        ] {
            assert_eq!(n(input, Base), base, "BASE {input}");
            assert_eq!(n(input, MergeSlashes), merged, "MERGE_SLASHES {input}");
            assert_eq!(n(input, DecodeAndMergeSlashes), decoded, "DECODE {input}");
            assert_eq!(n(input, None), input, "NONE {input}");
        }
        assert_eq!(normalize("*", Base), Option::None);
        assert_eq!(normalize("/plain", Base), Option::None);
        assert_eq!("merge-slashes".parse(), Ok(MergeSlashes));
        assert!("weird".parse::<PathNormalization>().is_err());
    }

    proptest::proptest! {
        /// The shortcut agrees with the removal: a path it calls dot-free comes back as it was.
        #[test]
        fn dot_free_paths_are_left_as_they_are(
            segments in proptest::collection::vec(
                proptest::sample::select(vec![
                    "", "a", "b.c", ".", "..", "...", ".a", "%2e", "%2E", ".%2e", "%2E.", "%2e%2E",
                    "%2e%2e%2e", "a\\b", "\\",
                ]),
                1..6,
            )
        ) {
            let path = format!("/{}", segments.join("/"));
            if is_dot_free(&path) {
                proptest::prop_assert_eq!(remove_dot_segments(&path), path);
            }
        }
    }

    #[test]
    fn dot_dot_forms() {
        for s in ["..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2e"] {
            assert!(is_dot_dot(s), "{s}");
            assert!(!is_dot_free(&format!("/a/{s}/b")), "{s}");
        }
        for s in [".", "...", "%2e", ".%2f", "%2e%2e%2e", "a..", ""] {
            assert!(!is_dot_dot(s), "{s}");
        }
        assert!(is_dot_free("/a/b.c/...d/"));
        assert!(!is_dot_free("/a\\b"));
    }

    #[test]
    fn envoy_order() {
        // Dot segments first, slashes merged after (Envoy: canonicalPath, then mergeSlashes).
        assert_eq!(normalize("/a//../b", MergeSlashes).as_deref(), Some("/a/b"));
        // merge_slashes alone leaves dot segments and backslashes.
        let merge_only = PathPolicy {
            merge_slashes: true,
            ..PathPolicy::default()
        };
        assert_eq!(
            apply("//x/../a\\b", &merge_only),
            PathOutcome::Rewrite("/x/../a\\b".into())
        );
    }

    #[test]
    fn escaped_slashes() {
        let with = |escaped_slashes| PathPolicy {
            normalize_path: true,
            merge_slashes: true,
            escaped_slashes,
        };
        use EscapedSlashes::*;
        let p = "/x%2f..%5C..%2Fadmin?q=%2F";
        assert_eq!(apply(p, &with(KeepUnchanged)), PathOutcome::Unchanged);
        assert_eq!(apply(p, &with(RejectRequest)), PathOutcome::Reject);
        assert_eq!(
            apply(p, &with(UnescapeAndForward)),
            PathOutcome::Rewrite("/admin?q=%2F".into())
        );
        assert_eq!(
            apply(p, &with(UnescapeAndRedirect)),
            PathOutcome::Redirect("/admin?q=%2F".into())
        );
        // Only escaped slashes trigger the action; the query does not.
        assert_eq!(
            apply("/a?b=%2F", &with(RejectRequest)),
            PathOutcome::Unchanged
        );
        assert_eq!(
            apply("//a", &with(UnescapeAndRedirect)),
            PathOutcome::Rewrite("/a".into())
        );
    }
}
