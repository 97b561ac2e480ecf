//! Issue 9, finding 3: counter rollback on damaged flash. The newest copy
//! of the counter record decays (a retention fault, a marginal program)
//! after values of its block were used: the device must never hand those
//! values out again, and with no intact copy left it must say so and
//! recover through a new key epoch that the vendor accepts. Every message
//! goes through the vendor's real ingest pipeline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

mod device_common;

use std::collections::BTreeSet;

use device_common::*;
use rand_core::SeedableRng;
use spime::consent::{DataCategory, Purpose};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{
    COUNTER_BLOCK, DEFAULT_STORAGE_SECTORS, Device, RECOVERY_ERA, SessionError, StageHandle, storage_capacity,
    storage_records,
};
use spime::device::storage::{NorStorage, RECORD_COUNTER, SimFlash, Storage, StorageError};
use spime::error::CounterError;
use spime::message::{self, Metric, MetricValue};
use spime::vendor::{Event, IngestConfig, IngestError, Ingestor, MemoryStore};
use spime::wire::Header;

const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
const SECTOR: usize = 4096;
const SECTORS: u16 = DEFAULT_STORAGE_SECTORS;
type Flash = SimFlash<{ SECTORS as usize * SECTOR }, SECTOR>;
type Ob = Outbox<N, REC>;
type Dev<'o, S> = Device<'o, S, N, REC>;
const T0: u64 = 1_767_300_000;

fn storage(flash: &mut Flash) -> NorStorage<&mut Flash> {
    NorStorage::new(flash, 0, SECTORS, storage_records(N) as u16, storage_capacity(REC)).unwrap()
}

fn ingestor() -> Ingestor<MemoryStore> {
    Ingestor::new(MemoryStore::new(), vendor(), IngestConfig::default())
}

fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(3)
}

/// Sends everything queued to the vendor and acks it; returns (counter, epoch, outcome) per message.
fn flush<S: Storage>(
    dev: &mut Dev<'_, S>,
    vendor: &Ingestor<MemoryStore>,
) -> Vec<(u64, u32, Result<Event, IngestError>)> {
    let mut out = Vec::new();
    while let Some(e) = dev.next_message().unwrap() {
        let (h, _) = Header::parse(e.envelope).unwrap();
        let outcome = vendor.ingest(e.envelope, T0 + 10).map(|a| a.event);
        out.push((h.counter, h.epoch, outcome));
        let c = e.meta.counter;
        dev.ack(c).unwrap();
    }
    out
}

fn report<S: Storage>(dev: &mut Dev<'_, S>, i: u64) -> Result<u64, SessionError> {
    let StageHandle::Registered(mut r) = dev.handle() else { panic!("registered") };
    let p = r.permit(Purpose::USAGE_ANALYTICS, T0).unwrap();
    let m = Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(i) };
    let u = p.usage(T0 - 60, T0, [m]).unwrap();
    r.report_usage(u, T0)
}

/// A registered device that sent `reports` usage reports, all accepted.
fn registered(flash: &mut Flash, vendor: &Ingestor<MemoryStore>, reports: u64) -> BTreeSet<u64> {
    let mut outbox = Ob::new();
    let mut dev = Device::boot(identity(), storage(flash), &mut outbox).unwrap();
    let StageHandle::Unregistered(u) = dev.handle() else { panic!("fresh") };
    u.register(&mut rng(), generous_consent(1, T0 - 100)).unwrap();
    let mut used = BTreeSet::new();
    for (c, _, o) in flush(&mut dev, vendor) {
        o.unwrap();
        used.insert(c);
    }
    for i in 0..reports {
        report(&mut dev, i).unwrap();
        for (c, _, o) in flush(&mut dev, vendor) {
            o.unwrap();
            used.insert(c);
        }
    }
    used
}

/// The newest counter copy decays after values of its block were used: the
/// counter falls back to the older copy and skips the lost block, so no
/// value is used twice and the vendor accepts every message.
#[test]
fn counter_rollback_on_damaged_flash_skips_the_lost_block() {
    let vendor = ingestor();
    let mut flash = Flash::new();
    // 20 reports: the counter is in its second block, with an older copy in the log
    let mut used = registered(&mut flash, &vendor, 20);
    let copies = counter_copies(flash.as_bytes(), SECTOR);
    assert!(copies.len() >= 2, "an older copy is still in the log");
    let (newest, len) = *copies.last().unwrap();
    flash.decay(newest, len as u32);
    // what the old two-copy store did: fall back to the older value
    let older = u64::from_be_bytes(flash.as_bytes()[copies[copies.len() - 2].0 as usize..][..8].try_into().unwrap());
    assert!(used.iter().any(|&c| c >= older), "values of the damaged block were used");

    let mut outbox = Ob::new();
    let mut dev = Device::boot(identity(), storage(&mut flash), &mut outbox).unwrap();
    assert!(!dev.counter_lost());
    for i in 0..40 {
        let c = report(&mut dev, 100 + i).unwrap();
        assert!(used.insert(c), "counter {c} handed out twice");
        for (c, _, o) in flush(&mut dev, &vendor) {
            assert!(matches!(o, Ok(Event::Usage(_))), "counter {c}: {o:?}");
        }
    }
}

/// Both copies damaged (no intact counter record left): the device says so
/// and seals nothing; `recover` moves the counter past any value used and
/// drops the keys; `renew_keys` opens a new epoch; the vendor accepts the
/// first message under it and everything after it.
#[test]
fn counter_rollback_on_damaged_flash_both_copies_damaged_recover_with_a_new_epoch() {
    let vendor = ingestor();
    let mut flash = Flash::new();
    let used = registered(&mut flash, &vendor, 20);
    let highest = *used.last().unwrap();
    for (at, len) in counter_copies(flash.as_bytes(), SECTOR) {
        flash.decay(at, len as u32);
    }

    let mut outbox = Ob::new();
    let mut dev = Device::boot(identity(), storage(&mut flash), &mut outbox).unwrap();
    assert!(dev.counter_lost());
    assert_eq!(report(&mut dev, 1), Err(SessionError::Counter(CounterError::Lost)));
    assert!(dev.queued().next().is_none(), "nothing sealed");
    let epoch = dev.epoch();
    dev.recover().unwrap();
    assert!(!dev.counter_lost());
    assert!(dev.needs_key_renewal());
    assert!(matches!(report(&mut dev, 2), Err(SessionError::NoSession)));
    // a reboot between recovery and re-keying changes nothing
    drop(dev);
    let mut outbox = Ob::new();
    let mut dev = Device::boot(identity(), storage(&mut flash), &mut outbox).unwrap();
    assert!(!dev.counter_lost() && dev.needs_key_renewal());
    let StageHandle::Registered(mut r) = dev.handle() else { panic!("still registered") };
    assert_eq!(r.renew_keys(&mut rng()).unwrap(), epoch + 1);
    assert!(!dev.needs_key_renewal());
    // the first message sealed opens the new epoch at the vendor
    let c = report(&mut dev, 3).unwrap();
    assert_eq!(c, (u64::from(epoch) + 1) * RECOVERY_ERA);
    assert!(c > highest);
    let sent = flush(&mut dev, &vendor);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, epoch + 1);
    assert!(matches!(sent[0].2, Ok(Event::Usage(_))), "{:?}", sent[0].2);
    for i in 0..20 {
        report(&mut dev, 200 + i).unwrap();
        for (c, e, o) in flush(&mut dev, &vendor) {
            assert_eq!(e, epoch + 1);
            assert!(matches!(o, Ok(Event::Usage(_))), "counter {c}: {o:?}");
        }
    }
    // and across a reboot
    drop(dev);
    let mut outbox = Ob::new();
    let mut dev = Device::boot(identity(), storage(&mut flash), &mut outbox).unwrap();
    assert!(!dev.counter_lost() && !dev.needs_key_renewal());
    report(&mut dev, 300).unwrap();
    assert!(matches!(flush(&mut dev, &vendor)[0].2, Ok(Event::Usage(_))));
}

/// A store whose counter record silently went back to an old value (damage
/// it cannot see): messages still queued show values at or above it were
/// used, so the device moves the counter past their block.
#[test]
fn counter_rollback_on_damaged_flash_queued_messages_raise_the_counter() {
    struct Stale<'a> {
        inner: NorStorage<&'a mut Flash>,
        counter: Option<Vec<u8>>,
    }
    impl Storage for Stale<'_> {
        fn read<'b>(&mut self, id: u16, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError> {
            match (&self.counter, id) {
                (Some(v), RECORD_COUNTER) => {
                    buf[..v.len()].copy_from_slice(v);
                    Ok(Some(&buf[..v.len()]))
                }
                _ => self.inner.read(id, buf),
            }
        }
        fn write(&mut self, id: u16, data: &[u8]) -> Result<(), StorageError> {
            if id == RECORD_COUNTER {
                self.counter = None;
            }
            self.inner.write(id, data)
        }
        fn remove(&mut self, id: u16) -> Result<(), StorageError> {
            self.inner.remove(id)
        }
    }
    let vendor = ingestor();
    let mut flash = Flash::new();
    let mut used = registered(&mut flash, &vendor, 3);
    let stale = {
        let mut s = storage(&mut flash);
        let mut b = [0u8; 8];
        s.read(RECORD_COUNTER, &mut b).unwrap().unwrap().to_vec()
    };
    // queue (do not send) reports into the next blocks
    let mut queued = Vec::new();
    {
        let mut outbox = Ob::new();
        let mut dev = Device::boot(identity(), storage(&mut flash), &mut outbox).unwrap();
        for i in 0..N as u64 {
            queued.push(report(&mut dev, i).unwrap());
        }
    }
    let top = *queued.iter().max().unwrap();
    assert!(top >= u64::from_be_bytes(stale.clone().try_into().unwrap()));
    let mut outbox = Ob::new();
    let st = Stale { inner: storage(&mut flash), counter: Some(stale) };
    let mut dev = Device::boot(identity(), st, &mut outbox).unwrap();
    // the queued reports go first (usage, oldest first), then the new one
    let c = report(&mut dev, 9).unwrap();
    assert!(c > top + COUNTER_BLOCK, "counter {c} moved past the queued block (top {top})");
    for (c, _, o) in flush(&mut dev, &vendor) {
        assert!(used.insert(c), "counter {c} handed out twice");
        assert!(matches!(o, Ok(Event::Usage(_))), "counter {c}: {o:?}");
    }
}
