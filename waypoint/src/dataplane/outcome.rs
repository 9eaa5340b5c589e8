//! The upstream side of one request (HTTP hooks) or one connection (TCP splice), as one record:
//! filled as the attempts are made and read once at the end, when the access log's upstream
//! fields and the metrics' destination labels are both taken from it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use routing::Endpoint;

use crate::dataplane::upstream::{NoPick, Pick};
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::DestinationLabels;

/// Envoy response flags, in Envoy's order of reporting; each flag once.
#[derive(Debug, Default, Clone)]
pub struct Flags(Vec<&'static str>);

impl Flags {
    pub fn add(&mut self, flag: &'static str) {
        if !self.0.contains(&flag) {
            self.0.push(flag);
        }
    }

    pub fn remove(&mut self, flag: &str) {
        self.0.retain(|f| *f != flag);
    }

    pub fn render(&self) -> String {
        self.0.join(",")
    }

    pub fn has(&self, flag: &str) -> bool {
        self.0.contains(&flag)
    }

    /// The last flag added (what a stream ended with).
    pub fn last(&self) -> Option<&'static str> {
        self.0.last().copied()
    }
}

/// What became of the upstream side.
#[derive(Debug, Default)]
pub struct UpstreamOutcome {
    /// `%UPSTREAM_CLUSTER%`: the cluster's name, or `inbound-pod|<port>||<ip>`.
    pub cluster: String,
    /// `%UPSTREAM_HOST%`: the endpoint of the last attempt.
    pub host: Option<SocketAddr>,
    /// The endpoint of the last attempt (destination labels, its known identity).
    pub endpoint: Option<Arc<Endpoint>>,
    /// `%RESPONSE_FLAGS%`.
    pub flags: Flags,
    /// `%RESPONSE_CODE_DETAILS%`, when set by the waypoint.
    pub details: Cow<'static, str>,
    /// Attempts made.
    pub attempts: u32,
}

impl UpstreamOutcome {
    /// An attempt goes to `pick`.
    pub fn attempt(&mut self, pick: &Pick) {
        self.host = Some(pick.target);
        self.endpoint = Some(pick.endpoint.clone());
        self.attempts += 1;
    }

    /// Nowhere to send the attempt: its flag and details.
    pub fn no_pick(&mut self, no: &NoPick) {
        self.flags.add(no.flag());
        if let Some(details) = no.details() {
            self.details = details.into();
        }
    }

    /// The access log's upstream fields of a TCP connection's line.
    pub fn fill(&self, entry: &mut Entry) {
        entry.upstream_cluster.clone_from(&self.cluster);
        entry.upstream_host = self.host.map(|h| h.to_string()).unwrap_or_default();
        entry.response_flags = self.flags.render();
        if !self.details.is_empty() {
            entry.response_code_details = self.details.to_string();
        }
    }

    /// The metrics' destination labels: `service` is (hostname, namespace) of the service
    /// addressed; the endpoint is the one that served (or was last tried).
    pub fn destination(
        &self,
        service: Option<(&str, &str)>,
        cluster_id: &str,
    ) -> DestinationLabels {
        DestinationLabels::new(service, self.endpoint.as_deref(), cluster_id)
    }

    /// `destination_principal`: the identity the upstream proved, else the one the endpoint
    /// was known by.
    pub fn principal<'a>(&'a self, proved: Option<&'a str>) -> &'a str {
        proved
            .or_else(|| self.endpoint.as_ref().map(|e| &*e.workload.identity))
            .unwrap_or_default()
    }
}
