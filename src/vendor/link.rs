//! Reassembly of chunked messages on the vendor side (SPEC.md §7), one
//! [`Reassembler`] per link.
//!
//! A chunk names its message by a 16-bit id, not by device, so chunks are
//! put together per *link*: whatever identifies the sender on the transport
//! (a socket address, a gateway and radio id). Complete messages then go to
//! [`super::Ingestor::ingest_batch`]; a wrongly assembled message fails to
//! open there, as any tampered one does.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hash::Hash;
use std::collections::HashMap;

use crate::message::MAX_SEALED_LEN;
use crate::wire::chunk::{Pushed, Reassembler};

use super::IngestError;

/// Partial messages one link may have in flight at once.
pub const SLOTS_PER_LINK: usize = 4;

/// Per-link reassembly of chunks into sealed messages.
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
/// # Ok::<(), spime::wire::chunk::ChunkError>(())
/// ```
pub struct Reassembly<K> {
    links: HashMap<K, (u64, Box<Reassembler<SLOTS_PER_LINK, MAX_SEALED_LEN>>)>,
    timeout: u64,
}

impl<K> core::fmt::Debug for Reassembly<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reassembly").field("links", &self.links.len()).field("timeout", &self.timeout).finish()
    }
}

impl<K: Hash + Eq + Clone> Reassembly<K> {
    /// Drops partial messages (and idle links) after `timeout` seconds without a chunk.
    pub fn new(timeout: u64) -> Reassembly<K> {
        Reassembly { links: HashMap::new(), timeout }
    }

    /// Takes one chunk from `link` at `now`; returns the message it completed, if any.
    ///
    /// # Errors
    /// [`IngestError::Chunk`] for a malformed chunk or one whose message
    /// would exceed the longest sealed message.
    pub fn push(&mut self, link: &K, now: u64, chunk: &[u8]) -> Result<Option<Vec<u8>>, IngestError> {
        let (touched, rx) =
            self.links.entry(link.clone()).or_insert_with(|| (now, Box::new(Reassembler::new(self.timeout))));
        *touched = now;
        match rx.push(now, chunk).map_err(IngestError::Chunk)? {
            Pushed::Complete(m) => Ok(Some(m.to_vec())),
            _ => Ok(None),
        }
    }

    /// Forgets links with no chunk for the timeout.
    pub fn expire(&mut self, now: u64) {
        let timeout = self.timeout;
        self.links.retain(|_, (touched, _)| now.saturating_sub(*touched) < timeout);
    }

    /// How many links hold state.
    pub fn links(&self) -> usize {
        self.links.len()
    }
}
