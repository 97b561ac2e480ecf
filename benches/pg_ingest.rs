//! PgStore against RedbStore: the same batched ingest, on the same run.
//!
//! `cargo bench --features postgres --bench pg_ingest` — starts its own
//! PostgreSQL (as the tests do: tests/pg_support, or `SPIME_PG_URL`), then
//! for several interleaved rounds ingests the same 1024 Usage messages from
//! 128 registered devices, in groups of 256 (one `ingest_batch`, one commit
//! each), into a fresh RedbStore and a fresh PgStore database, and prints
//! each side's best round and `ratio pg_vs_redb <pg rate / redb rate>`.
//! Both commit durably (redb fsyncs; PostgreSQL runs with `fsync` and
//! `synchronous_commit` on, over loopback TCP). With `--test` (CI) it runs
//! one small round.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::time::{Duration, Instant};

use spime::consent::*;
use spime::message::*;
use spime::seal::VendorKeys;
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::DeviceId;

const DEVICES: usize = 128;
const PER_DEVICE: usize = 8;
const GROUP: usize = 256;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], [2; 32])
}

struct Fixture {
    registrations: Vec<Vec<u8>>,
    messages: Vec<Vec<u8>>,
}

fn fixture(devices: usize, per_device: usize) -> Fixture {
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let mut fleet: Vec<SimDevice> = (0..devices)
        .map(|i| {
            let id = core::array::from_fn(|j| if j < 8 { (i as u64).to_be_bytes()[j] } else { 0 });
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            SimDevice::new(DeviceId(id), seed, &vendor_keys()).unwrap()
        })
        .collect();
    let registrations = fleet
        .iter_mut()
        .map(|d| {
            let reg = Register {
                certificate: d.certificate().clone(),
                firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
                consent: consent(1, &grants, 0),
            };
            d.seal(&reg).unwrap()
        })
        .collect();
    let mut messages = Vec::new();
    for i in 0..per_device {
        for d in &mut fleet {
            let n = i as u64;
            messages.push(d.seal(&counter_usage(1, &[(0, n), (1, n), (2, n), (3, n)])).unwrap());
        }
    }
    Fixture { registrations, messages }
}

/// Registers the fleet (untimed), then times the ingest of every message.
fn run<S: Store>(store: S, fx: &Fixture, config: IngestConfig) -> Duration {
    let v = Ingestor::new(store, vendor_keys(), config);
    let regs: Vec<&[u8]> = fx.registrations.iter().map(Vec::as_slice).collect();
    for r in v.ingest_batch(&regs, 10) {
        r.unwrap();
    }
    let refs: Vec<&[u8]> = fx.messages.iter().map(Vec::as_slice).collect();
    let start = Instant::now();
    for group in refs.chunks(GROUP) {
        for r in v.ingest_batch(group, 10) {
            std::hint::black_box(r.unwrap());
        }
    }
    let t = start.elapsed();
    assert_eq!(v.store().message_count().unwrap(), (fx.registrations.len() + fx.messages.len()) as u64);
    t
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let Some(server) = pg_support::server() else { return };
    let (devices, per_device, rounds) = if quick { (16, 2, 1) } else { (DEVICES, PER_DEVICE, 7) };
    let fx = fixture(devices, per_device);
    let n = fx.messages.len();
    let dir = std::env::temp_dir().join(format!("spime-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("{n} Usage messages from {devices} devices, groups of {GROUP}, best of {rounds} interleaved rounds");
    println!("| store | workers | best time | messages/s |");
    println!("|---|---|---|---|");
    let mut ratios = Vec::new();
    for workers in [1usize, 2] {
        let config = IngestConfig { workers, batch_verify: true };
        let (mut redb, mut pg) = (Duration::MAX, Duration::MAX);
        for round in 0..rounds {
            let path = dir.join(format!("v{workers}-{round}.redb"));
            redb = redb.min(run(RedbStore::open(&path).unwrap(), &fx, config));
            let _ = std::fs::remove_file(&path);
            let cfg = pg_support::fresh_database(server);
            pg = pg.min(run(PgStore::with_config(cfg).unwrap(), &fx, config));
        }
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!("| redb | {workers} | {:.1} ms | {:.0} |", redb.as_secs_f64() * 1e3, rate(redb));
        println!("| postgres | {workers} | {:.1} ms | {:.0} |", pg.as_secs_f64() * 1e3, rate(pg));
        ratios.push((workers, rate(pg) / rate(redb)));
    }
    for (workers, r) in &ratios {
        println!("ratio pg_vs_redb {r:.2} (batched, {workers} worker thread{})", if *workers == 1 { "" } else { "s" });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
