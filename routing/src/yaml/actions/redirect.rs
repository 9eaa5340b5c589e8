//! `redirect`, `directResponse` and `rewrite`.

use super::*;

impl Fields<'_, '_> {
    /// `redirect`. `matches` are the route's match blocks (`prefixRewrite`
    /// needs every `uri` condition to be a prefix).
    pub(crate) fn redirect(
        &mut self,
        f: &str,
        r: RedirectY,
        matches: &[RouteMatch],
    ) -> Option<Redirect> {
        self.unsupported(f, &r.extra, schema::HTTP_REDIRECT);
        let uri = r.uri.filter(|s| !s.is_empty());
        let prefix = r.prefix_rewrite.filter(|s| !s.is_empty());
        let authority = r.authority.filter(|s| !s.is_empty());
        let scheme = r.scheme.filter(|s| !s.is_empty());
        let mut ok = true;
        let path = match (uri, prefix) {
            (Some(_), Some(_)) => {
                self.error(f, "redirect may only specify one of uri or prefixRewrite");
                return None;
            }
            (Some(u), None) => Some(RedirectPath::Uri(u)),
            (None, Some(p)) => {
                if matches
                    .iter()
                    .any(|m| m.uri.is_some() && !matches!(m.uri, Some(StringMatch::Prefix(_))))
                {
                    self.error(
                        &format!("{f}.prefixRewrite"),
                        "requires every match block's uri to be a prefix match",
                    );
                    ok = false;
                }
                Some(RedirectPath::Prefix(p))
            }
            (None, None) => None,
        };
        let port_set = present(r.port.clone()).is_some();
        let derive_set = present(r.derive_port.clone()).is_some();
        let port = if port_set && derive_set {
            self.error(f, "redirect may only specify one of port or derivePort");
            return None;
        } else if port_set {
            let pf = format!("{f}.port");
            match self.uint(&pf, r.port, u64::from(u32::MAX))? {
                p @ 1..=65535 => Some(RedirectPort::Port(p as u16)),
                p => {
                    self.error(
                        &pf,
                        format!("port number {p} must be in the range 1..65535"),
                    );
                    return None;
                }
            }
        } else if derive_set {
            let df = format!("{f}.derivePort");
            match self.string(&df, r.derive_port)?.as_str() {
                "FROM_PROTOCOL_DEFAULT" => Some(RedirectPort::FromProtocolDefault),
                "FROM_REQUEST_PORT" => Some(RedirectPort::FromRequestPort),
                other => {
                    self.error(
                        &df,
                        format!("unknown derivePort {other:?} (use FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT)"),
                    );
                    return None;
                }
            }
        } else {
            None
        };
        if path.is_none() && authority.is_none() && scheme.is_none() && port.is_none() {
            self.error(
                f,
                "redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort",
            );
            return None;
        }
        if let Some(s) = &scheme {
            if s != "http" && s != "https" {
                self.error(
                    &format!("{f}.scheme"),
                    format!("invalid redirect scheme {s:?}, must be \"http\" or \"https\""),
                );
                ok = false;
            }
        }
        let cf = format!("{f}.redirectCode");
        let code = match self.uint(&cf, r.redirect_code, u64::from(u32::MAX)) {
            None | Some(0) | Some(301) => 301,
            Some(c @ (302 | 303 | 307 | 308)) => c as u16,
            Some(c @ 300..=399) => {
                self.error(
                    &cf,
                    format!("redirect code {c} is not supported (Envoy redirects with 301, 302, 303, 307 or 308)"),
                );
                return None;
            }
            Some(c) => {
                self.error(
                    &cf,
                    format!("{c} is not a valid redirect code, must be 3xx"),
                );
                return None;
            }
        };
        ok.then_some(Redirect {
            path,
            authority,
            scheme,
            port,
            code,
        })
    }

    /// `directResponse`.
    pub(crate) fn direct_response(
        &mut self,
        f: &str,
        d: DirectResponseY,
    ) -> Option<DirectResponse> {
        self.unsupported(f, &d.extra, schema::HTTP_DIRECT_RESPONSE);
        let sf = format!("{f}.status");
        let status = match present(d.status.clone()) {
            None => {
                self.error(&sf, "missing required field");
                return None;
            }
            Some(_) => self.uint(&sf, d.status, u64::from(u32::MAX))?,
        };
        if !(200..=599).contains(&status) {
            self.error(
                &sf,
                format!("HTTP status {status} is not in range 200..=599"),
            );
            return None;
        }
        let body = match d.body {
            None => None,
            Some(b) => {
                let bf = format!("{f}.body");
                self.unsupported(&bf, &b.extra, schema::HTTP_BODY);
                match (b.string, b.bytes) {
                    (Some(_), Some(_)) => {
                        self.error(&bf, "only one of string or bytes may be set");
                        return None;
                    }
                    (Some(s), None) => Some(s.into_bytes()),
                    (None, Some(b64)) => match crate::actions::base64_decode(&b64) {
                        Ok(bytes) => Some(bytes),
                        Err(e) => {
                            self.error(&format!("{bf}.bytes"), format!("invalid base64: {e}"));
                            return None;
                        }
                    },
                    (None, None) => None,
                }
            }
        };
        let size = body.as_ref().map_or(0, Vec::len);
        if size > MAX_BODY {
            self.error(
                &format!("{f}.body"),
                format!("body of {size} bytes: large direct responses may impact control plane performance, must be less than 1MB"),
            );
            return None;
        }
        if size > LARGE_BODY {
            self.warn(
                &format!("{f}.body"),
                format!("body of {size} bytes: large direct responses may impact control plane performance"),
            );
        }
        Some(DirectResponse {
            status: status as u16,
            body,
        })
    }

    /// `rewrite`.
    pub(crate) fn rewrite(&mut self, f: &str, r: RewriteY) -> Option<Rewrite> {
        self.unsupported(f, &r.extra, schema::HTTP_REWRITE);
        let uri = r.uri.filter(|s| !s.is_empty());
        let authority = r.authority.filter(|s| !s.is_empty());
        if uri.is_some() && r.uri_regex_rewrite.is_some() {
            self.error(f, "rewrite may only contain one of uri or uriRegexRewrite");
            return None;
        }
        let uri = match (uri, r.uri_regex_rewrite) {
            (Some(u), _) => Some(UriRewrite::Prefix(u)),
            (None, Some(rr)) => {
                let rf = format!("{f}.uriRegexRewrite");
                self.unsupported(&rf, &rr.extra, schema::REGEX_REWRITE);
                let (Some(pattern), Some(rewrite)) = (
                    rr.pattern.filter(|s| !s.is_empty()),
                    rr.rewrite.filter(|s| !s.is_empty()),
                ) else {
                    self.error(&rf, "uriRegexRewrite requires both match and rewrite");
                    return None;
                };
                if pattern.len() > MAX_REGEX_LEN {
                    self.error(
                        &format!("{rf}.match"),
                        format!("regex is too large, max length allowed is {MAX_REGEX_LEN}"),
                    );
                    return None;
                }
                match RegexRewrite::new(&pattern, &rewrite) {
                    Ok(re) => Some(UriRewrite::Regex(re)),
                    Err(e) if regex::Regex::new(&pattern).is_err() => {
                        self.error(
                            &format!("{rf}.match"),
                            format!("invalid regex {pattern:?}: {e}"),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.error(&format!("{rf}.rewrite"), e.to_string());
                        return None;
                    }
                }
            }
            (None, None) => None,
        };
        if uri.is_none() && authority.is_none() {
            self.error(
                f,
                "rewrite must specify at least one of uri, uriRegexRewrite or authority",
            );
            return None;
        }
        Some(Rewrite { uri, authority })
    }
}
