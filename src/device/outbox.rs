//! The outbox: sealed messages waiting for the link, bounded, in priority
//! order, kept across reboots (SPEC.md §8).
//!
//! Priority classes, most important first: [`Class::Lifecycle`]
//! (register, transfer, decommission), [`Class::Consent`], [`Class::Fault`],
//! [`Class::Usage`]. Messages leave in class order, oldest first within a
//! class.
//!
//! Drop policy when every slot is taken and a message of class `c` comes in:
//! 1. the oldest message of the least important class present that is
//!    `c` or less important, and not Lifecycle, is dropped for it (so a
//!    newer usage report replaces the oldest one, and a fault replaces a
//!    usage report, never the reverse);
//! 2. if there is none, the new message is refused
//!    ([`OutboxError::Full`]).
//!
//! Every dropped or refused message is counted per class in [`Dropped`];
//! messages removed because consent was withdrawn are counted in
//! [`Dropped::purged`]. The counters persist with the messages.
//!
//! Slot `i` is storage record `RECORD_OUTBOX + i`, and every change is one
//! atomic record write, which also carries the drop counters and a write
//! sequence number: after a power cut the outbox reloads exactly as it
//! was before or after the last change.
//!
//! The messages stay in storage: RAM holds each slot's 43-byte record
//! header (what orders and purges the message) and one record buffer, in
//! which a message is sealed before it is written and into which it is
//! read back to be sent ([`Outbox::peek`], [`Outbox::read`]).

use crate::consent::{CategorySet, LocationPrecision, Purpose, Scope};
use crate::device::storage::{RECORD_OUTBOX, Storage, StorageError};
use crate::wire::Kind;
use crate::wire::chunk::{ChunkError, Chunks};

/// Bytes of an outbox record before the envelope.
pub const OUTBOX_HEADER_LEN: usize = 43;
/// Bytes of an empty-slot record.
pub const OUTBOX_EMPTY_LEN: usize = 25;

/// The record size an outbox needs for envelopes of at most `envelope` bytes:
/// the `RECORD` parameter of [`Outbox`].
pub const fn record_len(envelope: usize) -> usize {
    OUTBOX_HEADER_LEN + envelope
}

/// A priority class; lower sends first.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Register, Transfer, Decommission: never dropped for another message.
    Lifecycle = 0,
    /// Consent updates.
    Consent = 1,
    /// Fault reports.
    Fault = 2,
    /// Usage reports.
    Usage = 3,
}

impl Class {
    /// The class of a message kind (vendor kinds, which a device never
    /// queues, count as Lifecycle).
    pub const fn of(kind: Kind) -> Class {
        match kind.to_byte() {
            0x02 => Class::Usage,
            0x03 => Class::Fault,
            0x04 => Class::Consent,
            _ => Class::Lifecycle,
        }
    }
}

/// What the outbox keeps about a message besides its bytes: enough to
/// order it, and to purge it when consent is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    /// The message kind.
    pub kind: Kind,
    /// The purpose it was collected for (Essential for non-data kinds).
    pub purpose: Purpose,
    /// The data categories it carries.
    pub categories: CategorySet,
    /// The most precise location it carries.
    pub location: LocationPrecision,
    /// The consent version it was built under.
    pub consent_version: u32,
    /// The envelope counter.
    pub counter: u64,
}

impl ItemMeta {
    /// Its priority class.
    pub const fn class(&self) -> Class {
        Class::of(self.kind)
    }

    /// What the message carries, for re-judging it under a new consent state.
    pub const fn scope(&self) -> Scope {
        Scope {
            purpose: self.purpose,
            categories: self.categories,
            location: self.location,
            consent_version: self.consent_version,
        }
    }
}

/// Counts of messages the outbox let go without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    /// Lifecycle messages refused for lack of room.
    pub lifecycle: u32,
    /// Consent messages dropped or refused.
    pub consent: u32,
    /// Fault reports dropped or refused.
    pub fault: u32,
    /// Usage reports dropped or refused.
    pub usage: u32,
    /// Messages removed because the consent they needed was withdrawn.
    pub purged: u32,
}

impl Dropped {
    /// The count of one class.
    pub const fn of(&self, class: Class) -> u32 {
        match class {
            Class::Lifecycle => self.lifecycle,
            Class::Consent => self.consent,
            Class::Fault => self.fault,
            Class::Usage => self.usage,
        }
    }

    fn bump(&mut self, class: Class) {
        let c = match class {
            Class::Lifecycle => &mut self.lifecycle,
            Class::Consent => &mut self.consent,
            Class::Fault => &mut self.fault,
            Class::Usage => &mut self.usage,
        };
        *c = c.saturating_add(1);
    }

    /// The sum of all counts.
    pub const fn total(&self) -> u64 {
        self.lifecycle as u64 + self.consent as u64 + self.fault as u64 + self.usage as u64 + self.purged as u64
    }
}

/// The outbox refused or failed an operation.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// Every slot holds a message at least as important that may not be
    /// dropped for this one; the message was refused (and counted).
    #[error("outbox full of messages at least as important as this {0:?}")]
    Full(Class),
    /// The envelope is longer than a slot holds.
    #[error("envelope of {len} bytes exceeds the slot capacity of {max}")]
    TooLarge {
        /// bytes given
        len: usize,
        /// the most a slot holds
        max: usize,
    },
    /// An empty envelope.
    #[error("empty envelope")]
    Empty,
    /// The storage failed; the change may or may not have persisted. The
    /// outbox in RAM no longer holds the slot written.
    #[error("outbox storage: {0}")]
    Storage(#[from] StorageError),
}

impl OutboxError {
    /// The numeric code (SPEC.md §10.1, local to the device): 121 Full,
    /// 122 TooLarge, 123 Empty; a storage failure gives its own.
    ///
    /// ```
    /// use spime::device::outbox::OutboxError;
    /// assert_eq!(OutboxError::Empty.code(), 123);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            OutboxError::Full(_) => 121,
            OutboxError::TooLarge { .. } => 122,
            OutboxError::Empty => 123,
            OutboxError::Storage(e) => e.code(),
        }
    }
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Stored in a free slot.
    Stored,
    /// Stored in place of a dropped message (counted in [`Dropped`]).
    Replaced(ItemMeta),
}

/// A message in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// What it is.
    pub meta: ItemMeta,
    /// The sealed envelope.
    pub envelope: &'a [u8],
}

impl<'a> Entry<'a> {
    /// The envelope cut for a link of `mtu` bytes, with the low 16 bits of
    /// its counter as the message id (SPEC.md §7.1).
    ///
    /// # Errors
    /// As [`Chunks::new`].
    pub fn chunks(&self, mtu: usize) -> Result<Chunks<'a>, ChunkError> {
        let [.., hi, lo] = self.meta.counter.to_be_bytes();
        Chunks::new(self.envelope, u16::from_be_bytes([hi, lo]), mtu)
    }
}

#[derive(Debug, Clone)]
struct Slot {
    used: bool,
    len: usize,
    /// The stored record's header; the envelope stays in storage.
    head: [u8; OUTBOX_HEADER_LEN],
}

const NO_META: ItemMeta = ItemMeta {
    kind: Kind::USAGE,
    purpose: Purpose::ESSENTIAL,
    categories: CategorySet::EMPTY,
    location: LocationPrecision::None,
    consent_version: 0,
    counter: 0,
};

impl Slot {
    // All zero, so an outbox in a `static` lands in `.bss`, not `.data`.
    const EMPTY: Self = Slot { used: false, len: 0, head: [0; OUTBOX_HEADER_LEN] };

    /// The write sequence, from the stored header.
    fn seq(&self) -> u32 {
        be32(&self.head, 0).unwrap_or(0)
    }

    /// The metadata, from the stored header (a used slot always parses).
    fn meta(&self) -> ItemMeta {
        parse_meta(&self.head).unwrap_or(NO_META)
    }

    fn key(&self) -> (Class, u32) {
        (self.meta().class(), self.seq())
    }

    /// Takes the header of a record of `len` bytes: used if it holds a message.
    fn adopt(&mut self, rec: &[u8]) {
        self.used = false;
        if let Some((_, _, meta)) = parse_record(rec) {
            if let (Some(dst), Some(src)) =
                (self.head.get_mut(..rec.len().min(OUTBOX_HEADER_LEN)), rec.get(..rec.len().min(OUTBOX_HEADER_LEN)))
            {
                dst.copy_from_slice(src);
            }
            if meta.is_some() {
                self.used = true;
                self.len = rec.len();
            }
        }
    }
}

/// A bounded, persisted, prioritised queue of up to `N` sealed messages,
/// each stored in a record of `RECORD` bytes (use [`record_len`]).
///
/// ```
/// use spime::consent::{CategorySet, LocationPrecision, Purpose};
/// use spime::device::outbox::{Class, ItemMeta, Outbox, record_len};
/// use spime::device::storage::{NorStorage, SimFlash};
/// use spime::wire::Kind;
/// let mut storage = NorStorage::new(SimFlash::<2048, 256>::new(), 0, 8, 12, 128)?;
/// let mut outbox: Outbox<2, { record_len(64) }> = Outbox::new();
/// let meta = |kind, counter| ItemMeta {
///     kind, purpose: Purpose::ESSENTIAL, categories: CategorySet::EMPTY,
///     location: LocationPrecision::None, consent_version: 1, counter,
/// };
/// outbox.push(&mut storage, meta(Kind::USAGE, 1), b"usage one")?;
/// outbox.push(&mut storage, meta(Kind::USAGE, 2), b"usage two")?;
/// outbox.push(&mut storage, meta(Kind::FAULT, 3), b"a fault")?;   // drops usage one
/// assert_eq!(outbox.dropped().usage, 1);
/// assert_eq!(outbox.peek(&mut storage)?.unwrap().meta.counter, 3);  // faults first
/// // A reboot: everything is still there.
/// let outbox2: Outbox<2, { record_len(64) }> = Outbox::load(&mut storage)?;
/// assert_eq!(outbox2.len(), 2);
/// assert_eq!(outbox2.dropped().usage, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Outbox<const N: usize, const RECORD: usize> {
    slots: [Slot; N],
    next_seq: u32,
    dropped: Dropped,
    /// One record: a message is sealed here before it is written, and read
    /// back here to be sent.
    buf: [u8; RECORD],
}

impl<const N: usize, const RECORD: usize> Default for Outbox<N, RECORD> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const RECORD: usize> Outbox<N, RECORD> {
    /// The most envelope bytes one slot holds.
    pub const ENVELOPE_CAPACITY: usize = RECORD.saturating_sub(OUTBOX_HEADER_LEN);

    /// An empty outbox (a fresh device; use [`Outbox::load`] after a boot).
    pub const fn new() -> Self {
        Outbox {
            slots: [const { Slot::EMPTY }; N],
            next_seq: 0,
            dropped: Dropped { lifecycle: 0, consent: 0, fault: 0, usage: 0, purged: 0 },
            buf: [0; RECORD],
        }
    }

    /// Loads the outbox from storage. A record that does not parse is
    /// taken as an empty slot (it is rewritten at the slot's next use).
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the storage fails.
    pub fn load<S: Storage + ?Sized>(storage: &mut S) -> Result<Self, OutboxError> {
        let mut ob = Self::new();
        ob.reload(storage)?;
        Ok(ob)
    }

    /// [`Outbox::load`] in place (no outbox-sized value on the stack).
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the storage fails; the outbox is then empty.
    #[inline(never)]
    pub fn reload<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<(), OutboxError> {
        self.dropped = Dropped::default();
        self.next_seq = 0;
        let mut newest: Option<u32> = None;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.used = false;
            let id = slot_record(i)?;
            let rec = match storage.read(id, &mut self.buf) {
                Ok(Some(bytes)) => bytes,
                Ok(None) | Err(StorageError::BufferTooSmall { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some((seq, dropped, _)) = parse_record(rec) else { continue };
            if newest.is_none_or(|n| seq >= n) {
                newest = Some(seq);
                self.dropped = dropped;
            }
            slot.adopt(rec);
        }
        self.next_seq = newest.map_or(0, |n| n.wrapping_add(1));
        Ok(())
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of slots.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// What was dropped so far (over the device's life, across reboots).
    pub const fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Queues a sealed envelope, dropping a less important message when
    /// full (see the module docs for the policy).
    ///
    /// # Errors
    /// [`OutboxError::Full`] when refused (counted), [`OutboxError::TooLarge`],
    /// [`OutboxError::Empty`], [`OutboxError::Storage`].
    pub fn push<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        meta: ItemMeta,
        envelope: &[u8],
    ) -> Result<Queued, OutboxError> {
        if envelope.is_empty() {
            return Err(OutboxError::Empty);
        }
        if envelope.len() > Self::ENVELOPE_CAPACITY {
            return Err(OutboxError::TooLarge { len: envelope.len(), max: Self::ENVELOPE_CAPACITY });
        }
        self.push_with(storage, meta, |dst| {
            let d = dst.get_mut(..envelope.len()).ok_or(OutboxError::TooLarge { len: envelope.len(), max: 0 })?;
            d.copy_from_slice(envelope);
            Ok(envelope.len())
        })
    }

    /// Queues a message written straight into the outbox's record buffer:
    /// `fill` gets its envelope area ([`Outbox::ENVELOPE_CAPACITY`] bytes), writes
    /// the envelope (seals it, typically) and returns its length. No
    /// envelope-sized buffer is needed besides the outbox's own. The slot
    /// is chosen first, by the same policy as [`Outbox::push`]; when `fill`
    /// fails, nothing is written: a message it was to replace stays
    /// queued, and nothing is counted.
    ///
    /// ```
    /// use spime::consent::{CategorySet, LocationPrecision, Purpose};
    /// use spime::device::outbox::{ItemMeta, Outbox, OutboxError, record_len};
    /// use spime::device::storage::{NorStorage, SimFlash};
    /// use spime::wire::Kind;
    /// let mut storage = NorStorage::new(SimFlash::<2048, 256>::new(), 0, 8, 12, 128)?;
    /// let mut outbox: Outbox<2, { record_len(64) }> = Outbox::new();
    /// let meta = ItemMeta {
    ///     kind: Kind::USAGE, purpose: Purpose::ESSENTIAL, categories: CategorySet::EMPTY,
    ///     location: LocationPrecision::None, consent_version: 1, counter: 1,
    /// };
    /// outbox.push_with(&mut storage, meta, |slot| {
    ///     slot[..5].copy_from_slice(b"hello");
    ///     Ok::<usize, OutboxError>(5)
    /// })?;
    /// assert_eq!(outbox.peek(&mut storage)?.unwrap().envelope, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `fill`'s error; [`OutboxError::Full`] when refused (counted, `fill`
    /// not called), [`OutboxError::Empty`] or [`OutboxError::TooLarge`]
    /// for a length of 0 or above the slot, [`OutboxError::Storage`].
    pub fn push_with<S: Storage + ?Sized, E: From<OutboxError>>(
        &mut self,
        storage: &mut S,
        meta: ItemMeta,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Queued, E> {
        let class = meta.class();
        let (target, replaced) = match self.slots.iter().position(|s| !s.used) {
            Some(i) => (i, None),
            None => match self.victim(class) {
                Some(i) => (i, self.slots.get(i).map(Slot::meta)),
                None => {
                    self.dropped.bump(class);
                    self.persist_counters(storage)?;
                    return Err(OutboxError::Full(class).into());
                }
            },
        };
        let mut dropped = self.dropped;
        if let Some(r) = &replaced {
            dropped.bump(r.class());
        }
        let seq = self.next_seq;
        let id = slot_record(target)?;
        let n = match self.buf.get_mut(OUTBOX_HEADER_LEN..) {
            Some(dst) => fill(dst)?,
            None => return Err(OutboxError::TooLarge { len: 0, max: 0 }.into()),
        };
        if n == 0 {
            return Err(OutboxError::Empty.into());
        }
        if n > Self::ENVELOPE_CAPACITY {
            return Err(OutboxError::TooLarge { len: n, max: Self::ENVELOPE_CAPACITY }.into());
        }
        let len = OUTBOX_HEADER_LEN + n;
        let rec = self.buf.get_mut(..len).ok_or(OutboxError::TooLarge { len, max: RECORD })?;
        write_header(rec, seq, &dropped, Some(&meta));
        let slot = self.slots.get_mut(target).ok_or(OutboxError::Full(class))?;
        if let Err(e) = storage.write(id, rec) {
            // The record may or may not have been replaced: the slot is
            // given up in RAM until the next reload says which.
            slot.used = false;
            return Err(OutboxError::from(e).into());
        }
        slot.adopt(rec);
        self.dropped = dropped;
        self.next_seq = seq.wrapping_add(1);
        Ok(replaced.map_or(Queued::Stored, Queued::Replaced))
    }

    /// The slot to drop for a new message of `class`, if the policy allows one.
    fn victim(&self, class: Class) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.used && s.meta().class() >= class && s.meta().class() != Class::Lifecycle)
            .max_by(|(_, a), (_, b)| a.meta().class().cmp(&b.meta().class()).then(b.seq().cmp(&a.seq())))
            .map(|(i, _)| i)
    }

    /// Persists changed counters by rewriting the most recent record with a new sequence number.
    fn persist_counters<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<(), OutboxError> {
        let seq = self.next_seq;
        let dropped = self.dropped;
        let i =
            self.slots.iter().enumerate().filter(|(_, s)| s.used).max_by_key(|(_, s)| s.seq()).map_or(0, |(i, _)| i);
        if let Some(slot) = self.slots.get_mut(i).filter(|s| s.used) {
            let id = slot_record(i)?;
            let meta = slot.meta();
            let rec = read_slot(storage, id, slot, &mut self.buf)?;
            write_header(rec, seq, &dropped, Some(&meta));
            if let Err(e) = storage.write(id, rec) {
                slot.used = false;
                return Err(e.into());
            }
            slot.adopt(rec);
        } else {
            let mut rec = [0u8; OUTBOX_EMPTY_LEN];
            write_header(&mut rec, seq, &dropped, None);
            storage.write(slot_record(i)?, &rec)?;
        }
        self.next_seq = seq.wrapping_add(1);
        Ok(())
    }

    /// The next message to send: the oldest of the most important class,
    /// read from storage into the outbox's record buffer.
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the record cannot be read, or is not
    /// the one the outbox holds for the slot ([`StorageError::Invalid`]).
    pub fn peek<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<Option<Entry<'_>>, OutboxError> {
        let head = self.slots.iter().enumerate().filter(|(_, s)| s.used).min_by_key(|(_, s)| s.key()).map(|(i, _)| i);
        match head {
            Some(i) => self.entry(storage, i).map(Some),
            None => Ok(None),
        }
    }

    /// The queued message with envelope counter `counter`, read from
    /// storage into the outbox's record buffer.
    ///
    /// # Errors
    /// As [`Outbox::peek`].
    pub fn read<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        counter: u64,
    ) -> Result<Option<Entry<'_>>, OutboxError> {
        match self.slots.iter().position(|s| s.used && s.meta().counter == counter) {
            Some(i) => self.entry(storage, i).map(Some),
            None => Ok(None),
        }
    }

    fn entry<S: Storage + ?Sized>(&mut self, storage: &mut S, i: usize) -> Result<Entry<'_>, OutboxError> {
        let slot = self.slots.get(i).ok_or(OutboxError::Storage(StorageError::NoSuchRecord(u16::MAX)))?;
        let meta = slot.meta();
        let rec = read_slot(storage, slot_record(i)?, slot, &mut self.buf)?;
        Ok(Entry { meta, envelope: rec.get(OUTBOX_HEADER_LEN..).unwrap_or(&[]) })
    }

    /// The highest envelope counter queued (no sorting: cheap at boot).
    pub fn highest_counter(&self) -> Option<u64> {
        self.slots.iter().filter(|s| s.used).map(|s| s.meta().counter).max()
    }

    /// What is queued, in send order (the envelopes stay in storage: read
    /// one with [`Outbox::read`]).
    pub fn iter(&self) -> impl Iterator<Item = ItemMeta> + '_ {
        let mut order: heapless::Vec<usize, N> = heapless::Vec::new();
        for (i, _) in self.slots.iter().enumerate().filter(|(_, s)| s.used) {
            let _ = order.push(i);
        }
        // Insertion sort: a handful of slots, and core's sort costs about
        // 1.5 KB of flash on a Cortex-M (docs/firmware.md).
        let key = |i: usize| self.slots.get(i).map(Slot::key);
        for j in 1..order.len() {
            for k in (1..=j).rev() {
                match (order.get(k - 1), order.get(k)) {
                    (Some(&a), Some(&b)) if key(a) > key(b) => order.swap(k - 1, k),
                    _ => break,
                }
            }
        }
        order.into_iter().filter_map(|i| self.slots.get(i)).map(Slot::meta)
    }

    /// Removes the message with envelope counter `counter` (it was
    /// delivered). Returns whether it was there.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn ack<S: Storage + ?Sized>(&mut self, storage: &mut S, counter: u64) -> Result<bool, OutboxError> {
        match self.slots.iter().position(|s| s.used && s.meta().counter == counter) {
            Some(i) => {
                self.clear(storage, i, self.dropped)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes every message for which `keep` is false, counting each in
    /// [`Dropped::purged`]; returns how many went.
    ///
    /// A slot is freed in memory only once its record is written: if a
    /// write fails, the message stays queued in memory as on flash (and
    /// the error is returned), so memory never claims a purge that a
    /// reboot would undo. The caller keeps such a message from leaving
    /// (the device's [`crate::device::session::Device::next_message`]
    /// skips queued data its consent denies) and purges again later.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn purge<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        mut keep: impl FnMut(&ItemMeta) -> bool,
    ) -> Result<usize, OutboxError> {
        let mut n = 0;
        for i in 0..N {
            if self.slots.get(i).is_some_and(|s| s.used && !keep(&s.meta())) {
                let mut counts = self.dropped;
                counts.purged = counts.purged.saturating_add(1);
                self.clear(storage, i, counts)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes slot `i` empty with `counts`; only then frees it in memory
    /// and adopts `counts`.
    fn clear<S: Storage + ?Sized>(&mut self, storage: &mut S, i: usize, counts: Dropped) -> Result<(), OutboxError> {
        let seq = self.next_seq;
        let mut rec = [0u8; OUTBOX_EMPTY_LEN];
        write_header(&mut rec, seq, &counts, None);
        storage.write(slot_record(i)?, &rec)?;
        self.next_seq = seq.wrapping_add(1);
        self.dropped = counts;
        if let Some(s) = self.slots.get_mut(i) {
            s.used = false;
        }
        Ok(())
    }
}

fn slot_record(i: usize) -> Result<u16, OutboxError> {
    u16::try_from(i)
        .ok()
        .and_then(|i| RECORD_OUTBOX.checked_add(i))
        .ok_or(OutboxError::Storage(StorageError::NoSuchRecord(u16::MAX)))
}

/// Writes the record header into the front of `raw` (which is at least
/// [`OUTBOX_EMPTY_LEN`] bytes, [`OUTBOX_HEADER_LEN`] with `meta`).
fn write_header(raw: &mut [u8], seq: u32, d: &Dropped, meta: Option<&ItemMeta>) {
    let mut h = [0u8; OUTBOX_HEADER_LEN];
    h[0..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&d.lifecycle.to_be_bytes());
    h[8..12].copy_from_slice(&d.consent.to_be_bytes());
    h[12..16].copy_from_slice(&d.fault.to_be_bytes());
    h[16..20].copy_from_slice(&d.usage.to_be_bytes());
    h[20..24].copy_from_slice(&d.purged.to_be_bytes());
    let n = match meta {
        Some(m) => {
            h[24] = 1;
            h[25] = m.kind.to_byte();
            h[26..28].copy_from_slice(&m.purpose.id().to_be_bytes());
            h[28..30].copy_from_slice(&m.categories.bits().to_be_bytes());
            h[30..34].copy_from_slice(&m.consent_version.to_be_bytes());
            h[34..42].copy_from_slice(&m.counter.to_be_bytes());
            h[42] = location_byte(m.location);
            OUTBOX_HEADER_LEN
        }
        None => OUTBOX_EMPTY_LEN,
    };
    if let (Some(dst), Some(src)) = (raw.get_mut(..n), h.get(..n)) {
        dst.copy_from_slice(src);
    }
}

fn location_byte(p: LocationPrecision) -> u8 {
    match p {
        LocationPrecision::None => 0,
        LocationPrecision::Country => 1,
        LocationPrecision::Region => 2,
        LocationPrecision::City => 3,
        LocationPrecision::Neighbourhood => 4,
        LocationPrecision::Exact => 5,
    }
}

fn location_from_byte(b: u8) -> Option<LocationPrecision> {
    Some(match b {
        0 => LocationPrecision::None,
        1 => LocationPrecision::Country,
        2 => LocationPrecision::Region,
        3 => LocationPrecision::City,
        4 => LocationPrecision::Neighbourhood,
        5 => LocationPrecision::Exact,
        _ => return None,
    })
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes)
}

/// Reads slot `id`'s record into `buf` and checks it is the record the
/// slot's header says (its length and header): a record that changed
/// behind the outbox's back is [`StorageError::Invalid`].
fn read_slot<'b, S: Storage + ?Sized>(
    storage: &mut S,
    id: u16,
    slot: &Slot,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], OutboxError> {
    let len = match storage.read(id, buf)? {
        Some(rec) if rec.len() == slot.len && rec.get(..OUTBOX_HEADER_LEN) == Some(&slot.head[..]) => rec.len(),
        _ => return Err(StorageError::Invalid(id).into()),
    };
    buf.get_mut(..len).ok_or(OutboxError::Storage(StorageError::Invalid(id)))
}

/// The item's metadata from a full record header.
fn parse_meta(h: &[u8]) -> Option<ItemMeta> {
    if *h.get(24)? != 1 {
        return None;
    }
    let kind = Kind::from_byte(*h.get(25)?).ok()?;
    let purpose = Purpose::from_id(u16::from_be_bytes(h.get(26..28)?.try_into().ok()?)).ok()?;
    let categories = CategorySet::from_bits(u16::from_be_bytes(h.get(28..30)?.try_into().ok()?)).ok()?;
    let consent_version = be32(h, 30)?;
    let counter = u64::from_be_bytes(h.get(34..42)?.try_into().ok()?);
    let location = location_from_byte(*h.get(42)?)?;
    Some(ItemMeta { kind, purpose, categories, location, consent_version, counter })
}

/// Parses a record: sequence, counters, and the item's metadata if present.
fn parse_record(rec: &[u8]) -> Option<(u32, Dropped, Option<ItemMeta>)> {
    let seq = be32(rec, 0)?;
    let dropped = Dropped {
        lifecycle: be32(rec, 4)?,
        consent: be32(rec, 8)?,
        fault: be32(rec, 12)?,
        usage: be32(rec, 16)?,
        purged: be32(rec, 20)?,
    };
    match *rec.get(24)? {
        0 if rec.len() == OUTBOX_EMPTY_LEN => Some((seq, dropped, None)),
        1 if rec.len() > OUTBOX_HEADER_LEN => Some((seq, dropped, Some(parse_meta(rec)?))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use crate::device::storage::{NorStorage, SimFlash};
    use proptest::prelude::*;

    type Flash = SimFlash<2048, 256>;
    type Ob = Outbox<4, { record_len(32) }>;

    fn storage() -> NorStorage<Flash> {
        NorStorage::new(Flash::new(), 0, 8, 16, record_len(32)).unwrap()
    }

    /// Every queued message and its envelope, read from storage, in send order.
    fn all(ob: &mut Ob, s: &mut NorStorage<Flash>) -> Vec<(u64, Vec<u8>)> {
        let counters: Vec<u64> = ob.iter().map(|m| m.counter).collect();
        counters.into_iter().map(|c| (c, ob.read(s, c).unwrap().unwrap().envelope.to_vec())).collect()
    }

    fn meta(kind: Kind, counter: u64) -> ItemMeta {
        ItemMeta {
            kind,
            purpose: Purpose::DIAGNOSTICS,
            categories: CategorySet::EMPTY,
            location: LocationPrecision::None,
            consent_version: 3,
            counter,
        }
    }

    const KINDS: [Kind; 6] =
        [Kind::REGISTER, Kind::USAGE, Kind::FAULT, Kind::CONSENT, Kind::TRANSFER, Kind::DECOMMISSION];

    #[test]
    fn record_bytes_are_pinned() {
        let mut s = storage();
        let mut ob = Ob::new();
        let m = ItemMeta {
            kind: Kind::FAULT,
            purpose: Purpose::DIAGNOSTICS,
            categories: CategorySet::from_bits(0b1101).unwrap(),
            location: LocationPrecision::City,
            consent_version: 7,
            counter: 0x0102,
        };
        ob.push(&mut s, m, &[0xEE, 0xFF]).unwrap();
        let mut buf = [0u8; 100];
        let rec = s.read(RECORD_OUTBOX, &mut buf).unwrap().unwrap();
        let mut want = vec![0u8; 24];
        want.extend([1, 0x03, 0, 2, 0, 0x0d, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0xEE, 0xFF]);
        assert_eq!(rec, &want[..]);
        ob.ack(&mut s, 0x0102).unwrap();
        let rec = s.read(RECORD_OUTBOX, &mut buf).unwrap().unwrap();
        assert_eq!(rec, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
    }

    #[test]
    fn rejections() {
        let mut s = storage();
        let mut ob = Ob::new();
        assert_eq!(ob.push(&mut s, meta(Kind::USAGE, 0), &[]), Err(OutboxError::Empty));
        assert_eq!(ob.push(&mut s, meta(Kind::USAGE, 0), &[0; 33]), Err(OutboxError::TooLarge { len: 33, max: 32 }));
        for c in 0..4 {
            ob.push(&mut s, meta(Kind::REGISTER, c), &[1]).unwrap();
        }
        assert_eq!(ob.push(&mut s, meta(Kind::USAGE, 9), &[1]), Err(OutboxError::Full(Class::Usage)));
        assert_eq!(ob.push(&mut s, meta(Kind::REGISTER, 9), &[1]), Err(OutboxError::Full(Class::Lifecycle)));
        assert_eq!(ob.dropped(), Dropped { lifecycle: 1, usage: 1, ..Dropped::default() });
        let again = Ob::load(&mut s).unwrap();
        assert_eq!(again.dropped(), ob.dropped());
        assert_eq!(again.len(), 4);
        // a full usage outbox refuses nothing of higher class, and drops its oldest usage
        let mut ob = Ob::new();
        let mut s = storage();
        for c in 0..4 {
            ob.push(&mut s, meta(Kind::USAGE, c), &[1]).unwrap();
        }
        assert_eq!(ob.push(&mut s, meta(Kind::USAGE, 4), &[1]), Ok(Queued::Replaced(meta(Kind::USAGE, 0))));
        assert_eq!(ob.push(&mut s, meta(Kind::CONSENT, 5), &[1]), Ok(Queued::Replaced(meta(Kind::USAGE, 1))));
        assert_eq!(ob.iter().map(|m| m.counter).collect::<Vec<_>>(), [5, 2, 3, 4]);
    }

    #[test]
    fn push_with_fills_the_slot_and_refuses_bad_lengths() {
        let mut s = storage();
        let mut ob = Ob::new();
        ob.push_with(&mut s, meta(Kind::USAGE, 1), |d| {
            d[..3].copy_from_slice(b"abc");
            Ok::<_, OutboxError>(3)
        })
        .unwrap();
        assert_eq!(Ob::load(&mut s).unwrap().peek(&mut s).unwrap().unwrap().envelope, b"abc");
        let empty = ob.push_with(&mut s, meta(Kind::USAGE, 2), |_| Ok::<_, OutboxError>(0));
        assert_eq!(empty, Err(OutboxError::Empty));
        let long = ob.push_with(&mut s, meta(Kind::USAGE, 2), |d| Ok::<_, OutboxError>(d.len() + 1));
        assert_eq!(long, Err(OutboxError::TooLarge { len: 33, max: 32 }));
        // the slot the failures used is free again; nothing was counted
        assert_eq!(ob.len(), 1);
        assert_eq!(ob.dropped(), Dropped::default());
        assert_eq!(Ob::load(&mut s).unwrap().len(), 1);
    }

    #[test]
    fn push_with_failure_keeps_the_message_it_would_replace() {
        let mut s = storage();
        let mut ob = Ob::new();
        for c in 0..4 {
            ob.push(&mut s, meta(Kind::USAGE, c), &c.to_be_bytes()).unwrap();
        }
        // full: the oldest usage report would make way, but sealing fails
        let failed = ob.push_with(&mut s, meta(Kind::USAGE, 9), |d| {
            d.fill(0xAA);
            Err::<usize, _>(OutboxError::Empty)
        });
        assert_eq!(failed, Err(OutboxError::Empty));
        assert_eq!(ob.dropped(), Dropped::default(), "nothing dropped");
        let queued = all(&mut ob, &mut s);
        assert_eq!(
            queued,
            (0u64..4).map(|c| (c, c.to_be_bytes().to_vec())).collect::<Vec<_>>(),
            "read back from storage"
        );
        // refused outright: `fill` is not called
        let mut ob = Ob::new();
        let mut s = storage();
        for c in 0..4 {
            ob.push(&mut s, meta(Kind::REGISTER, c), &[1]).unwrap();
        }
        let refused = ob.push_with(&mut s, meta(Kind::USAGE, 9), |_| -> Result<usize, OutboxError> {
            panic!("fill called for a refused message")
        });
        assert_eq!(refused, Err(OutboxError::Full(Class::Usage)));
        assert_eq!(ob.dropped().usage, 1);
    }

    #[test]
    fn messages_are_read_from_storage_and_checked() {
        let mut s = storage();
        let mut ob = Ob::new();
        ob.push(&mut s, meta(Kind::FAULT, 7), b"fault").unwrap();
        assert_eq!(ob.read(&mut s, 7).unwrap().unwrap().envelope, b"fault");
        assert!(ob.read(&mut s, 8).unwrap().is_none(), "not queued");
        // the record changed behind the outbox's back: refused, not sent
        let mut other = [0u8; OUTBOX_HEADER_LEN + 5];
        write_header(&mut other, 0, &Dropped::default(), Some(&meta(Kind::FAULT, 9)));
        s.write(RECORD_OUTBOX, &other).unwrap();
        let invalid = Err(OutboxError::Storage(StorageError::Invalid(RECORD_OUTBOX)));
        assert_eq!(ob.peek(&mut s).map(|e| e.map(|e| e.meta)), invalid);
        assert_eq!(ob.read(&mut s, 7).map(|e| e.map(|e| e.meta)), invalid);
        // gone: the same
        s.write(RECORD_OUTBOX, &[0; OUTBOX_EMPTY_LEN]).unwrap();
        assert_eq!(ob.peek(&mut s).map(|e| e.map(|e| e.meta)), invalid);
    }

    #[test]
    fn purge_counts_and_persists() {
        let mut s = storage();
        let mut ob = Ob::new();
        ob.push(&mut s, meta(Kind::USAGE, 1), &[1]).unwrap();
        ob.push(&mut s, meta(Kind::FAULT, 2), &[2]).unwrap();
        ob.push(&mut s, meta(Kind::CONSENT, 3), &[3]).unwrap();
        assert_eq!(ob.purge(&mut s, |m| m.class() != Class::Usage).unwrap(), 1);
        assert_eq!(ob.dropped().purged, 1);
        let mut again = Ob::load(&mut s).unwrap();
        assert_eq!(again.dropped().purged, 1);
        assert_eq!(all(&mut again, &mut s), [(3, vec![3]), (2, vec![2])]);
    }

    /// A simple model of the policy: Vec of (class, seq, counter).
    #[derive(Default)]
    struct Model {
        items: Vec<(Class, u32, u64)>,
        seq: u32,
        dropped: [u32; 4],
        purged: u32,
    }

    impl Model {
        fn push(&mut self, class: Class, counter: u64) {
            if self.items.len() == 4 {
                let victim = self
                    .items
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.0 >= class && x.0 != Class::Lifecycle)
                    .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
                    .map(|(i, _)| i);
                match victim {
                    Some(i) => {
                        let v = self.items.remove(i);
                        self.dropped[v.0 as usize] += 1;
                    }
                    None => {
                        self.dropped[class as usize] += 1;
                        self.seq += 1;
                        return;
                    }
                }
            }
            self.items.push((class, self.seq, counter));
            self.seq += 1;
        }
        fn order(&self) -> Vec<u64> {
            let mut v = self.items.clone();
            v.sort_by_key(|x| (x.0, x.1));
            v.into_iter().map(|x| x.2).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        AckFront,
        PurgeUsage,
        Reboot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..KINDS.len()).prop_map(Op::Push),
            2 => Just(Op::AckFront),
            1 => Just(Op::PurgeUsage),
            1 => Just(Op::Reboot),
        ]
    }

    proptest! {
        /// Never over capacity, send order = (class, age), drop counters
        /// exact, and a reboot reloads the same outbox.
        #[test]
        fn outbox_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
            let mut s = storage();
            let mut ob = Ob::new();
            let mut model = Model::default();
            for (counter, op) in (0u64..).zip(ops) {
                match op {
                    Op::Push(k) => {
                        let m = meta(KINDS[k], counter);
                        let _ = ob.push(&mut s, m, &counter.to_be_bytes());
                        model.push(m.class(), counter);
                    }
                    Op::AckFront => {
                        if let Some(c) = ob.peek(&mut s).unwrap().map(|e| e.meta.counter) {
                            prop_assert!(ob.ack(&mut s, c).unwrap());
                            let front = model.order()[0];
                            prop_assert_eq!(front, c);
                            model.items.retain(|x| x.2 != c);
                            model.seq += 1;
                        }
                    }
                    Op::PurgeUsage => {
                        let n = ob.purge(&mut s, |m| m.class() != Class::Usage).unwrap();
                        let before = model.items.len();
                        model.items.retain(|x| x.0 != Class::Usage);
                        prop_assert_eq!(n, before - model.items.len());
                        model.purged += u32::try_from(n).unwrap();
                        model.seq += u32::try_from(n).unwrap();
                    }
                    Op::Reboot => ob = Ob::load(&mut s).unwrap(),
                }
                prop_assert!(ob.len() <= 4);
                let order: Vec<u64> = ob.iter().map(|m| m.counter).collect();
                prop_assert_eq!(&order, &model.order());
                for (c, envelope) in all(&mut ob, &mut s) {
                    prop_assert_eq!(envelope, c.to_be_bytes().to_vec());
                }
                let d = ob.dropped();
                prop_assert_eq!([d.lifecycle, d.consent, d.fault, d.usage], model.dropped);
                prop_assert_eq!(d.purged, model.purged);
            }
            let again = Ob::load(&mut s).unwrap();
            prop_assert_eq!(again.dropped(), ob.dropped());
            prop_assert_eq!(again.iter().collect::<Vec<_>>(), ob.iter().collect::<Vec<_>>());
        }
    }
}
