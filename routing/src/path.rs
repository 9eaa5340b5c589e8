//! Path normalization before routing and authorization, as meshConfig `pathNormalization`
//! configures the HTTP connection manager (istiod `buildHTTPConnectionManager`): `NONE`,
//! `BASE` (the default: Envoy's `normalize_path`, RFC 3986 dot-segment removal, backslashes
//! as slashes, `%2E` as a dot), `MERGE_SLASHES` (also `merge_slashes`), and
//! `DECODE_AND_MERGE_SLASHES` (also `%2F`/`%5C` decoded: `UNESCAPE_AND_FORWARD`). So
//! `/x/../admin` meets policies and routes as `/admin`.

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

impl std::str::FromStr for PathNormalization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "NONE" => Ok(Self::None),
            "BASE" | "DEFAULT" => Ok(Self::Base),
            "MERGE_SLASHES" => Ok(Self::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Ok(Self::DecodeAndMergeSlashes),
            _ => Err(format!(
                "{s:?} is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
            )),
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
    matches!(
        segment.to_ascii_lowercase().as_str(),
        ".." | ".%2e" | "%2e." | "%2e%2e"
    )
}

/// The normalized form of `path_and_query` (only the path part changes), or `None` when it
/// is already normal or is not an origin-form path (`*`, absolute form).
pub fn normalize(path_and_query: &str, mode: PathNormalization) -> Option<String> {
    if mode == PathNormalization::None || !path_and_query.starts_with(['/', '\\']) {
        return None;
    }
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut p: Cow<str> = Cow::Borrowed(path);
    if mode == PathNormalization::DecodeAndMergeSlashes && p.contains('%') {
        p = Cow::Owned(decode_slashes(&p));
    }
    if p.contains('\\') {
        p = Cow::Owned(p.replace('\\', "/"));
    }
    // RFC 3986 5.2.4 on segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = p.split('/').skip(1).collect();
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
        } else if seg.is_empty()
            && i != last
            && matches!(
                mode,
                PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
            )
        {
            // `//` merged; a trailing slash stays.
        } else {
            out.push(seg);
        }
    }
    let mut normalized = String::with_capacity(path_and_query.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    if matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    ) {
        while normalized.contains("//") {
            normalized = normalized.replace("//", "/");
        }
    }
    normalized.push_str(query);
    (normalized != path_and_query).then_some(normalized)
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
}
