//! The persistent embedded store on [redb](https://docs.rs/redb): one file,
//! pure Rust, nothing to install or run beside `cargo`.
//!
//! Why redb rather than SQLite (rusqlite `bundled`): it is pure Rust (no C
//! compiler or cross C toolchain in the build), its write transactions are
//! ACID with copy-on-write B-trees and a checksummed commit, so a process
//! killed at any point reopens to the last committed transaction, and the
//! data model here is key-value anyway. SQL would pay off only for ad-hoc
//! queries, which the shared-database path (docs/scaling.md) covers.
//!
//! Records are encoded with postcard. Keys: device id (16 bytes), followed
//! by big-endian numbers so that ranges iterate in order.

use alloc::string::ToString;
use alloc::vec::Vec;
use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::consent::Purpose;
use crate::consent::ledger::LedgerEntry;
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::store::{
    ConsentLedgerStore, DeviceRecord, DeviceRegistry, MessageLog, NoticeLog, ReplayWindows, Store, StoredMessage,
    Transaction, VendorCounters,
};

const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices");
const WINDOWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("replay_windows");
const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("consent_ledger");
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const COUNTERS: TableDefinition<&[u8], u64> = TableDefinition::new("vendor_counters");
const NOTICES: TableDefinition<&[u8], ()> = TableDefinition::new("notices");

fn backend(e: impl ToString) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn key(device: &DeviceId, tail: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 18);
    k.extend_from_slice(&device.0);
    for t in tail {
        k.extend_from_slice(t);
    }
    k
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|_| StoreError::Corrupt("encode"))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], table: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(table))
}

/// A store in one redb file. Write transactions are serialised by redb;
/// every commit is durable (fsync) when it returns.
///
/// ```
/// use spime::vendor::{RedbStore, Store, Transaction, VendorCounters};
/// use spime::wire::DeviceId;
/// let dir = std::env::temp_dir().join(format!("spime-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("vendor.redb");
/// {
///     let store = RedbStore::open(&path)?;
///     let mut tx = store.begin()?;
///     assert_eq!(tx.next_counter(&DeviceId([1; 8]))?, 0);
///     tx.commit()?;
/// }
/// let store = RedbStore::open(&path)?;        // reopened: the commit survived
/// let mut tx = store.begin()?;
/// assert_eq!(tx.next_counter(&DeviceId([1; 8]))?, 1);
/// # drop(tx); drop(store); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), spime::vendor::StoreError>(())
/// ```
pub struct RedbStore {
    db: Database,
}

impl core::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file and tables if needed.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file cannot be opened or created.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let tx = db.begin_write().map_err(backend)?;
        {
            tx.open_table(DEVICES).map_err(backend)?;
            tx.open_table(WINDOWS).map_err(backend)?;
            tx.open_table(LEDGER).map_err(backend)?;
            tx.open_table(MESSAGES).map_err(backend)?;
            tx.open_table(COUNTERS).map_err(backend)?;
            tx.open_table(NOTICES).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(RedbStore { db })
    }
}

/// A write transaction of [`RedbStore`].
pub struct RedbTxn {
    tx: WriteTransaction,
}

impl core::fmt::Debug for RedbTxn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedbTxn").finish_non_exhaustive()
    }
}

impl DeviceRegistry for RedbTxn {
    fn device(&mut self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let t = self.tx.open_table(DEVICES).map_err(backend)?;
        let got = t.get(device.0.as_slice()).map_err(backend)?;
        got.map(|v| decode(v.value(), "devices")).transpose()
    }
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        let bytes = encode(record)?;
        let mut t = self.tx.open_table(DEVICES).map_err(backend)?;
        t.insert(record.device.0.as_slice(), bytes.as_slice()).map_err(backend)?;
        Ok(())
    }
}

impl ReplayWindows for RedbTxn {
    fn window(&mut self, device: &DeviceId) -> Result<ReplayWindow, StoreError> {
        let t = self.tx.open_table(WINDOWS).map_err(backend)?;
        let Some(v) = t.get(device.0.as_slice()).map_err(backend)? else {
            return Ok(ReplayWindow::new());
        };
        let b: [u8; 24] = v.value().try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?;
        let (h, s) = b.split_at(8);
        let highest = u64::from_be_bytes(h.try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?);
        let seen = u128::from_be_bytes(s.try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?);
        Ok(ReplayWindow::from_parts(highest, seen))
    }
    fn put_window(&mut self, device: &DeviceId, window: &ReplayWindow) -> Result<(), StoreError> {
        let (highest, seen) = window.parts();
        let mut b = [0u8; 24];
        let (h, s) = b.split_at_mut(8);
        h.copy_from_slice(&highest.to_be_bytes());
        s.copy_from_slice(&seen.to_be_bytes());
        let mut t = self.tx.open_table(WINDOWS).map_err(backend)?;
        t.insert(device.0.as_slice(), b.as_slice()).map_err(backend)?;
        Ok(())
    }
}

impl ConsentLedgerStore for RedbTxn {
    fn append_consent(&mut self, device: &DeviceId, entry: &LedgerEntry) -> Result<(), StoreError> {
        let bytes = encode(entry)?;
        let mut t = self.tx.open_table(LEDGER).map_err(backend)?;
        let k = key(device, &[&entry.seq.to_be_bytes()]);
        t.insert(k.as_slice(), bytes.as_slice()).map_err(backend)?;
        Ok(())
    }
    fn consent_entries(&mut self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let t = self.tx.open_table(LEDGER).map_err(backend)?;
        let lo = key(device, &[&0u64.to_be_bytes()]);
        let hi = key(device, &[&u64::MAX.to_be_bytes()]);
        let mut out = Vec::new();
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            out.push(decode(v.value(), "consent_ledger")?);
        }
        Ok(out)
    }
}

impl MessageLog for RedbTxn {
    fn put_message(&mut self, message: &StoredMessage) -> Result<(), StoreError> {
        let bytes = encode(message)?;
        let k = key(&message.device, &[&message.counter.to_be_bytes()]);
        let mut t = self.tx.open_table(MESSAGES).map_err(backend)?;
        t.insert(k.as_slice(), bytes.as_slice()).map_err(backend)?;
        Ok(())
    }
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError> {
        let k = key(device, &[&counter.to_be_bytes()]);
        let t = self.tx.open_table(MESSAGES).map_err(backend)?;
        let got = t.get(k.as_slice()).map_err(backend)?;
        got.map(|v| decode(v.value(), "messages")).transpose()
    }
}

impl VendorCounters for RedbTxn {
    fn next_counter(&mut self, device: &DeviceId) -> Result<u64, StoreError> {
        let mut t = self.tx.open_table(COUNTERS).map_err(backend)?;
        let current = t.get(device.0.as_slice()).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        let next = current.checked_add(1).ok_or(StoreError::Corrupt("vendor counter exhausted"))?;
        t.insert(device.0.as_slice(), next).map_err(backend)?;
        Ok(current)
    }
}

impl NoticeLog for RedbTxn {
    fn record_notice(&mut self, device: &DeviceId, purpose: Purpose, at: u64, counter: u64) -> Result<(), StoreError> {
        let k = key(device, &[&purpose.id().to_be_bytes(), &at.to_be_bytes(), &counter.to_be_bytes()]);
        let mut t = self.tx.open_table(NOTICES).map_err(backend)?;
        t.insert(k.as_slice(), ()).map_err(backend)?;
        Ok(())
    }
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError> {
        let t = self.tx.open_table(NOTICES).map_err(backend)?;
        let p = purpose.id().to_be_bytes();
        let lo = key(device, &[&p, &since.to_be_bytes(), &0u64.to_be_bytes()]);
        let hi = key(device, &[&p, &u64::MAX.to_be_bytes(), &u64::MAX.to_be_bytes()]);
        let n = t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)?.count();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

impl Transaction for RedbTxn {
    fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(backend)
    }
}

impl Store for RedbStore {
    type Txn<'a> = RedbTxn;

    fn begin(&self) -> Result<RedbTxn, StoreError> {
        Ok(RedbTxn { tx: self.db.begin_write().map_err(backend)? })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(DEVICES).map_err(backend)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            out.push(decode(v.value(), "devices")?);
        }
        Ok(out)
    }

    fn message_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(MESSAGES).map_err(backend)?;
        t.len().map_err(backend)
    }
}
