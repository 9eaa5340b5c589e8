//! `corsPolicy`.

use super::*;

impl Fields<'_, '_> {
    /// `corsPolicy`.
    pub(crate) fn cors(&mut self, f: &str, c: CorsY) -> Option<Cors> {
        self.unsupported(f, &c.extra, schema::CORS_POLICY);
        let errors = self.diag.errors.len();
        let mut allow_origins = Vec::new();
        if let Some(list) = c.allow_origins {
            for (i, sm) in list.into_iter().enumerate() {
                let of = format!("{f}.allowOrigins[{i}]");
                let Some(m) = string_match(self.at, &of, sm, Place::Other, self.diag) else {
                    continue;
                };
                let empty = match &m {
                    StringMatch::Exact(s) | StringMatch::Prefix(s) => s.is_empty(),
                    StringMatch::Regex(_) => false,
                    _ => true,
                };
                if empty {
                    self.error(&of, "'' is not a valid match type for CORS allow origins");
                    continue;
                }
                allow_origins.push(m);
            }
        } else if let Some(list) = c.allow_origin {
            self.warn(
                &format!("{f}.allowOrigin"),
                "deprecated; use allowOrigins (taken as exact matches)",
            );
            allow_origins.extend(list.into_iter().map(StringMatch::Exact));
        }
        let allow_methods = c.allow_methods.unwrap_or_default();
        for (i, m) in allow_methods.iter().enumerate() {
            const METHODS: [&str; 10] = [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
            ];
            if !METHODS.contains(&m.as_str()) {
                self.error(
                    &format!("{f}.allowMethods[{i}]"),
                    format!("{m:?} is not a supported HTTP method"),
                );
            }
        }
        let allow_headers = c.allow_headers.unwrap_or_default();
        let expose_headers = c.expose_headers.unwrap_or_default();
        for (list, name) in [
            (&allow_headers, "allowHeaders"),
            (&expose_headers, "exposeHeaders"),
        ] {
            for (i, h) in list.iter().enumerate() {
                let hf = format!("{f}.{name}[{i}]");
                if h.is_empty() {
                    self.error(&hf, "header name cannot be empty");
                } else if h != "*" && !h.chars().all(is_tchar) {
                    self.error(&hf, format!("header name {h} is not a valid header name"));
                }
            }
        }
        let mf = format!("{f}.maxAge");
        let max_age = self.duration(&mf, c.max_age, DurationRule::AtLeastMillis);
        if max_age.is_some_and(|d| d.subsec_nanos() != 0) {
            self.error(
                &mf,
                "max_age duration is accurate only to seconds precision",
            );
        }
        let allow_credentials = self
            .boolean(&format!("{f}.allowCredentials"), c.allow_credentials)
            .unwrap_or(false);
        let uf = format!("{f}.unmatchedPreflights");
        let unmatched_preflights = match self.string(&uf, c.unmatched_preflights).as_deref() {
            None | Some("UNSPECIFIED" | "FORWARD") => UnmatchedPreflights::Forward,
            Some("IGNORE") => UnmatchedPreflights::Ignore,
            Some(other) => {
                self.error(
                    &uf,
                    format!("unknown value {other:?} (use FORWARD or IGNORE)"),
                );
                UnmatchedPreflights::Forward
            }
        };
        if self.diag.errors.len() > errors {
            return None;
        }
        Some(Cors {
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: max_age.map(|d| Duration::from_secs(d.as_secs())),
            allow_credentials,
            unmatched_preflights,
        })
    }
}
