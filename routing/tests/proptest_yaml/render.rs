//! The model rendered to Istio YAML, and what the rendering contains.

use super::*;

/// What the rendered configuration contains, for the checks.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) files: Vec<(String, String)>,
    /// (canonical hostname, ports) per service.
    pub(crate) services: Vec<(String, Vec<u16>)>,
    /// Canonical hostnames a VirtualService names.
    pub(crate) routed: BTreeSet<String>,
}

pub(crate) fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) struct Svc {
    pub(crate) name: String,
    pub(crate) ns: &'static str,
    pub(crate) external: bool,
    pub(crate) canonical: String,
    pub(crate) ports: Vec<u16>,
    pub(crate) subsets: Vec<String>,
}

impl Svc {
    /// How an object in namespace `from` refers to this service.
    fn reference(&self, form: HostForm, from: &str) -> String {
        if self.external {
            return self.canonical.clone();
        }
        match form {
            HostForm::Short if from == self.ns => self.name.clone(),
            HostForm::NameNs => format!("{}.{}", self.name, self.ns),
            HostForm::NameNsSvc => format!("{}.{}.svc", self.name, self.ns),
            _ => self.canonical.clone(),
        }
    }
}

pub(crate) fn render_str(out: &mut String, key: &str, m: &StrG, values: &[&str], regexes: &[&str]) {
    let v = match m {
        StrG::Exact(i) => format!("{{exact: {}}}", q(values[*i])),
        StrG::Prefix(i) => format!("{{prefix: {}}}", q(values[*i])),
        StrG::Regex(i) => format!("{{regex: {}}}", q(regexes[*i])),
        StrG::Present => "{}".to_string(),
    };
    let _ = writeln!(out, "{key}: {v}");
}

pub(crate) fn render_policy(out: &mut String, indent: &str, p: &PolicyG, ports: &[u16]) -> bool {
    let mut body = String::new();
    if let Some((lb, algo)) = &p.lb {
        let algo = match algo {
            AlgoG::Default => String::new(),
            AlgoG::Ring(n) => format!(", ringHash: {{minimumRingSize: {n}}}"),
            AlgoG::Maglev(i) => format!(", maglev: {{tableSize: {}}}", MAGLEV_PRIMES[*i]),
        };
        let lb = match lb {
            LbG::Simple(s, warmup) => match warmup {
                Some(w) => format!("{{simple: {}, warmupDurationSecs: {w}s}}", SIMPLE_LB[*s]),
                None => format!("{{simple: {}}}", SIMPLE_LB[*s]),
            },
            LbG::Header(h) => format!(
                "{{consistentHash: {{httpHeaderName: {}{algo}}}}}",
                q(HEADER_NAMES[*h])
            ),
            LbG::Cookie(ttl) => format!(
                "{{consistentHash: {{httpCookie: {{name: affinity, ttl: {}}}{algo}}}}}",
                if *ttl { "10s" } else { "0s" }
            ),
            LbG::SourceIp => format!("{{consistentHash: {{useSourceIp: true{algo}}}}}"),
            LbG::Query(i) => format!(
                "{{consistentHash: {{httpQueryParameterName: {}{algo}}}}}",
                QUERY_NAMES[*i]
            ),
        };
        let _ = writeln!(body, "{indent}  loadBalancer: {lb}");
    }
    if let Some((conns, reqs)) = p.pool {
        let _ = writeln!(
            body,
            "{indent}  connectionPool: {{tcp: {{maxConnections: {conns}, connectTimeout: 250ms}}, http: {{http2MaxRequests: {reqs}}}}}"
        );
    }
    if let Some((errors, max_percent)) = p.outlier {
        let _ = writeln!(
            body,
            "{indent}  outlierDetection: {{consecutive5xxErrors: {errors}, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: {max_percent}}}"
        );
    }
    if let Some((port, lb)) = &p.port_level {
        let _ = writeln!(
            body,
            "{indent}  portLevelSettings:\n{indent}  - port: {{number: {}}}\n{indent}    loadBalancer: {{simple: {}}}",
            ports[port.index(ports.len())],
            SIMPLE_LB[*lb]
        );
    }
    if body.is_empty() {
        return false;
    }
    let _ = writeln!(out, "{indent}trafficPolicy:");
    out.push_str(&body);
    true
}

pub(crate) fn render(cfg: &ConfigG) -> Rendered {
    // Pass 1: names, namespaces, hosts, ports and subsets.
    let mut svcs: Vec<Svc> = Vec::new();
    for (i, s) in cfg.services.iter().enumerate() {
        // The index suffix keeps names distinct (the last characters differ).
        let name = format!("{}{i}", s.stem);
        let ns = NAMESPACES[s.ns];
        let canonical = if s.external {
            format!("{name}.example.com")
        } else {
            format!("{name}.{ns}.svc.cluster.local")
        };
        let mut ports: Vec<u16> = Vec::new();
        for p in &s.ports {
            if !ports.contains(&p.number) {
                ports.push(p.number);
            }
        }
        let mut subsets: Vec<String> = Vec::new();
        if let Some(dr) = &s.dr {
            for sub in &dr.subsets {
                let n = SUBSET_NAMES[sub.name].to_string();
                if !subsets.contains(&n) {
                    subsets.push(n);
                }
            }
        }
        svcs.push(Svc {
            name,
            ns,
            external: s.external,
            canonical,
            ports,
            subsets,
        });
    }

    // Pass 2: documents.
    let mut docs: Vec<String> = Vec::new();
    let mut routed = BTreeSet::new();
    for (i, (s, sv)) in cfg.services.iter().zip(&svcs).enumerate() {
        let ns = sv.ns;
        let name = &sv.name;
        // ServiceEntry
        let mut d = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
        );
        let host = if s.external {
            sv.canonical.clone()
        } else {
            match s.form {
                HostForm::Short => name.clone(),
                _ => sv.canonical.clone(),
            }
        };
        let _ = writeln!(d, "  hosts: [{}]", q(&host));
        if !s.vips.is_empty() {
            let vips: Vec<String> = s
                .vips
                .iter()
                .enumerate()
                .map(|(k, (v6, x))| {
                    if *v6 {
                        format!("'fd00::{i}:{k}:{x:x}'")
                    } else {
                        format!("10.{i}.{k}.{x}")
                    }
                })
                .collect();
            let _ = writeln!(d, "  addresses: [{}]", vips.join(", "));
        }
        d.push_str("  ports:\n");
        let mut seen = Vec::new();
        for (k, p) in s.ports.iter().enumerate() {
            if seen.contains(&p.number) {
                continue;
            }
            seen.push(p.number);
            let mut pname = PORT_NAMES[p.name].to_string();
            if p.suffix {
                let _ = write!(pname, "-p{k}");
            }
            let _ = write!(d, "  - number: {}\n    name: {}\n", p.number, q(&pname));
            if let Some(pr) = p.protocol {
                let _ = writeln!(d, "    protocol: {}", PROTOCOLS[pr]);
            }
            if let Some(t) = p.target_port {
                let _ = writeln!(d, "    targetPort: {t}");
            }
        }
        d.push_str("  resolution: STATIC\n");
        let labels = |w: &WorkloadG| {
            let mut l = format!("{{app: {}, version: v{}", q(name), w.version);
            if let Some(t) = w.tier {
                let _ = write!(l, ", tier: {}", if t { "a" } else { "b" });
            }
            l.push('}');
            l
        };
        let address = |j: usize, w: &WorkloadG| format!("172.{}.{j}.{}", 16 + i, w.last_octet);
        if s.inline {
            if !s.workloads.is_empty() {
                d.push_str("  endpoints:\n");
            }
            for (j, w) in s.workloads.iter().enumerate() {
                let _ = writeln!(
                    d,
                    "  - {{address: {}, labels: {}, serviceAccount: {}}}",
                    address(j, w),
                    labels(w),
                    SERVICE_ACCOUNTS[w.sa]
                );
            }
        } else {
            if s.select_all {
                d.push_str("  workloadSelector: {labels: {}}\n");
            } else {
                let _ = writeln!(d, "  workloadSelector: {{labels: {{app: {}}}}}", q(name));
            }
            for (j, w) in s.workloads.iter().enumerate() {
                docs.push(format!(
                    "apiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\nmetadata: {{name: {name}-w{j}, namespace: {ns}}}\nspec:\n  address: {}\n  serviceAccount: {}\n  labels: {}\n",
                    address(j, w),
                    SERVICE_ACCOUNTS[w.sa],
                    labels(w)
                ));
            }
        }
        docs.push(d);

        // DestinationRule
        if let Some(dr) = &s.dr {
            let mut d = format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {}\n",
                q(&sv.reference(dr.form, ns))
            );
            if let Some(p) = &dr.policy {
                render_policy(&mut d, "  ", p, &sv.ports);
            }
            let mut names = Vec::new();
            if !dr.subsets.is_empty() {
                d.push_str("  subsets:\n");
            }
            for sub in &dr.subsets {
                let n = SUBSET_NAMES[sub.name];
                if names.contains(&n) {
                    continue;
                }
                names.push(n);
                let labels = match &sub.labels {
                    SubsetLabels::Version(v) => format!("{{version: v{v}}}"),
                    SubsetLabels::Tier(t) => format!("{{tier: {}}}", if *t { "a" } else { "b" }),
                    SubsetLabels::All => "{}".to_string(),
                };
                let _ = writeln!(d, "  - name: {n}\n    labels: {labels}");
                if let Some(p) = &sub.policy {
                    render_policy(&mut d, "    ", p, &sv.ports);
                }
            }
            docs.push(d);
        }

        // VirtualService
        if let Some(vs) = &s.vs {
            let extra = vs
                .extra_host
                .map(|x| x.index(svcs.len()))
                .filter(|x| *x != i);
            let mut hosts = vec![q(&sv.reference(vs.form, ns))];
            routed.insert(sv.canonical.clone());
            if let Some(x) = extra {
                hosts.push(q(&svcs[x].canonical));
                routed.insert(svcs[x].canonical.clone());
            }
            let mut d = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{}]\n  http:\n",
                hosts.join(", ")
            );
            for (r, route) in vs.routes.iter().enumerate() {
                d.push_str("  - ");
                if route.named {
                    let _ = write!(d, "name: r{r}\n    ");
                }
                if !route.matches.is_empty() {
                    d.push_str("match:\n");
                    for m in &route.matches {
                        render_match(&mut d, m, &sv.ports, name);
                    }
                    d.push_str("    ");
                }
                d.push_str("route:\n");
                let n = route.dests.len();
                let all_zero = route.dests.iter().all(|x| x.weight == 0);
                for (k, dest) in route.dests.iter().enumerate() {
                    let t = &svcs[dest.target.index(svcs.len())];
                    let _ = write!(
                        d,
                        "    - destination:\n        host: {}\n",
                        q(&t.reference(dest.form, ns))
                    );
                    if let (Some(sub), false) = (dest.subset, t.subsets.is_empty()) {
                        let _ = writeln!(
                            d,
                            "        subset: {}",
                            t.subsets[sub.index(t.subsets.len())]
                        );
                    }
                    // No port only where the request's port is a port of the
                    // destination: a one-host VirtualService routing to itself.
                    let implicit_ok = extra.is_none() && std::ptr::eq(t, sv);
                    if dest.explicit_port || !implicit_ok {
                        let _ = writeln!(
                            d,
                            "        port: {{number: {}}}",
                            t.ports[dest.port.index(t.ports.len())]
                        );
                    }
                    let weight = if n == 1 {
                        route.weight_on_single
                    } else if all_zero && k == 0 {
                        Some(1)
                    } else {
                        Some(dest.weight)
                    };
                    if let Some(w) = weight {
                        let _ = writeln!(d, "      weight: {w}");
                    }
                }
            }
            docs.push(d);
        }
    }

    // Deal the documents into 1–3 files.
    let mut texts = vec![String::new(); cfg.files];
    for (k, doc) in docs.iter().enumerate() {
        let f = cfg.placement[k % cfg.placement.len()].index(cfg.files);
        if !texts[f].is_empty() {
            texts[f].push_str("---\n");
        }
        texts[f].push_str(doc);
    }
    Rendered {
        files: texts
            .into_iter()
            .enumerate()
            .map(|(k, t)| (format!("f{k}.yaml"), t))
            .collect(),
        services: svcs
            .iter()
            .map(|s| (s.canonical.clone(), s.ports.clone()))
            .collect(),
        routed,
    }
}

pub(crate) fn render_match(d: &mut String, m: &MatchG, ports: &[u16], name: &str) {
    let mut first = true;
    let mut line = |d: &mut String| {
        d.push_str(if first { "    - " } else { "      " });
        first = false;
    };
    if let Some(u) = &m.uri {
        line(d);
        render_str(d, "uri", u, &PATHS, &URI_REGEXES);
        if m.ignore_uri_case {
            line(d);
            d.push_str("ignoreUriCase: true\n");
        }
    }
    let header_block = |d: &mut String, key: &str, hs: &[(usize, StrG)], first: bool| {
        d.push_str(if first { "    - " } else { "      " });
        let _ = writeln!(d, "{key}:");
        let mut seen = Vec::new();
        for (h, cond) in hs {
            if seen.contains(h) {
                continue;
            }
            seen.push(*h);
            d.push_str("        ");
            render_str(
                d,
                &q(HEADER_NAMES[*h]),
                cond,
                &HEADER_VALUES,
                &HEADER_REGEXES,
            );
        }
    };
    if !m.headers.is_empty() {
        header_block(d, "headers", &m.headers, first);
        first = false;
    }
    if !m.without_headers.is_empty() {
        header_block(d, "withoutHeaders", &m.without_headers, first);
        first = false;
    }
    let mut line = |d: &mut String| {
        d.push_str(if first { "    - " } else { "      " });
        first = false;
    };
    if let Some(meth) = &m.method {
        line(d);
        render_str(d, "method", meth, &METHODS, &["GET|POST"]);
    }
    if let Some((qn, cond)) = &m.query {
        line(d);
        let _ = writeln!(d, "queryParams:");
        d.push_str("        ");
        render_str(d, QUERY_NAMES[*qn], cond, &HEADER_VALUES, &["[0-9]+"]);
    }
    if let Some(p) = &m.port {
        line(d);
        let _ = writeln!(d, "port: {}", ports[p.index(ports.len())]);
    }
    if let Some(ns) = m.source_namespace {
        line(d);
        let _ = writeln!(d, "sourceNamespace: {}", NAMESPACES[ns]);
    }
    if m.authority_prefix {
        line(d);
        let _ = writeln!(d, "authority: {{prefix: {}}}", q(name));
    }
    if first {
        // an empty block `{}` matches everything
        d.push_str("    - {}\n");
    }
}
