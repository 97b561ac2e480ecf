//! Ingest throughput, each configuration as a ratio to raw `verify_strict`
//! of the same number of signatures measured in the same run.
//!
//! `cargo bench --bench ingest` — prints criterion's numbers, then a
//! markdown table of rates and ratios (docs/benchmarks.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]
#![allow(missing_docs, clippy::type_complexity, clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use spime::consent::*;
use spime::message::*;
use spime::seal::{self, Envelope, SessionKeys, VendorKeys};
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::DeviceId;

const DEVICES: usize = 128;
const PER_DEVICE: usize = 8;
const N: usize = DEVICES * PER_DEVICE;
/// Messages per `ingest_batch` call: one store commit each.
const GROUP: usize = 256;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], [2; 32])
}

struct Fixture {
    registrations: Vec<Vec<u8>>,
    messages: Vec<Vec<u8>>,
    sessions: Vec<(SessionKeys, ed25519_dalek::VerifyingKey)>,
}

fn fixture() -> Fixture {
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let mut fleet: Vec<SimDevice> = (0..DEVICES)
        .map(|i| {
            let id = (i as u64).to_be_bytes();
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
    let mut messages = Vec::with_capacity(N);
    let mut sessions = Vec::with_capacity(N);
    for i in 0..PER_DEVICE {
        for d in &mut fleet {
            let n = i as u64;
            let u = counter_usage(1, &[(0, n), (1, n), (2, n), (3, n)]);
            messages.push(d.seal(&u).unwrap());
            sessions.push((d.session().unwrap().clone(), d.key().public()));
        }
    }
    Fixture { registrations, messages, sessions }
}

fn ingestor<S: Store>(store: S, fx: &Fixture, config: IngestConfig) -> Ingestor<S> {
    let v = Ingestor::new(store, vendor_keys(), config);
    let refs: Vec<&[u8]> = fx.registrations.iter().map(Vec::as_slice).collect();
    for r in v.ingest_batch(&refs, 10) {
        r.unwrap();
    }
    v
}

fn ingest_all<S: Store>(v: &Ingestor<S>, fx: &Fixture) {
    let refs: Vec<&[u8]> = fx.messages.iter().map(Vec::as_slice).collect();
    for group in refs.chunks(GROUP) {
        for r in v.ingest_batch(group, 10) {
            black_box(r.unwrap());
        }
    }
}

struct TempStore {
    dir: PathBuf,
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redb_ingestor(fx: &Fixture, config: IngestConfig, n: &mut u64) -> (TempStore, Ingestor<RedbStore>) {
    *n += 1;
    let dir = std::env::temp_dir().join(format!("spime-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = RedbStore::open(dir.join("v.redb")).unwrap();
    let v = ingestor(store, fx, config);
    (TempStore { dir }, v)
}

const IDS: [&str; 10] = [
    "raw_verify_strict",
    "open",
    "memory_strict_1core",
    "memory_batch_1core",
    "memory_strict_2cores",
    "memory_batch_2cores",
    "redb_strict_1core",
    "redb_batch_1core",
    "redb_strict_2cores",
    "redb_batch_2cores",
];

const RAW_MID: &str = "raw_verify_strict_again";
const RAW_END: &str = "raw_verify_strict_last";

fn benches(c: &mut Criterion) {
    let fx = fixture();
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(N as u64));

    // Baseline: verify_strict of the same N signatures over the same bytes.
    let proofs: Vec<(ed25519_dalek::VerifyingKey, Vec<u8>, Vec<u8>, [u8; 64])> = fx
        .messages
        .iter()
        .zip(&fx.sessions)
        .map(|(m, (s, k))| {
            let env = Envelope::parse(m).unwrap();
            let mut buf = vec![0u8; env.plaintext_len()];
            let v = env.decrypt(s, &mut buf).unwrap().verify(k).unwrap();
            (*k, v.header_bytes().to_vec(), v.body_bytes().to_vec(), *v.signature())
        })
        .collect();
    let raw = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            for (k, h, body, sig) in &proofs {
                seal::verify_signature(k, h, body, sig).unwrap();
            }
        })
    };
    g.bench_function(IDS[0], raw);
    g.bench_function(IDS[1], |b| {
        let mut buf = vec![0u8; MAX_SEALED_LEN];
        b.iter(|| {
            for (m, (s, k)) in fx.messages.iter().zip(&fx.sessions) {
                let env = Envelope::parse(m).unwrap();
                let v = env.decrypt(s, &mut buf).unwrap().verify(k).unwrap();
                black_box(v.decode::<Usage>().unwrap());
            }
        })
    });
    let configs = [(IDS[2], 1, false), (IDS[3], 1, true), (IDS[4], 2, false), (IDS[5], 2, true)];
    for (id, workers, batch) in configs {
        let config = IngestConfig { workers, batch_verify: batch };
        g.bench_function(id, |b| {
            b.iter_batched(
                || ingestor(MemoryStore::new(), &fx, config),
                |v| {
                    ingest_all(&v, &fx);
                    v
                },
                BatchSize::PerIteration,
            )
        });
    }
    // The machine is shared: measure the baseline again mid-run and at the end.
    g.bench_function(RAW_MID, raw);
    let mut n = 0u64;
    for (id, workers, batch) in [(IDS[6], 1, false), (IDS[7], 1, true), (IDS[8], 2, false), (IDS[9], 2, true)] {
        let config = IngestConfig { workers, batch_verify: batch };
        g.bench_function(id, |b| {
            b.iter_batched(
                || redb_ingestor(&fx, config, &mut n),
                |(t, v)| {
                    ingest_all(&v, &fx);
                    (t, v)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function(RAW_END, raw);
    g.finish();
}

/// Reads criterion's mean estimate (ns per iteration) for one benchmark.
fn mean_ns(id: &str) -> Option<f64> {
    let base = std::env::var_os("CRITERION_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from).join("criterion")
    });
    let text = std::fs::read_to_string(base.join("ingest").join(id).join("new").join("estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    let raws: Vec<f64> = [IDS[0], RAW_MID, RAW_END].iter().filter_map(|id| mean_ns(id)).collect();
    if raws.is_empty() {
        return;
    }
    let raw = raws.iter().sum::<f64>() / raws.len() as f64;
    println!("\n{N} Usage messages from {DEVICES} devices; ingest groups of {GROUP} (one commit each).");
    let each: Vec<String> = raws.iter().map(|ns| format!("{:.2} ms", ns / 1e6)).collect();
    println!(
        "Baseline: raw verify_strict measured three times in this run ({}); ratios use their mean.\n",
        each.join(", ")
    );
    println!("| configuration | time for {N} | messages/s | × raw verify_strict rate |");
    println!("|---|---:|---:|---:|");
    for id in IDS {
        if let Some(ns) = mean_ns(id) {
            let rate = N as f64 / (ns / 1e9);
            println!("| {id} | {:.2} ms | {rate:.0} | {:.2} |", ns / 1e6, raw / ns);
        }
    }
    let pair = |a: &str, b: &str| Some(mean_ns(b)? / mean_ns(a)?);
    for (p, m) in [(IDS[7], IDS[3]), (IDS[9], IDS[5])] {
        if let Some(r) = pair(p, m) {
            println!("\npersistent / in-memory ({p} vs {m}): {r:.2}");
        }
    }
}
