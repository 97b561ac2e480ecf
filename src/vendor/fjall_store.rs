//! The persistent embedded store on [fjall](https://docs.rs/fjall), an
//! LSM tree: one directory, pure Rust, nothing to install or run.
//!
//! Why an LSM tree beside redb: the pipeline's group commit writes one
//! replay window and one message per device, at keys spread over the whole
//! fleet. A copy-on-write B-tree (redb) rewrites a page per device per
//! commit, so its cost grows with the fleet; an LSM tree appends the whole
//! batch to its journal (one fsync) and sorts it into its tables in the
//! background, so the cost of a commit grows far less with fleet size
//! (docs/benchmarks.md has the figures: not fully flat, the batch's point
//! reads still spread over the fleet).
//!
//! The keyspaces, keys and record encodings are redb's
//! (`super::kv`): device id, then big-endian numbers; postcard records;
//! with one exception: there is no `replay_windows` keyspace. A device's
//! replay window (24 bytes, [`kv::window_bytes`]) is stored in `messages`
//! under the bare device id (8 bytes), which sorts just before the
//! device's messages (device ‖ counter, 16 bytes) and outside their
//! ranges. The pipeline's group commit writes, per device, its window and
//! its new message: side by side, the second insert into fjall's memtable
//! (a skip list) finds the first one's path in the CPU cache, where two
//! keyspaces cost two searches through memory spread over the fleet
//! (docs/benchmarks.md has the figures). A database that has a
//! `replay_windows` keyspace (the layout before) is refused at open.
//!
//! Transactions: one writer at a time (a lock the transaction holds). A
//! transaction reads a snapshot of the committed state taken when it
//! began, under its own writes, which it keeps in memory; `commit` writes
//! them as one atomic batch to fjall's journal and syncs it
//! (`PersistMode::SyncAll`) before it returns. Nothing is visible, or
//! survives a crash, before that; a process killed at any point reopens to
//! the last committed transaction (fjall's journal recovery).
//!
//! The record cache: the store keeps the latest committed record and
//! replay window of recently used devices in memory
//! ([`FjallStore::with_record_cache`]), so the pipeline's reads of a batch
//! (a record of about 1.1 KB to decode and a window per device, spread over
//! the fleet) cost a table lookup on a hit. A transaction reads its own
//! writes first, then the cache, then fjall (filling the cache: under the
//! writer lock, the snapshot is the committed state). A commit updates the
//! cache after fjall has it; a dropped transaction leaves the cache alone; a
//! failed one removes the devices it wrote from it (fjall may or may not
//! hold the writes: the next read asks fjall). The cache assumes it sees
//! every write, so only one `FjallStore` may have the directory open: `open`
//! takes an exclusive lock on `<dir>/LOCK` (and fjall locks its own
//! database directory too).
//!
//! Layout on disk: `<dir>/CURRENT` names the live database directory
//! (`db-N`) beside it. Erasure: a delete writes a tombstone, and the old
//! value stays in older tables and in the journal until compaction, so
//! [`Store::scrub`] copies the live data into `db-N+1`, syncs it, switches
//! `CURRENT` to it (an atomic rename) and removes `db-N`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Slice, Snapshot};

use crate::consent::Purpose;
use crate::consent::ledger::LedgerEntry;
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::key_cache::Clock;
use super::kv::{
    self, Doomed, backend, counter_range, decode, device_notices_range, encode, encode_into, notice_key,
    notice_key_sent, notice_slot_range, notices_since_range, seq_key, window_bytes, window_from,
};
use super::store::{
    ConsentLedgerStore, DataErasure, DeviceRecord, DeviceRegistry, ErasureScope, MessageLog, MessageQuery, NoticeLog,
    NoticeRecord, ReplayWindows, SharedDevices, Store, StoredMessage, Transaction, VendorCounters,
};

/// The keyspaces, in the order of [`Db::spaces`].
const SPACES: [&str; 5] = [kv::DEVICES, kv::LEDGER, kv::MESSAGES, kv::COUNTERS, kv::NOTICES];
const DEVICES: usize = 0;
const LEDGER: usize = 1;
const MESSAGES: usize = 2;
const COUNTERS: usize = 3;
const NOTICES: usize = 4;
/// The keyspace of the replay windows: the messages' (module docs), each
/// under [`window_key`].
const WINDOWS: usize = MESSAGES;

/// Where a device's replay window is stored in [`WINDOWS`]: the device id
/// alone, just before the device's messages (device ‖ counter).
const fn window_key(device: &DeviceId) -> [u8; 8] {
    device.0
}

/// Whether a key of the `messages` keyspace is a message's (device ‖
/// counter), not a replay window's (device).
fn is_message_key(key: &[u8]) -> bool {
    key.len() == 16
}

/// The file naming the live database directory.
const CURRENT: &str = "CURRENT";

/// fjall's block cache. Every batch reads the record and the replay window
/// of each of its devices, spread over the whole fleet: the cache should
/// hold the fleet's records (a few hundred bytes each; fjall's default,
/// 32 MiB, holds about 50,000), as redb's (1 GiB by default) does.
const CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// The lock file that keeps a second `FjallStore` (in this process or
/// another) from opening the directory.
const LOCK: &str = "LOCK";

/// Entries per batch when the scrub copies a keyspace.
const COPY_BATCH: usize = 4096;

/// An open database and its keyspaces (cheap to clone: handles).
#[derive(Clone)]
struct Db {
    db: Database,
    spaces: [Keyspace; 5],
    /// The directory's name under the store's directory (`db-N`).
    name: String,
}

impl Db {
    fn open(dir: &Path, name: String) -> Result<Db, StoreError> {
        let db = Database::builder(dir.join(&name)).cache_size(CACHE_BYTES).open().map_err(backend)?;
        // The layout before kept the windows in a keyspace of their own: a
        // store of it opened here would lose them (and with them the
        // devices' replay protection), so refuse it.
        if db.keyspace_exists(kv::WINDOWS) {
            return Err(StoreError::Corrupt("replay_windows: a FjallStore of an earlier layout"));
        }
        let mut spaces = Vec::with_capacity(SPACES.len());
        for s in SPACES {
            let options = || {
                let o = KeyspaceCreateOptions::default();
                if s == kv::MESSAGES { o.max_memtable_size(FjallStore::MESSAGES_MEMTABLE) } else { o }
            };
            spaces.push(db.keyspace(s, options).map_err(|e| backend(format!("keyspace {s}: {e}")))?);
        }
        let spaces = spaces.try_into().map_err(|_| StoreError::Corrupt("keyspaces"))?;
        Ok(Db { db, spaces, name })
    }

    fn space(&self, i: usize) -> Result<&Keyspace, StoreError> {
        self.spaces.get(i).ok_or(StoreError::Corrupt("keyspaces"))
    }

    /// A durable batch: synced to disk before `commit` returns.
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncAll))
    }
}

/// Opens `<dir>/LOCK` and locks it exclusively, without waiting: the lock
/// lasts as long as the file stays open (the operating system releases it
/// when the process ends, however it ends).
#[allow(clippy::incompatible_msrv, reason = "the fjall feature needs Rust 1.90; File::try_lock is 1.89")]
fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(backend)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(backend(format!("{}: the store is open elsewhere (another FjallStore holds its lock)", path.display())))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(backend(e)),
    }
}

/// The `N` of a `db-N` directory name.
fn generation(name: &str) -> Option<u64> {
    name.strip_prefix("db-").and_then(|n| n.parse().ok())
}

/// Writes `CURRENT` atomically (a synced temporary file renamed over it,
/// then the directory synced).
fn write_current(dir: &Path, name: &str) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = dir.join("CURRENT.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(backend)?;
    f.write_all(name.as_bytes()).and_then(|()| f.sync_all()).map_err(backend)?;
    std::fs::rename(&tmp, dir.join(CURRENT)).map_err(backend)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(backend)
}

/// A store in one directory, on fjall. Write transactions are serialised;
/// every commit is durable (fsync) when it returns.
///
/// ```
/// use spime::vendor::{FjallStore, Store, Transaction, VendorCounters};
/// use spime::wire::DeviceId;
/// let dir = std::env::temp_dir().join(format!("spime-doc-fjall-{}", std::process::id()));
/// {
///     let store = FjallStore::open(&dir)?;
///     let mut tx = store.begin()?;
///     assert_eq!(tx.next_counter(&DeviceId([1; 8]))?, 0);
///     tx.commit()?;
/// }
/// let store = FjallStore::open(&dir)?;        // reopened: the commit survived
/// let mut tx = store.begin()?;
/// assert_eq!(tx.next_counter(&DeviceId([1; 8]))?, 1);
/// # drop(tx); drop(store); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), spime::vendor::StoreError>(())
/// ```
pub struct FjallStore {
    dir: PathBuf,
    /// Held open, exclusively locked, while the store is open.
    _lock: std::fs::File,
    /// The latest committed record (`None`: not registered) and replay
    /// window of recently used devices.
    cache: Clock<[u8; 8], Cached>,
    /// Held by every write transaction, and by the scrub: one writer.
    writer: Mutex<()>,
    /// The live database; the scrub replaces it.
    db: RwLock<Db>,
    /// Transactions committed since open ([`Transaction::commit_seq`]),
    /// changed under the writer lock.
    commits: AtomicU64,
}

/// A device's committed state as cached.
type Cached = (Option<Arc<DeviceRecord>>, ReplayWindow);

/// Reads a cached entry (its record's reference count and its window) for
/// [`Clock::get_many`]: what the pass then finds in cache.
fn touch(c: &Cached) -> u64 {
    c.0.as_ref().map_or(0, |r| u64::try_from(Arc::strong_count(r)).unwrap_or(0)) ^ c.1.parts().0
}

impl core::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FjallStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Devices whose record and window the store keeps in memory by
    /// default ([`FjallStore::with_record_cache`]): a fleet of 131,072. An
    /// entry costs about 1.45 KB (the record, about 1,344 bytes with its
    /// decompressed device key, behind its `Arc`; a 64-byte slot with the
    /// window; the index), so a full cache holds about 190 MB.
    pub const RECORD_CACHE_DEFAULT: usize = 1 << 17;

    /// The memtable of the `messages` keyspace, in bytes: 16 MiB, where
    /// fjall's default is 64 MiB. Every commit inserts a replay window
    /// and a message per device into it, at keys spread over the fleet,
    /// and each insert searches that skip list at a place no recent insert
    /// has warmed: slower as it fills. With a quarter of the default, the
    /// fleet bench's `durable_100k_vs_100` (100,000 devices against 100)
    /// went from 0.768–0.815 to 0.822–0.875 (docs/benchmarks.md, "fjall's
    /// commit alone, and a smaller memtable"; `cargo bench --features
    /// fjall --bench fleet`, and `--bench store_layout` for the commit
    /// alone).
    ///
    /// fjall keeps a keyspace's options from its creation: a database
    /// created with another size keeps it until [`FjallStore::scrub_dir`]
    /// creates its keyspaces anew.
    pub const MESSAGES_MEMTABLE: u64 = 16 * 1024 * 1024;

    /// Opens the store in directory `dir`, creating it and its keyspaces
    /// if needed. A database directory left by a scrub that did not finish
    /// is removed.
    ///
    /// The store keeps the records and windows of up to
    /// [`FjallStore::RECORD_CACHE_DEFAULT`] devices in memory; see
    /// [`FjallStore::with_record_cache`].
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the directory or the database cannot be
    /// opened or created, or another `FjallStore` (in this process or
    /// another) has it open;
    /// [`StoreError::Corrupt`] when `CURRENT` names no database directory,
    /// or is missing beside database directories.
    pub fn open(dir: impl AsRef<Path>) -> Result<FjallStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(backend)?;
        let lock = lock(&dir)?;
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(backend)? {
            let name = entry.map_err(backend)?.file_name().to_string_lossy().into_owned();
            if generation(&name).is_some() {
                generations.push(name);
            }
        }
        let name = match std::fs::read_to_string(dir.join(CURRENT)) {
            Ok(s) => s,
            // A new store. Database directories without CURRENT are not
            // ours to start over on: refuse rather than lose them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generations.is_empty() => {
                let name = String::from("db-0");
                write_current(&dir, &name)?;
                name
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::Corrupt("CURRENT")),
            Err(e) => return Err(backend(e)),
        };
        // CURRENT names a directory the scrub synced before it switched; only
        // the first (`db-0`, named before it is created) may be missing.
        let named = generation(&name).ok_or(StoreError::Corrupt("CURRENT"))?;
        if named != 0 && !generations.contains(&name) {
            return Err(StoreError::Corrupt("CURRENT"));
        }
        for other in generations.iter().filter(|g| **g != name) {
            std::fs::remove_dir_all(dir.join(other)).map_err(backend)?;
        }
        let db = Db::open(&dir, name)?;
        Ok(FjallStore {
            dir,
            _lock: lock,
            cache: Clock::new(FjallStore::RECORD_CACHE_DEFAULT),
            writer: Mutex::new(()),
            db: RwLock::new(db),
            commits: AtomicU64::new(0),
        })
    }

    /// The same store, keeping the committed record and replay window of
    /// at most `devices` devices in memory (at least one; about 1.2 KB
    /// each, see [`FjallStore::RECORD_CACHE_DEFAULT`]). When the fleet is larger, an
    /// entry not used for the longest while is evicted, one at a time
    /// (CLOCK), and its device is read from fjall when it next reports.
    /// What the cache holds never changes a result, only the time.
    ///
    /// ```
    /// use spime::vendor::{FjallStore, Store};
    /// let dir = std::env::temp_dir().join(format!("spime-doc-fjall-cache-{}", std::process::id()));
    /// let store = FjallStore::open(&dir)?.with_record_cache(10_000);
    /// assert_eq!(store.record_cache_capacity(), 10_000);
    /// # drop(store); std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), spime::vendor::StoreError>(())
    /// ```
    #[must_use]
    pub fn with_record_cache(mut self, devices: usize) -> FjallStore {
        self.cache = Clock::new(devices);
        self
    }

    /// How many devices the record cache may hold.
    pub fn record_cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// How many devices the record cache holds now.
    pub fn record_cache_len(&self) -> usize {
        self.cache.len()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` on a snapshot of the committed state.
    fn read<T>(&self, f: impl FnOnce(&Db, &Snapshot) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let snap = db.db.snapshot();
        f(&db, &snap)
    }

    /// Rewrites the store with the live data only, so that erased bytes are
    /// gone from its directory ([`Store::scrub`]): waits for the running
    /// write transaction, copies every keyspace into a new database
    /// directory, syncs it, switches `CURRENT` to it and removes the old
    /// one. Transactions and reads begun meanwhile wait. Costs a copy of
    /// the whole store; a crash part way leaves the old database in use
    /// (the rename of `CURRENT` is the switch; the next open removes the
    /// unused directory).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when copying, syncing or renaming fails; the
    /// store then still works on the old database.
    pub fn scrub_dir(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let next = generation(&db.name).and_then(|g| g.checked_add(1)).ok_or(StoreError::Corrupt("CURRENT"))?;
        let name = format!("db-{next}");
        let _ = std::fs::remove_dir_all(self.dir.join(&name));
        let fresh = Db::open(&self.dir, name)?;
        let snap = db.db.snapshot();
        for (from, to) in db.spaces.iter().zip(&fresh.spaces) {
            let mut batch = fresh.batch();
            for item in snap.iter(from) {
                let (k, v) = item.into_inner().map_err(backend)?;
                batch.insert(to, k, v);
                if batch.len() >= COPY_BATCH {
                    core::mem::replace(&mut batch, fresh.batch()).commit().map_err(backend)?;
                }
            }
            batch.commit().map_err(backend)?;
        }
        fresh.db.persist(PersistMode::SyncAll).map_err(backend)?;
        write_current(&self.dir, &fresh.name)?;
        let old = core::mem::replace(&mut *db, fresh);
        let old_dir = self.dir.join(&old.name);
        drop(snap);
        drop(old);
        std::fs::remove_dir_all(old_dir).map_err(backend)
    }
}

/// A vendor counter as stored (u64 big-endian; redb stores the number itself).
fn counter_from(bytes: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt("vendor_counters"))?;
    Ok(u64::from_be_bytes(b))
}

/// Reads of a keyspace's range, collected: `(key, value)` in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn range(snap: &Snapshot, space: &Keyspace, lo: &[u8], hi: &[u8]) -> Result<Entries, StoreError> {
    snap.range(space, lo..=hi)
        .map(|item| item.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
        .collect()
}

/// A write transaction of [`FjallStore`]: a snapshot of the committed
/// state under the transaction's own writes, held in memory until commit.
pub struct FjallTxn<'a> {
    _writer: MutexGuard<'a, ()>,
    /// The store's commit count, and its value when this began.
    commits: &'a AtomicU64,
    seq: u64,
    cache: &'a Clock<[u8; 8], Cached>,
    /// The records and windows this transaction wrote, as values: what
    /// its commit puts in the cache. The windows are kept only here (not
    /// in `writes`): the commit writes each beside its device's messages.
    records: HashMap<[u8; 8], Arc<DeviceRecord>>,
    windows: HashMap<[u8; 8], ReplayWindow>,
    db: Db,
    snap: Snapshot,
    /// Per keyspace: key → new value, or `None` for a delete. The values
    /// are fjall's own byte strings, which its batch takes without a copy.
    writes: [BTreeMap<Vec<u8>, Option<Slice>>; 5],
    /// Reused by each message's encoding.
    buf: Vec<u8>,
}

impl core::fmt::Debug for FjallTxn<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FjallTxn").finish_non_exhaustive()
    }
}

impl FjallTxn<'_> {
    fn writes(&mut self, space: usize) -> Result<&mut BTreeMap<Vec<u8>, Option<Slice>>, StoreError> {
        self.writes.get_mut(space).ok_or(StoreError::Corrupt("keyspaces"))
    }

    fn get(&self, space: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(w) = self.writes.get(space).and_then(|w| w.get(key)) {
            return Ok(w.as_deref().map(<[u8]>::to_vec));
        }
        Ok(self.snap.get(self.db.space(space)?, key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, space: usize, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.writes(space)?.insert(key.to_vec(), Some(Slice::from(value)));
        Ok(())
    }

    fn remove(&mut self, space: usize, key: Vec<u8>) -> Result<(), StoreError> {
        self.writes(space)?.insert(key, None);
        Ok(())
    }

    /// The committed entries in `lo..=hi` under this transaction's writes.
    fn range(&self, space: usize, lo: &[u8], hi: &[u8]) -> Result<Entries, StoreError> {
        let committed = range(&self.snap, self.db.space(space)?, lo, hi)?;
        let Some(writes) = self.writes.get(space).filter(|w| !w.is_empty()) else {
            return Ok(committed);
        };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (k, v) in writes.range::<[u8], _>((core::ops::Bound::Included(lo), core::ops::Bound::Included(hi))) {
            match v {
                Some(v) => merged.insert(k.clone(), v.to_vec()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

impl FjallTxn<'_> {
    /// The state of `device` as this transaction sees it: its own writes,
    /// then the cache, then the snapshot (which then fills the cache).
    fn shared(&mut self, device: &DeviceId) -> Result<Cached, StoreError> {
        let cached = self.cache.get(&device.0);
        self.shared_from(device, cached)
    }

    /// [`FjallTxn::shared`], given what the cache holds for `device`.
    fn shared_from(&mut self, device: &DeviceId, cached: Option<Cached>) -> Result<Cached, StoreError> {
        let (record, window) = (self.records.get(&device.0).cloned(), self.windows.get(&device.0).copied());
        if let (Some(r), Some(w)) = (&record, window) {
            return Ok((Some(Arc::clone(r)), w));
        }
        let committed = match cached {
            Some(c) => c,
            None => {
                // The writer lock is held: nothing commits meanwhile, the
                // snapshot is the latest committed state.
                let space = self.db.space(DEVICES)?;
                let r = self.snap.get(space, device.0).map_err(backend)?;
                let r = r.map(|v| decode(&v, "devices").map(Arc::new)).transpose()?;
                let w = self.snap.get(self.db.space(WINDOWS)?, window_key(device)).map_err(backend)?;
                let w = w.map_or(Ok(ReplayWindow::new()), |v| window_from(&v))?;
                self.cache.insert(device.0, (r.clone(), w));
                (r, w)
            }
        };
        Ok((record.or(committed.0), window.unwrap_or(committed.1)))
    }
}

impl DeviceRegistry for FjallTxn<'_> {
    fn device(&mut self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.shared(device)?.0.map(Arc::unwrap_or_clone))
    }
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        let bytes = encode(record)?;
        self.put(DEVICES, &record.device.0, bytes)?;
        self.records.insert(record.device.0, Arc::new(record.clone()));
        Ok(())
    }
}

impl ReplayWindows for FjallTxn<'_> {
    fn window(&mut self, device: &DeviceId) -> Result<ReplayWindow, StoreError> {
        Ok(self.shared(device)?.1)
    }
    fn put_window(&mut self, device: &DeviceId, window: &ReplayWindow) -> Result<(), StoreError> {
        self.windows.insert(device.0, *window);
        Ok(())
    }
}

impl ConsentLedgerStore for FjallTxn<'_> {
    fn append_consent(&mut self, device: &DeviceId, entry: &LedgerEntry) -> Result<(), StoreError> {
        let bytes = encode(entry)?;
        self.put(LEDGER, &seq_key(device, entry.seq), bytes)
    }
    fn consent_entries(&mut self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let (lo, hi) = counter_range(device);
        self.range(LEDGER, &lo, &hi)?.iter().map(|(_, v)| decode(v, "consent_ledger")).collect()
    }
}

impl MessageLog for FjallTxn<'_> {
    fn put_message(&mut self, message: &StoredMessage) -> Result<(), StoreError> {
        let bytes = encode(message)?;
        self.put(MESSAGES, &seq_key(&message.device, message.counter), bytes)
    }
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError> {
        self.get(MESSAGES, &seq_key(device, counter))?.map(|v| decode(&v, "messages")).transpose()
    }
}

impl VendorCounters for FjallTxn<'_> {
    fn next_counter(&mut self, device: &DeviceId) -> Result<u64, StoreError> {
        let current = self.get(COUNTERS, &device.0)?.map_or(Ok(0), |v| counter_from(&v))?;
        let next = current.checked_add(1).ok_or(StoreError::Corrupt("vendor counter exhausted"))?;
        self.put(COUNTERS, &device.0, next.to_be_bytes().to_vec())?;
        Ok(current)
    }
}

impl NoticeLog for FjallTxn<'_> {
    fn record_notice(&mut self, notice: &NoticeRecord) -> Result<(), StoreError> {
        let bytes = encode(notice)?;
        // Held-back records are numbered after those already at the same time.
        let seq = if notice.sent() {
            0
        } else {
            let (lo, hi) = notice_slot_range(notice);
            u64::try_from(self.range(NOTICES, &lo, &hi)?.len()).unwrap_or(u64::MAX)
        };
        self.put(NOTICES, &notice_key(notice, seq), bytes)
    }
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError> {
        let (lo, hi) = notices_since_range(device, purpose, since);
        let sent = self.range(NOTICES, &lo, &hi)?.iter().filter(|(k, _)| notice_key_sent(k)).count();
        Ok(u32::try_from(sent).unwrap_or(u32::MAX))
    }
}

impl DataErasure for FjallTxn<'_> {
    fn erase_messages(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError> {
        let (lo, hi) = counter_range(device);
        let mut doomed = Doomed::default();
        for (k, v) in self.range(MESSAGES, &lo, &hi)? {
            doomed.message(scope, &k, &v)?;
        }
        for k in doomed.keys {
            self.remove(MESSAGES, k)?;
        }
        Ok(doomed.counts)
    }
    fn erase_notices(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<u64, StoreError> {
        let (lo, hi) = device_notices_range(device);
        let mut doomed = Doomed::default();
        for (k, v) in self.range(NOTICES, &lo, &hi)? {
            doomed.notice(device, scope, &k, &v)?;
        }
        let n = doomed.count();
        for k in doomed.keys {
            self.remove(NOTICES, k)?;
        }
        Ok(n)
    }
}

impl Transaction for FjallTxn<'_> {
    /// One atomic batch of every write, synced to disk before it returns.
    /// Then, and only if it succeeded, the record cache takes the records
    /// and windows written (a device's entry is updated if cached, or added
    /// when both its record and window were written); if it failed, the
    /// devices written leave the cache.
    fn commit(self) -> Result<(), StoreError> {
        if self.writes.iter().all(BTreeMap::is_empty) && self.windows.is_empty() {
            return Ok(());
        }
        // The windows in key order, to go in just before their devices'
        // messages (module docs).
        let mut windows: Vec<([u8; 8], [u8; 24])> =
            self.windows.iter().map(|(d, w)| (window_key(&DeviceId(*d)), window_bytes(w))).collect();
        windows.sort_unstable_by_key(|&(k, _)| k);
        let mut windows = windows.into_iter().peekable();
        let mut batch = self.db.batch();
        for (i, (space, writes)) in self.db.spaces.iter().zip(self.writes).enumerate() {
            for (k, v) in writes {
                while i == WINDOWS
                    && let Some((wk, wv)) = windows.next_if(|(wk, _)| wk.as_slice() <= k.as_slice())
                {
                    batch.insert(space, wk, wv);
                }
                match v {
                    Some(v) => batch.insert(space, k, v),
                    None => batch.remove(space, k),
                }
            }
            if i == WINDOWS {
                windows.by_ref().for_each(|(wk, wv)| batch.insert(space, wk, wv));
            }
        }
        let (cache, mut records, windows) = (self.cache, self.records, self.windows);
        if let Err(e) = batch.commit() {
            records.keys().chain(windows.keys()).for_each(|d| cache.remove(d));
            return Err(backend(e));
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        // One write lock for the batch, its entries read before any changes.
        let mut cache = cache.write();
        cache.touch(windows.keys().chain(records.keys()), touch);
        for (d, w) in windows {
            let record = records.remove(&d);
            let updated = cache.update(&d, |c| {
                c.0 = record.clone().or_else(|| c.0.take());
                c.1 = w;
            });
            if !updated && let Some(r) = record {
                cache.insert(d, (Some(r), w));
            }
        }
        for (d, r) in records {
            // A record without a window written: only a cached entry knows the window.
            cache.update(&d, |c| c.0 = Some(r));
        }
        Ok(())
    }

    /// Each device from the transaction's writes, the record cache, or two
    /// point reads on the snapshot.
    fn load_devices(&mut self, devices: &[DeviceId]) -> Result<Vec<(Option<DeviceRecord>, ReplayWindow)>, StoreError> {
        devices.iter().map(|d| self.shared(d).map(|(r, w)| (r.map(Arc::unwrap_or_clone), w))).collect()
    }

    fn commit_seq(&self) -> Option<u64> {
        Some(self.seq)
    }

    /// As `load_devices`, the records shared with the cache (not copied).
    fn load_shared(&mut self, devices: &[DeviceId]) -> Result<SharedDevices, StoreError> {
        // The cache's entries for the whole batch at once: one lock, and
        // the misses overlapped (`Clock::get_many`).
        let cached = self.cache.get_many(devices.iter().map(|d| &d.0), touch);
        devices.iter().zip(cached).map(|(d, c)| self.shared_from(d, c)).collect()
    }

    fn put_windows(&mut self, windows: &[(DeviceId, ReplayWindow)]) -> Result<(), StoreError> {
        self.windows.reserve(windows.len());
        self.windows.extend(windows.iter().map(|(d, w)| (d.0, *w)));
        Ok(())
    }

    fn put_messages(&mut self, messages: Vec<StoredMessage>) -> Result<(), StoreError> {
        let mut buf = core::mem::take(&mut self.buf);
        let w = self.writes(MESSAGES)?;
        for m in &messages {
            // Encoded into one reused buffer, then copied once into the
            // value fjall's batch takes as it is: one allocation a message.
            encode_into(m, &mut buf)?;
            w.insert(seq_key(&m.device, m.counter).to_vec(), Some(Slice::from(buf.as_slice())));
        }
        self.buf = buf;
        Ok(())
    }
}

impl Store for FjallStore {
    type Txn<'a> = FjallTxn<'a>;

    fn begin(&self) -> Result<FjallTxn<'_>, StoreError> {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner).clone();
        let snap = db.db.snapshot();
        Ok(FjallTxn {
            _writer: writer,
            commits: &self.commits,
            seq: self.commits.load(Ordering::Relaxed),
            cache: &self.cache,
            records: HashMap::new(),
            windows: HashMap::new(),
            db,
            snap,
            writes: Default::default(),
            buf: Vec::new(),
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|db, snap| {
            snap.iter(db.space(DEVICES)?).map(|item| decode(&item.value().map_err(backend)?, "devices")).collect()
        })
    }

    /// Counts the messages (a scan of the keys, the windows' among them:
    /// proportional to the log).
    fn message_count(&self) -> Result<u64, StoreError> {
        self.read(|db, snap| {
            let mut n = 0u64;
            for item in snap.iter(db.space(MESSAGES)?) {
                n += u64::from(is_message_key(&item.key().map_err(backend)?));
            }
            Ok(n)
        })
    }

    /// From the record cache on a hit (which it does not fill on a miss:
    /// only a writer knows nothing commits between its read and its fill).
    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        if let Some((record, _)) = self.cache.get(&device.0) {
            return Ok(record.map(Arc::unwrap_or_clone));
        }
        self.read(|db, snap| {
            let got = snap.get(db.space(DEVICES)?, device.0).map_err(backend)?;
            got.map(|v| decode(&v, "devices")).transpose()
        })
    }

    fn messages(&self, device: &DeviceId, query: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let (lo, hi) = counter_range(device);
        self.read(|db, snap| {
            let mut out = Vec::new();
            for (_, v) in range(snap, db.space(MESSAGES)?, &lo, &hi)? {
                kv::push_message(&mut out, query, &v)?;
            }
            Ok(out)
        })
    }

    fn consent_ledger(&self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let (lo, hi) = counter_range(device);
        self.read(|db, snap| {
            range(snap, db.space(LEDGER)?, &lo, &hi)?.iter().map(|(_, v)| decode(v, "consent_ledger")).collect()
        })
    }

    fn notices(&self, device: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        let (lo, hi) = device_notices_range(device);
        let mut out = self.read(|db, snap| {
            let mut out = Vec::new();
            for (_, v) in range(snap, db.space(NOTICES)?, &lo, &hi)? {
                kv::push_notice(&mut out, device, &v)?;
            }
            Ok(out)
        })?;
        kv::sort_notices(&mut out);
        Ok(out)
    }

    fn scrub(&self) -> Result<(), StoreError> {
        self.scrub_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ledger::Proof;
    use crate::vendor::store::PurposeFilter;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spime-fjall-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn message(device: DeviceId, counter: u64) -> StoredMessage {
        StoredMessage {
            device,
            counter,
            kind: crate::wire::Kind::USAGE.to_byte(),
            received_at: 7,
            relationship: 1,
            purpose: Purpose::USAGE_ANALYTICS,
            proof: Proof { header: vec![1], body: vec![2; 40], signature: crate::codec::Bytes64([3; 64]) },
        }
    }

    /// The windows share the `messages` keyspace (under the bare device id)
    /// without ever showing as messages: not in a device's messages (its
    /// own window sorts just before them, its neighbours' outside them), not
    /// counted, not erased with them; and they survive a reopen.
    #[test]
    fn windows_beside_messages_stay_out_of_them() {
        let dir = temp_dir("windows");
        let ids = [
            DeviceId([4, 0, 0, 0, 0, 0, 0, 0xff]),
            DeviceId([5, 0, 0, 0, 0, 0, 0, 0]),
            DeviceId([5, 0, 0, 0, 0, 0, 0, 1]),
        ];
        let d = ids[1];
        let windows: Vec<(DeviceId, ReplayWindow)> = ids
            .iter()
            .zip([3u64, u64::MAX, 0])
            .map(|(id, c)| {
                let mut w = ReplayWindow::new();
                w.accept(c).unwrap();
                (*id, w)
            })
            .collect();
        {
            let store = FjallStore::open(&dir).unwrap();
            let mut tx = store.begin().unwrap();
            tx.put_windows(&windows).unwrap();
            tx.put_messages(vec![message(d, 0), message(d, u64::MAX)]).unwrap();
            tx.commit().unwrap();
            assert_eq!(store.message_count().unwrap(), 2);
            assert_eq!(store.messages(&d, &MessageQuery::all()).unwrap(), [message(d, 0), message(d, u64::MAX)]);
            for id in [ids[0], ids[2]] {
                assert!(store.messages(&id, &MessageQuery::all()).unwrap().is_empty());
            }
        }
        // Reopened with an empty record cache: the windows come from fjall.
        let store = FjallStore::open(&dir).unwrap();
        let mut tx = store.begin().unwrap();
        let all =
            ErasureScope { relationships: 0..=u32::MAX, purposes: PurposeFilter::Except(vec![]), before: u64::MAX };
        assert_eq!(tx.erase_messages(&d, &all).unwrap(), [(Purpose::USAGE_ANALYTICS, 2)]);
        tx.commit().unwrap();
        assert_eq!(store.message_count().unwrap(), 0);
        let store = store.with_record_cache(1);
        let mut tx = store.begin().unwrap();
        for (id, w) in &windows {
            assert_eq!(tx.window(id).unwrap(), *w);
        }
        drop(tx);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A transaction keeps its windows apart from its other writes and
    /// commits them with the rest: a window written twice commits the
    /// later value, and a transaction that writes only a window commits it.
    #[test]
    fn a_window_written_last_is_the_one_committed() {
        let dir = temp_dir("last-window");
        let d = DeviceId([6; 8]);
        let window = |c: u64| {
            let mut w = ReplayWindow::new();
            w.accept(c).unwrap();
            w
        };
        {
            let store = FjallStore::open(&dir).unwrap();
            let mut tx = store.begin().unwrap();
            tx.put_windows(&[(d, window(1))]).unwrap();
            tx.put_messages(vec![message(d, 1)]).unwrap();
            tx.put_window(&d, &window(2)).unwrap();
            assert_eq!(tx.window(&d).unwrap(), window(2), "read your own write");
            tx.commit().unwrap();
            let mut tx = store.begin().unwrap();
            tx.put_window(&DeviceId([7; 8]), &window(9)).unwrap();
            tx.commit().unwrap();
        }
        let store = FjallStore::open(&dir).unwrap();
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.window(&d).unwrap(), window(2));
        assert_eq!(tx.window(&DeviceId([7; 8])).unwrap(), window(9));
        assert_eq!(tx.message(&d, 1).unwrap(), Some(message(d, 1)));
        drop(tx);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A database of the layout before (windows in a `replay_windows`
    /// keyspace) is refused, not opened without its windows.
    #[test]
    fn earlier_layout_is_refused() {
        let dir = temp_dir("layout");
        std::fs::create_dir_all(&dir).unwrap();
        write_current(&dir, "db-0").unwrap();
        {
            let db = Database::builder(dir.join("db-0")).open().unwrap();
            let windows = db.keyspace(kv::WINDOWS, KeyspaceCreateOptions::default).unwrap();
            windows.insert([1u8; 8], [0u8; 24]).unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let err = FjallStore::open(&dir).unwrap_err();
        assert_eq!(err, StoreError::Corrupt("replay_windows: a FjallStore of an earlier layout"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
