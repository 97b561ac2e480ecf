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
//! Records are encoded with postcard. Keys: device id, followed by
//! big-endian numbers so that ranges iterate in order (the layout is shared
//! with `FjallStore`).
//!
//! Erasure: a delete frees the pages that held the data, but redb's
//! copy-on-write B-trees leave freed pages as they were until reused, so the
//! bytes would stay in the file. [`Store::scrub`] therefore rewrites the
//! file with the live data only and swaps it in (see [`RedbStore::scrub`]).

use alloc::vec::Vec;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use redb::{
    Database, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction,
};

use crate::consent::Purpose;
use crate::consent::ledger::LedgerEntry;
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::kv::{
    self, Doomed, backend, counter_range, decode, device_notices_range, encode, encode_into, notice_key,
    notice_key_sent, notice_slot_range, notices_since_range, seq_key, window_bytes, window_from,
};
use super::store::{
    ConsentLedgerStore, DataErasure, DeviceRecord, DeviceRegistry, ErasureScope, MessageLog, MessageQuery, NoticeLog,
    NoticeRecord, ReplayWindows, Store, StoredMessage, Transaction, VendorCounters,
};

const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new(kv::DEVICES);
const WINDOWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new(kv::WINDOWS);
const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new(kv::LEDGER);
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new(kv::MESSAGES);
const COUNTERS: TableDefinition<&[u8], u64> = TableDefinition::new(kv::COUNTERS);
const NOTICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new(kv::NOTICES);
const BYTE_TABLES: [TableDefinition<&[u8], &[u8]>; 5] = [DEVICES, WINDOWS, LEDGER, MESSAGES, NOTICES];

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
    db: RwLock<Database>,
    path: PathBuf,
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
        let path = path.as_ref().to_path_buf();
        let db = create(&path)?;
        Ok(RedbStore { db: RwLock::new(db), path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).begin_read().map_err(backend)
    }

    /// Rewrites the file with the live data only, so that erased bytes are
    /// gone from it ([`Store::scrub`]): waits for the running write
    /// transaction, copies every table into `<file>.scrub`, syncs it,
    /// renames it over the file and reopens. Transactions begun meanwhile
    /// wait. Costs a copy of the whole store; a crash part way leaves the
    /// old file in place (the rename is the switch).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when copying, syncing or renaming fails; the
    /// store then still works on the old file.
    pub fn scrub_file(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Holding a write transaction keeps anyone else from committing while we copy.
        let guard = db.begin_write().map_err(backend)?;
        let tmp = self.path.with_extension("scrub");
        let _ = std::fs::remove_file(&tmp);
        {
            let fresh = create(&tmp)?;
            let src = db.begin_read().map_err(backend)?;
            let dst = fresh.begin_write().map_err(backend)?;
            for def in BYTE_TABLES {
                let from = src.open_table(def).map_err(backend)?;
                let mut to = dst.open_table(def).map_err(backend)?;
                for item in from.iter().map_err(backend)? {
                    let (k, v) = item.map_err(backend)?;
                    to.insert(k.value(), v.value()).map_err(backend)?;
                }
            }
            {
                let from = src.open_table(COUNTERS).map_err(backend)?;
                let mut to = dst.open_table(COUNTERS).map_err(backend)?;
                for item in from.iter().map_err(backend)? {
                    let (k, v) = item.map_err(backend)?;
                    to.insert(k.value(), v.value()).map_err(backend)?;
                }
            }
            dst.commit().map_err(backend)?;
        }
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(backend)?;
        drop(guard);
        std::fs::rename(&tmp, &self.path).map_err(backend)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(backend)?;
        }
        *db = Database::create(&self.path).map_err(backend)?;
        Ok(())
    }
}

fn create(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(backend)?;
    let tx = db.begin_write().map_err(backend)?;
    {
        for def in BYTE_TABLES {
            tx.open_table(def).map_err(|e| StoreError::Backend(alloc::format!("table {}: {e}", def.name())))?;
        }
        tx.open_table(COUNTERS).map_err(backend)?;
    }
    tx.commit().map_err(backend)?;
    Ok(db)
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
        window_from(v.value())
    }
    fn put_window(&mut self, device: &DeviceId, window: &ReplayWindow) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(WINDOWS).map_err(backend)?;
        t.insert(device.0.as_slice(), window_bytes(window).as_slice()).map_err(backend)?;
        Ok(())
    }
}

impl ConsentLedgerStore for RedbTxn {
    fn append_consent(&mut self, device: &DeviceId, entry: &LedgerEntry) -> Result<(), StoreError> {
        let bytes = encode(entry)?;
        let mut t = self.tx.open_table(LEDGER).map_err(backend)?;
        t.insert(seq_key(device, entry.seq).as_slice(), bytes.as_slice()).map_err(backend)?;
        Ok(())
    }
    fn consent_entries(&mut self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let t = self.tx.open_table(LEDGER).map_err(backend)?;
        let (lo, hi) = counter_range(device);
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
        let k = seq_key(&message.device, message.counter);
        let mut t = self.tx.open_table(MESSAGES).map_err(backend)?;
        t.insert(k.as_slice(), bytes.as_slice()).map_err(backend)?;
        Ok(())
    }
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError> {
        let k = seq_key(device, counter);
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
    fn record_notice(&mut self, notice: &NoticeRecord) -> Result<(), StoreError> {
        let bytes = encode(notice)?;
        let mut t = self.tx.open_table(NOTICES).map_err(backend)?;
        // Held-back records are numbered after those already at the same time.
        let seq = if notice.sent() {
            0
        } else {
            let (lo, hi) = notice_slot_range(notice);
            u64::try_from(t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)?.count()).unwrap_or(u64::MAX)
        };
        let k = notice_key(notice, seq);
        t.insert(k.as_slice(), bytes.as_slice()).map_err(backend)?;
        Ok(())
    }
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError> {
        let t = self.tx.open_table(NOTICES).map_err(backend)?;
        let (lo, hi) = notices_since_range(device, purpose, since);
        let mut n: u32 = 0;
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            if notice_key_sent(k.value()) {
                n = n.saturating_add(1);
            }
        }
        Ok(n)
    }
}

impl DataErasure for RedbTxn {
    fn erase_messages(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError> {
        let mut t = self.tx.open_table(MESSAGES).map_err(backend)?;
        let (lo, hi) = counter_range(device);
        let mut doomed = Doomed::default();
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            doomed.message(scope, k.value(), v.value())?;
        }
        for k in &doomed.keys {
            t.remove(k.as_slice()).map_err(backend)?;
        }
        Ok(doomed.counts)
    }
    fn erase_notices(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<u64, StoreError> {
        let mut t = self.tx.open_table(NOTICES).map_err(backend)?;
        let (lo, hi) = device_notices_range(device);
        let mut doomed = Doomed::default();
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            doomed.notice(device, scope, k.value(), v.value())?;
        }
        for k in &doomed.keys {
            t.remove(k.as_slice()).map_err(backend)?;
        }
        Ok(doomed.count())
    }
}

impl Transaction for RedbTxn {
    fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(backend)
    }

    /// Each table opened once for the whole batch.
    fn load_devices(&mut self, devices: &[DeviceId]) -> Result<Vec<(Option<DeviceRecord>, ReplayWindow)>, StoreError> {
        let records = self.tx.open_table(DEVICES).map_err(backend)?;
        let windows = self.tx.open_table(WINDOWS).map_err(backend)?;
        devices
            .iter()
            .map(|d| {
                let rec = records.get(d.0.as_slice()).map_err(backend)?;
                let rec = rec.map(|v| decode(v.value(), "devices")).transpose()?;
                let win = windows.get(d.0.as_slice()).map_err(backend)?;
                let win = win.map_or(Ok(ReplayWindow::new()), |v| window_from(v.value()))?;
                Ok((rec, win))
            })
            .collect()
    }

    fn put_windows(&mut self, windows: &[(DeviceId, ReplayWindow)]) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(WINDOWS).map_err(backend)?;
        for (d, w) in windows {
            t.insert(d.0.as_slice(), window_bytes(w).as_slice()).map_err(backend)?;
        }
        Ok(())
    }

    fn put_messages(&mut self, messages: Vec<StoredMessage>) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(MESSAGES).map_err(backend)?;
        let mut buf = Vec::new();
        for m in &messages {
            encode_into(m, &mut buf)?;
            t.insert(seq_key(&m.device, m.counter).as_slice(), buf.as_slice()).map_err(backend)?;
        }
        Ok(())
    }
}

impl Store for RedbStore {
    type Txn<'a> = RedbTxn;

    fn begin(&self) -> Result<RedbTxn, StoreError> {
        let tx = self.db.read().unwrap_or_else(PoisonError::into_inner).begin_write().map_err(backend)?;
        Ok(RedbTxn { tx })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(DEVICES).map_err(backend)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            out.push(decode(v.value(), "devices")?);
        }
        Ok(out)
    }

    fn message_count(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(MESSAGES).map_err(backend)?;
        t.len().map_err(backend)
    }

    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(DEVICES).map_err(backend)?;
        let got = t.get(device.0.as_slice()).map_err(backend)?;
        got.map(|v| decode(v.value(), "devices")).transpose()
    }

    fn messages(&self, device: &DeviceId, query: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(MESSAGES).map_err(backend)?;
        let (lo, hi) = counter_range(device);
        let mut out = Vec::new();
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            kv::push_message(&mut out, query, v.value())?;
        }
        Ok(out)
    }

    fn consent_ledger(&self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(LEDGER).map_err(backend)?;
        let (lo, hi) = counter_range(device);
        let mut out = Vec::new();
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            out.push(decode(v.value(), "consent_ledger")?);
        }
        Ok(out)
    }

    fn notices(&self, device: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(NOTICES).map_err(backend)?;
        let (lo, hi) = device_notices_range(device);
        let mut out: Vec<NoticeRecord> = Vec::new();
        for item in t.range::<&[u8]>(lo.as_slice()..=hi.as_slice()).map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            kv::push_notice(&mut out, device, v.value())?;
        }
        kv::sort_notices(&mut out);
        Ok(out)
    }

    fn scrub(&self) -> Result<(), StoreError> {
        self.scrub_file()
    }
}
