use super::*;
use crate::policy::{HashAlgorithm, HttpCookie};

fn targets(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::new(format!("10.1.0.{i}").parse().unwrap(), 8080))
        .collect()
}

fn key_hashes(n: usize) -> Vec<u64> {
    (0..n)
        .map(|k| hash_bytes(format!("user-{k}").as_bytes()))
        .collect()
}

/// (fraction of keys that moved, fraction that moved although their
/// endpoint was not removed) when `removed` leaves the set.
fn disruption(build: impl Fn(&[SocketAddr]) -> HashTable, removed: usize) -> (f64, f64) {
    let all = targets(10);
    let mut fewer = all.clone();
    let gone = fewer.remove(removed);
    let (a, b) = (build(&all), build(&fewer));
    let keys = key_hashes(10_000);
    let (mut moved, mut needless) = (0, 0);
    for h in &keys {
        let before = all[a.lookup(*h, |_| true).unwrap()];
        let after = fewer[b.lookup(*h, |_| true).unwrap()];
        if before != after {
            moved += 1;
            if before != gone {
                needless += 1;
            }
        }
    }
    (
        moved as f64 / keys.len() as f64,
        needless as f64 / keys.len() as f64,
    )
}

fn spread(t: &HashTable, n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for h in key_hashes(10_000) {
        c[t.lookup(h, |_| true).unwrap()] += 1;
    }
    c
}

#[test]
fn ring_minimal_disruption() {
    for removed in [0, 4, 9] {
        let (moved, needless) = disruption(|t| HashTable::ring(t, 1024), removed);
        assert!(moved < 0.20, "moved {moved}");
        assert!((moved - 0.1).abs() < 0.03, "moved {moved} ≉ 1/N");
        // 128 points per endpoint for 9 and 10 endpoints: only the removed one's keys move
        assert_eq!(needless, 0.0);
    }
}

#[test]
fn maglev_minimal_disruption() {
    for removed in [0, 4, 9] {
        let (moved, needless) = disruption(|t| HashTable::maglev(t, 65537), removed);
        assert!(moved < 0.20, "moved {moved}");
        assert!((moved - 0.1).abs() < 0.03, "moved {moved} ≉ 1/N");
        assert!(needless < 0.03, "needless {needless}");
    }
}

#[test]
fn tables_spread_evenly_and_ignore_order() {
    let t = targets(10);
    let mut rev = t.clone();
    rev.reverse();
    for (a, b) in [
        (HashTable::ring(&t, 1024), HashTable::ring(&rev, 1024)),
        (HashTable::maglev(&t, 65537), HashTable::maglev(&rev, 65537)),
    ] {
        let c = spread(&a, 10);
        assert!(c.iter().all(|&x| (600..=1400).contains(&x)), "{c:?}");
        for h in key_hashes(1000) {
            assert_eq!(
                t[a.lookup(h, |_| true).unwrap()],
                rev[b.lookup(h, |_| true).unwrap()]
            );
        }
    }
}

#[test]
fn lookup_skips_rejected_only_for_their_keys() {
    let t = targets(5);
    for table in [HashTable::ring(&t, 1024), HashTable::maglev(&t, 65537)] {
        let mut moved_other = 0;
        for h in key_hashes(2000) {
            let first = table.lookup(h, |_| true).unwrap();
            let second = table.lookup(h, |i| i != 2).unwrap();
            assert_ne!(second, 2);
            if first != 2 && first != second {
                moved_other += 1;
            }
        }
        assert_eq!(moved_other, 0);
        assert_eq!(table.lookup(1, |_| false), None);
    }
    assert_eq!(HashTable::ring(&[], 1024).lookup(1, |_| true), None);
    assert_eq!(HashTable::maglev(&[], 65537).lookup(1, |_| true), None);
}

#[test]
fn primes() {
    assert!(is_prime(65537));
    assert!(is_prime(2));
    assert!(is_prime(5_000_011));
    assert!(!is_prime(65536));
    assert!(!is_prime(1));
    assert!(!is_prime(9));
}

fn ch(key: HashKey) -> ConsistentHash {
    ConsistentHash {
        key: Some(key),
        algorithm: HashAlgorithm::default(),
    }
}

#[test]
fn hash_keys() {
    let req = SimpleHashRequest::new("/p?a=1&user=bob&x")
        .with_header("X-User", "alice")
        .with_header("Cookie", "other=1; session=\"s1\"")
        .with_source_ip("10.0.0.7".parse().unwrap());
    let h = |k| hash_key(&ch(k), &req);
    assert_eq!(
        h(HashKey::Header("x-user".into())),
        Some(hash_bytes(b"alice"))
    );
    assert_eq!(h(HashKey::Header("x-none".into())), None);
    assert_eq!(
        h(HashKey::QueryParameter("user".into())),
        Some(hash_bytes(b"bob"))
    );
    assert_eq!(
        h(HashKey::QueryParameter("x".into())),
        Some(hash_bytes(b""))
    );
    assert_eq!(h(HashKey::QueryParameter("zz".into())), None);
    assert_eq!(h(HashKey::SourceIp), Some(hash_bytes(b"10.0.0.7")));
    let cookie = |name: &str| {
        HashKey::Cookie(HttpCookie {
            name: name.into(),
            path: None,
            ttl: None,
        })
    };
    assert_eq!(h(cookie("session")), Some(hash_bytes(b"s1")));
    assert_eq!(h(cookie("missing")), None);
    assert_eq!(
        hash_key(&ch(HashKey::SourceIp), &SimpleHashRequest::new("/")),
        None
    );
    // stable across runs and builds
    assert_eq!(hash_bytes(b"alice"), hash_bytes(b"alice"));
    assert_ne!(hash_bytes(b"alice"), hash_bytes(b"alicf"));
}

#[test]
fn cookie_parsing() {
    assert_eq!(cookie_value("a=1; b=2", "b"), Some("2"));
    assert_eq!(cookie_value("a=1;b=\"x y\"", "b"), Some("x y"));
    assert_eq!(cookie_value("ab=1", "a"), None);
    assert_eq!(query_param("/p", "a"), None);
    assert_eq!(query_param("/p?a=1&a=2", "a"), Some("1"));
    assert_eq!(query_param("/p?b=1#a=2", "a"), None);
}

#[test]
fn generated_cookie() {
    let policy = ch(HashKey::Cookie(HttpCookie {
        name: "affinity".into(),
        path: Some("/shop".into()),
        ttl: Some(Duration::from_secs(3600)),
    }));
    let remote: SocketAddr = "10.0.0.7:40000".parse().unwrap();
    let local: SocketAddr = "10.0.0.10:9080".parse().unwrap();
    let req = SimpleHashRequest::new("/shop");
    let c = cookie_to_set(&policy, &req, remote, local).unwrap();
    assert_eq!(c.name, "affinity");
    assert_eq!(c.value.len(), 16);
    assert_eq!(
        c.header_value(),
        format!(
            "affinity=\"{}\"; Max-Age=3600; Path=/shop; HttpOnly",
            c.value
        )
    );
    // same connection, same cookie
    assert_eq!(cookie_to_set(&policy, &req, remote, local).unwrap(), c);
    let rh = RequestHash::compute(&policy, &req, remote, local);
    assert_eq!(rh.hash, Some(c.hash()));
    assert_eq!(rh.set_cookie.as_ref(), Some(&c));
    // the next request carries the cookie: same hash, nothing to set
    let back =
        SimpleHashRequest::new("/shop").with_header("cookie", format!("affinity=\"{}\"", c.value));
    let rh2 = RequestHash::compute(&policy, &back, remote, local);
    assert_eq!(rh2.hash, Some(c.hash()));
    assert!(rh2.set_cookie.is_none());
    // no ttl: nothing generated, no hash
    let no_ttl = ch(HashKey::Cookie(HttpCookie {
        name: "affinity".into(),
        path: None,
        ttl: None,
    }));
    assert_eq!(
        RequestHash::compute(&no_ttl, &req, remote, local),
        RequestHash::default()
    );
    // ttl 0: session cookie
    let session = ch(HashKey::Cookie(HttpCookie {
        name: "s".into(),
        path: None,
        ttl: Some(Duration::ZERO),
    }));
    let c = cookie_to_set(&session, &req, remote, local).unwrap();
    assert_eq!(c.header_value(), format!("s=\"{}\"; HttpOnly", c.value));
    // header keys never generate cookies
    assert!(cookie_to_set(&ch(HashKey::SourceIp), &req, remote, local).is_none());
}
