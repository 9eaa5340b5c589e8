//! The `x-request-id` the waypoint gives a request that came without one.

/// A version-4 UUID (hyphenated, lowercase) from the thread's userspace generator: rand's
/// `thread_rng` (ChaCha12, seeded from the OS once per thread and reseeded after every 64 KiB
/// of output), so a request costs no `getrandom` syscall — one per ~4000 ids instead.
pub(super) fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v4_uuids_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_request_id();
            assert_eq!(id.len(), 36, "{id}");
            let u = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, id.to_lowercase());
            assert!(seen.insert(id), "duplicate id");
        }
        // Threads do not share a stream.
        let other = std::thread::spawn(|| (0..1000).map(|_| new_request_id()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert!(other.into_iter().all(|id| !seen.contains(&id)));
    }
}
