//! `explain`'s output: text for people, JSON for tools.

use super::*;

impl Explanation {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "request    {} {}", self.method, self.url);
        if let Some(s) = &self.source {
            let _ = writeln!(out, "source     {s}");
        }
        let _ = writeln!(
            out,
            "service    {} port {} ({})",
            self.service, self.port, self.protocol
        );
        if let Some(p) = &self.path.normalized {
            let _ = writeln!(out, "path       {p} (normalized)");
        }
        if let Some(r) = &self.path.local_reply {
            let _ = writeln!(out, "path       => answered by the waypoint: {r}");
        }
        if let Some(a) = &self.authorization {
            let _ = writeln!(out, "\nauthorization");
            if let Some(authn) = &a.authentication {
                let _ = writeln!(out, "  token: {authn}");
            }
            for p in &a.policies {
                let dry = if p.dry_run { " (dry-run)" } else { "" };
                let _ = writeln!(out, "  {} {}{dry}", p.action, p.policy);
                if p.rules.is_empty() {
                    let _ = writeln!(out, "    no rules: matches nothing");
                }
                for r in &p.rules {
                    let _ = writeln!(
                        out,
                        "    {} {}  (from: {}, to/when: {})",
                        if r.matched { "MATCH" } else { "-    " },
                        r.name,
                        r.principal,
                        r.permission
                    );
                }
            }
            let Some(d) = &a.decision else {
                let details = a.response_code_details.as_deref().unwrap_or("");
                let _ = writeln!(out, "  => DENIED: 401 ({details})");
                return out;
            };
            let v = &d.verdict;
            let _ = match &a.response_code_details {
                Some(details) => writeln!(out, "  => DENIED: 403 RBAC: access denied ({details})"),
                None => writeln!(out, "  => allowed ({} {})", v.action(), v.policy()),
            };
            if let Some(dry) = &d.dry_run {
                let _ = writeln!(
                    out,
                    "  dry-run policies would: {} {}",
                    dry.action(),
                    dry.policy()
                );
            }
            if !d.audited.is_empty() {
                let _ = writeln!(out, "  audited by: {}", d.audited.join(", "));
            }
            if !v.allowed() {
                return out;
            }
        }
        let _ = writeln!(out, "\nrouting");
        for line in self.routing.to_string().lines() {
            let _ = writeln!(out, "  {line}");
        }
        if self.destinations.is_empty() {
            let _ = writeln!(out, "\nno destination: the request gets 404 (flag NR)");
            return out;
        }
        let _ = writeln!(out, "\ndestinations");
        for d in &self.destinations {
            let subset = d
                .subset
                .as_deref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>5.1}%  weight {:<4} {}{subset} port {}",
                d.share * 100.0,
                d.weight,
                d.host,
                d.port
            );
            if let Some(p) = &d.problem {
                let _ = writeln!(out, "           {p}");
            }
            if let Some(c) = &d.cluster {
                let _ = writeln!(
                    out,
                    "           cluster {}  lb {}",
                    c["name"].as_str().unwrap_or("?"),
                    c["lb"].as_str().unwrap_or("?")
                );
                // DestinationRule `tls`, for the endpoints dialled directly.
                if let Some(tls) = c["policy"].get("tls").filter(|t| !t.is_null()) {
                    let _ = writeln!(out, "           tls (direct endpoints) {tls}");
                }
                let eps = c["endpoints"].as_array().cloned().unwrap_or_default();
                if eps.is_empty() {
                    let _ = writeln!(out, "           no endpoints: 503 UH");
                }
                for e in eps {
                    // EDS priority and locality, when the cluster has them (locality failover).
                    let placed = match e["priority"].as_u64() {
                        Some(p) => format!(
                            " priority {p} locality {:?}",
                            e["locality"].as_str().unwrap_or("")
                        ),
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "           endpoint {} {} {} via {}{placed}",
                        e["name"].as_str().unwrap_or("?"),
                        e["target"].as_str().unwrap_or("?"),
                        e["identity"].as_str().unwrap_or(""),
                        e["transport"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        out
    }
}
