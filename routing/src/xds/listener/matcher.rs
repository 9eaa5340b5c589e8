//! The `main_internal` listener's filter chain matcher: IP, port, authority and
//! application-protocol trees, and the classic match.

use super::*;

/// The input type URL of a matcher tree, or `None` with a warning when the
/// matcher is no tree.
fn tree_input<'m>(m: &'m Matcher, what: &str, at: At<'_>, diag: &mut Diag) -> Option<&'m str> {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        at.warn(
            diag,
            format!("{what}: matcher_list is not supported; ignored"),
        );
        return None;
    };
    Some(
        tree.input
            .as_ref()
            .and_then(|i| i.typed_config.as_ref())
            .map_or("", |a| a.type_url.as_str()),
    )
}

/// The listener's matcher: the IP tree, and (multi-network) the authority
/// map, whichever is the root; each one's `on_no_match` leads to the other.
pub(super) fn tree(
    m: &Matcher,
    at: At<'_>,
    diag: &mut Diag,
    out: &mut Matched,
    (ranges, depth): (&mut Ranges, usize),
) {
    if depth > 8 {
        at.warn(diag, "filter_chain_matcher nested too deep; rest ignored");
        return;
    }
    let Some(input) = tree_input(m, "filter_chain_matcher", at, diag) else {
        return;
    };
    match input {
        IP_INPUT => ip_tree(m, at, diag, out, ranges),
        FILTER_STATE_INPUT => authority_tree(m, at, diag, out),
        other => at.warn(
            diag,
            format!("filter_chain_matcher on input {other:?} is not supported; ignored"),
        ),
    }
    match m.on_no_match.as_ref().and_then(|o| o.on_match.as_ref()) {
        Some(OnMatchKind::Matcher(next)) => tree(next, at, diag, out, (ranges, depth + 1)),
        Some(OnMatchKind::Action(a)) => at.warn(
            diag,
            format!(
                "filter_chain_matcher on_no_match action {:?} is not supported; ignored",
                action_name(a)
            ),
        ),
        None => {}
    }
}

/// The IP level: the IPMatcher's ranges, each a service's VIPs with a port
/// tree, or bound pods' IPs with an application-protocol tree. Each range is read from its own
/// bytes, and a range whose bytes a read of the last matcher had is not decoded again
/// ([`Ranges`]): a new service changes one range of 10 000.
fn ip_tree(m: &Matcher, at: At<'_>, diag: &mut Diag, out: &mut Matched, ranges: &mut Ranges) {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return;
    };
    let Some(TreeType::CustomMatch(custom)) = &tree.tree_type else {
        at.warn(diag, "destination IP matcher without IPMatcher; ignored");
        return;
    };
    let Some(any) = &custom.typed_config else {
        at.reject(diag, "IP matcher without typed_config");
        return;
    };
    if any.type_url != IP_MATCHER {
        at.warn(
            diag,
            format!("IP matcher type {} is not supported", any.type_url),
        );
        return;
    }
    let read = match ranges.read(&any.value, at) {
        Some(read) => read,
        // Bytes that do not walk or a range that does not decode: decoded whole, for the
        // message that names what is wrong.
        None => match <IpMatcher as prost::Message>::decode(any.value.as_slice()) {
            Ok(ipm) => ipm
                .range_matchers
                .iter()
                .map(|rm| Arc::new(RangeRead::new(rm, at)))
                .collect(),
            Err(e) => {
                at.reject(diag, format!("cannot decode IPMatcher: {e}"));
                return;
            }
        },
    };
    for r in &read {
        r.apply(at, diag, out);
    }
}

/// The IPMatcher ranges read by the last read of an IP tree, by a digest of each range's bytes
/// (and the listener's name, which its diagnostics carry).
#[derive(Debug, Default)]
pub(crate) struct Ranges {
    last: HashMap<u128, Arc<RangeRead>, crate::xds::FastHash>,
    /// Ranges decoded by the last read (the others were the last's).
    pub(crate) built: usize,
}

impl Ranges {
    /// The ranges of `ip_matcher` (an IPMatcher's bytes), each the last read's when its bytes
    /// are the same; `None` when the bytes do not walk as a message or a range does not decode.
    /// The ranges kept from now on are these.
    fn read(&mut self, ip_matcher: &[u8], at: At<'_>) -> Option<Vec<Arc<RangeRead>>> {
        use crate::xds::pieces::{digest, name_key};
        let listener = name_key(at.name);
        let mut next: HashMap<u128, Arc<RangeRead>, crate::xds::FastHash> = Default::default();
        let mut out = Vec::new();
        let mut built = 0;
        for bytes in range_matchers(ip_matcher)? {
            let key = digest(bytes) ^ listener;
            let read = match self.last.get(&key).or_else(|| next.get(&key)) {
                Some(r) => r.clone(),
                None => {
                    let rm = <IpRangeMatcher as prost::Message>::decode(bytes).ok()?;
                    built += 1;
                    Arc::new(RangeRead::new(&rm, at))
                }
            };
            next.insert(key, read.clone());
            out.push(read);
        }
        self.last = next;
        self.built = built;
        Some(out)
    }
}

/// The bytes of each `range_matchers` entry (field 1) of an IPMatcher, in order; `None` when
/// the bytes are not a well-formed message or field 1 is not length-delimited. Other fields
/// are skipped, as decoding skips them.
fn range_matchers(mut buf: &[u8]) -> Option<Vec<&[u8]>> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if tag == 1 {
            // A range is a message: any other wire type is for decoding to reject.
            if wire != WireType::LengthDelimited {
                return None;
            }
            let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
            if len > buf.len() {
                return None;
            }
            let (range, rest) = buf.split_at(len);
            out.push(range);
            buf = rest;
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
        }
    }
    Some(out)
}

/// One IPMatcher range as read: its IPs and what they lead to, with what reading it found.
/// Applied to a [`Matched`] each time the matcher is read.
#[derive(Debug)]
pub(crate) struct RangeRead {
    ips: Vec<IpAddr>,
    then: RangeThen,
    exclusive: bool,
    diag: Diag,
}

#[derive(Debug)]
enum RangeThen {
    /// Service VIPs: port → chain names.
    Ports(Vec<(u16, Vec<String>)>),
    /// Bound pods: the direct chains.
    Pods(ProtocolChains),
    Nothing,
}

impl RangeRead {
    fn new(rm: &IpRangeMatcher, at: At<'_>) -> RangeRead {
        let mut diag = Diag::default();
        let mut ips = Vec::new();
        for r in &rm.ranges {
            let Ok(ip) = r.address_prefix.parse::<IpAddr>() else {
                at.reject(
                    &mut diag,
                    format!("IP range {:?} is not an address", r.address_prefix),
                );
                continue;
            };
            let full = if ip.is_ipv4() { 32 } else { 128 };
            let len = r.prefix_len.as_ref().map_or(full, |p| p.value);
            if len != full {
                at.warn(
                    &mut diag,
                    format!("IP range {ip}/{len} is not one address; treated as {ip}"),
                );
            }
            ips.push(ip);
        }
        let then = match rm.on_match.as_ref().and_then(|o| o.on_match.as_ref()) {
            Some(OnMatchKind::Matcher(next)) => match tree_input(next, "IP range", at, &mut diag) {
                Some(PORT_INPUT) => RangeThen::Ports(
                    port_tree(next, at, &mut diag)
                        .into_iter()
                        .map(|(port, chains)| (port, chains.into_iter().collect()))
                        .collect(),
                ),
                Some(APP_PROTOCOL_INPUT) => match app_protocol(next, at, &mut diag) {
                    Some(pc) => RangeThen::Pods(pc),
                    None => RangeThen::Nothing,
                },
                Some(other) => {
                    at.warn(
                        &mut diag,
                        format!("matcher on input {other:?} under an IP range; ignored"),
                    );
                    RangeThen::Nothing
                }
                None => RangeThen::Nothing,
            },
            Some(OnMatchKind::Action(a)) => {
                // No port or protocol level: one chain for every port and protocol.
                let name = chain_name(&action_name(a)).into_owned();
                RangeThen::Pods(ProtocolChains {
                    http: (name != DIRECT_TCP).then(|| name.clone()),
                    tcp: (name != DIRECT_HTTP).then_some(name),
                })
            }
            None => {
                at.warn(
                    &mut diag,
                    format!("IP range {ips:?} without on_match; ignored"),
                );
                RangeThen::Nothing
            }
        };
        RangeRead {
            ips,
            then,
            exclusive: rm.exclusive,
            diag,
        }
    }

    /// Into `out`, reporting what reading it found, in the order a read reports it.
    fn apply(&self, at: At<'_>, diag: &mut Diag, out: &mut Matched) {
        diag.replay(&self.diag);
        match &self.then {
            RangeThen::Ports(ports) => {
                for (port, chains) in ports {
                    for ip in &self.ips {
                        out.vips
                            .entry((*ip, *port))
                            .or_default()
                            .extend(chains.iter().cloned());
                    }
                }
            }
            RangeThen::Pods(pc) => bind_pods(&self.ips, pc.clone(), at, diag, out),
            RangeThen::Nothing => {}
        }
        if self.exclusive {
            at.warn(diag, "IP range `exclusive` is not supported; ignored");
        }
    }
}

/// Pod IPs (any port) → the direct chains; other chains there are not pod chains.
fn bind_pods(ips: &[IpAddr], pc: ProtocolChains, at: At<'_>, diag: &mut Diag, out: &mut Matched) {
    let direct = |c: &Option<String>| {
        c.as_deref()
            .is_none_or(|c| c == DIRECT_HTTP || c == DIRECT_TCP)
    };
    if !direct(&pc.http) || !direct(&pc.tcp) {
        at.warn(
            diag,
            format!(
                "IP range {ips:?} selects chains {pc:?} for every port; only {DIRECT_HTTP} and {DIRECT_TCP} serve every port; ignored"
            ),
        );
        return;
    }
    for ip in ips {
        out.pods.insert(*ip, pc.clone());
    }
}

/// `ApplicationProtocolInput` exact map: HTTP keys → the HTTP chain,
/// `on_no_match` → the TCP chain (`match.NewAppProtocol`).
fn app_protocol(m: &Matcher, at: At<'_>, diag: &mut Diag) -> Option<ProtocolChains> {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return None;
    };
    let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else {
        at.warn(
            diag,
            "application-protocol matcher without exact_match_map; ignored",
        );
        return None;
    };
    let leaf = |o: &OnMatch, diag: &mut Diag| match &o.on_match {
        Some(OnMatchKind::Action(a)) => Some(chain_name(&action_name(a)).into_owned()),
        _ => {
            at.warn(
                diag,
                "application-protocol matcher: a nested matcher is not supported; ignored",
            );
            None
        }
    };
    let mut out = ProtocolChains::default();
    for (key, o) in &map.map {
        if !HTTP_PROTOCOLS.contains(&key.as_str()) {
            at.warn(
                diag,
                format!("application protocol {key} is not detected by this proxy; ignored"),
            );
            continue;
        }
        let Some(chain) = leaf(o, diag) else { continue };
        match &out.http {
            Some(c) if *c != chain => at.warn(
                diag,
                format!("application protocols lead to {c} and {chain}; {c} serves HTTP"),
            ),
            Some(_) => {}
            None => out.http = Some(chain),
        }
    }
    if let Some(o) = &m.on_no_match {
        out.tcp = leaf(o, diag);
    }
    Some(out)
}

/// The multi-network authority map: `"<hostname>:<port>"` → chain(s).
fn authority_tree(m: &Matcher, at: At<'_>, diag: &mut Diag, out: &mut Matched) {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return;
    };
    let key = tree
        .input
        .as_ref()
        .and_then(|i| i.typed_config.as_ref())
        .and_then(decode_any::<FilterStateInput>)
        .and_then(Result::ok)
        .map(|f| f.key);
    if key.as_deref() != Some(AUTHORITY_KEY) {
        at.warn(
            diag,
            format!(
                "filter state matcher on {key:?} is not supported (only {AUTHORITY_KEY}); ignored"
            ),
        );
        return;
    }
    let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else {
        at.warn(diag, "authority matcher without exact_match_map; ignored");
        return;
    };
    for (authority, o) in &map.map {
        let parsed = authority
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty());
        let Some((host, port)) = parsed else {
            at.reject(
                diag,
                format!("authority matcher key {authority:?} is not <hostname>:<port>"),
            );
            continue;
        };
        let mut names = BTreeSet::new();
        actions(o, &mut names, at, diag, 0);
        out.authorities
            .entry((host.to_ascii_lowercase(), port))
            .or_default()
            .extend(names);
    }
}

/// The chain an action names: its `StringValue`, else the action's name.
fn action_name(a: &envoy_types::pb::xds::core::v3::TypedExtensionConfig) -> String {
    match a.typed_config.as_ref().map(decode_any::<StringValue>) {
        Some(Some(Ok(v))) => v.value,
        _ => a.name.clone(),
    }
}

/// The port level: port → chain names.
fn port_tree(m: &Matcher, at: At<'_>, diag: &mut Diag) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return out;
    };
    let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else {
        at.warn(diag, "port matcher without exact_match_map; ignored");
        return out;
    };
    for (port, on_match) in &map.map {
        let Ok(port) = port.parse::<u16>() else {
            at.reject(diag, format!("port matcher key {port:?} is not a port"));
            continue;
        };
        let mut names = BTreeSet::new();
        actions(on_match, &mut names, at, diag, 0);
        out.insert(port, names);
    }
    if m.on_no_match.is_some() {
        at.warn(
            diag,
            "port matcher on_no_match (other ports) is not supported; ignored",
        );
    }
    out
}

/// Every chain name a port's `OnMatch` can lead to: a chain, or an
/// application-protocol matcher over an HTTP and a TCP chain (a sniffed port).
fn actions(o: &OnMatch, names: &mut BTreeSet<String>, at: At<'_>, diag: &mut Diag, depth: usize) {
    if depth > 8 {
        at.warn(diag, "port matcher nested too deep; rest ignored");
        return;
    }
    match &o.on_match {
        Some(OnMatchKind::Action(a)) => {
            if let Some(Some(Err(e))) = a.typed_config.as_ref().map(decode_any::<StringValue>) {
                at.reject(diag, e.to_string());
                return;
            }
            names.insert(chain_name(&action_name(a)).into_owned());
        }
        Some(OnMatchKind::Matcher(m)) => match tree_input(m, "port matcher", at, diag) {
            Some(APP_PROTOCOL_INPUT) => {
                if let Some(pc) = app_protocol(m, at, diag) {
                    names.extend(pc.http.into_iter().chain(pc.tcp));
                }
            }
            Some(other) => at.warn(
                diag,
                format!("matcher on input {other:?} under a port; ignored"),
            ),
            None => {}
        },
        None => {}
    }
}

/// Classic `filter_chain_match`: `prefix_ranges` × `destination_port`.
pub(super) fn classic_match(
    chain: &FilterChain,
    name: &str,
    at: At<'_>,
    diag: &mut Diag,
    out: &mut Matched,
) {
    let Some(m) = &chain.filter_chain_match else {
        return;
    };
    let Some(port) = m.destination_port.as_ref().map(|p| p.value) else {
        at.warn(
            diag,
            format!("chain {name}: filter_chain_match without destination_port; ignored"),
        );
        return;
    };
    let Ok(port) = u16::try_from(port) else {
        at.reject(diag, format!("destination_port {port} out of range"));
        return;
    };
    for r in &m.prefix_ranges {
        match r.address_prefix.parse::<IpAddr>() {
            Ok(ip) => {
                out.vips
                    .entry((ip, port))
                    .or_default()
                    .insert(name.to_string());
            }
            Err(_) => at.reject(
                diag,
                format!("prefix range {:?} is not an address", r.address_prefix),
            ),
        }
    }
}
