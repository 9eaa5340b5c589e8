//! The form an xDS payload is kept in between pushes: its protobuf bytes as they came, or, when
//! that saves enough, a compact form. The xDS client keeps each resource's payload for as long
//! as the resource exists, beside the snapshot made from it; an assignment's payload (its
//! endpoints' metadata, labels and addresses, much alike) compresses to about a quarter, a
//! cluster's to two thirds.
//!
//! The compact form is a zero byte, then the LZ4 block of the bytes with their length before
//! it (`lz4_flex`'s size-prepended block). A protobuf message never begins with a zero byte (no
//! field has the number 0), so a payload that does is not a message: [`compact`] keeps it
//! compact whatever that saves, and the first byte tells the two forms apart. (The xDS client
//! keeps no such payload as it came: it reads each payload's name from its bytes first, and
//! rejects one that does not decode, as one beginning with a zero byte does not.) [`expand`]
//! gives the bytes back; every reader of a kept payload reads it through it. Digests and
//! comparisons of kept payloads are of the kept form (the same bytes always give the same
//! compact form).

use std::borrow::Cow;

/// The first byte of a payload kept compact.
const COMPACT: u8 = 0;

/// A payload smaller than this is kept as it is: a few bytes would not pay for the call.
const WORTH_FROM: usize = 64;

/// `raw`'s compact form, when keeping that saves at least a quarter (or when `raw` begins with
/// a zero byte: see the module's note); `None`: keep `raw` as it is.
pub fn compact(raw: &[u8]) -> Option<Vec<u8>> {
    let must = raw.first() == Some(&COMPACT);
    if !must && raw.len() < WORTH_FROM {
        return None;
    }
    let block = lz4_flex::block::compress_prepend_size(raw);
    if !must && (block.len() + 1) * 4 > raw.len() * 3 {
        return None;
    }
    let mut out = Vec::with_capacity(block.len() + 1);
    out.push(COMPACT);
    out.extend_from_slice(&block);
    Some(out)
}

/// Why a kept payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a compact payload does not expand: {0}")]
    Expand(#[from] lz4_flex::block::DecompressError),
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
}

/// The protobuf bytes of a kept payload: borrowed when it was kept as it came, expanded when it
/// was kept compact.
pub fn expand(kept: &[u8]) -> Result<Cow<'_, [u8]>, ReadError> {
    Ok(match kept.split_first() {
        Some((&COMPACT, block)) => Cow::Owned(lz4_flex::block::decompress_size_prepended(block)?),
        _ => Cow::Borrowed(kept),
    })
}

/// [`expand`] into `Bytes`: the kept ones themselves (no copy) when they are the protobuf bytes.
pub fn expand_bytes(kept: &bytes::Bytes) -> Result<bytes::Bytes, ReadError> {
    Ok(match expand(kept)? {
        Cow::Borrowed(_) => kept.clone(),
        Cow::Owned(v) => v.into(),
    })
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

    /// An assignment like istiod's: ten endpoints with the same metadata shape.
    fn assignment() -> Vec<u8> {
        let text = (0..10)
            .map(|i| format!("10.1.0.{i} reviews-v1-{i} spiffe://cluster.local/ns/default/sa/reviews app=reviews version=v1 "))
            .collect::<String>();
        ClusterLoadAssignment {
            cluster_name: format!("inbound-vip|9080|http|reviews.default.svc.cluster.local {text}"),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A repetitive payload is kept compact, at most three quarters of its size, and expands to
    /// exactly its bytes; the same bytes give the same compact form.
    #[test]
    fn a_repetitive_payload_is_kept_compact_and_expands_to_its_bytes() {
        let raw = assignment();
        let kept = compact(&raw).expect("worth it");
        assert_eq!(kept[0], COMPACT);
        assert!(
            kept.len() * 4 <= raw.len() * 3,
            "{} of {}",
            kept.len(),
            raw.len()
        );
        assert_eq!(&*expand(&kept).unwrap(), raw.as_slice());
        assert_eq!(compact(&raw), Some(kept.clone()));
        let decoded: ClusterLoadAssignment = decode(&kept).unwrap();
        assert!(decoded
            .cluster_name
            .starts_with("inbound-vip|9080|http|reviews"));
        let kept = bytes::Bytes::from(kept);
        assert_eq!(expand_bytes(&kept).unwrap(), bytes::Bytes::from(raw));
    }

    /// What does not shrink by a quarter, and what is small, is kept as it came and read as
    /// it is (borrowed, not copied).
    #[test]
    fn what_does_not_pay_is_kept_as_it_came() {
        use rand::{RngCore, SeedableRng};
        let mut random = vec![0u8; 4096];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut random);
        random[0] = 1;
        assert_eq!(compact(&random), None);
        let small = ClusterLoadAssignment {
            cluster_name: "c".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(compact(&small), None);
        assert!(matches!(expand(&small).unwrap(), Cow::Borrowed(b) if b == small.as_slice()));
        assert!(matches!(expand(&[]).unwrap(), Cow::Borrowed(b) if b.is_empty()));
    }

    /// A payload that begins with a zero byte (no protobuf message does) is kept compact
    /// whatever its size, so that it reads back as itself and its decode error is the
    /// protobuf one; a broken compact form is a decode error.
    #[test]
    fn a_leading_zero_byte_is_always_kept_compact() {
        let odd = [0u8, 1, 2];
        let kept = compact(&odd).expect("always");
        assert_eq!(&*expand(&kept).unwrap(), &odd);
        let err = decode::<ClusterLoadAssignment>(&kept).unwrap_err();
        assert!(matches!(err, ReadError::Decode(_)), "{err}");
        let err = expand(&[COMPACT, 200, 0]).unwrap_err();
        assert!(matches!(err, ReadError::Expand(_)), "{err}");
        assert!(err.to_string().contains("does not expand"), "{err}");
    }
}
