//! The per-thread cache of the series a request updates, keyed by its label set's parts.

use super::*;

/// The four series one request updates, looked up once per label set.
#[derive(Debug, Clone)]
pub(super) struct RequestHandles {
    pub(super) requests: Counter,
    pub(super) duration: AtomicHistogram,
    pub(super) request_bytes: AtomicHistogram,
    pub(super) response_bytes: AtomicHistogram,
    /// gRPC label sets only: `istio_request_messages_total`, `istio_response_messages_total`.
    pub(super) messages: Option<(Counter, Counter)>,
}

impl RequestHandles {
    pub(super) fn record(
        &self,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
        messages: Option<(u64, u64)>,
    ) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
        if let (Some((into, out)), Some((sent, received))) = (&self.messages, messages) {
            into.inc_by(sent);
            out.inc_by(received);
        }
    }
}

/// What a request's label set is made of, by reference: the tunnel (its source labels), the
/// service and endpoint (the destination labels), and the per-response values.
#[derive(Debug, Clone, Copy)]
pub struct RequestKey<'a> {
    pub tunnel: Option<&'a Arc<TunnelInfo>>,
    /// (hostname, namespace) of the addressed service.
    pub service: Option<(&'a str, &'a str)>,
    pub endpoint: Option<&'a Arc<Endpoint>>,
    /// The identity the upstream proved, when known (beats the endpoint's known identity).
    pub principal: Option<&'a str>,
    pub cluster_id: &'a str,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_status: Option<&'a str>,
    pub response_flags: &'a str,
}

/// A [`RequestKey`] kept in the per-thread cache. The tunnel and the endpoint are compared by
/// address; the `Weak`s keep their allocations, so an address is never reused for another
/// tunnel or endpoint while its entry lives.
pub(super) struct CachedKey {
    metrics: u64,
    tunnel: Option<Weak<TunnelInfo>>,
    endpoint: Option<Weak<Endpoint>>,
    service: Option<(Box<str>, Box<str>)>,
    principal: Option<Box<str>>,
    cluster_id: Box<str>,
    grpc: bool,
    response_code: u16,
    grpc_status: Option<Box<str>>,
    response_flags: Box<str>,
}

impl CachedKey {
    pub(super) fn new(metrics: u64, k: &RequestKey<'_>) -> Self {
        Self {
            metrics,
            tunnel: k.tunnel.map(Arc::downgrade),
            endpoint: k.endpoint.map(Arc::downgrade),
            service: k.service.map(|(h, n)| (h.into(), n.into())),
            principal: k.principal.map(Into::into),
            cluster_id: k.cluster_id.into(),
            grpc: k.grpc,
            response_code: k.response_code,
            grpc_status: k.grpc_status.map(Into::into),
            response_flags: k.response_flags.into(),
        }
    }

    pub(super) fn matches(&self, metrics: u64, k: &RequestKey<'_>) -> bool {
        fn same<T>(weak: &Option<Weak<T>>, arc: Option<&Arc<T>>) -> bool {
            match (weak, arc) {
                (None, None) => true,
                (Some(w), Some(a)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(a)),
                _ => false,
            }
        }
        self.metrics == metrics
            && self.response_code == k.response_code
            && self.grpc == k.grpc
            && same(&self.tunnel, k.tunnel)
            && same(&self.endpoint, k.endpoint)
            && *self.response_flags == *k.response_flags
            && self.grpc_status.as_deref() == k.grpc_status
            && self.principal.as_deref() == k.principal
            && self.service.as_ref().map(|(h, n)| (&**h, &**n)) == k.service
            && *self.cluster_id == *k.cluster_id
    }
}

/// foldhash, not std's SipHash (a visible part of each request): the fields are our own config's
/// and the response's, and a collision only puts two keys in one bucket, told apart by
/// [`CachedKey::matches`].
pub(super) fn key_hash(metrics: u64, k: &RequestKey<'_>) -> u64 {
    use std::hash::BuildHasher;
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    metrics.hash(&mut h);
    k.tunnel.map(Arc::as_ptr).hash(&mut h);
    k.endpoint.map(Arc::as_ptr).hash(&mut h);
    k.response_code.hash(&mut h);
    k.response_flags.hash(&mut h);
    k.grpc_status.hash(&mut h);
    k.service.hash(&mut h);
    h.finish()
}

/// Label sets a thread remembers before it starts over (each entry: a few hundred bytes).
pub const HANDLE_CACHE_ENTRIES: usize = 4096;

pub(super) type HandleCache =
    HashMap<u64, Vec<(CachedKey, RequestHandles)>, foldhash::fast::FixedState>;

thread_local! {
    pub(super) static HANDLES: RefCell<HandleCache> = RefCell::new(HashMap::default());
}
