//! The persistent stores (redb, fjall) keep everything across a reopen:
//! registry, replay windows, consent ledger, vendor counters and the notice
//! history; a transaction reads its own writes, and nothing of it is seen
//! before commit. The same tests on each store (`durable_tests!`).
#![cfg(any(feature = "redb", feature = "fjall"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod durable_support;

use spime::consent::ledger::ConsentLedger;
use spime::consent::*;
use spime::message::*;
use spime::seal::{Envelope, VendorKeys};
use spime::vendor::sim::{SimDevice, consent};
use spime::vendor::*;
use spime::wire::DeviceId;

use durable_support::{Durable, temp_dir};

durable_tests!(
    state_survives_reopen,
    uncommitted_writes_are_neither_seen_nor_kept,
    corrupt_store_is_a_storage_error,
    concurrent_batches_accept_each_message_once
);

fn keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

fn state_survives_reopen<S: Durable>() {
    let dir = temp_dir(&format!("reopen-{}", S::NAME));
    let mut d = SimDevice::new(DeviceId([3; 8]), [3; 32], &keys()).unwrap();
    let mut c = consent(1, &[(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))], 0);
    c.state.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::App).unwrap();
    c.state
        .set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 1, period_seconds: 1000 })
        .unwrap();
    let reg = d
        .seal(&Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: c,
            transfer: None,
        })
        .unwrap();
    let mut metrics = heapless::Vec::new();
    metrics.push(Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(1) }).unwrap();
    let u = Usage { purpose: Purpose::USAGE_ANALYTICS, consent_version: 1, window_start: 0, window_end: 1, metrics };
    let usage = d.seal(&u).unwrap();
    let notice = Notice {
        id: 1,
        purpose: Purpose::PROACTIVE_SERVICE,
        channel: Channel::App,
        topic: 1,
        kind: NoticeKind::MaintenanceDue,
        issued_at: 100,
        expires_at: 10_000,
        title: "t".try_into().unwrap(),
        text: "x".try_into().unwrap(),
    };
    let first_counter = {
        let v = Ingestor::new(S::open_in(&dir).unwrap(), keys(), IngestConfig::default());
        v.ingest(&reg, 100).unwrap();
        v.ingest(&usage, 100).unwrap();
        let n = v.seal_notice(&d.id(), &notice, 100).unwrap();
        Envelope::parse(&n).unwrap().header.counter
    };
    let v = Ingestor::new(S::open_in(&dir).unwrap(), keys(), IngestConfig::default());
    // Replays are refused after the reopen.
    assert_eq!(v.ingest(&usage, 101).unwrap_err().reason(), "replay");
    assert_eq!(v.ingest(&reg, 101).unwrap_err().reason(), "replay");
    // The frequency cap remembers the notice sent before.
    assert!(matches!(
        v.seal_notice(&d.id(), &notice, 200),
        Err(SendError::Refused(ContactDenial::FrequencyCap { .. }))
    ));
    // Vendor counters go on.
    let r = v.seal_receipt(&d.id()).unwrap();
    assert!(Envelope::parse(&r).unwrap().header.counter > first_counter);
    assert_eq!(d.open::<Receipt>(&r).unwrap().consent_version, 1);
    // Registry, messages and the ledger are there.
    let rec = &v.store().devices().unwrap()[0];
    assert_eq!((rec.device, rec.relationship, rec.epoch()), (d.id(), 1, 1));
    assert_eq!(v.store().message_count().unwrap(), 2);
    let mut tx = v.store().begin().unwrap();
    assert!(tx.message(&d.id(), 1).unwrap().is_some());
    let ledger = ConsentLedger::from_entries(d.id(), tx.consent_entries(&d.id()).unwrap()).unwrap();
    ledger.verify_proofs(&d.key().public()).unwrap();
    assert_eq!(ledger.current_version(), Some(1));
    drop(tx);
    drop(v);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A transaction reads its own writes; dropped without commit, nothing of
/// it is seen by others or kept across a reopen; committed, all of it is.
fn uncommitted_writes_are_neither_seen_nor_kept<S: Durable>() {
    let dir = temp_dir(&format!("uncommitted-{}", S::NAME));
    let d = DeviceId([5; 8]);
    let message = |counter| StoredMessage {
        device: d,
        counter,
        kind: spime::wire::Kind::USAGE.to_byte(),
        received_at: 7,
        relationship: 1,
        purpose: Purpose::USAGE_ANALYTICS,
        proof: spime::consent::ledger::Proof {
            header: vec![1],
            body: vec![2; 40],
            signature: spime::codec::Bytes64([3; 64]),
        },
    };
    let mut window = spime::seal::replay::ReplayWindow::new();
    window.accept(9).unwrap();
    {
        let store = S::open_in(&dir).unwrap();
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.next_counter(&d).unwrap(), 0);
        tx.commit().unwrap();
        let mut tx = store.begin().unwrap();
        tx.put_messages(vec![message(1), message(2)]).unwrap();
        tx.put_windows(&[(d, window)]).unwrap();
        assert_eq!(tx.next_counter(&d).unwrap(), 1);
        // Its own writes, batched or not, are read back inside it.
        assert_eq!(tx.message(&d, 2).unwrap(), Some(message(2)));
        assert_eq!(tx.window(&d).unwrap(), window);
        assert_eq!(tx.next_counter(&d).unwrap(), 2);
        // Not committed: nobody else sees them.
        assert_eq!(store.message_count().unwrap(), 0);
        assert!(store.messages(&d, &MessageQuery::all()).unwrap().is_empty());
        drop(tx);
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.message(&d, 1).unwrap(), None);
        assert_eq!(tx.window(&d).unwrap(), spime::seal::replay::ReplayWindow::new());
        assert_eq!(tx.next_counter(&d).unwrap(), 1, "the dropped transaction's counters are not kept");
        drop(tx);
    }
    // Nor after a reopen; a committed transaction is kept whole.
    {
        let store = S::open_in(&dir).unwrap();
        assert_eq!(store.message_count().unwrap(), 0);
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.next_counter(&d).unwrap(), 1);
        tx.put_messages(vec![message(1), message(2)]).unwrap();
        tx.put_windows(&[(d, window)]).unwrap();
        tx.commit().unwrap();
    }
    let store = S::open_in(&dir).unwrap();
    assert_eq!(store.message_count().unwrap(), 2);
    assert_eq!(store.messages(&d, &MessageQuery::all()).unwrap(), [message(1), message(2)]);
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.window(&d).unwrap(), window);
    assert_eq!(tx.load_devices(&[d]).unwrap(), [(None, window)]);
    assert_eq!(tx.next_counter(&d).unwrap(), 2);
    drop(tx);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Garbage where the store should be is a storage error, not a panic or an
/// empty store.
fn corrupt_store_is_a_storage_error<S: Durable>() {
    let dir = temp_dir(&format!("corrupt-{}", S::NAME));
    // A file where the store's file or directory should be, of bytes that are no database.
    for name in ["vendor.redb", "vendor.fjall"] {
        std::fs::write(dir.join(name), b"this is not a database file, just some bytes that are long enough").unwrap();
    }
    assert!(matches!(S::open_in(&dir), Err(StoreError::Backend(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A `CURRENT` that names no database directory, or a missing one beside
/// database directories, is refused.
#[cfg(feature = "fjall")]
#[test]
fn fjall_current_naming_nothing_is_corrupt() {
    let dir = temp_dir("fjall-current");
    let store = dir.join("vendor.fjall");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("CURRENT"), b"../elsewhere").unwrap();
    assert_eq!(FjallStore::open(&store).unwrap_err(), StoreError::Corrupt("CURRENT"));
    // A generation that is not there (only db-0 may be, before it is created).
    std::fs::write(store.join("CURRENT"), b"db-3").unwrap();
    assert_eq!(FjallStore::open(&store).unwrap_err(), StoreError::Corrupt("CURRENT"));
    // A store whose CURRENT is lost is refused, not started over (which
    // would remove its data).
    std::fs::remove_file(store.join("CURRENT")).unwrap();
    drop(FjallStore::open(dir.join("other")).unwrap());
    std::fs::rename(dir.join("other").join("db-0"), store.join("db-0")).unwrap();
    assert_eq!(FjallStore::open(&store).unwrap_err(), StoreError::Corrupt("CURRENT"));
    assert!(store.join("db-0").is_dir(), "its data is kept");
    std::fs::write(store.join("CURRENT"), b"db-0").unwrap();
    drop(FjallStore::open(&store).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fleet of `n` simulated devices (ids 1..=n) and their Register messages.
#[cfg(feature = "fjall")]
fn fleet(n: u8) -> (Vec<SimDevice>, Vec<Vec<u8>>) {
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let mut fleet: Vec<SimDevice> =
        (1..=n).map(|i| SimDevice::new(DeviceId([i; 8]), [i; 32], &keys()).unwrap()).collect();
    let regs = fleet
        .iter_mut()
        .map(|d| {
            let reg = Register {
                certificate: d.certificate().clone(),
                firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
                consent: consent(1, &grants, 0),
                transfer: None,
            };
            d.seal(&reg).unwrap()
        })
        .collect();
    (fleet, regs)
}

/// The record cache is write-through: a commit updates it, a dropped
/// transaction leaves it as it was, and a reopened store starts cold and
/// reads the same values from disk.
#[cfg(feature = "fjall")]
#[test]
fn fjall_record_cache_follows_commits_only() {
    let dir = temp_dir("fjall-cache-commit");
    let (_, regs) = fleet(1);
    let d = DeviceId([1; 8]);
    let mut window = spime::seal::replay::ReplayWindow::new();
    window.accept(40).unwrap();
    let (registered, changed) = {
        let v = Ingestor::new(FjallStore::open_in(&dir).unwrap(), keys(), IngestConfig::default());
        v.ingest(&regs[0], 100).unwrap();
        let store = v.store();
        assert_eq!(store.record_cache_len(), 1, "the registration's commit filled the cache");
        let registered = store.device(&d).unwrap().unwrap();
        let registered_window = store.begin().unwrap().window(&d).unwrap();
        let mut changed = registered.clone();
        changed.relationship = 9;
        // Dropped: neither the cache nor fjall keep it.
        let mut tx = store.begin().unwrap();
        tx.put_device(&changed).unwrap();
        tx.put_windows(&[(d, window)]).unwrap();
        assert_eq!(tx.device(&d).unwrap().as_ref(), Some(&changed), "a transaction reads its own writes");
        assert_eq!(tx.load_shared(&[d]).unwrap()[0].1, window);
        drop(tx);
        assert_eq!(store.device(&d).unwrap().as_ref(), Some(&registered));
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.load_devices(&[d]).unwrap(), [(Some(registered.clone()), registered_window)]);
        drop(tx);
        // Committed: the cache has it at once.
        let mut tx = store.begin().unwrap();
        tx.put_device(&changed).unwrap();
        tx.put_window(&d, &window).unwrap();
        tx.commit().unwrap();
        assert_eq!(store.device(&d).unwrap().as_ref(), Some(&changed));
        let mut tx = store.begin().unwrap();
        let shared = tx.load_shared(&[d]).unwrap();
        assert_eq!((shared[0].0.as_deref(), shared[0].1), (Some(&changed), window));
        (registered, changed)
    };
    assert_ne!(registered, changed);
    // Reopened: cold, and the same values from disk.
    let store = FjallStore::open_in(&dir).unwrap();
    assert_eq!(store.record_cache_len(), 0);
    assert_eq!(store.device(&d).unwrap().as_ref(), Some(&changed));
    assert_eq!(store.record_cache_len(), 0, "a read outside a transaction does not fill the cache");
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.load_devices(&[d, DeviceId([2; 8])]).unwrap(), [(Some(changed), window), (None, Default::default())]);
    drop(tx);
    assert_eq!(store.record_cache_len(), 2, "a transaction's reads fill it (unknown devices too)");
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a cache of two over ten devices, evicting all the time, every
/// answer is the one a cold store reads from disk.
#[cfg(feature = "fjall")]
#[test]
fn fjall_tiny_record_cache_evicts_and_stays_right() {
    let dir = temp_dir("fjall-cache-tiny");
    let (mut devices, regs) = fleet(10);
    let mut usages = Vec::new();
    for round in 0..3 {
        for d in &mut devices {
            usages.push(d.seal(&spime::vendor::sim::counter_usage(1, &[(1, round)])).unwrap());
        }
    }
    let ids: Vec<DeviceId> = devices.iter().map(SimDevice::id).collect();
    let seen = {
        let store = FjallStore::open_in(&dir).unwrap().with_record_cache(2);
        assert_eq!(store.record_cache_capacity(), 2);
        let v = Ingestor::new(store, keys(), IngestConfig::default());
        for r in &regs {
            v.ingest(r, 100).unwrap();
        }
        // Batches over the whole fleet, then each again: all replays.
        for chunk in usages.chunks(7) {
            let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            for outcome in v.ingest_batch(&chunk, 101) {
                outcome.unwrap();
            }
        }
        for m in regs.iter().chain(&usages) {
            assert_eq!(v.ingest(m, 102).unwrap_err().reason(), "replay");
        }
        let store = v.store();
        assert!(store.record_cache_len() <= 2);
        let mut tx = store.begin().unwrap();
        let seen = tx.load_devices(&ids).unwrap();
        drop(tx);
        assert_eq!(store.message_count().unwrap(), 40);
        seen
    };
    let cold = FjallStore::open_in(&dir).unwrap();
    let mut tx = cold.begin().unwrap();
    assert_eq!(tx.load_devices(&ids).unwrap(), seen);
    assert!(seen.iter().all(|(r, w)| r.is_some() && *w != Default::default()));
    drop(tx);
    drop(cold);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Only one `FjallStore` has a directory open: the cache must see every write.
#[cfg(feature = "fjall")]
#[test]
fn fjall_second_open_is_refused() {
    let dir = temp_dir("fjall-lock");
    let first = FjallStore::open_in(&dir).unwrap();
    let err = FjallStore::open_in(&dir).unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("open elsewhere")), "{err}");
    drop(first);
    drop(FjallStore::open_in(&dir).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn concurrent_batches_accept_each_message_once<S: Durable>() {
    let dir = temp_dir(&format!("concurrent-{}", S::NAME));
    accept_each_once(&Ingestor::new(
        S::open_in(&dir).unwrap(),
        keys(),
        IngestConfig { workers: 1, batch_verify: true },
    ));
}

#[test]
fn concurrent_batches_accept_each_message_once_in_memory() {
    accept_each_once(&Ingestor::new(MemoryStore::new(), keys(), IngestConfig { workers: 1, batch_verify: true }));
    // Batches split over two workers each, from two threads.
    accept_each_once(&Ingestor::new(MemoryStore::new(), keys(), IngestConfig { workers: 2, batch_verify: true }));
}

/// Two threads ingest the same messages at once, in opposite orders and in
/// different batches: whatever the interleaving, each message is accepted
/// exactly once and its other copy refused as a replay. Over a store that
/// counts commits the batches verify at the same time, and a batch judges
/// again what the other committed meanwhile.
fn accept_each_once<S: Store>(v: &Ingestor<S>) {
    let mut devices: Vec<SimDevice> =
        (1..=8u8).map(|n| SimDevice::new(DeviceId([n; 8]), [n.wrapping_add(100); 32], &keys()).unwrap()).collect();
    for d in &mut devices {
        let c = consent(1, &[(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))], 0);
        let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 };
        let reg = Register { certificate: d.certificate().clone(), firmware, consent: c, transfer: None };
        v.ingest(&d.seal(&reg).unwrap(), 100).unwrap();
    }
    let mut sealed = Vec::new();
    for i in 0..12u64 {
        for d in &mut devices {
            let mut metrics = heapless::Vec::new();
            let m = Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(i) };
            metrics.push(m).unwrap();
            let u = Usage {
                purpose: Purpose::USAGE_ANALYTICS,
                consent_version: 1,
                window_start: 0,
                window_end: 1,
                metrics,
            };
            sealed.push(d.seal(&u).unwrap());
        }
    }
    let n = sealed.len();
    let run = |order: Vec<usize>, group: usize| -> Vec<(usize, Result<(), &'static str>)> {
        order
            .chunks(group)
            .flat_map(|c| {
                let batch: Vec<&[u8]> = c.iter().map(|&i| sealed[i].as_slice()).collect();
                let out = v.ingest_batch(&batch, 100);
                c.iter().copied().zip(out.into_iter().map(|o| o.map(drop).map_err(|e| e.reason()))).collect::<Vec<_>>()
            })
            .collect()
    };
    let (a, b) = std::thread::scope(|s| {
        let b = s.spawn(|| run((0..n).rev().collect(), 7));
        (run((0..n).collect(), 16), b.join().unwrap())
    });
    let mut accepted = vec![0; n];
    for (i, o) in a.into_iter().chain(b) {
        match o {
            Ok(()) => accepted[i] += 1,
            Err(reason) => assert_eq!(reason, "replay", "message {i}"),
        }
    }
    assert!(accepted.iter().all(|&c| c == 1), "{accepted:?}");
    assert_eq!(v.store().message_count().unwrap(), u64::try_from(8 + n).unwrap());
}
