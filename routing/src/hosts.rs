//! Hostname helpers: short-name expansion and Host-header normalisation.

/// DNS suffix used to expand short names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Resolve a config host as Istio does: a name without dots is a short name in
/// `namespace` (`reviews` → `reviews.<ns>.svc.cluster.local`); anything else is
/// taken as written. The result is lowercased.
pub fn expand_host(host: &str, namespace: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.contains('.') || host.contains('*') || host.is_empty() {
        host
    } else {
        format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }
}

/// Do two (possibly wildcarded) hostnames overlap? Istio's `host.Name.Matches`
/// (`pkg/config/host/name.go`): `*.example.com` covers `a.example.com` and
/// `a.b.example.com` but not `example.com`; `*` covers everything; two plain
/// names must be equal. Both sides are expected lowercased.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Strip a trailing `:port` from a Host/authority value and lowercase it.
/// `[v6]:port` and bare `[v6]` keep the bracketed address.
pub fn normalize_authority(host: &str) -> String {
    let host = host.trim();
    let no_port = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    no_port.trim_end_matches('.').to_ascii_lowercase()
}

/// Short forms under which a Kubernetes-style FQDN is also reachable:
/// `name.ns.svc.<domain>` → `name`, `name.ns`, `name.ns.svc`.
pub fn kube_aliases(fqdn: &str) -> Vec<String> {
    let labels: Vec<&str> = fqdn.split('.').collect();
    if labels.len() >= 4 && labels[2] == "svc" {
        vec![
            labels[0].to_string(),
            format!("{}.{}", labels[0], labels[1]),
            format!("{}.{}.svc", labels[0], labels[1]),
        ]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand() {
        assert_eq!(
            expand_host("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            expand_host("Reviews.default.svc.cluster.local", "x"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(expand_host("api.example.com", "x"), "api.example.com");
        assert_eq!(expand_host("*", "x"), "*");
    }

    #[test]
    fn overlap() {
        assert!(hosts_overlap("*.example.com", "a.example.com"));
        assert!(hosts_overlap("a.b.example.com", "*.example.com"));
        assert!(!hosts_overlap("*.example.com", "example.com"));
        assert!(hosts_overlap("*", "reviews.default.svc.cluster.local"));
        assert!(hosts_overlap("*.com", "*.example.com"));
        assert!(!hosts_overlap("a.example.com", "b.example.com"));
        assert!(hosts_overlap("a.example.com", "a.example.com"));
    }

    #[test]
    fn authority() {
        assert_eq!(normalize_authority("reviews:9080"), "reviews");
        assert_eq!(normalize_authority("Reviews.Default"), "reviews.default");
        assert_eq!(normalize_authority("[::1]:80"), "[::1]");
        assert_eq!(normalize_authority("a.b.c."), "a.b.c");
    }

    #[test]
    fn aliases() {
        assert_eq!(
            kube_aliases("reviews.default.svc.cluster.local"),
            vec!["reviews", "reviews.default", "reviews.default.svc"]
        );
        assert!(kube_aliases("api.example.com").is_empty());
    }
}
