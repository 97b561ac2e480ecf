//! CoAP ingest rate on loopback: a bounded load run against the real
//! server (`spime::server`), with the redb store and with the in-memory
//! store. Clients keep a window of confirmable POSTs in flight each; a
//! message counts when its 2.04 (sent after the commit) arrives.
//!
//! `cargo bench --bench coap` prints datagrams per second;
//! `cargo bench --bench coap -- --test` runs a small load once (CI).
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

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{MessageClass, Packet, ResponseType};
use spime::consent::{CategorySet, DataCategory, Purpose};
use spime::message::{FirmwareVersion, Register};
use spime::seal::VendorKeys;
use spime::server::coap::{MESSAGE_PATH, post};
use spime::server::{self, Config};
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::{IngestConfig, Ingestor, MemoryStore, RedbStore, Store};
use spime::wire::DeviceId;

const CLIENTS: usize = 8;
/// Requests in flight per client.
const WINDOW: usize = 32;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

/// Registrations, and `per_device` usage reports per device, grouped by client.
fn fixture(devices: usize, per_device: usize) -> (Vec<Vec<u8>>, Vec<Vec<Vec<u8>>>) {
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let mut regs = Vec::new();
    let mut per_client: Vec<Vec<Vec<u8>>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for i in 0..devices {
        let mut seed = [9u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let mut d = SimDevice::new(DeviceId((i as u64).to_be_bytes()), seed, &vendor_keys()).unwrap();
        let reg = Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: consent(1, &grants, 0),
            transfer: None,
        };
        regs.push(d.seal(&reg).unwrap());
        for n in 0..per_device {
            // After the register the epoch is open: no ephemeral key, 91 bytes of overhead.
            let u = counter_usage(1, &[(0, n as u64), (1, 1)]);
            per_client[i % CLIENTS].push(d.seal(&u).unwrap());
        }
    }
    (regs, per_client)
}

/// One client: keeps WINDOW requests in flight; returns how many got 2.04.
fn client(server: SocketAddr, messages: &[Vec<u8>]) -> usize {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 2048];
    let mut next = 0;
    let mut in_flight = 0;
    let mut ok = 0;
    while next < messages.len() || in_flight > 0 {
        while in_flight < WINDOW && next < messages.len() {
            let id = next as u16;
            sock.send_to(&post(MESSAGE_PATH, id, &id.to_be_bytes(), &messages[next], true), server).unwrap();
            next += 1;
            in_flight += 1;
        }
        let n = sock.recv(&mut buf).expect("a response within 10 s (none is lost on loopback)");
        let p = Packet::from_bytes(&buf[..n]).unwrap();
        in_flight -= 1;
        if p.header.code == MessageClass::Response(ResponseType::Changed) {
            ok += 1;
        }
    }
    ok
}

fn run<S: Store + 'static>(name: &str, store: S, devices: usize, per_device: usize) {
    let (regs, per_client) = fixture(devices, per_device);
    let ingestor = Ingestor::new(store, vendor_keys(), IngestConfig::default());
    let refs: Vec<&[u8]> = regs.iter().map(Vec::as_slice).collect();
    assert!(ingestor.ingest_batch(&refs, 10).iter().all(Result::is_ok));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = Config {
        coap: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        clock: Arc::new(|| 10),
        ..Config::default()
    };
    let running = runtime.block_on(server::start(Arc::new(ingestor), config)).unwrap();
    let coap = running.coap;
    let total: usize = per_client.iter().map(Vec::len).sum();
    let started = Instant::now();
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = per_client.iter().map(|m| s.spawn(move || client(coap, m))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(accepted, total, "every report accepted");
    runtime.block_on(running.shutdown());
    println!(
        "coap ingest, {name}: {total} datagrams in {secs:.2} s = {:.0} datagrams/s ({CLIENTS} clients x {WINDOW} in flight, {devices} devices)",
        total as f64 / secs
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let (devices, per_device) = if quick { (16, 4) } else { (256, 80) };
    run("memory store", MemoryStore::new(), devices, per_device);
    let dir = std::env::temp_dir().join(format!("spime-coap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run("redb store", RedbStore::open(dir.join("vendor.redb")).unwrap(), devices, per_device);
    std::fs::remove_dir_all(&dir).unwrap();
}
