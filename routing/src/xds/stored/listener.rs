//! A large listener (`main_internal`: about 1.3 KiB per service, 13 MB at 10 000 services) kept
//! chain by chain: its fields as they came, but each filter chain an LZ4 block against the
//! chains' dictionary (istiod builds every service's chain in one shape: on `xds_bench`'s mesh
//! 954 bytes become about 150) and its `filter_chain_matcher` an LZ4 block: 13.0 MB kept in
//! 1.7 MB at 10 000 services. Kept so, the translator reads the listener without expanding
//! it: the chains are digested as kept (a sixth of the bytes) and only a chain whose digest it
//! does not know is expanded and decoded ([`super::expand`] takes a block as it takes a
//! payload).
//!
//! A chain istiod sends again unchanged is not compressed again: the blocks of the last
//! listener kept so are remembered by the digest of the chain's bytes ([`ChainCache`]), and a
//! push of one new service among 10 000 compresses one chain.
//!
//! The form is `[COMPACT, LISTENER]` and then a protobuf message: the listener's fields in their
//! order, with the chains and the matcher as blocks (a block begins with a zero byte, which no
//! message does). Every length in the listener must be in its shortest form, as every encoder
//! writes it: then [`Dictionaries::expand`] gives back exactly the bytes that came. A chain
//! that begins with a zero byte is not a message; a listener that has one is kept so whatever
//! its size, that chain a block whatever that saves, so that the translator, which takes a
//! chain that begins with a zero byte as a block, reads it back as the bytes that came (and
//! rejects them as it would have).

use super::{Dictionaries, ReadError, CHAIN_FORM, COMPACT, LEARN_FROM, WORTH_FROM};
use std::collections::HashMap;

/// The second byte of a listener kept chain by chain.
pub(super) const LISTENER: u8 = 0x80;

/// Listeners from this size are kept chain by chain; smaller ones as any other payload.
pub(super) const CHAINS_FROM: usize = 2048;

/// `Listener.filter_chains`, `Listener.filter_chain_matcher`, `FilterChain.name`.
const FILTER_CHAINS: u32 = 3;
const FILTER_CHAIN_MATCHER: u32 = 32;
const CHAIN_NAME: u32 = 7;

/// One field of a message: its number, its key's bytes, and its value's (for a length-delimited
/// field, the value without its length; else every byte after the key).
struct Field<'a> {
    number: u32,
    key: &'a [u8],
    value: &'a [u8],
    delimited: bool,
}

/// The fields of `msg` in order; `None` when it is not a well-formed message (groups are not
/// read) or a length is not in its shortest form.
fn fields(mut msg: &[u8]) -> Option<Vec<Field<'_>>> {
    use prost::encoding::{decode_key, decode_varint, encoded_len_varint, WireType};
    let mut out = Vec::new();
    while !msg.is_empty() {
        let start = msg;
        let (number, wire) = decode_key(&mut msg).ok()?;
        let key = &start[..start.len() - msg.len()];
        let (value, delimited) = match wire {
            WireType::LengthDelimited => {
                let before = msg.len();
                let len = decode_varint(&mut msg).ok()?;
                if before - msg.len() != encoded_len_varint(len) {
                    return None;
                }
                let len = usize::try_from(len).ok()?;
                let value = msg.get(..len)?;
                msg = &msg[len..];
                (value, true)
            }
            wire => {
                let before = msg;
                match wire {
                    WireType::Varint => {
                        decode_varint(&mut msg).ok()?;
                    }
                    WireType::SixtyFourBit => msg = msg.get(8..)?,
                    WireType::ThirtyTwoBit => msg = msg.get(4..)?,
                    _ => return None,
                }
                (&before[..before.len() - msg.len()], false)
            }
        };
        out.push(Field {
            number,
            key,
            value,
            delimited,
        });
    }
    Some(out)
}

/// Append a length-delimited field: `key`, `value`'s length, `value`; where `value` begins.
fn put_delimited(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> usize {
    out.extend_from_slice(key);
    prost::encoding::encode_varint(value.len() as u64, out);
    let at = out.len();
    out.extend_from_slice(value);
    at
}

/// Where each chain's block is in a listener kept chain by chain, by the digest of the chain's
/// bytes.
type Blocks = HashMap<u128, (u32, u32), crate::xds::FastHash>;

/// The last large listener kept chain by chain (the very bytes its holder keeps, not a copy)
/// and where its blocks are.
#[derive(Default)]
pub(super) struct ChainCache {
    kept: bytes::Bytes,
    at: Blocks,
}

impl ChainCache {
    fn get(&self, digest: u128) -> Option<&[u8]> {
        let &(from, len) = self.at.get(&digest)?;
        self.kept.get(from as usize..from as usize + len as usize)
    }
}

/// Note that the block of the chain with `digest` is `len` bytes at `at`.
fn put(blocks: &mut Blocks, digest: u128, at: usize, len: usize) {
    if let (Ok(at), Ok(len)) = (u32::try_from(at), u32::try_from(len)) {
        blocks.insert(digest, (at, len));
    }
}

impl Dictionaries {
    /// `raw` (a listener) kept chain by chain; `None` when it is not a message this form gives
    /// back exactly (see the module's note), or when it is not `large` and no chain or matcher
    /// begins with a zero byte (then it is kept as any payload). A chain or matcher that does
    /// (no message does) is a block whatever that saves, so that a chain beginning with a zero
    /// byte is always a block and reads back as the bytes that came. Only a `large` listener's
    /// blocks are remembered for the next ([`ChainCache`]).
    pub(super) fn compact_listener(&self, raw: &[u8], large: bool) -> Option<bytes::Bytes> {
        let fields = fields(raw)?;
        let odd = |f: &Field<'_>| {
            f.delimited
                && (f.number == FILTER_CHAINS || f.number == FILTER_CHAIN_MATCHER)
                && f.value.first() == Some(&COMPACT)
        };
        if !large && !fields.iter().any(odd) {
            return None;
        }
        let mut cache = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        let last = if large { cache.take() } else { None }.unwrap_or_default();
        let mut next = Blocks::with_capacity_and_hasher(last.at.len() + 16, Default::default());
        // istiod's listeners keep about 13 % of their bytes: room for that, so that the buffer
        // is not grown (a copy) before it is shrunk to fit (another).
        let mut out = Vec::with_capacity(raw.len() / 6);
        out.extend_from_slice(&[COMPACT, LISTENER]);
        for f in &fields {
            if !f.delimited {
                out.extend_from_slice(f.key);
                out.extend_from_slice(f.value);
                continue;
            }
            match f.number {
                FILTER_CHAINS | FILTER_CHAIN_MATCHER if odd(f) => {
                    let block = self
                        .block(f.value, None, |_| false, true)
                        .unwrap_or_default();
                    put_delimited(&mut out, f.key, &block);
                }
                FILTER_CHAINS => {
                    let digest = crate::xds::pieces::digest(f.value);
                    let made;
                    let block = match last.get(digest) {
                        Some(b) => b,
                        None => match self.chain_block(f.value) {
                            Some(b) => {
                                made = b;
                                &made[..]
                            }
                            None => f.value,
                        },
                    };
                    let at = put_delimited(&mut out, f.key, block);
                    if block.first() == Some(&COMPACT) {
                        put(&mut next, digest, at, block.len());
                    }
                }
                FILTER_CHAIN_MATCHER => {
                    let block = (f.value.len() >= WORTH_FROM)
                        .then(|| self.block(f.value, None, |_| false, false))
                        .flatten();
                    put_delimited(&mut out, f.key, block.as_deref().unwrap_or(f.value));
                }
                _ => {
                    put_delimited(&mut out, f.key, f.value);
                }
            }
        }
        // Held as long as the listener: no spare capacity.
        out.shrink_to_fit();
        let kept = bytes::Bytes::from(out);
        if large {
            *cache = Some(ChainCache {
                kept: kept.clone(),
                at: next,
            });
        }
        Some(kept)
    }

    /// A chain's block, against the chains' dictionary (learned from the first service chain,
    /// named `inbound-vip|…`); `None` when keeping it so would not save a quarter.
    fn chain_block(&self, raw: &[u8]) -> Option<Vec<u8>> {
        if raw.len() < WORTH_FROM {
            return None;
        }
        let learn = |raw: &[u8]| raw.len() >= LEARN_FROM && service_chain(raw);
        self.block(raw, Some(CHAIN_FORM), learn, false)
    }

    /// The bytes of a listener kept chain by chain (`inner`: what follows its two bytes).
    pub(super) fn expand_listener(&self, inner: &[u8]) -> Result<Vec<u8>, ReadError> {
        let fields = fields(inner).ok_or(ReadError::Listener)?;
        // istiod's chains expand about fifteenfold.
        let mut out = Vec::with_capacity(inner.len().saturating_mul(16));
        for f in &fields {
            if !f.delimited {
                out.extend_from_slice(f.key);
                out.extend_from_slice(f.value);
            } else if matches!(f.number, FILTER_CHAINS | FILTER_CHAIN_MATCHER)
                && f.value.first() == Some(&COMPACT)
            {
                if f.value.get(1) == Some(&LISTENER) {
                    return Err(ReadError::Listener);
                }
                put_delimited(&mut out, f.key, &self.expand(f.value)?);
            } else {
                put_delimited(&mut out, f.key, f.value);
            }
        }
        Ok(out)
    }
}

/// Whether `raw` is a service's filter chain as istiod names it (`inbound-vip|…`).
fn service_chain(raw: &[u8]) -> bool {
    fields(raw).is_some_and(|fs| {
        fs.iter()
            .any(|f| f.delimited && f.number == CHAIN_NAME && f.value.starts_with(b"inbound-vip|"))
    })
}

/// Whether `raw` (a listener) is large enough to keep chain by chain whatever its chains.
pub(super) fn worth_chains(raw: &[u8]) -> bool {
    raw.len() >= CHAINS_FROM
}

#[cfg(test)]
mod tests;
