//! Reassembly of chunked messages on the vendor side (SPEC.md §7), one
//! [`Reassembler`] per link, in bounded memory.
//!
//! A chunk names its message by a 16-bit id, not by device, so chunks are
//! put together per *link*: whatever identifies the sender on the transport
//! (a socket address, a gateway and radio id). Complete messages then go to
//! [`super::Ingestor::ingest_batch`]; a wrongly assembled message fails to
//! open there, as any tampered one does.
//!
//! Links are not authenticated, so anyone can make new ones (a new source
//! port is a new link). The rules that keep memory bounded whatever
//! arrives (SPEC.md, Security, T1 "link flood"):
//!
//! - a chunk is parsed and checked against the longest sealed message
//!   *before* any state exists for its link: a malformed chunk costs nothing;
//! - at most [`ReassemblyLimits::max_links`] links hold state, and at most
//!   [`ReassemblyLimits::max_bytes`] bytes are held by them all (each link
//!   costs [`LINK_BYTES`]); a new link beyond either cap evicts the link
//!   whose last chunk arrived longest ago;
//! - links idle for the timeout are dropped on every push (oldest first,
//!   in time proportional to the number dropped), not only when
//!   [`Reassembly::expire`] is called.
//!
//! A flood of new links therefore evicts genuine partial messages (they are
//! sent again by the device, whose outbox keeps them until delivered) but
//! never grows memory past the cap.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::hash::Hash;
use std::collections::HashMap;

use crate::message::MAX_SEALED_LEN;
use crate::wire::chunk::{Pushed, Reassembler};

use super::IngestError;

/// Partial messages one link may have in flight at once.
pub const SLOTS_PER_LINK: usize = 4;

type LinkReassembler = Reassembler<SLOTS_PER_LINK, MAX_SEALED_LEN>;

/// The bytes one link's reassembly state takes (its fixed buffers), the
/// unit of [`ReassemblyLimits::max_bytes`].
pub const LINK_BYTES: usize = core::mem::size_of::<LinkReassembler>();

/// Caps on what [`Reassembly`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// The most links holding state at once.
    pub max_links: usize,
    /// The most bytes of reassembly state held at once ([`LINK_BYTES`] per link).
    pub max_bytes: usize,
}

impl Default for ReassemblyLimits {
    /// 4,096 links, 32 MiB (the byte cap allows about 6,400 links, so the
    /// link cap binds: about 20 MiB at most).
    fn default() -> ReassemblyLimits {
        ReassemblyLimits { max_links: 4096, max_bytes: 32 << 20 }
    }
}

impl ReassemblyLimits {
    /// The most links these limits allow (both caps applied; at least 1).
    pub const fn link_capacity(&self) -> usize {
        let by_bytes = self.max_bytes / LINK_BYTES;
        let n = if by_bytes < self.max_links { by_bytes } else { self.max_links };
        if n == 0 { 1 } else { n }
    }
}

struct Link {
    touched: u64,
    seq: u64,
    rx: Box<LinkReassembler>,
}

/// Counts of what a [`Reassembly`] did with links, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Chunks refused before any state was made for them.
    pub rejected: u64,
    /// Links dropped to stay within the caps.
    pub evicted: u64,
    /// Links dropped after the idle timeout.
    pub expired: u64,
}

/// Per-link reassembly of chunks into sealed messages, within
/// [`ReassemblyLimits`].
///
/// ```
/// use spime::vendor::link::Reassembly;
/// use spime::wire::chunk::Chunks;
/// let message = [9u8; 300];
/// let mut rx: Reassembly<&str> = Reassembly::new(60);
/// let mut done = Vec::new();
/// for chunk in Chunks::new(&message, 1, 64)? {
///     let mut frame = [0u8; 64];
///     let n = chunk.write_to(&mut frame)?;
///     if let Some(m) = rx.push(&"gateway-1", 1_000, &frame[..n]).unwrap() {
///         done.push(m);
///     }
/// }
/// assert_eq!(done, [message.to_vec()]);
/// // Garbage from another link makes no state at all.
/// assert!(rx.push(&"gateway-2", 1_000, &[0xff]).is_err());
/// assert_eq!(rx.links(), 1);
/// # Ok::<(), spime::wire::chunk::ChunkError>(())
/// ```
pub struct Reassembly<K> {
    links: HashMap<K, Link>,
    /// Links by (last chunk time, arrival sequence): the first is the oldest.
    order: BTreeMap<(u64, u64), K>,
    next_seq: u64,
    timeout: u64,
    limits: ReassemblyLimits,
    stats: LinkStats,
}

impl<K> core::fmt::Debug for Reassembly<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reassembly")
            .field("links", &self.links.len())
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Reassembly<K> {
    /// Drops partial messages (and idle links) after `timeout` seconds
    /// without a chunk; [`ReassemblyLimits::default`] caps.
    pub fn new(timeout: u64) -> Reassembly<K> {
        Reassembly::with_limits(timeout, ReassemblyLimits::default())
    }

    /// As [`Reassembly::new`], with explicit caps.
    pub fn with_limits(timeout: u64, limits: ReassemblyLimits) -> Reassembly<K> {
        Reassembly {
            links: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            timeout,
            limits,
            stats: LinkStats::default(),
        }
    }

    /// Takes one chunk from `link` at `now`; returns the message it completed, if any.
    ///
    /// The chunk is checked before anything is kept for `link`; idle links
    /// are dropped; a new link beyond the caps evicts the oldest.
    ///
    /// # Errors
    /// [`IngestError::Chunk`] for a malformed chunk or one whose message
    /// would exceed the longest sealed message (nothing is kept then).
    pub fn push(&mut self, link: &K, now: u64, chunk: &[u8]) -> Result<Option<Vec<u8>>, IngestError> {
        if let Err(e) = LinkReassembler::check(chunk) {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return Err(IngestError::Chunk(e));
        }
        self.expire(now);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(l) = self.links.get_mut(link) {
            self.order.remove(&(l.touched, l.seq));
            l.touched = now;
            l.seq = seq;
        } else {
            while self.links.len() >= self.limits.link_capacity() {
                let Some((_, oldest)) = self.order.pop_first() else { break };
                self.links.remove(&oldest);
                self.stats.evicted = self.stats.evicted.saturating_add(1);
            }
            let rx = Box::new(Reassembler::new(self.timeout));
            self.links.insert(link.clone(), Link { touched: now, seq, rx });
        }
        self.order.insert((now, seq), link.clone());
        let Some(l) = self.links.get_mut(link) else { return Ok(None) };
        match l.rx.push(now, chunk).map_err(IngestError::Chunk)? {
            Pushed::Complete(m) => Ok(Some(m.to_vec())),
            _ => Ok(None),
        }
    }

    /// Forgets links with no chunk for the timeout (oldest first).
    pub fn expire(&mut self, now: u64) {
        while let Some(entry) = self.order.first_entry() {
            if now.saturating_sub(entry.key().0) < self.timeout {
                break;
            }
            let link = entry.remove();
            self.links.remove(&link);
            self.stats.expired = self.stats.expired.saturating_add(1);
        }
    }

    /// How many links hold state.
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// The bytes of reassembly state held ([`LINK_BYTES`] per link); never
    /// above [`ReassemblyLimits::max_bytes`] (unless that allows less than
    /// one link: one link is always allowed).
    pub fn buffered_bytes(&self) -> usize {
        self.links.len().saturating_mul(LINK_BYTES)
    }

    /// The caps in force.
    pub const fn limits(&self) -> ReassemblyLimits {
        self.limits
    }

    /// What was refused, evicted and expired so far.
    pub const fn stats(&self) -> LinkStats {
        self.stats
    }
}
