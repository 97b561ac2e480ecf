//! Chunking: a sealed message cut to the link's MTU, and put together
//! again on the other side (SPEC.md §7).
//!
//! Every chunk is a 5-byte header followed by 1 to 255 payload bytes:
//!
//! ```text
//! offset  size  field
//! 0       2     message id   u16 big-endian; the device uses the low 16 bits of the envelope counter
//! 2       1     index        0-based position of this chunk
//! 3       1     last         index of the last chunk (chunk count - 1)
//! 4       1     size         payload length of every chunk but the last, 1..=255
//! 5       n     payload      n = size for index < last; 1 <= n <= size for index == last
//! ```
//!
//! The payload of chunk `i` is the message bytes `i * size .. i * size + n`,
//! so every chunk places itself without any other chunk, and a message is
//! complete when all `last + 1` chunks are in. Chunks carry no checksum or
//! version of their own: the message inside is an authenticated envelope,
//! and a wrongly assembled one fails to open.
//!
//! [`Chunks`] cuts a message; [`Reassembler`] takes chunks in any order,
//! with loss, duplicates and stale partial messages, in fixed memory.
//!
//! ```
//! use spime::wire::chunk::{Chunks, Pushed, Reassembler};
//! let message = [7u8; 100];
//! let mut rx: Reassembler<2, 256> = Reassembler::new(60);
//! let mut out = None;
//! // BLE's smallest ATT payload: 20 bytes, so 15 message bytes per chunk.
//! let chunks = Chunks::new(&message, 0x0102, 20)?;
//! assert_eq!(chunks.len(), 7);
//! for chunk in chunks.rev() {                      // any order will do
//!     let mut frame = [0u8; 20];
//!     let n = chunk.write_to(&mut frame)?;
//!     if let Pushed::Complete(m) = rx.push(1_700_000_000, &frame[..n])? {
//!         out = Some(m.len());
//!     }
//! }
//! assert_eq!(out, Some(100));
//! # Ok::<(), spime::wire::chunk::ChunkError>(())
//! ```

/// Length of the chunk header.
pub const CHUNK_HEADER_LEN: usize = 5;
/// The most payload bytes one chunk carries.
pub const MAX_CHUNK_PAYLOAD: usize = 255;
/// The most chunks one message is cut into.
pub const MAX_CHUNKS: usize = 256;
/// The smallest MTU chunking works with (a header and one payload byte).
pub const MIN_MTU: usize = CHUNK_HEADER_LEN + 1;

/// A chunk could not be made or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The MTU cannot hold a chunk header and one payload byte.
    #[error("MTU of {0} bytes is below the minimum of 6")]
    MtuTooSmall(usize),
    /// An empty message cannot be chunked.
    #[error("empty message")]
    Empty,
    /// The message needs more than 256 chunks at this MTU, or more bytes
    /// than the reassembler's capacity.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// bytes the message has (or, for a partial message, at least has)
        len: usize,
        /// the most bytes allowed
        max: usize,
    },
    /// The chunk is shorter than a header and one payload byte.
    #[error("chunk of {0} bytes is shorter than 6")]
    Truncated(usize),
    /// The header's size field is 0.
    #[error("chunk size field is 0")]
    ZeroSize,
    /// The index is past the last index.
    #[error("chunk index {index} is past the last index {last}")]
    IndexOutOfRange {
        /// the chunk's index
        index: u8,
        /// the chunk's last index
        last: u8,
    },
    /// The payload length breaks the size rule: not `size` for a chunk
    /// before the last, or above `size` for the last one.
    #[error("chunk payload of {len} bytes does not fit size {size}")]
    BadLength {
        /// payload bytes present
        len: usize,
        /// the header's size field
        size: u8,
    },
    /// The output buffer cannot hold the chunk.
    #[error("buffer of {have} bytes cannot hold a {needed}-byte chunk")]
    BufferTooSmall {
        /// bytes needed
        needed: usize,
        /// bytes available
        have: usize,
    },
}

impl ChunkError {
    /// The stable numeric code (SPEC.md §10.1): 80 Truncated, 81 ZeroSize,
    /// 82 IndexOutOfRange, 83 BadLength, 84 TooLarge, 85 MtuTooSmall,
    /// 86 Empty, 87 BufferTooSmall.
    pub const fn code(&self) -> u16 {
        match self {
            ChunkError::Truncated(_) => 80,
            ChunkError::ZeroSize => 81,
            ChunkError::IndexOutOfRange { .. } => 82,
            ChunkError::BadLength { .. } => 83,
            ChunkError::TooLarge { .. } => 84,
            ChunkError::MtuTooSmall(_) => 85,
            ChunkError::Empty => 86,
            ChunkError::BufferTooSmall { .. } => 87,
        }
    }
}

/// A parsed chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Which message the chunk belongs to.
    pub id: u16,
    /// Its position.
    pub index: u8,
    /// The index of the message's last chunk.
    pub last: u8,
    /// The payload length of every chunk but the last.
    pub size: u8,
}

impl ChunkHeader {
    /// The header bytes.
    pub const fn to_bytes(&self) -> [u8; CHUNK_HEADER_LEN] {
        let [a, b] = self.id.to_be_bytes();
        [a, b, self.index, self.last, self.size]
    }

    /// Parses and checks a whole chunk: header and payload length.
    /// Returns the header and the payload.
    ///
    /// # Errors
    /// [`ChunkError::Truncated`], [`ChunkError::ZeroSize`],
    /// [`ChunkError::IndexOutOfRange`] or [`ChunkError::BadLength`].
    pub fn parse(chunk: &[u8]) -> Result<(ChunkHeader, &[u8]), ChunkError> {
        let Some((&[a, b, index, last, size], payload)) = chunk.split_first_chunk::<CHUNK_HEADER_LEN>() else {
            return Err(ChunkError::Truncated(chunk.len()));
        };
        if payload.is_empty() {
            return Err(ChunkError::Truncated(chunk.len()));
        }
        if size == 0 {
            return Err(ChunkError::ZeroSize);
        }
        if index > last {
            return Err(ChunkError::IndexOutOfRange { index, last });
        }
        let ok = if index < last { payload.len() == usize::from(size) } else { payload.len() <= usize::from(size) };
        if !ok {
            return Err(ChunkError::BadLength { len: payload.len(), size });
        }
        Ok((ChunkHeader { id: u16::from_be_bytes([a, b]), index, last, size }, payload))
    }
}

/// One chunk of a message: a header and a borrowed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The header.
    pub header: ChunkHeader,
    /// The payload: a slice of the message.
    pub payload: &'a [u8],
}

impl Chunk<'_> {
    /// The chunk's length on the link.
    pub const fn len(&self) -> usize {
        CHUNK_HEADER_LEN + self.payload.len()
    }

    /// Always false: a chunk has at least a header and one payload byte.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes header and payload to the front of `out`; returns the length.
    ///
    /// # Errors
    /// [`ChunkError::BufferTooSmall`] when `out` is shorter than [`Chunk::len`].
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, ChunkError> {
        let needed = self.len();
        let have = out.len();
        let out = out.get_mut(..needed).ok_or(ChunkError::BufferTooSmall { needed, have })?;
        let (h, p) = out.split_at_mut(CHUNK_HEADER_LEN);
        h.copy_from_slice(&self.header.to_bytes());
        p.copy_from_slice(self.payload);
        Ok(needed)
    }
}

/// The chunks of one message for one MTU, in index order (an
/// `ExactSizeIterator`, double-ended so a test can send them backwards).
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    message: &'a [u8],
    id: u16,
    size: u8,
    last: u8,
    front: usize,
    back: usize,
}

impl<'a> Chunks<'a> {
    /// Cuts `message` into chunks of at most `mtu` bytes each, under
    /// message id `id`. The payload size is `min(mtu - 5, 255)`.
    ///
    /// # Errors
    /// [`ChunkError::MtuTooSmall`] below [`MIN_MTU`], [`ChunkError::Empty`],
    /// [`ChunkError::TooLarge`] when more than [`MAX_CHUNKS`] chunks would be needed.
    pub fn new(message: &'a [u8], id: u16, mtu: usize) -> Result<Chunks<'a>, ChunkError> {
        if mtu < MIN_MTU {
            return Err(ChunkError::MtuTooSmall(mtu));
        }
        if message.is_empty() {
            return Err(ChunkError::Empty);
        }
        let size = (mtu - CHUNK_HEADER_LEN).min(MAX_CHUNK_PAYLOAD);
        let count = message.len().div_ceil(size);
        let last =
            u8::try_from(count - 1).map_err(|_| ChunkError::TooLarge { len: message.len(), max: MAX_CHUNKS * size })?;
        let size = u8::try_from(size).map_err(|_| ChunkError::MtuTooSmall(mtu))?;
        Ok(Chunks { message, id, size, last, front: 0, back: count })
    }

    fn chunk(&self, i: usize) -> Option<Chunk<'a>> {
        let size = usize::from(self.size);
        let start = i.checked_mul(size)?;
        let end = start.saturating_add(size).min(self.message.len());
        let payload = self.message.get(start..end)?;
        let index = u8::try_from(i).ok()?;
        Some(Chunk { header: ChunkHeader { id: self.id, index, last: self.last, size: self.size }, payload })
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;
    fn next(&mut self) -> Option<Chunk<'a>> {
        if self.front >= self.back {
            return None;
        }
        let c = self.chunk(self.front);
        self.front += 1;
        c
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back.saturating_sub(self.front);
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Chunks<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        self.chunk(self.back)
    }
}

impl ExactSizeIterator for Chunks<'_> {}

/// What [`Reassembler::push`] did with a chunk.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushed<'a> {
    /// Stored; the message is not complete yet.
    Accepted,
    /// This exact chunk was already stored; nothing changed.
    Duplicate,
    /// The chunk contradicted the partial message with its id (another
    /// size or count, or other bytes at an index already stored): the
    /// partial message was dropped and this chunk started a new one.
    Restarted,
    /// The chunk completed its message: the whole message, valid until
    /// the next call on the reassembler.
    Complete(&'a [u8]),
}

/// Counts of what a [`Reassembler`] did, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReassemblyStats {
    /// Messages completed.
    pub completed: u32,
    /// Duplicate chunks ignored.
    pub duplicates: u32,
    /// Partial messages dropped because a chunk contradicted them.
    pub conflicts: u32,
    /// Partial messages dropped because no chunk came within the timeout.
    pub expired: u32,
    /// Partial messages dropped to make room for a new message.
    pub evicted: u32,
    /// Chunks refused as malformed or too large.
    pub rejected: u32,
}

#[derive(Debug, Clone)]
struct Slot<const MAX_LEN: usize> {
    busy: bool,
    id: u16,
    last: u8,
    size: u8,
    /// Payload length of the last chunk, 0 until it arrived.
    last_len: u8,
    received: u16,
    seen: [u8; MAX_CHUNKS / 8],
    touched: u64,
    buf: [u8; MAX_LEN],
}

impl<const MAX_LEN: usize> Slot<MAX_LEN> {
    const EMPTY: Self = Slot {
        busy: false,
        id: 0,
        last: 0,
        size: 0,
        last_len: 0,
        received: 0,
        seen: [0; MAX_CHUNKS / 8],
        touched: 0,
        buf: [0; MAX_LEN],
    };

    fn start(&mut self, h: &ChunkHeader, now: u64) {
        self.busy = true;
        self.id = h.id;
        self.last = h.last;
        self.size = h.size;
        self.last_len = 0;
        self.received = 0;
        self.seen = [0; MAX_CHUNKS / 8];
        self.touched = now;
    }

    fn has(&self, index: u8) -> bool {
        self.seen.get(usize::from(index / 8)).is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    fn mark(&mut self, index: u8) {
        if let Some(b) = self.seen.get_mut(usize::from(index / 8)) {
            *b |= 1 << (index % 8);
        }
    }

    /// The buffer range of chunk `index` with a payload of `len` bytes.
    fn range(&self, index: u8, len: usize) -> core::ops::Range<usize> {
        let start = usize::from(index) * usize::from(self.size);
        start..start + len
    }

    fn total_len(&self) -> usize {
        usize::from(self.last) * usize::from(self.size) + usize::from(self.last_len)
    }
}

/// Puts chunked messages together again, up to `SLOTS` messages at once,
/// each of at most `MAX_LEN` bytes, in fixed memory
/// (about `SLOTS * (MAX_LEN + 48)` bytes).
///
/// Use one reassembler per link (per connected device): message ids are
/// only unique per sender. The rules (SPEC.md §7):
/// - a chunk is matched to a partial message by its id;
/// - a duplicate chunk (same index, same bytes) changes nothing;
/// - a chunk that contradicts its partial message (another `last` or
///   `size`, or other bytes at a stored index) drops the partial message
///   and starts a new one: the newest sender wins;
/// - a partial message with no new chunk for `timeout` seconds of caller
///   time is dropped (checked on every push, and by [`Reassembler::expire`]);
/// - when every slot is busy, the partial message touched longest ago is
///   dropped for the new one;
/// - a message longer than `MAX_LEN` is refused from its first chunk on.
///
/// A message delivered once may be delivered again if all its chunks are
/// duplicated after it completed; the replay window above rejects it.
#[derive(Debug, Clone)]
pub struct Reassembler<const SLOTS: usize, const MAX_LEN: usize> {
    slots: [Slot<MAX_LEN>; SLOTS],
    timeout: u64,
    stats: ReassemblyStats,
}

impl<const SLOTS: usize, const MAX_LEN: usize> Reassembler<SLOTS, MAX_LEN> {
    /// An empty reassembler that drops partial messages idle for `timeout` seconds.
    pub const fn new(timeout: u64) -> Self {
        Reassembler {
            slots: [const { Slot::EMPTY }; SLOTS],
            timeout,
            stats: ReassemblyStats { completed: 0, duplicates: 0, conflicts: 0, expired: 0, evicted: 0, rejected: 0 },
        }
    }

    /// What the reassembler did so far.
    pub const fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// How many partial messages are held.
    pub fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.busy).count()
    }

    /// Drops partial messages with no chunk for `timeout` seconds before `now`.
    pub fn expire(&mut self, now: u64) {
        for s in self.slots.iter_mut().filter(|s| s.busy) {
            if now.saturating_sub(s.touched) >= self.timeout {
                s.busy = false;
                self.stats.expired = self.stats.expired.saturating_add(1);
            }
        }
    }

    /// Takes one chunk received at `now` (caller time, seconds).
    ///
    /// # Errors
    /// The chunk's [`ChunkHeader::parse`] errors, or [`ChunkError::TooLarge`]
    /// when its message cannot fit `MAX_LEN`; the reassembler is then
    /// unchanged but for its `rejected` count.
    pub fn push(&mut self, now: u64, chunk: &[u8]) -> Result<Pushed<'_>, ChunkError> {
        let (h, payload) = match Self::check(chunk) {
            Ok(v) => v,
            Err(e) => {
                self.stats.rejected = self.stats.rejected.saturating_add(1);
                return Err(e);
            }
        };
        self.expire(now);
        let mut restarted = false;
        let i = match self.slots.iter().position(|s| s.busy && s.id == h.id) {
            Some(i) => i,
            None => self.free_slot(),
        };
        let Some(slot) = self.slots.get_mut(i) else {
            // SLOTS == 0: nothing can be held.
            self.stats.evicted = self.stats.evicted.saturating_add(1);
            return Ok(Pushed::Accepted);
        };
        if !slot.busy {
            slot.start(&h, now);
        } else if slot.last != h.last || slot.size != h.size {
            slot.start(&h, now);
            restarted = true;
        } else if slot.has(h.index) {
            let r = slot.range(h.index, payload.len());
            let same = slot.buf.get(r).is_some_and(|stored| stored == payload)
                && (h.index != h.last || usize::from(slot.last_len) == payload.len());
            if same {
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
                slot.touched = now;
                return Ok(Pushed::Duplicate);
            }
            slot.start(&h, now);
            restarted = true;
        }
        if restarted {
            self.stats.conflicts = self.stats.conflicts.saturating_add(1);
        }
        let r = slot.range(h.index, payload.len());
        if let Some(dst) = slot.buf.get_mut(r) {
            dst.copy_from_slice(payload);
        }
        if h.index == h.last {
            slot.last_len = u8::try_from(payload.len()).unwrap_or(u8::MAX);
        }
        slot.mark(h.index);
        slot.received += 1;
        slot.touched = now;
        if slot.received > u16::from(slot.last) {
            slot.busy = false;
            self.stats.completed = self.stats.completed.saturating_add(1);
            let total = slot.total_len();
            return Ok(Pushed::Complete(slot.buf.get(..total).unwrap_or(&[])));
        }
        Ok(if restarted { Pushed::Restarted } else { Pushed::Accepted })
    }

    fn check(chunk: &[u8]) -> Result<(ChunkHeader, &[u8]), ChunkError> {
        let (h, payload) = ChunkHeader::parse(chunk)?;
        // The message has at least `last * size + 1` bytes, exactly
        // `last * size + len` when this is the last chunk.
        let before = usize::from(h.last) * usize::from(h.size);
        let least = before + if h.index == h.last { payload.len() } else { 1 };
        if least > MAX_LEN {
            return Err(ChunkError::TooLarge { len: least, max: MAX_LEN });
        }
        Ok((h, payload))
    }

    /// A free slot, or the least recently touched one (dropped, counted).
    fn free_slot(&mut self) -> usize {
        if let Some(i) = self.slots.iter().position(|s| !s.busy) {
            return i;
        }
        let mut oldest = 0;
        let mut t = u64::MAX;
        for (i, s) in self.slots.iter().enumerate() {
            if s.touched < t {
                t = s.touched;
                oldest = i;
            }
        }
        if let Some(s) = self.slots.get_mut(oldest) {
            s.busy = false;
            self.stats.evicted = self.stats.evicted.saturating_add(1);
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn frames(msg: &[u8], id: u16, mtu: usize) -> Vec<Vec<u8>> {
        Chunks::new(msg, id, mtu)
            .unwrap()
            .map(|c| {
                let mut f = vec![0; c.len()];
                c.write_to(&mut f).unwrap();
                f
            })
            .collect()
    }

    #[test]
    fn header_bytes_are_pinned() {
        let f = frames(&[0xaa; 40], 0x0102, 20);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0][..5], [0x01, 0x02, 0, 2, 15]);
        assert_eq!(f[1][..5], [0x01, 0x02, 1, 2, 15]);
        assert_eq!(f[2], [0x01, 0x02, 2, 2, 15, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa]);
    }

    #[test]
    fn large_mtu_caps_size_at_255() {
        let c: Vec<_> = Chunks::new(&[1; 600], 9, 1500).unwrap().collect();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].header.size, 255);
        assert_eq!(c[2].payload.len(), 90);
    }

    #[test]
    fn chunker_rejections() {
        assert_eq!(Chunks::new(&[1], 0, 5).unwrap_err(), ChunkError::MtuTooSmall(5));
        assert_eq!(Chunks::new(&[], 0, 20).unwrap_err(), ChunkError::Empty);
        assert!(matches!(Chunks::new(&[0; 257], 0, 6).unwrap_err(), ChunkError::TooLarge { .. }));
        assert_eq!(Chunks::new(&[0; 256], 0, 6).unwrap().len(), 256);
        let c = Chunks::new(&[0; 30], 0, 20).unwrap().next().unwrap();
        assert_eq!(c.write_to(&mut [0; 19]), Err(ChunkError::BufferTooSmall { needed: 20, have: 19 }));
    }

    #[test]
    fn parse_rejections() {
        assert_eq!(ChunkHeader::parse(&[0, 0, 0, 0, 1]), Err(ChunkError::Truncated(5)));
        assert_eq!(ChunkHeader::parse(&[0, 0, 0]), Err(ChunkError::Truncated(3)));
        assert_eq!(ChunkHeader::parse(&[0, 0, 0, 0, 0, 9]), Err(ChunkError::ZeroSize));
        assert_eq!(ChunkHeader::parse(&[0, 0, 2, 1, 1, 9]), Err(ChunkError::IndexOutOfRange { index: 2, last: 1 }));
        assert_eq!(ChunkHeader::parse(&[0, 0, 0, 1, 2, 9]), Err(ChunkError::BadLength { len: 1, size: 2 }));
        assert_eq!(ChunkHeader::parse(&[0, 0, 1, 1, 2, 9, 9, 9]), Err(ChunkError::BadLength { len: 3, size: 2 }));
        assert!(ChunkHeader::parse(&[0, 0, 1, 1, 2, 9]).is_ok());
    }

    #[test]
    fn too_large_is_rejected_from_the_first_chunk() {
        let mut r: Reassembler<1, 32> = Reassembler::new(10);
        // last = 2, size = 15: at least 31 bytes, fits; 3 chunks of 15 -> up to 45
        assert_eq!(r.push(0, &[0, 1, 0, 2, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Ok(Pushed::Accepted));
        let mut last = vec![0, 1, 2, 2, 15];
        last.extend([0; 3]);
        assert_eq!(r.push(0, &last), Err(ChunkError::TooLarge { len: 33, max: 32 }));
        assert_eq!(r.push(0, &[0, 2, 0, 3, 15, 1]), Err(ChunkError::BadLength { len: 1, size: 15 }));
        let mut big = vec![0, 2, 0, 3, 15];
        big.extend([0; 15]);
        assert_eq!(r.push(0, &big), Err(ChunkError::TooLarge { len: 46, max: 32 }));
        assert_eq!(r.stats().rejected, 3);
    }

    #[test]
    fn duplicate_conflict_timeout_eviction() {
        let msg: Vec<u8> = (0..40).collect();
        let f = frames(&msg, 7, 20);
        let mut r: Reassembler<1, 64> = Reassembler::new(10);
        assert_eq!(r.push(0, &f[0]), Ok(Pushed::Accepted));
        assert_eq!(r.push(1, &f[0]), Ok(Pushed::Duplicate));
        // same index, other bytes: restart
        let mut other = f[0].clone();
        other[6] ^= 1;
        assert_eq!(r.push(2, &other), Ok(Pushed::Restarted));
        assert_eq!(r.stats().conflicts, 1);
        // the old chunk 0 now conflicts the other way
        assert_eq!(r.push(3, &f[0]), Ok(Pushed::Restarted));
        // another `last` for the same id: restart
        let g = frames(&msg[..20], 7, 20);
        assert_eq!(r.push(4, &g[0]), Ok(Pushed::Restarted));
        assert_eq!(r.stats().conflicts, 3);
        // timeout: idle 10 s drops it
        r.expire(14);
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.stats().expired, 1);
        // eviction: one slot, a second message evicts the first
        assert_eq!(r.push(20, &f[0]), Ok(Pushed::Accepted));
        let h = frames(&msg, 8, 20);
        assert_eq!(r.push(21, &h[0]), Ok(Pushed::Accepted));
        assert_eq!(r.stats().evicted, 1);
        assert_eq!(r.push(22, &h[1]), Ok(Pushed::Accepted));
        assert_eq!(r.push(22, &h[2]), Ok(Pushed::Complete(&msg[..])));
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn single_chunk_and_last_chunk_duplicates() {
        let mut r: Reassembler<2, 64> = Reassembler::new(10);
        assert_eq!(r.push(0, &[0, 5, 0, 0, 15, 1, 2, 3]), Ok(Pushed::Complete(&[1, 2, 3][..])));
        let f = frames(&[9; 17], 6, 20);
        assert_eq!(r.push(0, &f[1]), Ok(Pushed::Accepted));
        assert_eq!(r.push(0, &f[1]), Ok(Pushed::Duplicate));
        // a last chunk of another length at the same index: conflict
        assert_eq!(r.push(0, &[0, 6, 1, 1, 15, 9]), Ok(Pushed::Restarted));
        assert_eq!(r.push(0, &f[0]), Ok(Pushed::Complete(&[9; 16][..])));
    }

    #[test]
    fn zero_slots_hold_nothing() {
        let mut r: Reassembler<0, 64> = Reassembler::new(10);
        assert_eq!(r.push(0, &[0, 5, 0, 1, 1, 1]), Ok(Pushed::Accepted));
        assert_eq!(r.in_progress(), 0);
    }

    proptest! {
        /// Loss, duplication and reordering: a message completes exactly
        /// when every index arrived, and then equals the original.
        #[test]
        fn reassembly_under_loss_duplication_reordering(
            msg in proptest::collection::vec(any::<u8>(), 1..600),
            mtu in 6usize..80,
            plan in proptest::collection::vec((any::<u16>(), any::<bool>()), 0..400),
        ) {
            prop_assume!(msg.len().div_ceil((mtu - 5).min(255)) <= 256);
            let f = frames(&msg, 0xbeef, mtu);
            let mut r: Reassembler<2, 600> = Reassembler::new(1_000);
            let mut got = std::collections::BTreeSet::new();
            let mut completed = false;
            for (pick, _dup) in &plan {
                let i = usize::from(*pick) % f.len();
                if completed { break; }
                match r.push(0, &f[i]).unwrap() {
                    Pushed::Complete(m) => { prop_assert_eq!(m, &msg[..]); completed = true; got.insert(i); }
                    Pushed::Duplicate => prop_assert!(got.contains(&i)),
                    Pushed::Accepted => { prop_assert!(!got.contains(&i)); got.insert(i); }
                    Pushed::Restarted => prop_assert!(false, "no conflict expected"),
                }
            }
            prop_assert_eq!(completed, got.len() == f.len());
            if !completed {
                // deliver what was lost, in reverse order: it completes
                for i in (0..f.len()).rev().filter(|i| !got.contains(i)) {
                    if let Pushed::Complete(m) = r.push(0, &f[i]).unwrap() {
                        prop_assert_eq!(m, &msg[..]);
                        completed = true;
                    }
                }
                prop_assert!(completed);
            }
        }

        /// Two messages interleaved complete independently.
        #[test]
        fn interleaved_messages(a in proptest::collection::vec(any::<u8>(), 1..200),
                                b in proptest::collection::vec(any::<u8>(), 1..200)) {
            let fa = frames(&a, 1, 20);
            let fb = frames(&b, 2, 20);
            let mut r: Reassembler<2, 256> = Reassembler::new(1_000);
            let mut done = Vec::new();
            for i in 0..fa.len().max(fb.len()) {
                for f in [fa.get(i), fb.get(i)].into_iter().flatten() {
                    if let Pushed::Complete(m) = r.push(0, f).unwrap() { done.push(m.to_vec()); }
                }
            }
            prop_assert_eq!(done.len(), 2);
            prop_assert!(done.contains(&a) && done.contains(&b));
        }

        /// Arbitrary bytes never panic and never exceed capacity.
        #[test]
        fn arbitrary_chunks_never_panic(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..40), 0..60)) {
            let mut r: Reassembler<3, 64> = Reassembler::new(5);
            for (t, c) in chunks.iter().enumerate() {
                if let Ok(Pushed::Complete(m)) = r.push(t as u64, c) { prop_assert!(m.len() <= 64); }
                prop_assert!(r.in_progress() <= 3);
            }
        }
    }
}
