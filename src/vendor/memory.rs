//! The in-memory store, for tests and benchmarks. Transactions are
//! serialised by a mutex; writes are buffered and applied on commit.

use alloc::sync::Arc;
use alloc::vec::Vec;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::consent::Purpose;
use crate::consent::ledger::LedgerEntry;
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::store::{
    ConsentLedgerStore, DataErasure, DeviceRecord, DeviceRegistry, ErasureScope, MessageLog, MessageQuery, NoticeLog,
    NoticeRecord, ReplayWindows, SharedDevices, Store, StoredMessage, Transaction, VendorCounters, tally,
};

// Keyed by hash, not ordered: a lookup in a fleet-sized table costs one
// or two cache misses rather than one per B-tree level (the fleet bench,
// docs/benchmarks.md). Messages are ordered within each device.
#[derive(Default)]
struct Tables {
    devices: HashMap<DeviceId, Arc<DeviceRecord>>,
    windows: HashMap<DeviceId, ReplayWindow>,
    ledger: HashMap<DeviceId, Vec<LedgerEntry>>,
    messages: Messages,
    counters: HashMap<DeviceId, u64>,
    notices: HashMap<DeviceId, Vec<NoticeRecord>>,
    /// Transactions committed ([`Transaction::commit_seq`]).
    commits: u64,
}

/// Accepted messages by device, each device's sorted by counter (counters
/// mostly arrive in order, so an insert is usually a push).
#[derive(Default)]
struct Messages {
    by_device: HashMap<DeviceId, Vec<StoredMessage>>,
    len: usize,
}

impl Messages {
    fn insert(&mut self, m: StoredMessage) {
        let list = self.by_device.entry(m.device).or_default();
        match list.last() {
            Some(last) if last.counter >= m.counter => match list.binary_search_by_key(&m.counter, |x| x.counter) {
                Ok(i) => {
                    if let Some(slot) = list.get_mut(i) {
                        *slot = m;
                    }
                }
                Err(i) => {
                    list.insert(i, m);
                    self.len = self.len.saturating_add(1);
                }
            },
            _ => {
                list.push(m);
                self.len = self.len.saturating_add(1);
            }
        }
    }

    fn get(&self, device: &DeviceId, counter: u64) -> Option<&StoredMessage> {
        let list = self.by_device.get(device)?;
        list.get(list.binary_search_by_key(&counter, |x| x.counter).ok()?)
    }

    fn of(&self, device: &DeviceId) -> impl Iterator<Item = &StoredMessage> {
        self.by_device.get(device).into_iter().flatten()
    }

    fn retain(&mut self, device: &DeviceId, keep: impl FnMut(&StoredMessage) -> bool) {
        if let Some(list) = self.by_device.get_mut(device) {
            let before = list.len();
            list.retain(keep);
            self.len = self.len.saturating_sub(before.saturating_sub(list.len()));
        }
    }
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
    /// The messages written, in order (a later write of the same device
    /// and counter replaces an earlier one at commit). A list, not an
    /// index: a batch's messages are moved in and out again without
    /// hashing them twice; [`MessageLog::message`] scans it.
    written: Vec<StoredMessage>,
    /// Erasures, applied to the committed tables on commit.
    erased_messages: Vec<(DeviceId, ErasureScope)>,
    erased_notices: Vec<(DeviceId, ErasureScope)>,
}

impl core::fmt::Debug for MemoryTxn<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryTxn").finish_non_exhaustive()
    }
}

impl MemoryTxn<'_> {
    /// `device`'s window as this transaction sees it (a fresh one if none).
    fn window_of(&self, device: &DeviceId) -> ReplayWindow {
        self.pending.windows.get(device).or_else(|| self.tables.windows.get(device)).copied().unwrap_or_default()
    }
}

impl DeviceRegistry for MemoryTxn<'_> {
    fn device(&mut self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.pending.devices.get(device).or_else(|| self.tables.devices.get(device)).map(|r| (**r).clone()))
    }
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.pending.devices.insert(record.device, Arc::new(record.clone()));
        Ok(())
    }
}

impl ReplayWindows for MemoryTxn<'_> {
    fn window(&mut self, device: &DeviceId) -> Result<ReplayWindow, StoreError> {
        Ok(self.window_of(device))
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
        self.written.push(message.clone());
        Ok(())
    }
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError> {
        let erased = |m: &StoredMessage| self.erased_messages.iter().any(|(d, s)| d == device && s.covers_message(m));
        Ok(self
            .written
            .iter()
            .rev()
            .find(|m| m.device == *device && m.counter == counter)
            .or_else(|| self.tables.messages.get(device, counter).filter(|m| !erased(m)))
            .cloned())
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
    fn record_notice(&mut self, notice: &NoticeRecord) -> Result<(), StoreError> {
        self.pending.notices.entry(notice.device).or_default().push(notice.clone());
        Ok(())
    }
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError> {
        let erased = |n: &NoticeRecord| self.erased_notices.iter().any(|(d, s)| d == device && s.covers_notice(n));
        let committed = self.tables.notices.get(device).into_iter().flatten().filter(|n| !erased(n));
        let count = committed
            .chain(self.pending.notices.get(device).into_iter().flatten())
            .filter(|n| n.sent() && n.purpose == purpose && n.at >= since)
            .count();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

impl DataErasure for MemoryTxn<'_> {
    fn erase_messages(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError> {
        let mut counts = Vec::new();
        for m in self.tables.messages.of(device).filter(|m| scope.covers_message(m)) {
            if !self.erased_messages.iter().any(|(d, s)| d == device && s.covers_message(m)) {
                tally(&mut counts, m.purpose, 1);
            }
        }
        // Of the messages written, the last write of each counter is the
        // one that counts; a covered counter goes with all its writes.
        let mut seen = Vec::new();
        let mut doomed = Vec::new();
        for m in self.written.iter().rev().filter(|m| m.device == *device) {
            if seen.contains(&m.counter) {
                continue;
            }
            seen.push(m.counter);
            if scope.covers_message(m) {
                doomed.push(m.counter);
                if self.tables.messages.get(device, m.counter).is_none() {
                    tally(&mut counts, m.purpose, 1);
                }
            }
        }
        self.written.retain(|m| m.device != *device || !doomed.contains(&m.counter));
        self.erased_messages.push((*device, scope.clone()));
        Ok(counts)
    }
    fn erase_notices(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<u64, StoreError> {
        let already = |n: &NoticeRecord| self.erased_notices.iter().any(|(d, s)| d == device && s.covers_notice(n));
        let committed = self
            .tables
            .notices
            .get(device)
            .into_iter()
            .flatten()
            .filter(|n| scope.covers_notice(n) && !already(n))
            .count();
        let mut pending = 0;
        if let Some(v) = self.pending.notices.get_mut(device) {
            let before = v.len();
            v.retain(|n| !scope.covers_notice(n));
            pending = before.saturating_sub(v.len());
        }
        self.erased_notices.push((*device, scope.clone()));
        Ok(u64::try_from(committed.saturating_add(pending)).unwrap_or(u64::MAX))
    }
}

impl Transaction for MemoryTxn<'_> {
    fn load_shared(&mut self, devices: &[DeviceId]) -> Result<SharedDevices, StoreError> {
        // Found first, shared after. A fleet's records lie all over memory,
        // and sharing one (an atomic increment of its count) waits for its
        // cache miss with nothing else in flight; plain reads of the counts
        // first let the processor overlap the misses.
        let found: Vec<(Option<&Arc<DeviceRecord>>, ReplayWindow)> = devices
            .iter()
            .map(|d| (self.pending.devices.get(d).or_else(|| self.tables.devices.get(d)), self.window_of(d)))
            .collect();
        let touched = found.iter().filter_map(|(r, _)| r.map(Arc::strong_count)).fold(0usize, usize::wrapping_add);
        core::hint::black_box(touched);
        Ok(found.into_iter().map(|(r, w)| (r.cloned(), w)).collect())
    }
    fn put_messages(&mut self, messages: Vec<StoredMessage>) -> Result<(), StoreError> {
        if self.written.is_empty() {
            self.written = messages;
        } else {
            self.written.extend(messages);
        }
        Ok(())
    }
    fn put_windows(&mut self, windows: &[(DeviceId, ReplayWindow)]) -> Result<(), StoreError> {
        self.pending.windows.reserve(windows.len());
        self.pending.windows.extend(windows.iter().copied());
        Ok(())
    }
    fn commit(mut self) -> Result<(), StoreError> {
        let p = core::mem::take(&mut self.pending);
        let t = &mut *self.tables;
        for (d, scope) in core::mem::take(&mut self.erased_messages) {
            t.messages.retain(&d, |m| !scope.covers_message(m));
        }
        for (d, scope) in core::mem::take(&mut self.erased_notices) {
            if let Some(v) = t.notices.get_mut(&d) {
                v.retain(|n| !scope.covers_notice(n));
            }
        }
        // Read first what the writes below will find (each device's window
        // and the last message of its list), with nothing written in
        // between: for a fleet these are cache misses, and plain reads in a
        // row overlap where the writes would take them one at a time.
        let touched = self
            .written
            .iter()
            .filter_map(|m| t.messages.by_device.get(&m.device).and_then(|l| l.last()).map(|l| l.counter))
            .chain(p.windows.keys().filter_map(|d| t.windows.get(d)).map(|w| w.parts().0))
            .fold(0u64, u64::wrapping_add);
        core::hint::black_box(touched);
        t.devices.extend(p.devices);
        t.windows.extend(p.windows);
        for (d, entries) in p.ledger {
            t.ledger.entry(d).or_default().extend(entries);
        }
        for m in core::mem::take(&mut self.written) {
            t.messages.insert(m);
        }
        t.counters.extend(p.counters);
        for (d, records) in p.notices {
            t.notices.entry(d).or_default().extend(records);
        }
        t.commits = t.commits.wrapping_add(1);
        Ok(())
    }
    fn commit_seq(&self) -> Option<u64> {
        Some(self.tables.commits)
    }
}

impl Store for MemoryStore {
    type Txn<'a> = MemoryTxn<'a>;

    fn begin(&self) -> Result<MemoryTxn<'_>, StoreError> {
        Ok(MemoryTxn {
            tables: self.lock(),
            pending: Tables::default(),
            written: Vec::new(),
            erased_messages: Vec::new(),
            erased_notices: Vec::new(),
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut all: Vec<DeviceRecord> = self.lock().devices.values().map(|r| (**r).clone()).collect();
        all.sort_unstable_by_key(|r| r.device);
        Ok(all)
    }

    fn message_count(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.lock().messages.len).unwrap_or(u64::MAX))
    }

    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.lock().devices.get(device).map(|r| (**r).clone()))
    }

    fn messages(&self, device: &DeviceId, query: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let t = self.lock();
        Ok(t.messages.of(device).filter(|m| query.matches(m)).cloned().collect())
    }

    fn consent_ledger(&self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(self.lock().ledger.get(device).cloned().unwrap_or_default())
    }

    fn notices(&self, device: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        Ok(self.lock().notices.get(device).cloned().unwrap_or_default())
    }

    fn scrub(&self) -> Result<(), StoreError> {
        // Erased entries were dropped from the maps at commit.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::Messages;
    use crate::codec::Bytes64;
    use crate::consent::Purpose;
    use crate::consent::ledger::Proof;
    use crate::vendor::store::StoredMessage;
    use crate::wire::DeviceId;

    fn msg(device: u8, counter: u64, at: u64) -> StoredMessage {
        StoredMessage {
            device: DeviceId([device; 8]),
            counter,
            kind: 0x02,
            received_at: at,
            relationship: 0,
            purpose: Purpose::USAGE_ANALYTICS,
            proof: Proof { header: vec![], body: vec![], signature: Bytes64([0; 64]) },
        }
    }

    fn counters(m: &Messages, device: u8) -> Vec<(u64, u64)> {
        m.of(&DeviceId([device; 8])).map(|x| (x.counter, x.received_at)).collect()
    }

    #[test]
    fn messages_stay_sorted_per_device_and_counted_once() {
        let mut m = Messages::default();
        for (d, c) in [(1, 5), (1, 2), (2, 1), (1, 9), (1, 7), (1, 2)] {
            m.insert(msg(d, c, c * 10 + u64::from(d)));
        }
        // the second (1, 2) replaced the first: five messages
        assert_eq!(m.len, 5);
        assert_eq!(counters(&m, 1), [(2, 21), (5, 51), (7, 71), (9, 91)]);
        assert_eq!(counters(&m, 2), [(1, 12)]);
        assert_eq!(m.get(&DeviceId([1; 8]), 7).unwrap().received_at, 71);
        assert!(m.get(&DeviceId([1; 8]), 6).is_none());
        m.retain(&DeviceId([1; 8]), |x| x.counter > 2);
        assert_eq!(counters(&m, 1), [(5, 51), (7, 71), (9, 91)]);
        assert_eq!(m.len, 4);
    }

    #[test]
    fn a_transactions_messages_last_write_wins_and_erasure_sees_them() {
        use crate::vendor::store::{DataErasure, ErasureScope, MessageLog, PurposeFilter, Store, Transaction};
        let all =
            ErasureScope { relationships: 0..=u32::MAX, purposes: PurposeFilter::Except(vec![]), before: u64::MAX };
        let store = super::MemoryStore::new();
        let mut tx = store.begin().unwrap();
        tx.put_message(&msg(1, 5, 10)).unwrap();
        tx.put_messages(vec![msg(1, 5, 11), msg(1, 6, 12), msg(2, 1, 13)]).unwrap();
        tx.put_message(&msg(1, 6, 14)).unwrap();
        // the last write of each (device, counter) is the one read and kept
        assert_eq!(tx.message(&DeviceId([1; 8]), 5).unwrap().unwrap().received_at, 11);
        assert_eq!(tx.message(&DeviceId([1; 8]), 6).unwrap().unwrap().received_at, 14);
        tx.commit().unwrap();
        assert_eq!(store.message_count().unwrap(), 3);
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.message(&DeviceId([1; 8]), 6).unwrap().unwrap().received_at, 14);
        // erasing device 1 in a transaction that also wrote for it: the
        // new message counts once however often it was written
        tx.put_message(&msg(1, 7, 15)).unwrap();
        tx.put_messages(vec![msg(1, 7, 16), msg(2, 2, 17)]).unwrap();
        let counts = tx.erase_messages(&DeviceId([1; 8]), &all).unwrap();
        assert_eq!(counts, [(Purpose::USAGE_ANALYTICS, 3)]);
        assert!(tx.message(&DeviceId([1; 8]), 7).unwrap().is_none());
        assert_eq!(tx.message(&DeviceId([2; 8]), 2).unwrap().unwrap().received_at, 17);
        tx.commit().unwrap();
        assert_eq!(store.message_count().unwrap(), 2);
    }
}
