//! Storage behind traits: the device registry, replay windows, the consent
//! ledger, the accepted-message log, vendor-to-device counters and the
//! notice log.
//!
//! A [`Store`] hands out [`Transaction`]s; a transaction implements every
//! storage trait and reads its own writes. Nothing is visible to others, or
//! survives a crash, until [`Transaction::commit`] returns `Ok`, and the
//! pipeline acknowledges a message only after that. Four implementations
//! ship: [`super::MemoryStore`] for tests, [`super::RedbStore`] (feature
//! `redb`) and `FjallStore` (feature `fjall`, an LSM tree whose commit cost
//! grows far less with fleet size) for a single machine, and `PgStore` (feature
//! `postgres`) for several ingest workers over one PostgreSQL database
//! (docs/scaling.md).
//!
//! Reading needs no transaction: [`Store::device`], [`Store::messages`],
//! [`Store::consent_ledger`] and [`Store::notices`] see the last committed
//! state, for servers, reports and the owner's export
//! ([`super::lifecycle`]).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::RangeInclusive;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::consent::ledger::{LedgerEntry, Proof};
use crate::consent::{Purpose, SignedConsent};
use crate::message::{DeviceCertificate, FirmwareVersion};
use crate::seal::replay::ReplayWindow;
use crate::seal::{AeadKey, SessionKeys};
use crate::wire::{DeviceId, Kind};

use super::StoreError;

/// Where a device is in its life, as the vendor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// Registered, in a relationship with its current owner.
    Active,
    /// Handed on: consent is reset to Essential only until the next owner registers.
    Transferred,
    /// End of life: nothing more is accepted from it or sent to it.
    Decommissioned,
}

/// The session keys of a device's current epoch, as persisted. Wiped on
/// drop, never printed, compared in constant time.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionSecrets {
    epoch: u32,
    device_to_vendor: [u8; 32],
    vendor_to_device: [u8; 32],
    /// The serial of the vendor key the epoch was opened with (SPEC §9.2).
    vendor_key: u32,
}

impl SessionSecrets {
    /// Captures session keys for storage, of an epoch opened with the
    /// vendor key of serial 0 (see [`SessionSecrets::opened_with`]).
    pub fn from_keys(keys: &SessionKeys) -> SessionSecrets {
        SessionSecrets {
            epoch: keys.epoch,
            device_to_vendor: *keys.device_to_vendor.as_bytes(),
            vendor_to_device: *keys.vendor_to_device.as_bytes(),
            vendor_key: 0,
        }
    }

    /// The same keys, of an epoch opened with the vendor key of serial `serial`.
    #[must_use]
    pub const fn opened_with(mut self, serial: u32) -> SessionSecrets {
        self.vendor_key = serial;
        self
    }

    /// The epoch these keys belong to.
    pub const fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The serial of the vendor key the epoch was opened with: the device
    /// holds that key, and the vendor signs its messages of the epoch with it.
    pub const fn vendor_key(&self) -> u32 {
        self.vendor_key
    }

    /// The session keys.
    pub fn keys(&self) -> SessionKeys {
        SessionKeys {
            epoch: self.epoch,
            device_to_vendor: AeadKey::from_bytes(self.device_to_vendor),
            vendor_to_device: AeadKey::from_bytes(self.vendor_to_device),
        }
    }
}

impl PartialEq for SessionSecrets {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.vendor_key == other.vendor_key
            && bool::from(self.device_to_vendor.ct_eq(&other.device_to_vendor))
            && bool::from(self.vendor_to_device.ct_eq(&other.vendor_to_device))
    }
}

impl Eq for SessionSecrets {}

impl core::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("epoch", &self.epoch)
            .field("vendor_key", &self.vendor_key)
            .finish_non_exhaustive()
    }
}

/// What [`Transaction::load_shared`] returns: per device asked for, in
/// order, its record (shared, not copied) if it is known, and its replay window.
pub type SharedDevices = Vec<(Option<Arc<DeviceRecord>>, ReplayWindow)>;

/// What the vendor knows about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device.
    pub device: DeviceId,
    /// Its vendor-signed certificate (binds the device key).
    pub certificate: DeviceCertificate,
    /// Where it is in its life.
    pub lifecycle: Lifecycle,
    /// The owner relationship: 1 at first registration, one more at each
    /// registration after a transfer.
    pub relationship: u32,
    /// The firmware it last registered with.
    pub firmware: FirmwareVersion,
    /// The current key epoch's session keys.
    pub session: SessionSecrets,
    /// The consent the vendor holds (Essential only after a transfer).
    pub consent: SignedConsent,
    /// [`crate::message::consent_digest`] of the held consent as received
    /// (zero for the reset state after a transfer).
    pub consent_digest: [u8; 32],
    /// When the held consent was recorded (Unix seconds).
    pub consent_received_at: u64,
    /// When the current relationship started (Unix seconds).
    pub registered_at: u64,
    /// The owner key pinned for this relationship (SPEC §6.3), if the
    /// owner signs consent states.
    pub owner_key: Option<[u8; 32]>,
    /// The next consent ledger sequence number and the ledger's head hash
    /// (zeros when empty): new entries chain without reading the ledger.
    pub ledger_next: (u64, [u8; 32]),
    /// Whether the device key lies in the prime-order subgroup, so its
    /// signatures may be batch-verified (see [`super::batch`]).
    pub batchable_key: bool,
    /// The certificate's device key, as the Register that made the record
    /// decompressed it (or at its first use, for a record read from
    /// storage), kept with the record ([`KeyMemo`]): not stored, not
    /// compared.
    #[serde(skip)]
    pub(crate) key: KeyMemo,
}

impl DeviceRecord {
    /// The current key epoch.
    pub const fn epoch(&self) -> u32 {
        self.session.epoch
    }

    /// The device key, if this record (or the record it was cloned from)
    /// already decompressed it for the certificate it holds now.
    pub(crate) fn remembered_key(&self) -> Option<VerifyingKey> {
        self.key.0.get().filter(|k| k.as_bytes() == &self.certificate.body.device_key).copied()
    }

    /// Keeps `key` with the record, if it is the certificate's device key
    /// and none is kept yet.
    pub(crate) fn remember_key(&self, key: &VerifyingKey) {
        if key.as_bytes() == &self.certificate.body.device_key {
            let _ = self.key.0.set(*key);
        }
    }
}

/// A record's device key, decompressed once. A fleet's records are read
/// from all over memory; verifying a device's message needs its record
/// and its decompressed key (a tenth of a verification to decompress):
/// kept in the record, both come from one place, where a separate cache
/// of keys would cost a lookup in another fleet-sized table. A store
/// that keeps records in memory (`MemoryStore`, `FjallStore`'s cache) keeps
/// the key with them; one that decodes records afresh starts it empty.
///
/// It is never stored and never compared (two records that differ only in
/// it are equal), and a key is used only while it matches the record's
/// certificate, so a record whose certificate is replaced in a copy never
/// verifies with the old key. It costs about 200 bytes per record held in
/// memory (the compressed key and the decompressed point).
#[derive(Clone, Default)]
pub(crate) struct KeyMemo(std::sync::OnceLock<VerifyingKey>);

impl PartialEq for KeyMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyMemo {}

impl core::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KeyMemo")
    }
}

/// An accepted device message: its content, durable before it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The device.
    pub device: DeviceId,
    /// Its counter (unique per device).
    pub counter: u64,
    /// Its kind byte.
    pub kind: u8,
    /// When it was accepted (Unix seconds).
    pub received_at: u64,
    /// The owner relationship it was received in ([`DeviceRecord::relationship`]):
    /// what separates one owner's data from the next one's.
    pub relationship: u32,
    /// What it was collected for: a Usage's or Fault's purpose; Essential
    /// for Register, Consent, Transfer and Decommission.
    pub purpose: Purpose,
    /// The message, as proof.
    pub proof: Proof,
}

impl StoredMessage {
    /// The message kind.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a kind byte no kind has.
    pub fn kind(&self) -> Result<Kind, StoreError> {
        Kind::from_byte(self.kind).map_err(|_| StoreError::Corrupt("messages"))
    }
}

/// Which accepted messages of a device to read: a time range of
/// acceptance, a kind, a relationship. The default is everything.
///
/// ```
/// use spime::vendor::MessageQuery;
/// use spime::wire::Kind;
/// let q = MessageQuery::all().received(100, 200).kind(Kind::USAGE);
/// assert_eq!((q.from, q.until, q.kind), (100, 200, Some(Kind::USAGE)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageQuery {
    /// Received at or after (Unix seconds).
    pub from: u64,
    /// Received before (Unix seconds, exclusive).
    pub until: u64,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only this relationship.
    pub relationship: Option<u32>,
}

impl Default for MessageQuery {
    fn default() -> MessageQuery {
        MessageQuery::all()
    }
}

impl MessageQuery {
    /// Every message.
    pub const fn all() -> MessageQuery {
        MessageQuery { from: 0, until: u64::MAX, kind: None, relationship: None }
    }

    /// Only messages received in `from..until`.
    #[must_use]
    pub const fn received(self, from: u64, until: u64) -> MessageQuery {
        MessageQuery { from, until, ..self }
    }

    /// Only messages of `kind`.
    #[must_use]
    pub const fn kind(self, kind: Kind) -> MessageQuery {
        MessageQuery { kind: Some(kind), ..self }
    }

    /// Only messages of owner relationship `relationship`.
    #[must_use]
    pub const fn relationship(self, relationship: u32) -> MessageQuery {
        MessageQuery { relationship: Some(relationship), ..self }
    }

    /// Whether `m` is selected (the device is not checked).
    pub fn matches(&self, m: &StoredMessage) -> bool {
        m.received_at >= self.from
            && m.received_at < self.until
            && self.kind.is_none_or(|k| k.to_byte() == m.kind)
            && self.relationship.is_none_or(|r| r == m.relationship)
    }
}

/// A notice the vendor sealed for a device, or held back because the
/// owner's contact preferences forbade it then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// The device.
    pub device: DeviceId,
    /// The owner relationship it was meant for.
    pub relationship: u32,
    /// Its purpose.
    pub purpose: Purpose,
    /// When it was sealed or held back (Unix seconds).
    pub at: u64,
    /// The vendor counter it was sealed with; `None` when held back.
    pub counter: Option<u64>,
    /// Why it was held back (the contact denial); `None` when sent.
    pub held_back: Option<String>,
    /// The notice's canonical body bytes ([`crate::message::Notice`]).
    pub notice: Vec<u8>,
}

impl NoticeRecord {
    /// Whether it was sealed and sent (counts towards frequency caps).
    pub const fn sent(&self) -> bool {
        self.counter.is_some()
    }
}

/// Which purposes an erasure covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurposeFilter {
    /// Only these.
    Only(Vec<Purpose>),
    /// Every purpose but these (`Except(vec![])` is every purpose).
    Except(Vec<Purpose>),
}

impl PurposeFilter {
    /// Whether `p` is covered.
    pub fn covers(&self, p: Purpose) -> bool {
        match self {
            PurposeFilter::Only(v) => v.contains(&p),
            PurposeFilter::Except(v) => !v.contains(&p),
        }
    }
}

/// What an erasure deletes of one device: messages and notices of some
/// relationships, for some purposes, received (or sent) before a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureScope {
    /// The owner relationships covered.
    pub relationships: RangeInclusive<u32>,
    /// The purposes covered.
    pub purposes: PurposeFilter,
    /// Only data received or sent before this (Unix seconds, exclusive).
    pub before: u64,
}

impl ErasureScope {
    /// Whether a message is covered.
    pub fn covers_message(&self, m: &StoredMessage) -> bool {
        self.relationships.contains(&m.relationship) && self.purposes.covers(m.purpose) && m.received_at < self.before
    }

    /// Whether a notice record is covered.
    pub fn covers_notice(&self, n: &NoticeRecord) -> bool {
        self.relationships.contains(&n.relationship) && self.purposes.covers(n.purpose) && n.at < self.before
    }
}

/// Deleting collected data (SPEC §9.8): the rows are removed, not marked.
/// Whether the bytes also leave the backing file at once depends on the
/// store; [`Store::scrub`] makes sure they do.
pub trait DataErasure {
    /// Deletes the messages of `device` that `scope` covers; returns how
    /// many were deleted for each purpose, in purpose order (purposes with
    /// none left out).
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn erase_messages(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError>;
    /// Deletes the notice records of `device` that `scope` covers; returns
    /// how many. Frequency caps then no longer count them.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn erase_notices(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<u64, StoreError>;
}

/// Adds `n` to the count of `purpose` in a purpose-ordered list.
pub(crate) fn tally(counts: &mut Vec<(Purpose, u64)>, purpose: Purpose, n: u64) {
    match counts.binary_search_by(|(p, _)| p.cmp(&purpose)) {
        Ok(i) => {
            if let Some((_, c)) = counts.get_mut(i) {
                *c = c.saturating_add(n);
            }
        }
        Err(i) => counts.insert(i, (purpose, n)),
    }
}

/// The device registry.
pub trait DeviceRegistry {
    /// The record of `device`, if registered.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn device(&mut self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// Inserts or replaces a record.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError>;
}

/// Replay windows, one per device (a device's counter is one sequence for its whole life).
pub trait ReplayWindows {
    /// The window of `device` (empty if none is stored).
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn window(&mut self, device: &DeviceId) -> Result<ReplayWindow, StoreError>;
    /// Replaces the window of `device`.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn put_window(&mut self, device: &DeviceId, window: &ReplayWindow) -> Result<(), StoreError>;
}

/// The consent ledger ([`crate::consent::ledger`] entries): append-only, per device, in order.
pub trait ConsentLedgerStore {
    /// Appends an entry to the ledger of `device` (its `seq` is the next position).
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn append_consent(&mut self, device: &DeviceId, entry: &LedgerEntry) -> Result<(), StoreError>;
    /// Every entry of `device`, oldest first.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn consent_entries(&mut self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError>;
}

/// The log of accepted messages, keyed by (device, counter).
pub trait MessageLog {
    /// Stores an accepted message.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn put_message(&mut self, message: &StoredMessage) -> Result<(), StoreError>;
    /// The accepted message of `device` with `counter`, if any.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError>;
}

/// The vendor's own per-device message counters (vendor to device).
pub trait VendorCounters {
    /// Hands out the next counter value for `device` (0 first). Durable with
    /// the transaction: a value is never handed out twice by committed
    /// transactions, and a message sealed with it is sent only after commit.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn next_counter(&mut self, device: &DeviceId) -> Result<u64, StoreError>;
}

/// The log of notices sent and held back: frequency caps count the sent
/// ones, the owner's export shows both.
pub trait NoticeLog {
    /// Records a notice sealed for, or held back from, `notice.device`.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn record_notice(&mut self, notice: &NoticeRecord) -> Result<(), StoreError>;
    /// How many notices for `purpose` were sent (not held back) to `device` at or after `since`.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError>;
}

/// A unit of work over every store: reads see the transaction's own writes;
/// dropping it without [`Transaction::commit`] discards them.
pub trait Transaction:
    DeviceRegistry + ReplayWindows + ConsentLedgerStore + MessageLog + VendorCounters + NoticeLog + DataErasure
{
    /// Makes every write durable and visible, atomically.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing of the transaction is kept.
    fn commit(self) -> Result<(), StoreError>;

    /// The record and replay window of each of `devices`, in order: what
    /// the pipeline reads before it judges a batch. The default asks
    /// [`DeviceRegistry::device`] and [`ReplayWindows::window`] for each; a
    /// store with round trips to a server answers in one.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn load_devices(&mut self, devices: &[DeviceId]) -> Result<Vec<(Option<DeviceRecord>, ReplayWindow)>, StoreError> {
        devices.iter().map(|d| Ok((self.device(d)?, self.window(d)?))).collect()
    }

    /// [`Transaction::load_devices`], each record behind an [`Arc`]: what the
    /// pipeline actually calls. The default wraps what `load_devices`
    /// returns; a store that keeps its records in memory hands out shared
    /// references instead of copying each record (about 1.1 KB) per batch.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn load_shared(&mut self, devices: &[DeviceId]) -> Result<SharedDevices, StoreError> {
        Ok(self.load_devices(devices)?.into_iter().map(|(r, w)| (r.map(Arc::new), w)).collect())
    }

    /// Replaces the replay windows of several devices: what the pipeline
    /// writes for a batch. The default calls [`ReplayWindows::put_window`]
    /// for each; a store may write them together.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn put_windows(&mut self, windows: &[(DeviceId, ReplayWindow)]) -> Result<(), StoreError> {
        windows.iter().try_for_each(|(d, w)| self.put_window(d, w))
    }

    /// Stores several accepted messages, taking them by value: what the
    /// pipeline writes for a batch. The default calls
    /// [`MessageLog::put_message`] for each; a store may keep them without
    /// copying, or write them together.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn put_messages(&mut self, messages: Vec<StoredMessage>) -> Result<(), StoreError> {
        messages.iter().try_for_each(|m| self.put_message(m))
    }

    /// How many transactions had committed in the store when this one
    /// began, if the store counts them. With a count the pipeline holds a
    /// transaction only to read a batch's devices and to write its
    /// results, and verifies the batch with none open, so that several
    /// batches verify at once; it reads the devices again at the write only
    /// if the count moved. `None`, the default, keeps one transaction open
    /// for the whole batch.
    ///
    /// # Correctness
    /// Return a count only if both hold, or a replay may be accepted
    /// twice: (a) while a transaction is open no other transaction commits
    /// (one writer, as [`MemoryStore`](super::MemoryStore) and `FjallStore`
    /// hold a lock from `begin` to the end), and (b) every commit that
    /// changes anything moves the count. A store shared by several writers
    /// (such as `PgStore`) returns `None`.
    fn commit_seq(&self) -> Option<u64> {
        None
    }
}

/// A store: a source of transactions, plus reads of the committed state
/// that need no transaction (for servers, reports and exports).
pub trait Store: Send + Sync {
    /// The transaction type.
    type Txn<'a>: Transaction
    where
        Self: 'a;
    /// Starts a transaction. Implementations may serialise transactions.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn begin(&self) -> Result<Self::Txn<'_>, StoreError>;
    /// Every device record, in device id order.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// How many messages are stored in total.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn message_count(&self) -> Result<u64, StoreError>;
    /// The record of `device`, if registered.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// The accepted messages of `device` that `query` selects, in counter order.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn messages(&self, device: &DeviceId, query: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError>;
    /// The consent ledger of `device`, oldest first.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn consent_ledger(&self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError>;
    /// The notices sent to and held back from `device`, oldest first.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn notices(&self, device: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError>;
    /// Makes sure the bytes of erased data are gone from the backing
    /// storage, not merely unreachable: [`super::RedbStore`] rewrites its
    /// file with the live data only (copy-on-write B-trees leave freed pages
    /// as they were); `FjallStore` copies the live data into a fresh
    /// database directory (an LSM tree keeps deleted values in older tables
    /// and its journal until compaction); `PgStore` vacuums the tables
    /// erasures delete from;
    /// [`super::MemoryStore`] has nothing to do. Cost: proportional to the
    /// store (redb) or to the tables (PostgreSQL): run it after a batch of
    /// erasures, as [`super::Ingestor::apply_retention`] does.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails; the data is then still
    /// erased logically.
    fn scrub(&self) -> Result<(), StoreError>;
}
