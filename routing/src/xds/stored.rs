//! The form an xDS payload is kept in between pushes: its protobuf bytes as they came, or, when
//! that saves enough, a compact form. The xDS client keeps each resource's payload for as long
//! as the resource exists, beside the snapshot made from it.
//!
//! The compact form is a zero byte, a byte naming the dictionary, then the LZ4 block of the
//! bytes with their length before it (`lz4_flex`'s size-prepended block). A protobuf message
//! never begins with a zero byte (no field has the number 0), so a payload that does is not a
//! message: [`compact`] keeps it compact whatever that saves, and the first byte tells the two
//! forms apart. A large listener is kept chain by chain instead ([`listener`]: its fields as
//! they came, each chain a block). (The xDS client keeps no such payload as it came: it reads
//! each payload's name from its bytes first, and rejects one that does not decode, as one
//! beginning with a zero byte does not.) [`expand`] gives the bytes back; every reader of a
//! kept payload reads it through it. Digests and comparisons of kept payloads are of the kept
//! form (the same bytes give the same compact form once their type's dictionary is known; see
//! [`Dictionaries`]).

use super::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};
use std::borrow::Cow;
use std::sync::OnceLock;

mod listener;

/// The first byte of a payload kept compact.
const COMPACT: u8 = 0;

/// The second byte of a compact form when its block was made without a dictionary; dictionary
/// `i` of [`Dictionaries`] is `i + 1`.
const PLAIN: u8 = 0;

/// The second byte of a listener kept chain by chain ([`listener`]).
pub const CHAIN_BY_CHAIN: u8 = listener::LISTENER;

/// A payload smaller than this is kept as it is: a few bytes would not pay for the call.
const WORTH_FROM: usize = 64;

/// The smallest resource a type's dictionary is learned from: a service's cluster or
/// assignment as istiod builds it is larger (566 and 1 942 bytes in `xds_bench`'s mesh).
const LEARN_FROM: usize = 256;

/// What the payloads of clusters and of assignments are compressed against: the first service
/// resource of each type that this process kept (its name begins `inbound-vip|` or
/// `outbound|`), learned once and kept for the life of the process. istiod builds every
/// service's cluster, and every assignment, in one shape (the same fields, metadata keys,
/// transport socket and policy settings, with other names and addresses), and LZ4 then finds
/// that shape in the dictionary instead of only within each payload. On `xds_bench`'s 1 000
/// services (3 000 clusters, 3 000 assignments) the kept clusters took 0.31 MB against 1.19
/// without it, the assignments 0.70 against 1.06.
///
/// A payload of the type kept before the dictionary was learned (the infrastructure clusters
/// that sort before the first service in the first response) is kept without it; sent again
/// unchanged, it is then kept with it, and the client sees it changed once.
///
/// The third is the filter chains' of a listener kept chain by chain ([`listener`]), learned
/// from the first service chain (named `inbound-vip|…`).
pub struct Dictionaries {
    types: [(&'static str, OnceLock<Box<[u8]>>); 3],
    /// The blocks of the last listener kept chain by chain ([`listener`]).
    chains: std::sync::Mutex<Option<listener::ChainCache>>,
}

/// What the chains of a listener kept chain by chain are compressed against (the third
/// dictionary, learned from the first service chain): not a payload type, a name for it.
const CHAIN_TYPE: &str = "envoy.config.listener.v3.FilterChain";

/// The form of a chain's block against the chains' dictionary.
const CHAIN_FORM: u8 = 3;

impl Dictionaries {
    pub const fn new() -> Self {
        Self {
            types: [
                (CLUSTER_TYPE, OnceLock::new()),
                (ENDPOINT_TYPE, OnceLock::new()),
                (CHAIN_TYPE, OnceLock::new()),
            ],
            chains: std::sync::Mutex::new(None),
        }
    }

    /// `raw`'s compact form, as a payload of `type_url`, when keeping that saves at least a
    /// quarter (or when `raw` begins with a zero byte: see the module's note); `None`: keep
    /// `raw` as it is.
    pub fn compact(&self, type_url: &str, raw: &[u8]) -> Option<bytes::Bytes> {
        if type_url == LISTENER_TYPE {
            if let Some(kept) = self.compact_listener(raw, listener::worth_chains(raw)) {
                return Some(kept);
            }
        }
        let must = raw.first() == Some(&COMPACT);
        if !must && raw.len() < WORTH_FROM {
            return None;
        }
        let form = (1u8..)
            .zip(self.types.iter().take(2))
            .find_map(|(form, (t, _))| (*t == type_url).then_some(form));
        self.block(raw, form, service_resource, must)
            .map(Into::into)
    }

    /// `raw`'s block, framed (`[COMPACT, form]` before it): against dictionary `form` when it
    /// is learned, or learned now from `raw` when `learn(raw)`; else without a dictionary.
    /// `None` when that does not save a quarter, unless `must`.
    fn block(
        &self,
        raw: &[u8],
        form: Option<u8>,
        learn: fn(&[u8]) -> bool,
        must: bool,
    ) -> Option<Vec<u8>> {
        let dictionary = form.and_then(|form| {
            let cell = &self.types.get(usize::from(form).checked_sub(1)?)?.1;
            let d = match cell.get() {
                Some(d) => d,
                None if learn(raw) => cell.get_or_init(|| raw.into()),
                None => return None,
            };
            Some((form, &**d))
        });
        let (form, block) = match dictionary {
            Some((form, d)) => (
                form,
                lz4_flex::block::compress_prepend_size_with_dict(raw, d),
            ),
            None => (PLAIN, lz4_flex::block::compress_prepend_size(raw)),
        };
        if !must && (block.len() + 2) * 4 > raw.len() * 3 {
            return None;
        }
        let mut out = Vec::with_capacity(block.len() + 2);
        out.extend_from_slice(&[COMPACT, form]);
        out.extend_from_slice(&block);
        Some(out)
    }

    /// The protobuf bytes of a kept payload: borrowed when it was kept as it came, expanded
    /// when it was kept compact.
    pub fn expand<'a>(&self, kept: &'a [u8]) -> Result<Cow<'a, [u8]>, ReadError> {
        let Some((&COMPACT, rest)) = kept.split_first() else {
            return Ok(Cow::Borrowed(kept));
        };
        let (&form, block) = rest.split_first().ok_or(ReadError::Truncated)?;
        Ok(Cow::Owned(match form {
            PLAIN => lz4_flex::block::decompress_size_prepended(block)?,
            listener::LISTENER => self.expand_listener(block)?,
            _ => {
                let d = self
                    .types
                    .get(usize::from(form) - 1)
                    .and_then(|(_, d)| d.get())
                    .ok_or(ReadError::Dictionary(form))?;
                lz4_flex::block::decompress_size_prepended_with_dict(block, d)?
            }
        }))
    }
}

impl Default for Dictionaries {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `raw` is a service's cluster or assignment as istiod encodes it, large enough to
/// learn from: its first field is its name (field 1, `Cluster.name` and
/// `ClusterLoadAssignment.cluster_name` alike), and the name is a service cluster's.
fn service_resource(raw: &[u8]) -> bool {
    let Some((&0x0a, mut rest)) = raw.split_first() else {
        return false;
    };
    let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
        return false;
    };
    let name = rest
        .get(..usize::try_from(len).unwrap_or(usize::MAX))
        .unwrap_or_default();
    raw.len() >= LEARN_FROM && (name.starts_with(b"inbound-vip|") || name.starts_with(b"outbound|"))
}

/// The process's dictionaries: the xDS client's hook ([`compact`]) and every reader of a kept
/// payload ([`expand`]) use these.
static PROCESS: Dictionaries = Dictionaries::new();

/// [`Dictionaries::compact`] with the process's dictionaries: the xDS client's hook.
pub fn compact(type_url: &str, raw: &[u8]) -> Option<bytes::Bytes> {
    PROCESS.compact(type_url, raw)
}

/// Why a kept payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a compact payload does not expand: {0}")]
    Expand(#[from] lz4_flex::block::DecompressError),
    #[error("a compact payload ends before its form")]
    Truncated,
    #[error("a compact payload names dictionary {0}, which this process has not learned")]
    Dictionary(u8),
    #[error("a listener kept chain by chain is not a well-formed message")]
    Listener,
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
}

/// [`Dictionaries::expand`] with the process's dictionaries.
pub fn expand(kept: &[u8]) -> Result<Cow<'_, [u8]>, ReadError> {
    PROCESS.expand(kept)
}

/// [`expand`] into `Bytes`: the kept ones themselves (no copy) when they are the protobuf bytes.
pub fn expand_bytes(kept: &bytes::Bytes) -> Result<bytes::Bytes, ReadError> {
    Ok(match expand(kept)? {
        Cow::Borrowed(_) => kept.clone(),
        Cow::Owned(v) => v.into(),
    })
}

/// The bytes to read a kept listener shallowly from (its chains and matcher left encoded): a
/// listener kept chain by chain as it is kept (its chains and matcher then blocks, which
/// [`expand`] takes as it takes a payload), else the listener's bytes ([`expand_bytes`]).
pub fn shallow(kept: &bytes::Bytes) -> Result<bytes::Bytes, ReadError> {
    match kept.get(..2) {
        Some(&[COMPACT, listener::LISTENER]) => Ok(kept.slice(2..)),
        _ => expand_bytes(kept),
    }
}

/// A kept payload decoded as `M`.
pub fn decode<M: prost::Message + Default>(kept: &[u8]) -> Result<M, ReadError> {
    Ok(M::decode(&*expand(kept)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;

    /// An assignment like istiod's: ten pods of workload `rev`, at addresses with a random
    /// part (as a cluster's pod network gives them).
    fn assignment(service: &str) -> Vec<u8> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(service.len() as u64);
        let ips: Vec<String> = (0..10)
            .map(|i| format!("10.{}.{i}.{}", rng.gen::<u8>(), rng.gen::<u8>()))
            .collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let name = format!("inbound-vip|9080|http|{service}.default.svc.cluster.local");
        crate::xds::pieces::tests::cla(&name, &ips, &format!("{service}-v1")).encode_to_vec()
    }

    /// A repetitive payload is kept compact, at most three quarters of its size, and expands to
    /// exactly its bytes; the same bytes give the same compact form.
    #[test]
    fn a_repetitive_payload_is_kept_compact_and_expands_to_its_bytes() {
        let raw = assignment("reviews");
        let kept = compact(ENDPOINT_TYPE, &raw).expect("worth it");
        assert_eq!(kept[0], COMPACT);
        assert!(
            kept.len() * 4 <= raw.len() * 3,
            "{} of {}",
            kept.len(),
            raw.len()
        );
        assert_eq!(&*expand(&kept).unwrap(), raw.as_slice());
        assert_eq!(compact(ENDPOINT_TYPE, &raw), Some(kept.clone()));
        let decoded: ClusterLoadAssignment = decode(&kept).unwrap();
        assert!(decoded
            .cluster_name
            .starts_with("inbound-vip|9080|http|reviews"));
        assert_eq!(expand_bytes(&kept).unwrap(), bytes::Bytes::from(raw));
    }

    /// A type's payloads are kept against its first service resource: the first one that is
    /// not a service's (or is small) teaches nothing and is kept without a dictionary; a service
    /// assignment is learned from, and another service's assignment, alike in shape, is kept
    /// smaller than without the dictionary (132 bytes against 313 here) and expands to its
    /// bytes. Another type has learned nothing from them; a form that names a dictionary never
    /// learned is an error.
    #[test]
    fn a_type_s_payloads_are_kept_against_its_first_service_resource() {
        let d = Dictionaries::new();
        let infra = ClusterLoadAssignment {
            cluster_name: "main_internal ".repeat(40),
            ..Default::default()
        }
        .encode_to_vec();
        let kept = d.compact(ENDPOINT_TYPE, &infra).expect("repetitive");
        assert_eq!(kept[1], PLAIN, "not a service's: nothing learned");
        let (first, second) = (assignment("reviews"), assignment("ratings"));
        // Without a dictionary: the block alone.
        let alone = lz4_flex::block::compress_prepend_size(&second).len() + 2;
        let one = d.compact(ENDPOINT_TYPE, &first).expect("worth it");
        assert_eq!(
            one[1], 2,
            "against the assignments' dictionary, learned from it"
        );
        let two = d.compact(ENDPOINT_TYPE, &second).expect("worth it");
        assert_eq!(two[1], 2);
        assert!(
            two.len() * 4 < alone * 3,
            "{} bytes with the dictionary, {alone} without",
            two.len()
        );
        assert_eq!(&*d.expand(&two).unwrap(), second.as_slice());
        assert_eq!(&*d.expand(&one).unwrap(), first.as_slice());
        assert_eq!(&*d.expand(&kept).unwrap(), infra.as_slice());
        // The same bytes, the same form.
        assert_eq!(d.compact(ENDPOINT_TYPE, &second), Some(two.clone()));
        // Clusters learned nothing from them, and a cluster that is not a service's is kept
        // without a dictionary.
        assert!(d.types[0].1.get().is_none());
        assert_eq!(d.compact(CLUSTER_TYPE, &infra).unwrap()[1], PLAIN);
        // Another process (here: other dictionaries) cannot read the form.
        let err = Dictionaries::new().expand(&two).unwrap_err();
        assert!(matches!(err, ReadError::Dictionary(2)), "{err}");
        assert!(err.to_string().contains("dictionary 2"), "{err}");
    }

    /// What does not shrink by a quarter, and what is small, is kept as it came and read as
    /// it is (borrowed, not copied).
    #[test]
    fn what_does_not_pay_is_kept_as_it_came() {
        use rand::{RngCore, SeedableRng};
        let mut random = vec![0u8; 4096];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut random);
        random[0] = 1;
        assert_eq!(compact(CLUSTER_TYPE, &random), None);
        let small = ClusterLoadAssignment {
            cluster_name: "c".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(compact(ENDPOINT_TYPE, &small), None);
        assert!(matches!(expand(&small).unwrap(), Cow::Borrowed(b) if b == small.as_slice()));
        assert!(matches!(expand(&[]).unwrap(), Cow::Borrowed(b) if b.is_empty()));
    }

    /// A payload that begins with a zero byte (no protobuf message does) is kept compact
    /// whatever its size, so that it reads back as itself and its decode error is the
    /// protobuf one; a broken compact form is a decode error.
    #[test]
    fn a_leading_zero_byte_is_always_kept_compact() {
        let odd = [0u8, 1, 2];
        let kept = compact(ENDPOINT_TYPE, &odd).expect("always");
        assert_eq!(&*expand(&kept).unwrap(), &odd);
        let err = decode::<ClusterLoadAssignment>(&kept).unwrap_err();
        assert!(matches!(err, ReadError::Decode(_)), "{err}");
        let err = expand(&[COMPACT, PLAIN, 200, 0]).unwrap_err();
        assert!(matches!(err, ReadError::Expand(_)), "{err}");
        assert!(err.to_string().contains("does not expand"), "{err}");
        assert!(matches!(
            expand(&[COMPACT]).unwrap_err(),
            ReadError::Truncated
        ));
    }
}
