//! Flash endurance on the documented default layout (docs/firmware.md,
//! "Endurance"): a registered device sends 10,000 usage reports, each
//! acked as the firmware does (report a metrics window, send, ack), on
//! 4 KiB sectors; the erases of every sector are counted. The busiest
//! sector must take at most 0.11 erases per report+ack (10 years at one
//! report an hour on 10,000-cycle flash). The run is deterministic, so
//! the budget is asserted.
//!
//! `cargo test --test device_endurance -- --nocapture` prints the figures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

mod device_common;

use std::cell::RefCell;

use device_common::*;
use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use rand_core::SeedableRng;
use spime::consent::{DataCategory, Purpose};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{
    DEFAULT_STORAGE_SECTORS, Device, StageHandle, storage_capacity, storage_records, storage_sectors,
};
use spime::device::storage::{NorStorage, SimFlash, SimFlashError};
use spime::message;
use spime::vendor::{IngestConfig, Ingestor, MemoryStore};

const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
const SECTOR: usize = 4096;
const SECTORS: u16 = DEFAULT_STORAGE_SECTORS;
type Flash = SimFlash<{ SECTORS as usize * SECTOR }, SECTOR>;
const REPORTS: u64 = 10_000;
const BUDGET: f64 = 0.11;
const T0: u64 = 1_767_300_000;
static BREW_SECONDS: [i64; 3] = [60, 180, 300];

/// Erases per sector and bytes programmed.
#[derive(Default, Clone)]
struct Stats {
    erases: Vec<u64>,
    programmed: u64,
}

/// A flash that counts erases per sector and bytes programmed.
struct Counting<'a> {
    inner: &'a mut Flash,
    stats: &'a RefCell<Stats>,
}

impl ErrorType for Counting<'_> {
    type Error = SimFlashError;
}

impl ReadNorFlash for Counting<'_> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        self.inner.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl NorFlash for Counting<'_> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        for s in from as usize / SECTOR..to as usize / SECTOR {
            self.stats.borrow_mut().erases[s] += 1;
        }
        self.inner.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        self.stats.borrow_mut().programmed += bytes.len() as u64;
        self.inner.write(offset, bytes)
    }
}

#[test]
fn busiest_sector_erases_per_report_and_ack_within_budget() {
    assert!(usize::from(SECTORS) >= storage_sectors(N, REC, SECTOR), "the default layout fits the device");
    let mut flash = Flash::new();
    let stats = RefCell::new(Stats { erases: vec![0; usize::from(SECTORS)], programmed: 0 });
    let counting = Counting { inner: &mut flash, stats: &stats };
    let records = u16::try_from(storage_records(N)).unwrap();
    let storage = NorStorage::new(counting, 0, SECTORS, records, storage_capacity(REC)).unwrap();
    let mut outbox: Outbox<N, REC> = Outbox::new();
    let mut dev = Device::boot(identity(), storage, &mut outbox).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let StageHandle::Unregistered(u) = dev.handle() else { panic!("fresh") };
    u.register(&mut rng, generous_consent(1, T0)).unwrap();
    // the vendor takes the Register and answers with a receipt, which
    // confirms the epoch: reports then leave the ephemeral key out (SPEC §3.1)
    let vendor = Ingestor::new(MemoryStore::new(), device_common::vendor(), IngestConfig::default());
    while let Some(e) = dev.next_message().unwrap() {
        vendor.ingest(e.envelope, T0).unwrap();
        let c = e.meta.counter;
        dev.ack(c).unwrap();
    }
    dev.open_receipt(&vendor.seal_receipt(&dev.device_id()).unwrap()).unwrap();
    assert!(dev.epoch_confirmed());
    let mut metrics: Metrics<4> = Metrics::new(T0);
    metrics.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter }).unwrap();
    metrics.define(MetricDef { id: 2, category: DataCategory::Environment, kind: MetricKind::Gauge }).unwrap();
    metrics
        .define(MetricDef { id: 3, category: DataCategory::UsageCounters, kind: MetricKind::Histogram(&BREW_SECONDS) })
        .unwrap();
    let before = stats.borrow().clone();
    let mut envelope_bytes = 0u64;
    for i in 0..REPORTS {
        // ten minutes apart: the consent needs no reconfirmation within the run
        let now = T0 + 600 * (i + 1);
        for brew in 0..3 {
            metrics.increment(1, 1).unwrap();
            metrics.observe(2, 95 + (i + brew) as i64 % 6).unwrap();
            metrics.observe(3, 40 + ((i * 7 + brew * 13) % 400) as i64).unwrap();
        }
        let StageHandle::Registered(mut r) = dev.handle() else { panic!("registered") };
        let counter = r.report_window(Purpose::USAGE_ANALYTICS, metrics.take_window(now), now).unwrap().unwrap();
        let e = dev.next_message().unwrap().unwrap();
        assert_eq!(e.meta.counter, counter);
        envelope_bytes += e.envelope.len() as u64;
        assert!(dev.ack(counter).unwrap());
    }
    let after = stats.borrow().clone();
    let per_sector: Vec<u64> = after.erases.iter().zip(&before.erases).map(|(a, b)| a - b).collect();
    let busiest = *per_sector.iter().max().unwrap();
    let least = *per_sector.iter().min().unwrap();
    let per_report = busiest as f64 / REPORTS as f64;
    let years = 10_000.0 / per_report / (24.0 * 365.0);
    println!(
        "ENDURANCE {SECTORS} sectors of {SECTOR} B, {REPORTS} reports+acks (usage envelope {} B on average): \
         erases per sector {per_sector:?}; busiest {busiest} = {per_report:.4} per report+ack; \
         {:.0} B programmed per report+ack; 10,000-cycle flash at one report an hour: {years:.0} years",
        envelope_bytes / REPORTS,
        (after.programmed - before.programmed) as f64 / REPORTS as f64,
    );
    assert!(per_report <= BUDGET, "busiest sector takes {per_report:.4} erases per report+ack, budget {BUDGET}");
    // wear is spread: every sector within one turn of the ring of the busiest
    assert!(busiest - least <= 1, "uneven wear: {per_sector:?}");
}
