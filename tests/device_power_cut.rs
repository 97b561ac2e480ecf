//! Power cuts at every storage operation: thousands of simulated reboots
//! of a device that registers, reports, changes consent, acks and
//! transfers, with the flash torn at the n-th erase or program of each
//! run. Every envelope that ever reached the outbox is logged (from the
//! storage writes themselves, torn or not): no (key, nonce) pair may ever
//! carry two different messages, no key epoch may be agreed twice, every
//! envelope must open with its epoch's keys, and
//! every reboot must find a consistent device. Every 401st boot, every
//! copy of the counter has decayed while the power was off: the device
//! recovers (SPEC.md §8.1) and the same checks hold across recoveries.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod device_common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use device_common::*;
use rand_core::SeedableRng;
use spime::consent::{DataCategory, Purpose};
use spime::device::fault::{FaultEvent, FaultRecorder};
use spime::device::outbox::{OUTBOX_HEADER_LEN, Outbox, OutboxError, record_len};
use spime::device::session::{Device, SessionError, StageHandle, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, RECORD_OUTBOX, SimFlash, Storage, StorageError};
use spime::message::{self, Metric, MetricValue, RebootReason, Severity};
use spime::wire::Header;

const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
type Flash = SimFlash<{ SECTORS as usize * 4096 }, 4096>;
const SECTORS: u16 = 6;

/// Every envelope written to an outbox record: (epoch, counter, ephemeral, bytes).
type Log = RefCell<Vec<(u32, u64, Option<[u8; 32]>, Vec<u8>)>>;

/// A storage that logs the envelopes the outbox writes, then passes the write on.
struct Logging<'a> {
    inner: NorStorage<&'a mut Flash>,
    log: &'a Log,
}

impl Storage for Logging<'_> {
    fn read<'b>(&mut self, id: u16, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError> {
        self.inner.read(id, buf)
    }
    fn write(&mut self, id: u16, data: &[u8]) -> Result<(), StorageError> {
        if id >= RECORD_OUTBOX && data.len() > OUTBOX_HEADER_LEN && data[24] == 1 {
            let env = &data[OUTBOX_HEADER_LEN..];
            let (h, _) = Header::parse(env).unwrap();
            self.log.borrow_mut().push((h.epoch, h.counter, h.ephemeral, env.to_vec()));
        }
        self.inner.write(id, data)
    }
    fn remove(&mut self, id: u16) -> Result<(), StorageError> {
        self.inner.remove(id)
    }
    fn lost(&mut self, id: u16) -> Result<u8, StorageError> {
        self.inner.lost(id)
    }
}

const T0: u64 = 1_767_300_000;
const REBOOTS: u64 = 10_000;
const DAMAGE_EVERY: u64 = 401;

#[test]
fn power_cut_at_every_operation_never_reuses_a_nonce() {
    let mut flash = Flash::new();
    let log: Log = RefCell::new(Vec::new());
    let mut completed_steps = 0u64;
    let mut registrations = 0u64;
    let mut recoveries = 0u64;
    let mut cut_boots = 0u64;
    let mut outbox: Outbox<N, REC> = Outbox::new();
    for boot in 0..REBOOTS {
        flash.power_on();
        // now and then every copy of the counter decays while the power is off:
        // the device must recover (a new epoch, the counter past any value used)
        if boot % DAMAGE_EVERY == DAMAGE_EVERY - 1 {
            for (at, len) in counter_copies(flash.as_bytes(), 4096) {
                flash.decay(at, u32::try_from(len).unwrap());
            }
        }
        // cut at every position of the next run's erase/program sequence in turn
        flash.cut_after(u32::try_from(boot % 101).unwrap());
        // starting may write (finishing a garbage collection, skipping counter
        // values): a cut there is one more power cut, and the next boot goes on
        let records = u16::try_from(storage_records(N)).unwrap();
        let storage = match NorStorage::new(&mut flash, 0, SECTORS, records, storage_capacity(REC)) {
            Ok(s) => s,
            Err(e) => {
                assert!(flash.is_cut(), "boot {boot}: storage failed without a power cut: {e}");
                cut_boots += 1;
                continue;
            }
        };
        let mut dev: Device<Logging<'_>, N, REC> =
            match Device::boot(identity(), Logging { inner: storage, log: &log }, &mut outbox) {
                Ok(d) => d,
                Err(e) => {
                    assert!(flash.is_cut(), "boot {boot}: failed without a power cut: {e}");
                    cut_boots += 1;
                    continue;
                }
            };
        assert!(dev.queued().count() <= N);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(boot);
        let now = T0 + boot * 60;
        let mut failure = None;
        // a lost counter (a cut tore its only copy) recovers with a new epoch
        if dev.counter_lost() {
            recoveries += 1;
            failure = dev.recover().err();
        }
        if failure.is_none() && dev.needs_key_renewal() {
            // the link sends what was sealed under the old epoch, then a new one opens
            while let Some(c) = dev.next_message().unwrap().map(|e| e.meta.counter) {
                if let Err(e) = dev.ack(c) {
                    failure = Some(e);
                    break;
                }
            }
            if failure.is_none()
                && let StageHandle::Registered(mut r) = dev.handle()
            {
                failure = r.renew_keys(&mut rng).err();
            }
        }
        for step in 0..8u64 {
            if failure.is_some() {
                break;
            }
            let held = dev.consent().map_or(0, |c| c.state.version);
            let result = match dev.handle() {
                StageHandle::Unregistered(mut u) => {
                    // the link drains the outbox (failed registrations may have queued Registers)
                    let d = u.device();
                    let front = d.next_message().unwrap().map(|e| e.meta.counter);
                    match (d.queued().count() == N, front) {
                        (true, Some(c)) => d.ack(c).map(|_| ()),
                        _ => {
                            registrations += 1;
                            u.register(&mut rng, generous_consent(held + 1, now)).map(|_| ())
                        }
                    }
                }
                StageHandle::Registered(mut r) => match (boot + step) % 7 {
                    0 | 1 => match r.permit(Purpose::USAGE_ANALYTICS, now) {
                        Ok(p) => {
                            let m = Metric {
                                id: 1,
                                category: DataCategory::UsageCounters,
                                value: MetricValue::Counter(boot),
                            };
                            let u = p.usage(now - 60, now, [m]).unwrap();
                            r.report_usage(u, now).map(|_| ())
                        }
                        Err(_) => Ok(()),
                    },
                    2 => {
                        let mut f: FaultRecorder<1> = FaultRecorder::new(FIRMWARE);
                        let e = FaultEvent {
                            code: u32::try_from(step).unwrap(),
                            severity: Severity::Warning,
                            component: 1,
                            uptime_s: 5,
                            reboot_reason: RebootReason::Brownout,
                        };
                        f.record(now, e, b"ctx");
                        r.report_faults(&mut f, Purpose::DIAGNOSTICS, now).map(|_| ())
                    }
                    3 => {
                        let mut c = generous_consent(held + 1, now);
                        if boot % 2 == 0 {
                            c.state.withdraw(Purpose::USAGE_ANALYTICS).unwrap();
                        }
                        r.change_consent(c, now).map(|_| ())
                    }
                    4 if boot % 50 == 49 => r.transfer(now).map(|_| ()),
                    _ => {
                        let d = r.device();
                        match d.next_message().unwrap().map(|e| e.meta.counter) {
                            Some(c) => d.ack(c).map(|_| ()),
                            None => Ok(()),
                        }
                    }
                },
                StageHandle::Decommissioned(_) => unreachable!("never decommissioned here"),
            };
            match result {
                Ok(()) => completed_steps += 1,
                Err(SessionError::Outbox(OutboxError::Full(_))) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let storage = dev.into_storage();
        if let Some(e) = failure {
            assert!(storage.inner.flash().is_cut(), "boot {boot}: failed without a power cut: {e}");
        }
    }
    let log = log.into_inner();
    assert!(log.len() > 1_000, "only {} envelopes written", log.len());
    assert!(completed_steps > 1_000 && registrations > 10);
    assert!(recoveries >= REBOOTS / DAMAGE_EVERY, "only {recoveries} recoveries");
    // one message per counter value (the counter is one sequence for the device's life)
    let mut by_counter: BTreeMap<u64, &Vec<u8>> = BTreeMap::new();
    for (_, counter, _, env) in &log {
        if let Some(prev) = by_counter.insert(*counter, env) {
            assert_eq!(prev, env, "counter {counter} sealed two different messages: nonce reuse");
        }
    }
    // one key agreement per epoch
    let mut eph_by_epoch: BTreeMap<u32, BTreeSet<[u8; 32]>> = BTreeMap::new();
    for (epoch, _, eph, _) in &log {
        if let Some(e) = eph {
            eph_by_epoch.entry(*epoch).or_default().insert(*e);
        }
    }
    assert!(eph_by_epoch.values().all(|s| s.len() == 1), "an epoch was agreed twice");
    // every envelope opens with the keys of its epoch (agreed from the key it
    // carries, or from the epoch's opener): keys and epoch numbers never part
    let vendor_keys = vendor();
    let mut agreed: BTreeMap<(u32, [u8; 32]), spime::seal::SessionKeys> = BTreeMap::new();
    let mut buf = vec![0u8; message::MAX_SEALED_LEN];
    for (counter, env) in &by_counter {
        let e = spime::seal::Envelope::parse(env).unwrap();
        let h = e.header;
        let eph = h.ephemeral.expect("no epoch is confirmed here: every message offers its key");
        let keys =
            agreed.entry((h.epoch, eph)).or_insert_with(|| vendor_keys.accept_epoch(&h.device, h.epoch, &eph).unwrap());
        assert!(e.decrypt(keys, &mut buf).is_ok(), "counter {counter}: sealed with other keys than its epoch's");
    }
    // (key, nonce) = (epoch, counter) pairs are unique per distinct message
    let distinct: BTreeSet<(u32, u64)> = log.iter().map(|(e, c, _, _)| (*e, *c)).collect();
    assert_eq!(distinct.len(), by_counter.len());
    println!(
        "{REBOOTS} reboots: {} envelopes, {} distinct counters, {} epochs, {registrations} registrations, {recoveries} counter recoveries, {cut_boots} boots cut",
        log.len(),
        by_counter.len(),
        eph_by_epoch.len()
    );
}
