//! `headers`: request and response header operations, names and values.

use super::*;

impl Fields<'_, '_> {
    /// `headers` of a route (`route_level`) or of a destination.
    pub(crate) fn headers(&mut self, f: &str, h: HeadersY, route_level: bool) -> Option<Headers> {
        self.unsupported(f, &h.extra, schema::HEADERS);
        let mut ok = true;
        let mut authority: Option<String> = None;
        let mut authorities: Vec<(String, String)> = Vec::new();
        let mut request = HeaderOps::default();
        if let Some(r) = h.request {
            let rf = format!("{f}.request");
            self.unsupported(&rf, &r.extra, schema::HEADER_OPERATIONS);
            let set = self.header_values(&rf, "set", r.set, true, &mut authorities, &mut ok);
            let add = self.header_values(&rf, "add", r.add, true, &mut authorities, &mut ok);
            let remove = self.header_removals(&rf, r.remove, &mut ok);
            request = HeaderOps::new(set, add, remove);
            // `set` wins over `add` (istiod TranslateHeadersOperations).
            authority = authorities.first().map(|(_, v)| v.clone());
            if authorities.len() > 1 {
                let (first, _) = &authorities[0];
                let others: Vec<&str> = authorities[1..].iter().map(|(w, _)| w.as_str()).collect();
                if route_level {
                    self.error(
                        &rf,
                        format!(
                            "authority header cannot be set multiple times: have {:?} ({first}), attempting to set {:?} ({})",
                            authorities[0].1,
                            authorities[1].1,
                            others.join(", ")
                        ),
                    );
                    ok = false;
                } else {
                    self.warn(
                        &rf,
                        format!(
                            "authority is set more than once; {first} {:?} applies",
                            authorities[0].1
                        ),
                    );
                }
            }
        }
        let mut response = HeaderOps::default();
        if let Some(r) = h.response {
            let rf = format!("{f}.response");
            self.unsupported(&rf, &r.extra, schema::HEADER_OPERATIONS);
            let mut ignored = Vec::new();
            let set = self.header_values(&rf, "set", r.set, false, &mut ignored, &mut ok);
            let add = self.header_values(&rf, "add", r.add, false, &mut ignored, &mut ok);
            let remove = self.header_removals(&rf, r.remove, &mut ok);
            response = HeaderOps::new(set, add, remove);
        }
        ok.then_some(Headers {
            request,
            response,
            authority,
        })
    }

    /// `set` or `add`: (name, value) pairs. With `authority_allowed`
    /// (request side), `host` / `:authority` go to `authorities` as
    /// (`set.host`, value) instead.
    fn header_values(
        &mut self,
        f: &str,
        list: &str,
        map: Option<BTreeMap<String, Value>>,
        authority_allowed: bool,
        authorities: &mut Vec<(String, String)>,
        ok: &mut bool,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in map.unwrap_or_default() {
            let hf = format!("{f}.{list}.{name}");
            let value = match value {
                Value::String(s) => s,
                other => {
                    self.error(&hf, format!("header value must be a string, got {other}"));
                    *ok = false;
                    continue;
                }
            };
            let is_authority =
                name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority");
            if is_authority && authority_allowed {
                if !valid_value(self, &hf, &value) {
                    *ok = false;
                } else {
                    authorities.push((format!("{list}.{name}"), value));
                }
                continue;
            }
            if !self.header_name(&hf, &name) || !valid_value(self, &hf, &value) {
                *ok = false;
                continue;
            }
            let value = value.replace("%%", "%");
            out.push((name, value));
        }
        out
    }

    fn header_removals(
        &mut self,
        f: &str,
        list: Option<Vec<String>>,
        ok: &mut bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, name) in list.unwrap_or_default().into_iter().enumerate() {
            if self.header_name(&format!("{f}.remove[{i}]"), &name) {
                out.push(name);
            } else {
                *ok = false;
            }
        }
        out
    }

    /// istiod `ValidateHTTPHeaderOperationName`, plus a token check.
    fn header_name(&mut self, f: &str, name: &str) -> bool {
        let problem = if name.is_empty() {
            "header name cannot be empty".to_string()
        } else if name.eq_ignore_ascii_case("host") {
            format!("invalid header {name:?}: cannot set Host header")
        } else if name.starts_with(':') {
            format!("invalid header {name:?}: header cannot have \":\" prefix")
        } else if !name.chars().all(is_tchar) {
            format!("header name {name} is not a valid header name")
        } else {
            return true;
        };
        self.error(f, problem);
        false
    }
}

/// istiod `ValidateHTTPHeaderValue`: no control characters but tab, and
/// `%` only as `%%` or around an Envoy command operator (`%HOSTNAME%`), which
/// the waypoint does not expand (warned: the value is sent as written).
fn valid_value(fl: &mut Fields<'_, '_>, f: &str, value: &str) -> bool {
    if value
        .chars()
        .any(|c| (c.is_ascii_control() && c != '\t') || c == '\u{7f}')
    {
        fl.error(
            f,
            format!("header value configuration {value:?} is invalid"),
        );
        return false;
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut operators = false;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        match value[i + 1..].find('%') {
            Some(end) if end > 0 => {
                operators = true;
                i += end + 2;
            }
            _ => {
                fl.error(
                    f,
                    format!("header value configuration {value:?}: invalid header configuration. Un-escaped %"),
                );
                return false;
            }
        }
    }
    if operators {
        fl.warn(
            f,
            format!("{value:?}: Envoy command operators (%…%) are not expanded by the waypoint; sent as written"),
        );
    }
    true
}
