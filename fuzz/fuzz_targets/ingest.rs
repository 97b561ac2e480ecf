//! Any bytes given to the vendor's ingest pipeline (whole, as chunks, or as
//! a batch) never panic, and are refused unless they are a valid message.
//! The vendors are built once per process and keep their state between
//! inputs (as a server does); an input is judged after whatever earlier
//! inputs were accepted, which random bytes almost never are.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spime::seal::VendorKeys;
use spime::vendor::link::Reassembly;
use spime::vendor::sim::{SimDevice, usage_register};
use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
use spime::wire::DeviceId;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

/// A registration, so that messages for a known device reach the later steps.
fn registration() -> &'static [u8] {
    static REG: OnceLock<Vec<u8>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut d = SimDevice::new(DeviceId([7; 8]), [7; 32], &vendor_keys()).expect("device");
        d.seal(&usage_register(&d)).expect("seal")
    })
}

/// A vendor that registered the device, built once per process (building
/// it costs a key agreement and two signature checks, far more than most
/// inputs): one worker for single messages, two for batches.
fn vendor(workers: usize) -> &'static Ingestor<MemoryStore> {
    static ONE: OnceLock<Ingestor<MemoryStore>> = OnceLock::new();
    static TWO: OnceLock<Ingestor<MemoryStore>> = OnceLock::new();
    let cell = if workers == 1 { &ONE } else { &TWO };
    cell.get_or_init(|| {
        let v = Ingestor::new(MemoryStore::new(), vendor_keys(), IngestConfig { workers, batch_verify: true });
        v.ingest(registration(), 10).expect("the registration is accepted");
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let v = vendor(if mode % 3 == 2 { 2 } else { 1 });
    match mode % 3 {
        0 => {
            let _ = v.ingest(rest, 10);
        }
        1 => {
            // Length-prefixed chunks on one link.
            let mut rx: Reassembly<u8> = Reassembly::new(60);
            let mut rest = rest;
            while let Some((&len, tail)) = rest.split_first() {
                let n = usize::from(len).min(tail.len());
                let (chunk, tail) = tail.split_at(n);
                if let Ok(Some(m)) = rx.push(&0, 10, chunk) {
                    let _ = v.ingest(&m, 10);
                }
                rest = tail;
            }
        }
        _ => {
            let parts: Vec<&[u8]> = rest.chunks(rest.len() / 3 + 1).collect();
            let _ = v.ingest_batch(&parts, 10);
        }
    }
});
