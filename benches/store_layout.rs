//! What fjall's group commit costs a message, by key layout and fleet size
//! (issue 14): the store's share of `durable_100k_vs_100`, measured apart
//! from the pipeline, and what a layout with sequential keys would save.
//!
//! ```sh
//! cargo bench --features fjall --bench store_layout
//! SPIME_BENCH_FLEET=10000 cargo bench --features fjall --bench store_layout
//! ```
//!
//! Each commit is one fjall batch of 256 messages, synced
//! (`PersistMode::SyncAll`), in key order, as `FjallStore`'s commit writes
//! it. The values are a real stored Usage report's encoding (one ingested
//! by the pipeline in memory, re-encoded as `FjallStore` stores it). Each
//! message comes from the next device of a shuffled pass over its fleet:
//! 100 devices, or `N` (`SPIME_BENCH_FLEET`, default 100,000, at least
//! 128). Three setups, each on both fleets:
//! - `beside`: `FjallStore`'s layout and memtable
//!   (`FjallStore::MESSAGES_MEMTABLE`). Per commit, each device's replay
//!   window (24 bytes) under the device id, once however many of the
//!   batch's messages are its own, and each message under device ‖
//!   counter, in one keyspace.
//! - `beside_64mib`: the same in fjall's default memtable, 64 MiB.
//! - `sequential`: the message under commit number ‖ position in the
//!   batch, and no window, in the store's memtable. The bound of a layout
//!   that keeps the windows elsewhere (in memory, checkpointed) and writes
//!   the log in commit order: not a store, it cannot find a device's
//!   messages.
//!
//! Prints one comment line per setup and fleet with the microseconds a
//! message costs in each round, and `ratio <setup>_<N>_vs_100` (`N` as
//! `100k` for 100,000): the median over the rounds of the rate at `N` over
//! the rate at 100. The six databases take turns round by round. The
//! pipeline's reads and its verification between commits evict what this
//! loop keeps in the processor's caches, so in the pipeline the same
//! inserts cost more: this is a lower bound of the store's share.
//! `-- --test` (CI) runs one small round and checks that each database
//! holds what its setup wrote.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::std_instead_of_core,
    missing_docs
)]

use std::time::Instant;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use spime::seal::VendorKeys;
use spime::vendor::sim::{SimDevice, counter_usage, usage_register};
use spime::vendor::{FjallStore, IngestConfig, Ingestor, MemoryStore, MessageQuery, Store};
use spime::wire::DeviceId;

/// Messages per commit, as the pipeline's `ingest_batch` groups them.
const GROUP: usize = 256;

/// One stored Usage report as `FjallStore` encodes it: registered and
/// ingested by the pipeline into a `MemoryStore`, read back, re-encoded.
fn stored_usage() -> Vec<u8> {
    let vk = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
    let mut d = SimDevice::new(DeviceId([7; 8]), [7; 32], &vk).unwrap();
    let reg = d.seal(&usage_register(&d)).unwrap();
    let usage = d.seal(&counter_usage(1, &[(0, 1), (1, 1), (2, 1), (3, 1)])).unwrap();
    let v = Ingestor::new(MemoryStore::new(), vk, IngestConfig::default());
    for r in v.ingest_batch(&[reg.as_slice(), usage.as_slice()], 10) {
        r.unwrap();
    }
    let stored = v.store().messages(&DeviceId([7; 8]), &MessageQuery::default()).unwrap();
    postcard::to_allocvec(stored.last().unwrap()).unwrap()
}

/// A deterministic shuffle (xorshift).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Beside,
    Sequential,
}

/// One database, one layout, one fleet, and where its writer is.
struct Run {
    name: &'static str,
    layout: Layout,
    devices: usize,
    db: Database,
    space: Keyspace,
    counters: Vec<u64>,
    order: Vec<usize>,
    passes: u64,
    commits: u64,
    micros: Vec<f64>,
}

impl Run {
    fn new(dir: &std::path::Path, name: &'static str, layout: Layout, memtable: u64, devices: usize) -> Run {
        let db = Database::builder(dir).open().unwrap();
        let space = db.keyspace("messages", || KeyspaceCreateOptions::default().max_memtable_size(memtable)).unwrap();
        Run {
            name,
            layout,
            devices,
            db,
            space,
            counters: vec![0; devices],
            order: Vec::new(),
            passes: 0,
            commits: 0,
            micros: Vec::new(),
        }
    }

    /// The next device of the current shuffled pass over the fleet.
    fn next_device(&mut self) -> usize {
        if self.order.is_empty() {
            self.passes += 1;
            self.order = (0..self.devices).collect();
            shuffle(&mut self.order, 0x9e37_79b9_7f4a_7c15 ^ self.passes);
        }
        self.order.pop().unwrap()
    }

    /// `messages` messages in commits of [`GROUP`]; records µs per message.
    fn round(&mut self, messages: usize, value: &[u8]) {
        let t = Instant::now();
        for _ in 0..messages / GROUP {
            let mut entries: Vec<(Vec<u8>, &[u8])> = Vec::with_capacity(2 * GROUP);
            for i in 0..GROUP {
                let d = self.next_device();
                let counter = self.counters[d];
                self.counters[d] += 1;
                // Device ids spread over the key space, as the fleet's are.
                let id = (d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
                match self.layout {
                    Layout::Beside => {
                        entries.push((id.to_vec(), &[1; 24]));
                        entries.push(([id, counter.to_be_bytes()].concat(), value));
                    }
                    Layout::Sequential => {
                        let key = [&self.commits.to_be_bytes()[..], &(i as u32).to_be_bytes()].concat();
                        entries.push((key, value));
                    }
                }
            }
            // As FjallStore's commit: a window per device, in key order,
            // one synced batch. (A device's message keys differ, its
            // window keys are the same, with the same value.)
            entries.sort_unstable();
            entries.dedup_by(|a, b| a.0 == b.0);
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
            for (k, v) in entries {
                batch.insert(&self.space, k, v);
            }
            batch.commit().unwrap();
            self.commits += 1;
        }
        self.micros.push(t.elapsed().as_secs_f64() * 1e6 / (messages / GROUP * GROUP) as f64);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let test = std::env::args().any(|a| a == "--test");
    let (fleet, rounds, per_round) = if test {
        (1_000, 1, 4 * GROUP)
    } else {
        let fleet: usize =
            std::env::var("SPIME_BENCH_FLEET").map_or(100_000, |s| s.parse().expect("SPIME_BENCH_FLEET: a number"));
        assert!(fleet >= GROUP / 2, "SPIME_BENCH_FLEET: at least {} devices (a round is two reports each)", GROUP / 2);
        (fleet, 3, 2 * fleet)
    };
    let value = stored_usage();
    println!("load_start {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!("# {} bytes a stored message, {rounds} rounds of {per_round} messages", value.len());
    let root = std::env::temp_dir().join(format!("spime-bench-layout-{}", std::process::id()));
    let store = FjallStore::MESSAGES_MEMTABLE;
    let setups = [
        ("beside", Layout::Beside, store),
        ("beside_64mib", Layout::Beside, 64 << 20),
        ("sequential", Layout::Sequential, store),
    ];
    let mut runs: Vec<Run> = setups
        .into_iter()
        .flat_map(|(name, layout, memtable)| [100, fleet].map(|devices| (name, layout, memtable, devices)))
        .enumerate()
        .map(|(i, (name, layout, memtable, devices))| {
            Run::new(&root.join(i.to_string()), name, layout, memtable, devices)
        })
        .collect();
    for _ in 0..rounds {
        for run in &mut runs {
            run.round(per_round, &value);
        }
    }
    for run in &runs {
        println!("# {}, {} devices: µs a message per round {:.2?}", run.name, run.devices, run.micros);
    }
    let label = if fleet % 1000 == 0 { format!("{}k", fleet / 1000) } else { fleet.to_string() };
    for pair in runs.chunks(2) {
        let (small, big) = (&pair[0], &pair[1]);
        let r: Vec<f64> = small.micros.iter().zip(&big.micros).map(|(s, b)| s / b).collect();
        println!("ratio {}_{label}_vs_100 {:.3}", small.name, median(r));
    }
    if test {
        // Every message, and with `beside` one window per device (all of
        // the 100 devices' in the first commit).
        let written = rounds * per_round;
        for run in &runs {
            let windows = if run.layout == Layout::Beside { written.min(run.devices) } else { 0 };
            assert_eq!(run.space.len().unwrap(), written + windows, "{} on {} devices", run.name, run.devices);
        }
    }
    println!("load_end {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    drop(runs);
    std::fs::remove_dir_all(&root).unwrap();
}
