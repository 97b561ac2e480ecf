//! Fleet-shaped ingest against the Ed25519 verification limit (issue 14).
//!
//! ```sh
//! cargo bench --features fjall --bench fleet     # the documented figures (100,000 devices)
//! SPIME_BENCH_FLEET=10000 cargo bench --features fjall --bench fleet   # a quicker run
//! SPIME_BENCH_ONLY=memory,durable cargo bench --features fjall --bench fleet   # the stores
//! ```
//!
//! Prints, besides the detail of every timed pass, one line per figure:
//! `ratio <name> <value>`, and the load average (`/proc/loadavg`) at the
//! start and at the end. The ratios print with three decimals, so a figure
//! at a target's line says on which side of it it is. Every ratio is taken
//! within this run: each timed pass of the pipeline is paired with a pass
//! of raw `verify_strict` (ed25519-dalek, keys already decompressed, over
//! the exact signed bytes) timed right before and right after it (their
//! mean), and the figure is the median over the rounds of (pipeline rate /
//! raw rate). The exceptions are `durable_100k_vs_100` and
//! `memory_100k_vs_100`: their two workloads run side by side, taking turns
//! group by group, and the figure is the median over the rounds of (rate at
//! `N` / rate at 100); `_normalised` prints it the other way. Messages are
//! generated once and reused; each round ingests reports with counters the
//! vendor has not seen yet.
//!
//! Workloads (`N` = `SPIME_BENCH_FLEET`, default 100,000):
//! - `fleet_memory_vs_verify`: `N` registered devices, one Usage report
//!   each, in random order, `ingest_batch` of 256, one worker, `MemoryStore`.
//! - `one_device_memory_vs_verify`: one device, `N` Usage reports in order.
//! - `fleet_durable_vs_memory`: the fleet workload on `FjallStore` (an LSM
//!   tree in the temp dir, fsync per batch) over the same workload in
//!   memory. `fleet_durable_vs_memory_fjall` is the same figure, and
//!   `fleet_durable_vs_memory_redb` the same on `RedbStore` (a redb file):
//!   the documented names are fjall's because it is the store that stays
//!   closer to flat (docs/benchmarks.md); redb's figures stay as `_redb` lines.
//! - `durable_100k_vs_100`: the durable store's rate with `N` devices (one
//!   report each) over its rate with 100 devices (reports round-robin in
//!   random order within each round, same message count per pass); also as
//!   `durable_100k_vs_100_fjall` and `durable_100k_vs_100_redb`.
//! - `open_vs_verify_21` / `open_vs_verify_188`: `Envelope::parse`, decrypt,
//!   verify, decode of Usage bodies of 21 and 188 bytes, interleaved with raw
//!   `verify_strict` of the same messages. A comment line before each gives
//!   parse and decryption alone as a share of raw verification, and one at the
//!   start says which ChaCha20 and Poly1305 code the build runs
//!   (`.cargo/config.toml` picks the portable code; docs/benchmarks.md).
//! - `memory_100k_vs_100`: the in-memory pipeline with `N` devices over 100
//!   devices (the workloads of `durable_100k_vs_100`): what grows with the
//!   fleet before any store; `durable_100k_vs_100_over_memory` divides it
//!   out of fjall's figure, leaving the store's own growth.
//! - `two_workers_vs_one`: the fleet workload in memory on two threads,
//!   each calling `ingest_batch` with whole groups (every other group) on
//!   one `Ingestor`, over one thread (meaningful only when both cores are
//!   free: check the load average). `two_split_workers_vs_one`: one thread
//!   with `IngestConfig::workers = 2`, which splits each group. Printed
//!   after them, as comments: raw `verify_strict` on two threads over one,
//!   the ceiling this machine allows at that moment, and the ceiling of a
//!   split group (two batch equations of 128 on two threads over one of
//!   256). `two_workers_vs_one_fjall`: the same two threads over one on
//!   `FjallStore`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use ed25519_dalek::{Signature, VerifyingKey};
use spime::consent::*;
use spime::message::*;
use spime::seal::{Envelope, MESSAGE_DST, SessionKeys, VendorKeys};
use spime::vendor::sim::{SimDevice, counter_usage, usage_register};
use spime::vendor::*;
use spime::wire::DeviceId;

/// Messages per `ingest_batch` call (one store commit each).
const GROUP: usize = 256;
/// Timed rounds per workload.
const ROUNDS: usize = 3;
/// Devices of the small durable fleet.
const SMALL_FLEET: usize = 100;
/// Signatures per raw `verify_strict` pass.
const RAW_SAMPLE: usize = 4096;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// A deterministic shuffle (xorshift), so every run ingests the same order.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// One raw signature check: key, DST ‖ header ‖ body, signature.
struct Raw {
    key: VerifyingKey,
    msg: Vec<u8>,
    sig: Signature,
}

fn raw_of(message: &[u8], session: &SessionKeys, key: &VerifyingKey) -> Raw {
    let env = Envelope::parse(message).unwrap();
    let mut buf = vec![0u8; env.plaintext_len()];
    let pt = env.decrypt(session, &mut buf).unwrap();
    let msg = [MESSAGE_DST, pt.header_bytes(), pt.body_bytes()].concat();
    let raw = Raw { key: *key, msg, sig: Signature::from_bytes(pt.signature()) };
    raw.key.verify_strict(&raw.msg, &raw.sig).unwrap();
    raw
}

/// Raw `verify_strict` rate (signatures per second) over the sample.
fn raw_rate(sample: &[Raw]) -> f64 {
    let t = Instant::now();
    for r in sample {
        black_box(r.key.verify_strict(black_box(&r.msg), &r.sig)).unwrap();
    }
    sample.len() as f64 / t.elapsed().as_secs_f64()
}

/// A fleet: registrations, then `rounds` rounds of reports (round `r` holds
/// one report per device, counter `r + 1`, devices in random order).
struct Fleet {
    registrations: Vec<Vec<u8>>,
    rounds: Vec<Vec<Vec<u8>>>,
    raw: Vec<Raw>,
}

fn device(i: usize, seed_tag: u8) -> SimDevice {
    let mut id = [seed_tag; 8];
    id[..4].copy_from_slice(&(i as u32).to_be_bytes());
    let mut seed = [seed_tag; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SimDevice::new(DeviceId(id), seed, &vendor_keys()).unwrap()
}

fn register(d: &mut SimDevice) -> Vec<u8> {
    d.seal(&usage_register(d)).unwrap()
}

fn report(n: u64) -> Usage {
    counter_usage(1, &[(0, n), (1, n), (2, n), (3, n)])
}

/// `devices` devices, each with `per_round × rounds` reports; a round is
/// `per_round` passes over the devices, each pass in a fresh random order.
fn fleet(devices: usize, per_round: usize, rounds: usize, tag: u8) -> Fleet {
    let mut fleet: Vec<SimDevice> = (0..devices).map(|i| device(i, tag)).collect();
    let registrations = fleet.iter_mut().map(register).collect();
    let mut out = Vec::with_capacity(rounds);
    let mut raw = Vec::new();
    for r in 0..rounds {
        let mut round = Vec::with_capacity(devices * per_round);
        for p in 0..per_round {
            let mut order: Vec<usize> = (0..devices).collect();
            shuffle(&mut order, 0x9e37_79b9_7f4a_7c15 ^ ((r * per_round + p) as u64 + 1));
            for i in order {
                let d = &mut fleet[i];
                let m = d.seal(&report(d.counter)).unwrap();
                if raw.len() < RAW_SAMPLE {
                    raw.push(raw_of(&m, d.session().unwrap(), &d.key().public()));
                }
                round.push(m);
            }
        }
        out.push(round);
    }
    Fleet { registrations, rounds: out, raw }
}

fn ingestor<S: Store>(store: S, fx: &Fleet, workers: usize) -> Ingestor<S> {
    let v = Ingestor::new(store, vendor_keys(), IngestConfig { workers, batch_verify: true });
    let refs: Vec<&[u8]> = fx.registrations.iter().map(Vec::as_slice).collect();
    for group in refs.chunks(GROUP) {
        for r in v.ingest_batch(group, 10) {
            r.unwrap();
        }
    }
    v
}

/// Ingests one round in groups of 256; messages per second.
/// The round in groups of `GROUP`, on `threads` threads that each ingest
/// every `threads`-th group through the same `Ingestor`.
fn ingest_rate<S: Store>(v: &Ingestor<S>, round: &[Vec<u8>], threads: usize) -> f64 {
    let refs: Vec<&[u8]> = round.iter().map(Vec::as_slice).collect();
    let groups: Vec<&[&[u8]]> = refs.chunks(GROUP).collect();
    let ingest = |k: usize| {
        for group in groups.iter().skip(k).step_by(threads) {
            for r in v.ingest_batch(group, 10) {
                black_box(r.unwrap());
            }
        }
    };
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 1..threads {
            s.spawn(move || ingest(k));
        }
        ingest(0);
    });
    round.len() as f64 / t.elapsed().as_secs_f64()
}

/// Pairs each round of the pipeline with raw passes just before and after it.
/// Returns (pipeline rates, raw rates).
fn timed<S: Store>(v: &Ingestor<S>, fx: &Fleet) -> (Vec<f64>, Vec<f64>) {
    timed_on(v, fx, 1)
}

/// [`timed`], the rounds ingested on `threads` threads.
fn timed_on<S: Store>(v: &Ingestor<S>, fx: &Fleet, threads: usize) -> (Vec<f64>, Vec<f64>) {
    fx.rounds.iter().map(|round| timed_round(v, round, &fx.raw, threads)).unzip()
}

/// One round with raw passes just before and after it: (pipeline rate,
/// raw rate). A round takes seconds; the raw pass a fraction of one: the
/// round is paired with the mean of the two.
fn timed_round<S: Store>(v: &Ingestor<S>, round: &[Vec<u8>], raw: &[Raw], threads: usize) -> (f64, f64) {
    let before = raw_rate(raw);
    let rate = ingest_rate(v, round, threads);
    (rate, (before + raw_rate(raw)) / 2.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

fn show(name: &str, rates: &[f64], raws: &[f64]) {
    let r: Vec<String> = rates.iter().map(|x| format!("{x:.0}")).collect();
    let w: Vec<String> = raws.iter().map(|x| format!("{x:.0}")).collect();
    println!("# {name}: msg/s per round [{}], raw verify_strict sig/s around each [{}]", r.join(", "), w.join(", "));
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("spime-fleet-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Usage report whose body encodes to about `len` bytes (counters and
/// gauges of varying size); returns the sealed message and its body length.
fn sized_report(d: &mut SimDevice, len: usize) -> (Vec<u8>, usize) {
    let mut best: Option<(usize, Usage, usize)> = None;
    for n in 0..=MAX_METRICS {
        for shift in [0u32, 20, 40, 62] {
            for gauges in 0..=n.min(4) {
                let mut u = counter_usage(1, &[]);
                for i in 0..n {
                    let v = if i < gauges {
                        let x = 1i64 << shift;
                        MetricValue::Gauge { min: -x, max: x, sum: x, samples: 3 }
                    } else {
                        MetricValue::Counter(1u64 << shift)
                    };
                    let m = Metric { id: i as u16, category: DataCategory::UsageCounters, value: v };
                    u.metrics.push(m).unwrap();
                }
                let mut buf = [0u8; 1024];
                let body = spime::codec::encode(&u, &mut buf).unwrap().len();
                let dist = body.abs_diff(len);
                if best.as_ref().is_none_or(|(dd, _, _)| dist < *dd) {
                    best = Some((dist, u, body));
                }
            }
        }
    }
    let (_, u, body) = best.unwrap();
    (d.seal(&u).unwrap(), body)
}

/// open vs raw verify_strict, interleaved in short loops; median of ratios.
fn open_vs_verify(len: usize) -> (usize, f64) {
    let mut d = device(0, 0xee);
    let _ = register(&mut d);
    let msgs: Vec<(Vec<u8>, usize)> = (0..64).map(|_| sized_report(&mut d, len)).collect();
    let body_len = msgs[0].1;
    let session = d.session().unwrap().clone();
    let key = d.key().public();
    let raws: Vec<Raw> = msgs.iter().map(|(m, _)| raw_of(m, &session, &key)).collect();
    let mut buf = vec![0u8; MAX_SEALED_LEN];
    let (mut rs, mut aead) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        let t = Instant::now();
        for r in &raws {
            black_box(r.key.verify_strict(black_box(&r.msg), &r.sig)).unwrap();
        }
        let raw = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (m, _) in &msgs {
            let env = Envelope::parse(black_box(m)).unwrap();
            let v = env.decrypt(&session, &mut buf).unwrap().verify(&key).unwrap();
            black_box(v.decode::<Usage>().unwrap());
        }
        let open = t.elapsed().as_secs_f64();
        rs.push(raw / open);
        // Parse and decryption alone (ChaCha20-Poly1305 of the whole
        // envelope), as a share of raw verification.
        let t = Instant::now();
        for (m, _) in &msgs {
            let env = Envelope::parse(black_box(m)).unwrap();
            black_box(env.decrypt(&session, &mut buf).unwrap());
        }
        aead.push(t.elapsed().as_secs_f64() / raw);
    }
    let sealed = msgs[0].0.len();
    println!(
        "# open, {body_len}-byte body ({sealed} B sealed): parse and decryption alone {:.1} % of raw verify_strict (median of 40)",
        100.0 * median(aead)
    );
    (body_len, median(rs))
}

/// Which ChaCha20 and Poly1305 code this build runs (`.cargo/config.toml`,
/// docs/benchmarks.md "The AEAD's backends").
const AEAD_BUILD: &str = if cfg!(all(chacha20_backend = "soft", poly1305_backend = "soft")) {
    "portable ChaCha20 and Poly1305 (the cfgs of .cargo/config.toml)"
} else {
    "ChaCha20 and Poly1305 as their crates choose (on x86-64 without target-cpu: AVX2 detected at run time)"
};

/// What two threads can do on this machine: raw `verify_strict` of `raws`
/// on two threads at once (each verifying all of them) over one thread, as
/// a rate ratio; median of five. Pure computation with no shared state, so
/// it is the ceiling for `two_workers_vs_one` (below 2 when the cores are
/// busy with other work, or are hardware threads of one core).
fn two_threads_vs_one(raws: &[Raw]) -> f64 {
    let pass = || {
        for r in raws {
            black_box(r.key.verify_strict(black_box(&r.msg), &r.sig)).unwrap();
        }
    };
    let mut rs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        pass();
        let one = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::thread::scope(|s| {
            let a = s.spawn(pass);
            pass();
            a.join().unwrap();
        });
        rs.push(2.0 * one / t.elapsed().as_secs_f64());
    }
    median(rs)
}

/// The ceiling: `BatchVerifier` alone (chunks of 256) over `raws` against
/// raw `verify_strict` of the same signatures, interleaved; median ratio.
fn batch_vs_verify(raws: &[Raw]) -> f64 {
    let parts: Vec<(VerifyingKey, Vec<u8>, [u8; 64])> =
        raws.iter().map(|r| (r.key, r.msg[MESSAGE_DST.len()..].to_vec(), r.sig.to_bytes())).collect();
    let mut rs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for r in raws {
            black_box(r.key.verify_strict(black_box(&r.msg), &r.sig)).unwrap();
        }
        let raw = t.elapsed().as_secs_f64();
        let t = Instant::now();
        // The header/body split does not matter to the signature.
        verify_in_batches(&parts, 256);
        rs.push(raw / t.elapsed().as_secs_f64());
    }
    median(rs)
}

/// Verifies `parts` as batches of `size`.
fn verify_in_batches(parts: &[(VerifyingKey, Vec<u8>, [u8; 64])], size: usize) {
    for chunk in parts.chunks(size) {
        let mut b = spime::vendor::batch::BatchVerifier::with_capacity(chunk.len());
        for (k, m, sig) in chunk {
            b.push(k, true, &[], m, sig);
        }
        assert!(b.verify().iter().all(|&ok| ok));
    }
}

/// The ceiling for `two_workers_vs_one` with groups of `GROUP`: each
/// group's signatures as one batch on one thread, against the group split
/// in two halves verified on two threads at once, as two workers split a
/// group. A batch of half the size costs more per signature (fewer points
/// share each multiscalar multiplication), so this is below
/// [`two_threads_vs_one`]. Median ratio of five.
fn split_batch_vs_one(raws: &[Raw]) -> f64 {
    let parts: Vec<(VerifyingKey, Vec<u8>, [u8; 64])> =
        raws.iter().map(|r| (r.key, r.msg[MESSAGE_DST.len()..].to_vec(), r.sig.to_bytes())).collect();
    // The first and the second half of every group.
    let halves: [Vec<_>; 2] = core::array::from_fn(|h| {
        parts.chunks(GROUP).flat_map(|g| g.chunks(GROUP / 2).nth(h).unwrap_or(&[]).to_vec()).collect()
    });
    let mut rs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        verify_in_batches(&parts, GROUP);
        let one = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::thread::scope(|s| {
            let a = s.spawn(|| verify_in_batches(&halves[1], GROUP / 2));
            verify_in_batches(&halves[0], GROUP / 2);
            a.join().unwrap();
        });
        rs.push(one / t.elapsed().as_secs_f64());
    }
    median(rs)
}

/// A durable store's rounds: the fleet of `N`, and the fleet of 100, each
/// with the raw passes around its rounds.
#[derive(Default)]
struct Durable {
    big: Vec<f64>,
    big_raw: Vec<f64>,
    small: Vec<f64>,
    small_raw: Vec<f64>,
    /// The fleet on two threads (whole groups), if run.
    two: Vec<f64>,
    two_raw: Vec<f64>,
}

/// The rounds of `fx` on `a` and of `small` on `b`, side by side: within
/// each round the two take turns group by group (which goes first
/// alternates from group to group), and each side's batches are timed and
/// summed, so a change of machine speed, even one of a few milliseconds,
/// falls on both sides alike. A raw pass of each side's sample runs before
/// and after the round. Returns (a's rates, a's raw rates, b's, b's raw).
fn side_by_side<A: Store, B: Store>(
    a: &Ingestor<A>,
    fx: &Fleet,
    b: &Ingestor<B>,
    small: &Fleet,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(fx.rounds.len(), small.rounds.len(), "both sides run every round");
    let (mut big, mut big_raw, mut small_rates, mut small_raw) = (vec![], vec![], vec![], vec![]);
    for (rb, rs) in fx.rounds.iter().zip(&small.rounds) {
        let raw_before = (raw_rate(&fx.raw), raw_rate(&small.raw));
        let (gb, gs) = (groups(rb), groups(rs));
        let (mut tb, mut ts) = (0.0, 0.0);
        for i in 0..gb.len().max(gs.len()) {
            let mut run_big = || tb += gb.get(i).map_or(0.0, |g| batch_time(a, g));
            let mut run_small = || ts += gs.get(i).map_or(0.0, |g| batch_time(b, g));
            if i % 2 == 0 {
                run_big();
                run_small();
            } else {
                run_small();
                run_big();
            }
        }
        big.push(rb.len() as f64 / tb);
        small_rates.push(rs.len() as f64 / ts);
        big_raw.push((raw_before.0 + raw_rate(&fx.raw)) / 2.0);
        small_raw.push((raw_before.1 + raw_rate(&small.raw)) / 2.0);
    }
    (big, big_raw, small_rates, small_raw)
}

/// A round's messages in groups of `GROUP` (one `ingest_batch` each).
fn groups(round: &[Vec<u8>]) -> Vec<Vec<&[u8]>> {
    round.chunks(GROUP).map(|g| g.iter().map(Vec::as_slice).collect()).collect()
}

/// Seconds `v` takes to ingest one group (every message accepted).
fn batch_time<S: Store>(v: &Ingestor<S>, group: &[&[u8]]) -> f64 {
    let t = Instant::now();
    for r in v.ingest_batch(group, 10) {
        black_box(r.unwrap());
    }
    t.elapsed().as_secs_f64()
}

/// The durable workloads on one store, opened by `open` in a fresh
/// directory each: the fleet and the 100 devices side by side, taking
/// turns group by group ([`side_by_side`]), so a drift of machine speed
/// falls on both, and so does the stores' background work (mostly the
/// fleet's flushes and compactions, on the other core); with
/// `two`, the fleet again on two threads, alone, in a third directory.
fn durable<S: Store>(
    fx: &Fleet,
    small: &Fleet,
    name: &str,
    two: bool,
    open: impl Fn(&std::path::Path) -> S,
) -> Durable {
    let big_dir = TempDir::new(&format!("{name}-big"));
    let t = Instant::now();
    let big_v = ingestor(open(&big_dir.0), fx, 1);
    println!("# {} devices registered in {name} in {:.1} s", fx.registrations.len(), t.elapsed().as_secs_f64());
    let small_dir = TempDir::new(&format!("{name}-small"));
    let small_v = ingestor(open(&small_dir.0), small, 1);
    let (big, big_raw, small_rates, small_raw) = side_by_side(&big_v, fx, &small_v, small);
    show(&format!("fleet {name} 1 worker"), &big, &big_raw);
    show(&format!("{SMALL_FLEET} devices {name} 1 worker"), &small_rates, &small_raw);
    drop((big_v, small_v, big_dir, small_dir));
    let (mut two_rates, mut two_raw) = (vec![], vec![]);
    if two {
        let dir = TempDir::new(&format!("{name}-two"));
        let v = ingestor(open(&dir.0), fx, 1);
        (two_rates, two_raw) = timed_on(&v, fx, 2);
        show(&format!("fleet {name} 2 threads (whole groups)"), &two_rates, &two_raw);
    }
    Durable { big, big_raw, small: small_rates, small_raw, two: two_rates, two_raw }
}

/// Prints one figure as `ratio <name> <value>`, with three decimals so a
/// figure at a target's line says on which side of it it is.
fn ratio(name: &str, value: f64) {
    println!("ratio {name} {value:.3}");
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let n: usize = std::env::var("SPIME_BENCH_FLEET").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    // SPIME_BENCH_ONLY=memory,two,durable,open (comma-separated) runs a part, for
    // profiling; `redb` or `fjall` instead of `durable` runs one store. The
    // durable ratios need `memory` too.
    let only = std::env::var("SPIME_BENCH_ONLY").ok();
    let run = |part: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p == part));
    let start_load = loadavg();
    println!("load_start {start_load}");
    println!("# fleet of {n} devices, groups of {GROUP}, {ROUNDS} rounds per workload");
    println!("# AEAD: {AEAD_BUILD}");

    let t = Instant::now();
    let fx = fleet(n, 1, ROUNDS, 0x5a);
    let one = {
        let mut d = device(0, 0x11);
        let registrations = vec![register(&mut d)];
        let per = n;
        let session = d.session().unwrap().clone();
        let key = d.key().public();
        let mut rounds = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..ROUNDS {
            let mut round = Vec::with_capacity(per);
            for _ in 0..per {
                let m = d.seal(&report(d.counter)).unwrap();
                if raw.len() < RAW_SAMPLE {
                    raw.push(raw_of(&m, &session, &key));
                }
                round.push(m);
            }
            rounds.push(round);
        }
        Fleet { registrations, rounds, raw }
    };
    let per_small = n.div_ceil(SMALL_FLEET);
    let small = fleet(SMALL_FLEET, per_small, ROUNDS, 0x77);
    println!("# messages generated in {:.1} s", t.elapsed().as_secs_f64());

    // In memory, one worker: the fleet, then one device.
    let (mut fleet1, mut fleet1_raw, mut one1, mut one1_raw) = (vec![], vec![], vec![], vec![]);
    let (mut fleet2, mut fleet2_raw) = (vec![], vec![]);
    let (mut memory_flat, mut memory_flat_normalised) = (f64::NAN, f64::NAN);
    let norm = |a: &[f64], b: &[f64]| ratios(a, b);
    if run("memory") {
        let t = Instant::now();
        let mem1 = ingestor(MemoryStore::new(), &fx, 1);
        println!("# {n} devices registered in memory in {:.1} s", t.elapsed().as_secs_f64());
        // What grows with the fleet before any store is durable: the fleet
        // and the 100 devices side by side.
        let mem_small = ingestor(MemoryStore::new(), &small, 1);
        let (small1, small1_raw);
        (fleet1, fleet1_raw, small1, small1_raw) = side_by_side(&mem1, &fx, &mem_small, &small);
        show("fleet memory 1 worker", &fleet1, &fleet1_raw);
        show(&format!("{SMALL_FLEET} devices memory 1 worker"), &small1, &small1_raw);
        drop((mem1, mem_small));
        let v = ingestor(MemoryStore::new(), &one, 1);
        (one1, one1_raw) = timed(&v, &one);
        show("one device memory 1 worker", &one1, &one1_raw);
        drop(v);
        // Side by side, pair by pair: the rates themselves (see `store_ratios`).
        memory_flat = median(ratios(&fleet1, &small1));
        memory_flat_normalised = median(ratios(&norm(&fleet1, &fleet1_raw), &norm(&small1, &small1_raw)));
    }
    // Two workers, the fleet in memory.
    let (mut split2, mut split2_raw) = (vec![], vec![]);
    if run("two") {
        // Two workers that each take whole groups: two threads calling
        // `ingest_batch` on one Ingestor (the batches verify at once).
        let mem2 = ingestor(MemoryStore::new(), &fx, 1);
        (fleet2, fleet2_raw) = timed_on(&mem2, &fx, 2);
        show("fleet memory 2 workers (2 threads, whole groups)", &fleet2, &fleet2_raw);
        drop(mem2);
        // Two workers that split each group: `IngestConfig::workers = 2`.
        let mem2 = ingestor(MemoryStore::new(), &fx, 2);
        (split2, split2_raw) = timed(&mem2, &fx);
        show("fleet memory 2 workers (each group split)", &split2, &split2_raw);
        drop(mem2);
    }
    // Durable: the fleet and 100 devices side by side, on each store.
    let redb = if run("durable") || run("redb") {
        durable(&fx, &small, "redb", false, |dir| RedbStore::open(dir.join("v.redb")).unwrap())
    } else {
        Durable::default()
    };
    let fjall = if run("durable") || run("fjall") {
        durable(&fx, &small, "fjall", true, |dir| FjallStore::open(dir.join("v.fjall")).unwrap())
    } else {
        Durable::default()
    };
    let (len21, open21) = if run("open") { open_vs_verify(21) } else { (21, f64::NAN) };
    let (len188, open188) = if run("open") { open_vs_verify(188) } else { (188, f64::NAN) };

    if run("memory") {
        println!(
            "# BatchVerifier alone / raw verify_strict: fleet keys {:.2}, one key {:.2}",
            batch_vs_verify(&fx.raw),
            batch_vs_verify(&one.raw)
        );
        // The same for the 100 devices' keys (a group has 2.56 messages per
        // key): the part of `memory_100k_vs_100` that is verification alone.
        println!(
            "# BatchVerifier alone / raw verify_strict: {SMALL_FLEET} devices' keys {:.2}",
            batch_vs_verify(&small.raw)
        );
    }
    let fleet_vs = median(ratios(&fleet1, &fleet1_raw));
    // Store ÷ memory compares rates normalised by their own raw pass
    // (`norm`): the two ran minutes apart, and a change of machine speed
    // between them cancels out. Store at N ÷ store at 100 ran side by side,
    // group by group, under the same conditions: it compares the rates
    // themselves, round by round (a raw pass lasts a fifth of a second,
    // before or after a round while the store's background work runs, and
    // dividing by it adds its noise); the normalised figure is printed too.
    let store_ratios = |d: &Durable| {
        (
            median(ratios(&norm(&d.big, &d.big_raw), &norm(&fleet1, &fleet1_raw))),
            median(ratios(&d.big, &d.small)),
            median(ratios(&norm(&d.big, &d.big_raw), &norm(&d.small, &d.small_raw))),
        )
    };
    let two = median(ratios(&norm(&fleet2, &fleet2_raw), &norm(&fleet1, &fleet1_raw)));
    let split = median(ratios(&norm(&split2, &split2_raw), &norm(&fleet1, &fleet1_raw)));
    ratio("fleet_memory_vs_verify", fleet_vs);
    ratio("one_device_memory_vs_verify", median(ratios(&one1, &one1_raw)));
    let (redb_vs_memory, redb_flat, _) = store_ratios(&redb);
    // The documented names are fjall's, the store closer to flat.
    let (fjall_vs_memory, fjall_flat, fjall_flat_normalised) = store_ratios(&fjall);
    ratio("fleet_durable_vs_memory", fjall_vs_memory);
    ratio("durable_100k_vs_100", fjall_flat);
    ratio("memory_100k_vs_100", memory_flat);
    ratio("durable_100k_vs_100_normalised", fjall_flat_normalised);
    ratio("memory_100k_vs_100_normalised", memory_flat_normalised);
    // The store's own growth: the durable ratio with the in-memory
    // pipeline's growth divided out.
    ratio("durable_100k_vs_100_over_memory", fjall_flat / memory_flat);
    ratio("fleet_durable_vs_memory_fjall", fjall_vs_memory);
    ratio("durable_100k_vs_100_fjall", fjall_flat);
    ratio("fleet_durable_vs_memory_redb", redb_vs_memory);
    ratio("durable_100k_vs_100_redb", redb_flat);
    ratio("open_vs_verify", open21.min(open188));
    ratio(&format!("open_vs_verify_{len21}"), open21);
    ratio(&format!("open_vs_verify_{len188}"), open188);
    ratio("two_workers_vs_one", two);
    ratio("two_split_workers_vs_one", split);
    ratio(
        "two_workers_vs_one_fjall",
        median(ratios(&norm(&fjall.two, &fjall.two_raw), &norm(&fjall.big, &fjall.big_raw))),
    );
    if run("two") {
        println!("# the same ceiling: raw verify_strict on 2 threads / 1 thread {:.2}", two_threads_vs_one(&fx.raw));
        println!(
            "# the ceiling with groups of {GROUP}: 2 batches of {} on 2 threads / 1 batch of {GROUP} {:.2}",
            GROUP / 2,
            split_batch_vs_one(&fx.raw)
        );
    }
    println!("load_end {}", loadavg());
}
