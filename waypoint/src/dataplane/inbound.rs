//! What happens to one accepted tunnel: HTTP goes to pingora's `HttpProxy` (HTTP/1.1 or h2c,
//! chosen by sniffing the first bytes), TCP is spliced to an endpoint over HBONE.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSocket, VirtualSocketStream};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{GetProxyDigest, GetSocketDigest, SocketDigest};
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use pingora_proxy::HttpProxy;
use routing::{Destination, Protocol, Service, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::dataplane::drain::{Drain, Outcome};
use crate::dataplane::outcome::UpstreamOutcome;
use crate::dataplane::proxy::{Waypoint, DEFAULT_RETRY_ATTEMPTS};
use crate::dataplane::splice::{splice, SpliceEnd, Spliced};
use crate::dataplane::tunnel::{TunnelData, TunnelInfo};
use crate::dataplane::upstream::{
    self, Attempt, ClusterKey, ConnectionHash, Dial, NoPick, PodTarget,
};
use crate::telemetry::access_log::{timestamp, AccessLog, Entry};
use crate::telemetry::metrics::{DestinationLabels, IstioMetrics};
use crate::telemetry::status::Telemetry;
use crate::transport::hbone::{ConnectError, H2Stream, Lease, TunnelPolicy, TunnelPool};
use crate::transport::header_deadline::{HeaderClock, HeaderDeadline};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a tunnel say it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    H2c,
    Tcp,
}

pub struct Inbound {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub h1: Arc<HttpProxy<Waypoint>>,
    pub h2c: Arc<HttpProxy<Waypoint>>,
    pub pool: Arc<TunnelPool>,
    pub access_log: Arc<AccessLog>,
    pub telemetry: Telemetry,
    /// How long a tunnel on a port of unknown protocol may stay silent before it is treated as TCP.
    pub sniff_timeout: Duration,
    /// Total time for an HTTP/1.1 request's headers inside a tunnel (`None`: pingora's per-read
    /// timeout only).
    pub request_headers_timeout: Option<Duration>,
    /// How long a write to the client may wait for its flow-control window.
    pub send_timeout: Option<Duration>,
    /// The SIGTERM drain: TCP splices still open at its cut are reset.
    pub drain: Arc<Drain>,
}

impl Inbound {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub async fn serve_tunnel(
        &self,
        mut tunnel: H2Stream,
        info: Arc<TunnelInfo>,
        protocol: Protocol,
        shutdown: ShutdownWatch,
    ) {
        let (kind, prefix) = if protocol == Protocol::Tcp {
            (Sniffed::Tcp, Vec::new())
        } else {
            sniff(&mut tunnel, protocol, self.sniff_timeout).await
        };
        debug!(dst = %info.original_dst, ?protocol, ?kind, "tunnel accepted");
        match kind {
            Sniffed::Tcp => self.splice(tunnel, prefix, &info).await,
            Sniffed::Http1 | Sniffed::H2c => {
                let end = tunnel.end().cloned();
                // HTTP/1.1: request headers must complete within the deadline (HTTP/2 inside
                // the tunnel is bounded by its own header limits and stream handling).
                let (socket, header_clock): (Box<dyn VirtualSocket>, _) =
                    match (kind, self.request_headers_timeout) {
                        (Sniffed::Http1, Some(limit)) => {
                            let clock = Arc::new(HeaderClock::default());
                            let socket = HeaderDeadline::new(tunnel, clock.clone(), limit);
                            (Box::new(socket), Some(clock))
                        }
                        _ => (Box::new(tunnel), None),
                    };
                let mut stream = Stream::from(VirtualSocketStream::new(socket));
                stream.rewind(&prefix);
                let digest = SocketDigest::from_raw_fd(-1);
                let _ = digest
                    .peer_addr
                    .set(Some(PingoraAddr::Inet(info.source_addr)));
                let _ = digest.local_addr.set(Some(PingoraAddr::Inet(info.local)));
                let _ = digest
                    .original_dst
                    .set(Some(PingoraAddr::Inet(info.original_dst)));
                stream.set_socket_digest(digest);
                let ok = ResponseHeader::build(200, None).expect("static header");
                let data = TunnelData {
                    info: info.clone(),
                    header_clock,
                    end,
                };
                stream.set_proxy_digest(ProxyDigest::new(Box::new(ok), Some(Box::new(data))));
                let proxy = if kind == Sniffed::H2c {
                    &self.h2c
                } else {
                    &self.h1
                };
                let _ = ServerApp::process_new(proxy, Box::new(stream), &shutdown).await;
            }
        }
    }

    /// TCP: pick an endpoint of the service and copy bytes both ways over an HBONE tunnel.
    async fn splice(&self, mut down: H2Stream, prefix: Vec<u8>, info: &TunnelInfo) {
        let started = Instant::now();
        let start_time = SystemTime::now();
        let snapshot = self.snapshot();
        let mut entry = Entry {
            start_time: timestamp(start_time),
            downstream_local_address: info.original_dst.to_string(),
            downstream_remote_address: info.source_addr.to_string(),
            downstream_claimed_address: info
                .claimed_source
                .map(|a| a.to_string())
                .unwrap_or_default(),
            source_principal: info.source_identity.to_string(),
            config_version: snapshot.version(),
            ..Default::default()
        };
        let mut dest_service: Option<Service> = None;
        // The service whose policies apply (none for pod-addressed traffic: the waypoint's).
        let mut authz_service: Option<String> = None;
        // Where the connection goes, resolved once, through the upstream path the HTTP hooks use.
        // The upstream side, reported once at the end (access log and metrics).
        let mut outcome = UpstreamOutcome::default();
        let target: Option<SpliceTarget> = match snapshot.resolve_destination(info.original_dst) {
            Some(Destination::Service { service, port }) => {
                dest_service = Some(service.clone());
                authz_service = Some(service.hostname.clone());
                // A VirtualService `tcp` route may send the connection elsewhere (weighted).
                let conn = routing::TcpConnection {
                    destination: Some(info.original_dst.ip()),
                    source_namespace: Some(info.source_identity.namespace.as_str()),
                    source_labels: info.source_workload(&snapshot).map(|e| &*e.labels),
                };
                let key = match snapshot
                    .tcp_route(service, port.number, &conn)
                    .and_then(|r| routing::pick_weighted(&r.destinations, &mut rand::thread_rng()))
                {
                    Some(d) => {
                        ClusterKey::new(&d.host, d.port.unwrap_or(port.number), d.subset.as_deref())
                    }
                    None => ClusterKey::new(&service.hostname, port.number, None),
                };
                Some(SpliceTarget::Cluster(key))
            }
            Some(Destination::Pod {
                endpoint,
                port,
                services,
                ..
            }) => {
                dest_service = services.first().map(|s| (*s).clone());
                match PodTarget::new(&snapshot, endpoint, port) {
                    Ok(pod) => {
                        outcome.cluster = pod.cluster_name();
                        Some(SpliceTarget::Pod(pod))
                    }
                    Err(e) => {
                        warn!(dst = %info.original_dst, error = %e, "TCP tunnel: pod endpoint unusable");
                        outcome.cluster = PodTarget::cluster_name_of(endpoint, port);
                        None
                    }
                }
            }
            None => None,
        };
        let source = info.source_labels(&snapshot).clone();
        let cluster_id = self.telemetry.cluster_id.clone();
        let metrics = &self.telemetry.metrics.istio;
        let unserved = |flags: &str| {
            let labels = IstioMetrics::tcp_labels(
                source.clone(),
                DestinationLabels::new(
                    dest_service
                        .as_ref()
                        .map(|s| (s.hostname.as_str(), s.namespace.as_str())),
                    None,
                    &cluster_id,
                ),
                flags,
            );
            metrics.tcp_opened(&labels);
            metrics.tcp_closed(&labels, 0, prefix.len() as u64);
        };
        let policies = snapshot
            .authorization()
            .for_service(authz_service.as_deref(), false);
        if !policies.is_empty() {
            let decision = policies.evaluate(&crate::dataplane::proxy::TcpAuthz(info));
            self.telemetry.metrics.authz.record(&decision, false);
            let note = crate::dataplane::proxy::AuthzNote::from(&decision);
            (entry.authz, entry.authz_dry_run, entry.authz_audit) =
                (note.decision, note.dry_run, note.audit);
            if let Some(details) = decision.verdict.response_code_details() {
                // Envoy's network RBAC: the connection is closed, its termination details say why.
                debug!(dst = %info.original_dst, %details, "TCP connection denied");
                entry.connection_termination_details = details;
                unserved("-");
                self.access_log.write(&entry);
                return;
            }
        }
        let cluster = match &target {
            Some(SpliceTarget::Cluster(key)) => match key.lookup(&snapshot) {
                Some(c) => {
                    outcome.cluster = c.name.to_string();
                    Some((c, key))
                }
                None => None,
            },
            _ => None,
        };
        let policy = cluster
            .map(|(c, _)| TunnelPolicy::for_cluster(c))
            .unwrap_or_default();
        // A consistent-hash cluster hashes a connection on its source address (`useSourceIp`).
        let hash = cluster.and_then(|(c, _)| {
            let view = ConnectionHash {
                source: info.source_addr.ip(),
            };
            c.request_hash(&view, info.source_addr, info.original_dst)
                .hash
        });
        let mut tried = Vec::new();
        let mut upstream = None;
        // The first attempt and DEFAULT_RETRY_ATTEMPTS more on other endpoints, as before the
        // HTTP path's retries.
        while tried.len() <= DEFAULT_RETRY_ATTEMPTS {
            let pick = match (&target, cluster) {
                (Some(SpliceTarget::Pod(pod)), _) if tried.is_empty() => Ok(pod.pick()),
                (_, Some((c, key))) => {
                    let attempt = Attempt {
                        hash,
                        tried: &tried,
                        avoid_tried: true,
                        original_dst: Some(info.original_dst),
                    };
                    upstream::pick(&snapshot, c, key, attempt)
                }
                (Some(SpliceTarget::Cluster(_)), None) if tried.is_empty() => {
                    Err(NoPick::NoCluster)
                }
                _ if tried.is_empty() => Err(NoPick::NoEndpoint { retry: false }),
                _ => break,
            };
            let pick = match pick {
                Ok(p) => p,
                Err(NoPick::Identity { target, reason }) => {
                    warn!(%target, %reason, "TCP upstream: endpoint identity unusable");
                    tried.push(target);
                    continue;
                }
                Err(NoPick::NoEndpoint { retry: true }) => break,
                Err(no) => {
                    outcome.no_pick(&no);
                    break;
                }
            };
            let addr = pick.target;
            tried.push(addr);
            outcome.attempt(&pick);
            let attempt = match &pick.dial {
                Dial::Hbone(identity) => self
                    .pool
                    .checkout_new(addr, identity, Arc::new(Lease::default()), &policy)
                    .await
                    .map(Upstream::Tunnel),
                dial => self
                    .dial_direct(addr, dial, &policy)
                    .await
                    .map(|s| Upstream::Direct(Box::new(s))),
            };
            match attempt {
                Ok(t) => {
                    // Envoy counts a connect success as a success (no split of local-origin
                    // errors): it ends a run of consecutive failures.
                    if let Some((c, _)) = cluster {
                        upstream::report(c, addr, routing::Outcome::Status(200));
                    }
                    upstream = Some((t, pick));
                    break;
                }
                Err(e @ ConnectError::Overflow { .. }) => {
                    warn!(target = %addr, error = %e, "TCP upstream: connection pool overflow");
                    entry.upstream_transport_failure_reason = e.short_reason().to_string();
                    outcome.flags.add("UO");
                    break;
                }
                Err(e) => {
                    warn!(target = %addr, error = %e, "TCP upstream connect failed");
                    entry.upstream_transport_failure_reason = e.short_reason().to_string();
                    if let Some((c, _)) = cluster {
                        upstream::report(c, addr, routing::Outcome::ConnectFailure);
                    }
                    outcome.flags.add("UF");
                }
            }
        }
        let Some((up, pick)) = upstream else {
            if tried.is_empty() {
                warn!(dst = %info.original_dst, "TCP tunnel: no endpoint to send it to");
            }
            outcome.fill(&mut entry);
            unserved(&entry.response_flags);
            self.access_log.write(&entry);
            return;
        };
        let target = pick.target;
        outcome.fill(&mut entry);
        let mut labels = IstioMetrics::tcp_labels(
            source.clone(),
            outcome.destination(
                dest_service
                    .as_ref()
                    .map(|s| (s.hostname.as_str(), s.namespace.as_str())),
                &cluster_id,
            ),
            &entry.response_flags,
        );
        metrics.tcp_opened(&labels);
        let limits = policy.splice_limits();
        // The drain's cut ends the splice whatever its upstream (one signal per connection).
        let cut = self.drain.cut_signal();
        let spliced = tokio::select! {
            spliced = async {
                match up {
                    Upstream::Tunnel(t) => {
                        let (mut up, _slot) = t.into_inner();
                        forward(&mut down, &mut up, &prefix, limits, target).await
                    }
                    Upstream::Direct(mut up) => {
                        forward(&mut down, &mut up, &prefix, limits, target).await
                    }
                }
            } => spliced,
            _ = cut => None,
        };
        let cut = self.drain.is_cut();
        if cut {
            // Reset, not a clean end: the client must not take a cut stream for a complete one.
            down.reset();
            self.drain.record(Outcome::Reset);
            debug!(%target, "TCP tunnel reset at the drain deadline");
        } else if self.drain.is_draining() {
            self.drain.record(Outcome::Completed);
        }
        if let Some(s) = &spliced {
            // What flowed, however it ended.
            entry.bytes_received = s.a_to_b + prefix.len() as u64;
            entry.bytes_sent = s.b_to_a;
        }
        match spliced {
            Some(Spliced {
                end,
                result: Ok(()),
                ..
            }) => {
                if end != SpliceEnd::Closed {
                    debug!(%target, ?end, "TCP tunnel closed by its DestinationRule limit");
                }
            }
            // The client reset its tunnel (or stopped taking bytes): the downstream ended it,
            // not the endpoint (Envoy's DC, downstream connection termination).
            Some(Spliced {
                result: Err(e),
                a_failed: true,
                b_failed: false,
                ..
            }) => {
                debug!(%target, error = %e, "TCP tunnel ended by the client");
                outcome.flags.add("DC");
            }
            Some(Spliced { result: Err(e), .. }) => {
                debug!(%target, error = %e, "TCP tunnel ended with an error");
                outcome.flags.add("UC");
            }
            None => {
                outcome.flags.add("UC");
            }
        }
        if cut {
            // Ended by the drain deadline, not by the endpoint (as `LR` for HTTP requests).
            outcome.flags.remove("UC");
            outcome.flags.remove("DC");
            outcome.flags.add("LR");
        }
        entry.duration_ms = started.elapsed().as_millis() as u64;
        outcome.fill(&mut entry);
        if matches!(outcome.flags.last(), Some("UC" | "DC" | "LR")) {
            // Reset mid-stream: the close is reported under the flag it ended with.
            labels = IstioMetrics::tcp_labels(source, labels.destination, &entry.response_flags);
        }
        metrics.tcp_closed(&labels, entry.bytes_sent, entry.bytes_received);
        self.access_log.write(&entry);
    }
}

/// Where a TCP connection was sent: a cluster (its LB picks), or the pod the client addressed.
enum SpliceTarget {
    Cluster(ClusterKey),
    Pod(PodTarget),
}

/// Where a TCP splice goes: an HBONE tunnel, or a direct connection to an endpoint that does
/// not speak HBONE.
enum Upstream {
    Tunnel(crate::transport::hbone::pool::PooledTunnel),
    Direct(Box<Stream>),
}

/// Write what was read of the connection already, then splice both ways.
async fn forward<U>(
    down: &mut H2Stream,
    up: &mut U,
    prefix: &[u8],
    limits: crate::dataplane::splice::SpliceLimits,
    target: SocketAddr,
) -> Option<Spliced>
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match up.write_all(prefix).await {
        Ok(()) => Some(splice(down, up, limits).await),
        Err(e) => {
            debug!(%target, error = %e, "TCP upstream: write failed");
            None
        }
    }
}

impl Inbound {
    /// Dial an endpoint outside HBONE for a TCP splice, as the HTTP path does: plaintext or the
    /// cluster's TLS (`Direct`), or Istio mutual TLS with the waypoint's certificate
    /// (`IstioMutual`, a sidecar pod of an outbound cluster).
    async fn dial_direct(
        &self,
        target: SocketAddr,
        dial: &Dial,
        policy: &TunnelPolicy,
    ) -> Result<Stream, ConnectError> {
        let tls_failed = |e: crate::dataplane::direct::DirectError| ConnectError::Tls {
            addr: target,
            reason: e.to_string(),
        };
        let tls = match dial {
            Dial::IstioMutual { expected, sni } => {
                let config = crate::dataplane::direct::istio_mutual_config(
                    &self.pool.client().configs(),
                    expected,
                    false,
                )
                .map_err(tls_failed)?;
                Some((config, Some(sni.clone())))
            }
            Dial::Direct(Some(tls)) => {
                let config = crate::dataplane::direct::tls_config(tls).map_err(tls_failed)?;
                Some((config, tls.sni.clone()))
            }
            Dial::Direct(None) | Dial::Hbone(_) => None,
        };
        crate::dataplane::direct::connect_stream(target, tls, policy.connect_timeout)
            .await
            .map_err(|reason| ConnectError::Tcp {
                addr: target,
                source: std::io::Error::other(reason),
            })
    }
}

fn looks_like_http1(buf: &[u8]) -> bool {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method_len >= 3 && buf.get(method_len) == Some(&b' ')
}

/// Read up to the 24 bytes of an HTTP/2 preface, with a timeout. Only an HTTP/2 preface (or a
/// prefix of one) makes it wait for more; anything else decides at the first bytes.
pub async fn sniff(
    tunnel: &mut H2Stream,
    declared: Protocol,
    timeout: Duration,
) -> (Sniffed, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 24];
    loop {
        let want = H2_PREFACE.len() - buf.len();
        match tokio::time::timeout_at(deadline, tunnel.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() == H2_PREFACE.len() || !H2_PREFACE.starts_with(&buf) {
            break;
        }
    }
    let kind = if buf == H2_PREFACE {
        Sniffed::H2c
    } else if declared.is_http() || looks_like_http1(&buf) {
        Sniffed::Http1
    } else {
        Sniffed::Tcp
    };
    (kind, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert!(looks_like_http1(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http1(b"OPTIONS *"));
        assert!(!looks_like_http1(b"\x16\x03\x01"));
        assert!(!looks_like_http1(b"GE"));
        assert!(!looks_like_http1(b"get / HTTP/1.1"));
    }
}
