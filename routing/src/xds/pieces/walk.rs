//! The walk of [`Memo::pieces`](super::Memo::pieces): each resource beside what the last
//! call read in its place.

use super::{digest, name_key, same_bytes, ShallowListener};
use super::{AssignmentPiece, ClusterPiece, Encoded, Memo};
use crate::xds::listener::MAIN_INTERNAL;
use crate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};
use std::sync::Arc;

/// A resource [`Memo::pieces`] read, and what it gave.
///
/// The next call walks its resources beside the last call's: a resource in the same place
/// with the same type, the same name and *the very same bytes* (the xDS client shares an
/// unchanged resource's bytes from one state to the next) gives the same piece, without a
/// digest of its bytes or a lookup by name: at 10 000 services a state is 60 000 resources,
/// and digesting and looking them all up was most of what a push of one new service cost.
/// Holding the bytes keeps that test sound: while they are alive, no other resource's bytes
/// can be at their address.
#[derive(Debug)]
pub(super) struct Walked {
    pub(super) kind: Kind,
    /// [`name_key`](super::name_key) of its name.
    pub(super) key: Key,
    pub(super) bytes: bytes::Bytes,
    pub(super) gave: Gave,
}

/// A [`name_key`](super::name_key) in two 8-byte halves: a `u128` field aligns what holds it to
/// 16 bytes, and a walk entry would be 80 bytes where it is 72 (a walk holds every resource of
/// the state: 30 000 at 5 000 services).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key([u64; 2]);

impl From<u128> for Key {
    fn from(k: u128) -> Self {
        Key([k as u64, (k >> 64) as u64])
    }
}

impl Key {
    pub(super) fn get(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Cluster,
    Assignment,
    Listener,
    Other,
}

impl Kind {
    pub(super) fn of(type_url: &str) -> Kind {
        match type_url {
            CLUSTER_TYPE => Kind::Cluster,
            ENDPOINT_TYPE => Kind::Assignment,
            LISTENER_TYPE => Kind::Listener,
            _ => Kind::Other,
        }
    }
}

#[derive(Debug)]
pub(super) enum Gave {
    Cluster(Arc<ClusterPiece>),
    Assignment(Arc<AssignmentPiece>),
    /// With the [`digest`] of its bytes (in the box: a `u128` here would align every entry
    /// to 16 bytes).
    Listener(Box<(ShallowListener, u128)>),
    /// Read again each time: route configurations (decoded in full), or bytes that did not
    /// decode (rejected again).
    Nothing,
}

/// The last walk, taken in order, with a few entries of look-ahead (resources removed from
/// the middle of a type's names).
pub(super) struct Cursor {
    pub(super) rest: std::vec::IntoIter<Walked>,
    pub(super) ahead: std::collections::VecDeque<Walked>,
}

/// How far [`Cursor`] looks for a resource's name past the next one.
const LOOKAHEAD: usize = 8;

impl Cursor {
    fn peek(&mut self, d: usize) -> Option<&Walked> {
        while self.ahead.len() <= d {
            self.ahead.push_back(self.rest.next()?);
        }
        self.ahead.get(d)
    }

    fn take(&mut self) -> Option<Walked> {
        self.ahead.pop_front().or_else(|| self.rest.next())
    }

    /// The last walk's entry for `(kind, key)` if it is next or a few entries on, the ones
    /// before it (gone from the state) handed to `gone`; `None` (nothing taken) otherwise.
    pub(super) fn find(
        &mut self,
        kind: Kind,
        key: u128,
        mut gone: impl FnMut(Walked),
    ) -> Option<Walked> {
        let d = (0..=LOOKAHEAD).find(|&d| {
            self.peek(d)
                .is_some_and(|w| w.kind == kind && w.key.get() == key)
        })?;
        for _ in 0..d {
            gone(self.take()?);
        }
        self.take()
    }

    /// The last walk's next entry, when it is of `kind` and holds the very same bytes: the same
    /// resource (a payload holds its name), found without a hash of the name.
    pub(super) fn next_same(&mut self, kind: Kind, bytes: &bytes::Bytes) -> Option<Walked> {
        self.peek(0)
            .is_some_and(|w| w.kind == kind && same_bytes(&w.bytes, bytes))
            .then(|| self.take())?
    }
}

impl Walked {
    /// The digest of a listener's bytes, when the walk read it as one.
    pub(super) fn listener_digest(&self) -> Option<u128> {
        match &self.gave {
            Gave::Listener(l) => Some(l.1),
            _ => None,
        }
    }
}

/// The digests of the resources that are neither clusters nor assignments, as
/// [`others_digest`](crate::xds::assemble::eds::others_digest) gives them, taken during the
/// walk: a listener's bytes are digested only when they are not the very bytes the last walk
/// digested (`main_internal` is about 1.5 KiB per service: 15 MiB at 10 000 services, and
/// digesting it again was a tenth of what the handling of a new service's clusters cost).
#[derive(Default)]
pub(super) struct Others {
    rest: xxhash_rust::xxh3::Xxh3,
    main: Option<u128>,
    /// Listeners whose bytes were digested.
    pub(super) digested: usize,
}

impl Others {
    /// The digest of listener `r`'s bytes: `known` (the last walk's, for the very same bytes),
    /// or computed.
    pub(super) fn listener_digest(&mut self, r: &Encoded<'_>, known: Option<u128>) -> u128 {
        known.unwrap_or_else(|| {
            self.digested += 1;
            digest(r.value)
        })
    }

    /// Count `r` in (clusters and assignments are not); `listener`: the digest of its bytes,
    /// when it is a listener.
    pub(super) fn add(&mut self, kind: Kind, r: &Encoded<'_>, listener: Option<u128>) {
        match kind {
            Kind::Cluster | Kind::Assignment => {}
            Kind::Listener if **r.name == *MAIN_INTERNAL => {
                // Where it stands among the others.
                self.rest.update(b"main_internal");
                self.main = listener;
            }
            Kind::Listener | Kind::Other => {
                for part in [r.type_url.as_bytes(), r.name.as_bytes(), &r.value[..]] {
                    self.rest.update(&(part.len() as u64).to_le_bytes());
                    self.rest.update(part);
                }
            }
        }
    }

    /// (all of them, all but `main_internal`).
    pub(super) fn digests(&self) -> (u128, u128) {
        let rest = self.rest.digest128();
        (
            crate::xds::assemble::eds::with_main_digest(rest, self.main),
            rest,
        )
    }
}

/// What a push read alone replaced, replaced in the walk too.
impl Memo {
    /// Assignment `i` of the last walk (`old`, as it gave it) was replaced by `new`, read from
    /// `r`, in a push read alone: the walk holds `r`'s bytes and `new` in its place, as a walk
    /// of the new state would. The next walk then takes them as they are, and the bytes and the
    /// piece replaced are let go now: kept until the next walk, which EDS pushes alone never
    /// make, each push left one more behind. Nothing is changed when the walk's entry is not
    /// `old` under `r`'s name (the walk was of another state).
    pub(crate) fn walked_assignment(
        &mut self,
        i: usize,
        old: &Arc<AssignmentPiece>,
        r: &Encoded<'_>,
        new: &Arc<AssignmentPiece>,
    ) {
        let Some(&at) = self.assignment_at.get(i) else {
            return;
        };
        let Some(w) = self.walked.get_mut(at as usize) else {
            return;
        };
        if let Gave::Assignment(p) = &mut w.gave {
            if Arc::ptr_eq(p, old) && w.key.get() == name_key(r.name) {
                *p = new.clone();
                w.bytes = r.value.clone();
            }
        }
    }

    /// [`Memo::walked_assignment`] for `main_internal`, replaced by `listener`, read from `r`
    /// (`digest`: of its bytes) in a route push read alone: the walk no longer holds the
    /// listener it replaced (about 1.3 KiB per service), and the next walk takes it without a
    /// digest.
    pub(crate) fn walked_main(
        &mut self,
        r: &Encoded<'_>,
        listener: &ShallowListener,
        digest: u128,
    ) {
        let Some(w) = self.main_at.and_then(|at| self.walked.get_mut(at as usize)) else {
            return;
        };
        if w.kind == Kind::Listener
            && **r.name == *MAIN_INTERNAL
            && w.key.get() == name_key(MAIN_INTERNAL)
        {
            w.gave = Gave::Listener(Box::new((listener.clone(), digest)));
            w.bytes = r.value.clone();
        }
    }
}
