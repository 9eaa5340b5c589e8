//! Istio `Headers` (route level and per destination): `request` / `response`
//! operations `set`, `add`, `remove`, as istiod translates them
//! (`TranslateHeadersOperations`): `set` overwrites
//! (`OVERWRITE_IF_EXISTS_OR_ADD`), `add` appends (`APPEND_IF_EXISTS_OR_ADD`),
//! entries sorted by name, `set` before `add`; Envoy applies the removals of a
//! list before its additions. `host`/`:authority` in `request.set`/`add` is
//! not a header operation but the host rewrite ([`Headers::authority`]).

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderOpKind {
    /// Replace every value of the header (or add it).
    Set,
    /// Append one more value (a new header line).
    Add,
    /// Remove the header.
    Remove,
}

/// One header operation; `name` is lowercase, `value` is empty for `Remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderOp {
    pub kind: HeaderOpKind,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Where header operations are applied (the proxy implements this for its
/// request/response header type). Names are lowercase.
pub trait HeaderSink {
    /// Replace all values of `name` with `value` (or add it).
    fn set_header(&mut self, name: &str, value: &str);
    /// Add `value` as one more value of `name`.
    fn append_header(&mut self, name: &str, value: &str);
    /// Remove every value of `name`.
    fn remove_header(&mut self, name: &str);
}

/// A plain header list: names compare ASCII case-insensitively.
impl HeaderSink for Vec<(String, String)> {
    fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.push((name.to_string(), value.to_string()));
    }

    fn append_header(&mut self, name: &str, value: &str) {
        self.push((name.to_string(), value.to_string()));
    }

    fn remove_header(&mut self, name: &str) {
        self.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

/// An ordered list of operations for one direction: every `Remove` first,
/// then `Set`s, then `Add`s (each sorted by name), as Envoy evaluates them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct HeaderOps {
    pub ops: Box<[HeaderOp]>,
}

impl HeaderOps {
    /// Build from Istio's three lists (names are lowercased; `set` and `add`
    /// are sorted by name).
    pub fn new(
        set: impl IntoIterator<Item = (String, String)>,
        add: impl IntoIterator<Item = (String, String)>,
        remove: impl IntoIterator<Item = String>,
    ) -> HeaderOps {
        let mut ops: Vec<HeaderOp> = remove
            .into_iter()
            .map(|name| HeaderOp {
                kind: HeaderOpKind::Remove,
                name: name.to_ascii_lowercase(),
                value: String::new(),
            })
            .collect();
        for (kind, list) in [
            (HeaderOpKind::Set, set.into_iter().collect::<Vec<_>>()),
            (HeaderOpKind::Add, add.into_iter().collect::<Vec<_>>()),
        ] {
            let mut list: Vec<HeaderOp> = list
                .into_iter()
                .map(|(name, value)| HeaderOp {
                    kind,
                    name: name.to_ascii_lowercase(),
                    value,
                })
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            ops.extend(list);
        }
        HeaderOps {
            ops: ops.into_boxed_slice(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &HeaderOp> {
        self.ops.iter()
    }

    /// Apply in order.
    pub fn apply<S: HeaderSink + ?Sized>(&self, sink: &mut S) {
        HeaderOps::apply_layered(&[self], sink);
    }

    /// Apply several lists as one, the way istiod merges a route's and its
    /// single destination's operations into one Envoy list: every removal
    /// of every layer first, then the sets and adds layer by layer (so a
    /// later layer's `set` wins). Pass `[&route.headers.request,
    /// &destination.headers.request]`.
    pub fn apply_layered<S: HeaderSink + ?Sized>(layers: &[&HeaderOps], sink: &mut S) {
        let all = || layers.iter().flat_map(|l| l.ops.iter());
        for op in all().filter(|op| op.kind == HeaderOpKind::Remove) {
            sink.remove_header(&op.name);
        }
        for op in all() {
            match op.kind {
                HeaderOpKind::Set => sink.set_header(&op.name, &op.value),
                HeaderOpKind::Add => sink.append_header(&op.name, &op.value),
                HeaderOpKind::Remove => {}
            }
        }
    }
}

impl fmt::Display for HeaderOps {
    /// `remove x-a; set x-b: 1; add x-c: 2`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match op.kind {
                HeaderOpKind::Remove => write!(f, "remove {}", op.name)?,
                HeaderOpKind::Set => write!(f, "set {}: {}", op.name, op.value)?,
                HeaderOpKind::Add => write!(f, "add {}: {}", op.name, op.value)?,
            }
        }
        Ok(())
    }
}

/// Istio `Headers`: operations on the request (towards the destination) and
/// on the response (towards the client).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
    /// `host` / `:authority` in `request.set` (or `add`): Envoy's host
    /// rewrite, not a header operation (`set` wins over `add`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

impl Headers {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty() && self.authority.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn order_remove_set_add() {
        let ops = HeaderOps::new(
            kv(&[("X-B", "2"), ("x-a", "1")]),
            kv(&[("x-c", "3")]),
            vec!["X-Old".to_string()],
        );
        assert_eq!(
            ops.to_string(),
            "remove x-old; set x-a: 1; set x-b: 2; add x-c: 3"
        );
        let mut h = kv(&[
            ("x-old", "o"),
            ("x-a", "keep?"),
            ("x-c", "0"),
            ("other", "y"),
        ]);
        ops.apply(&mut h);
        assert_eq!(
            h,
            kv(&[
                ("x-c", "0"),
                ("other", "y"),
                ("x-a", "1"),
                ("x-b", "2"),
                ("x-c", "3")
            ])
        );
    }

    #[test]
    fn layered_removes_first_then_later_set_wins() {
        let route = HeaderOps::new(kv(&[("x-v", "route")]), kv(&[("x-r", "1")]), vec![]);
        let dest = HeaderOps::new(kv(&[("x-v", "dest")]), vec![], vec!["x-r".into()]);
        let mut h: Vec<(String, String)> = kv(&[("x-r", "client")]);
        HeaderOps::apply_layered(&[&route, &dest], &mut h);
        // dest's remove runs before route's add (one Envoy list), dest's set last
        assert_eq!(h, kv(&[("x-r", "1"), ("x-v", "dest")]));
        let empty = Headers::default();
        assert!(empty.is_empty());
        assert_eq!(
            serde_json::to_value(&route).unwrap(),
            serde_json::json!([
                {"kind": "set", "name": "x-v", "value": "route"},
                {"kind": "add", "name": "x-r", "value": "1"}
            ])
        );
    }
}
