//! The in-memory store, for tests and benchmarks. Transactions are
//! serialised by a mutex; writes are buffered and applied on commit.

use alloc::vec::Vec;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::consent::Purpose;
use crate::consent::ledger::LedgerEntry;
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::store::{
    ConsentLedgerStore, DeviceRecord, DeviceRegistry, MessageLog, NoticeLog, ReplayWindows, Store, StoredMessage,
    Transaction, VendorCounters,
};

#[derive(Default)]
struct Tables {
    devices: BTreeMap<DeviceId, DeviceRecord>,
    windows: HashMap<DeviceId, ReplayWindow>,
    ledger: HashMap<DeviceId, Vec<LedgerEntry>>,
    messages: HashMap<(DeviceId, u64), StoredMessage>,
    counters: HashMap<DeviceId, u64>,
    notices: HashMap<(DeviceId, Purpose), Vec<u64>>,
}

/// A store in memory: nothing survives the process.
///
/// ```
/// use spime::vendor::{MemoryStore, Store, Transaction, DeviceRegistry};
/// use spime::wire::DeviceId;
/// let store = MemoryStore::new();
/// let mut tx = store.begin()?;
/// assert!(tx.device(&DeviceId([1; 8]))?.is_none());
/// tx.commit()?;
/// # Ok::<(), spime::vendor::StoreError>(())
/// ```
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl core::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A transaction of [`MemoryStore`]: holds the store's lock until it ends.
pub struct MemoryTxn<'a> {
    tables: MutexGuard<'a, Tables>,
    pending: Tables,
}

impl core::fmt::Debug for MemoryTxn<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryTxn").finish_non_exhaustive()
    }
}

impl DeviceRegistry for MemoryTxn<'_> {
    fn device(&mut self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.pending.devices.get(device).or_else(|| self.tables.devices.get(device)).cloned())
    }
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.pending.devices.insert(record.device, record.clone());
        Ok(())
    }
}

impl ReplayWindows for MemoryTxn<'_> {
    fn window(&mut self, device: &DeviceId) -> Result<ReplayWindow, StoreError> {
        Ok(self.pending.windows.get(device).or_else(|| self.tables.windows.get(device)).copied().unwrap_or_default())
    }
    fn put_window(&mut self, device: &DeviceId, window: &ReplayWindow) -> Result<(), StoreError> {
        self.pending.windows.insert(*device, *window);
        Ok(())
    }
}

impl ConsentLedgerStore for MemoryTxn<'_> {
    fn append_consent(&mut self, device: &DeviceId, entry: &LedgerEntry) -> Result<(), StoreError> {
        self.pending.ledger.entry(*device).or_default().push(entry.clone());
        Ok(())
    }
    fn consent_entries(&mut self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut out = self.tables.ledger.get(device).cloned().unwrap_or_default();
        out.extend(self.pending.ledger.get(device).into_iter().flatten().cloned());
        Ok(out)
    }
}

impl MessageLog for MemoryTxn<'_> {
    fn put_message(&mut self, message: &StoredMessage) -> Result<(), StoreError> {
        self.pending.messages.insert((message.device, message.counter), message.clone());
        Ok(())
    }
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError> {
        let key = (*device, counter);
        Ok(self.pending.messages.get(&key).or_else(|| self.tables.messages.get(&key)).cloned())
    }
}

impl VendorCounters for MemoryTxn<'_> {
    fn next_counter(&mut self, device: &DeviceId) -> Result<u64, StoreError> {
        let current =
            self.pending.counters.get(device).or_else(|| self.tables.counters.get(device)).copied().unwrap_or(0);
        let next = current.checked_add(1).ok_or(StoreError::Corrupt("vendor counter exhausted"))?;
        self.pending.counters.insert(*device, next);
        Ok(current)
    }
}

impl NoticeLog for MemoryTxn<'_> {
    fn record_notice(&mut self, device: &DeviceId, purpose: Purpose, at: u64, _counter: u64) -> Result<(), StoreError> {
        self.pending.notices.entry((*device, purpose)).or_default().push(at);
        Ok(())
    }
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError> {
        let key = (*device, purpose);
        let count = [self.tables.notices.get(&key), self.pending.notices.get(&key)]
            .into_iter()
            .flatten()
            .flatten()
            .filter(|&&at| at >= since)
            .count();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

impl Transaction for MemoryTxn<'_> {
    fn commit(mut self) -> Result<(), StoreError> {
        let p = core::mem::take(&mut self.pending);
        let t = &mut *self.tables;
        t.devices.extend(p.devices);
        t.windows.extend(p.windows);
        for (d, entries) in p.ledger {
            t.ledger.entry(d).or_default().extend(entries);
        }
        t.messages.extend(p.messages);
        t.counters.extend(p.counters);
        for (k, ats) in p.notices {
            t.notices.entry(k).or_default().extend(ats);
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    type Txn<'a> = MemoryTxn<'a>;

    fn begin(&self) -> Result<MemoryTxn<'_>, StoreError> {
        Ok(MemoryTxn { tables: self.lock(), pending: Tables::default() })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.lock().devices.values().cloned().collect())
    }

    fn message_count(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.lock().messages.len()).unwrap_or(u64::MAX))
    }
}
