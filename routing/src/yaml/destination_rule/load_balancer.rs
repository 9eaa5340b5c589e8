//! `loadBalancer`: simple policies, `warmup`, `consistentHash` (ring hash, maglev, hash keys).

use super::*;

impl Fields<'_, '_> {
    pub(super) fn load_balancer(&mut self, f: &str, lb: LoadBalancerY) -> LoadBalancer {
        self.unsupported(f, &lb.extra, schema::LOAD_BALANCER_SETTINGS);
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            self.error(f, "simple and consistentHash are mutually exclusive");
        }
        let simple = match lb.simple.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("UNSPECIFIED") => LbPolicy::LeastRequest,
            Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
            Some("RANDOM") => LbPolicy::Random,
            Some("LEAST_REQUEST" | "LEAST_CONN") => LbPolicy::LeastRequest,
            Some("PASSTHROUGH") => LbPolicy::Passthrough,
            Some(_) => {
                let v = lb.simple.unwrap_or_default();
                self.error(
                    &format!("{f}.simple"),
                    format!("unknown value {v:?} (expected ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH or UNSPECIFIED)"),
                );
                LbPolicy::LeastRequest
            }
        };
        let consistent_hash = lb
            .consistent_hash
            .map(|ch| self.consistent_hash(&format!("{f}.consistentHash"), ch));
        let legacy = self.duration(
            &format!("{f}.warmupDurationSecs"),
            lb.warmup_duration_secs.clone(),
            DurationRule::NonNegative,
        );
        let warmup = match lb.warmup {
            Some(w) => {
                if present(lb.warmup_duration_secs).is_some() {
                    self.warn(&format!("{f}.warmupDurationSecs"), "ignored: warmup is set");
                }
                self.warmup(&format!("{f}.warmup"), w)
            }
            None => legacy.map(Warmup::linear),
        };
        let out = LoadBalancer {
            simple,
            consistent_hash,
            warmup,
            locality: None,
        };
        if out.warmup.is_some()
            && !matches!(out.policy(), LbPolicy::RoundRobin | LbPolicy::LeastRequest)
        {
            self.warn(
                &format!("{f}.warmup"),
                format!(
                    "applies only to ROUND_ROBIN and LEAST_REQUEST, not {:?}; ignored",
                    out.policy()
                ),
            );
        }
        out
    }

    fn warmup(&mut self, f: &str, w: WarmupY) -> Option<Warmup> {
        self.unsupported(f, &w.extra, schema::WARMUP_CONFIGURATION);
        let duration = if present(w.duration.clone()).is_none() {
            self.error(&format!("{f}.duration"), "missing required field");
            None
        } else {
            self.duration(
                &format!("{f}.duration"),
                w.duration,
                DurationRule::NonNegative,
            )
        };
        let minimum_percent = self
            .float(
                &format!("{f}.minimumPercent"),
                w.minimum_percent,
                0.0,
                100.0,
                true,
            )
            .unwrap_or(Warmup::DEFAULT_MINIMUM_PERCENT);
        let aggression = self
            .float(
                &format!("{f}.aggression"),
                w.aggression,
                0.0,
                f64::MAX,
                false,
            )
            .unwrap_or(Warmup::DEFAULT_AGGRESSION);
        Some(Warmup {
            duration: duration?,
            minimum_percent,
            aggression,
        })
    }

    fn consistent_hash(&mut self, f: &str, ch: ConsistentHashY) -> ConsistentHash {
        self.unsupported(f, &ch.extra, schema::CONSISTENT_HASH_LB);
        let mut keys: Vec<HashKey> = Vec::new();
        if let Some(h) = ch.http_header_name.filter(|h| !h.is_empty()) {
            keys.push(HashKey::Header(h.to_ascii_lowercase()));
        }
        if let Some(c) = ch.http_cookie {
            let cf = format!("{f}.httpCookie");
            self.unsupported(&cf, &c.extra, schema::HTTP_COOKIE);
            let name = c.name.filter(|n| !n.is_empty());
            if name.is_none() {
                self.error(&format!("{cf}.name"), "missing required field");
            }
            let ttl = if present(c.ttl.clone()).is_none() {
                self.error(
                    &format!("{cf}.ttl"),
                    "missing required field (Istio requires it; 0s = session cookie)",
                );
                None
            } else {
                self.duration(&format!("{cf}.ttl"), c.ttl, DurationRule::NonNegative)
            };
            keys.push(HashKey::Cookie(HttpCookie {
                name: name.unwrap_or_default(),
                path: c.path.filter(|p| !p.is_empty()),
                ttl,
            }));
        }
        if self.boolean(&format!("{f}.useSourceIp"), ch.use_source_ip) == Some(true) {
            keys.push(HashKey::SourceIp);
        }
        if let Some(q) = ch.http_query_parameter_name.filter(|q| !q.is_empty()) {
            keys.push(HashKey::QueryParameter(q));
        }
        if keys.len() > 1 {
            self.error(
                f,
                "only one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName may be set",
            );
        }
        if keys.is_empty() {
            self.warn(
                f,
                "no hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName); requests are spread at random",
            );
        }
        let legacy_f = format!("{f}.minimumRingSize");
        let legacy = self.uint(&legacy_f, ch.minimum_ring_size, MAX_RING_SIZE);
        let explicit = ch.ring_hash.is_some() || ch.maglev.is_some();
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.error(f, "ringHash and maglev are mutually exclusive");
        }
        let algorithm = if let Some(m) = ch.maglev {
            let mf = format!("{f}.maglev");
            self.unsupported(&mf, &m.extra, schema::MAGLEV);
            let tf = format!("{mf}.tableSize");
            let size = match self.uint(&tf, m.table_size, u64::MAX) {
                None | Some(0) => DEFAULT_MAGLEV_TABLE_SIZE,
                Some(n) if n >= MAGLEV_TABLE_SIZE_LIMIT => {
                    self.error(
                        &tf,
                        format!("must be less than {MAGLEV_TABLE_SIZE_LIMIT}, got {n}"),
                    );
                    DEFAULT_MAGLEV_TABLE_SIZE
                }
                Some(n) if !is_prime(n) => {
                    self.error(&tf, format!("must be a prime number, got {n}"));
                    DEFAULT_MAGLEV_TABLE_SIZE
                }
                Some(n) => n,
            };
            HashAlgorithm::Maglev { table_size: size }
        } else if let Some(r) = ch.ring_hash {
            let rf = format!("{f}.ringHash");
            self.unsupported(&rf, &r.extra, schema::RING_HASH);
            let size = self
                .uint(
                    &format!("{rf}.minimumRingSize"),
                    r.minimum_ring_size,
                    MAX_RING_SIZE,
                )
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
            HashAlgorithm::RingHash {
                minimum_ring_size: size,
            }
        } else {
            HashAlgorithm::RingHash {
                minimum_ring_size: legacy
                    .filter(|n| *n > 0)
                    .unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
            }
        };
        if legacy.is_some_and(|n| n > 0) && explicit {
            self.warn(
                &legacy_f,
                "deprecated field ignored: ringHash or maglev is set",
            );
        }
        ConsistentHash {
            key: keys.into_iter().next(),
            algorithm,
        }
    }
}
