//! Storage behind traits: the device registry, replay windows, the consent
//! ledger, the accepted-message log, vendor-to-device counters and the
//! notice log.
//!
//! A [`Store`] hands out [`Transaction`]s; a transaction implements every
//! storage trait and reads its own writes. Nothing is visible to others, or
//! survives a crash, until [`Transaction::commit`] returns `Ok`, and the
//! pipeline acknowledges a message only after that. Two implementations
//! ship: [`super::MemoryStore`] for tests and [`super::RedbStore`] (feature
//! `redb`) for a single machine; docs/scaling.md shows the same traits over
//! a shared database.

use alloc::vec::Vec;

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
}

impl SessionSecrets {
    /// Captures session keys for storage.
    pub fn from_keys(keys: &SessionKeys) -> SessionSecrets {
        SessionSecrets {
            epoch: keys.epoch,
            device_to_vendor: *keys.device_to_vendor.as_bytes(),
            vendor_to_device: *keys.vendor_to_device.as_bytes(),
        }
    }

    /// The epoch these keys belong to.
    pub const fn epoch(&self) -> u32 {
        self.epoch
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
            && bool::from(self.device_to_vendor.ct_eq(&other.device_to_vendor))
            && bool::from(self.vendor_to_device.ct_eq(&other.vendor_to_device))
    }
}

impl Eq for SessionSecrets {}

impl core::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionSecrets").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

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
}

impl DeviceRecord {
    /// The current key epoch.
    pub const fn epoch(&self) -> u32 {
        self.session.epoch
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

/// The log of notices sent, for frequency caps.
pub trait NoticeLog {
    /// Records that a notice for `purpose` was sent to `device` at `at`
    /// with vendor counter `counter`.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn record_notice(&mut self, device: &DeviceId, purpose: Purpose, at: u64, counter: u64) -> Result<(), StoreError>;
    /// How many notices for `purpose` were sent to `device` at or after `since`.
    ///
    /// # Errors
    /// A [`StoreError`] when the backend fails.
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError>;
}

/// A unit of work over every store: reads see the transaction's own writes;
/// dropping it without [`Transaction::commit`] discards them.
pub trait Transaction:
    DeviceRegistry + ReplayWindows + ConsentLedgerStore + MessageLog + VendorCounters + NoticeLog
{
    /// Makes every write durable and visible, atomically.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing of the transaction is kept.
    fn commit(self) -> Result<(), StoreError>;
}

/// A store: a source of transactions, plus whole-store queries for reports.
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
}
