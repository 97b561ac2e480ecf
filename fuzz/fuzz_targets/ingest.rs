//! Any bytes given to the vendor's ingest pipeline (whole, as chunks, or as
//! a batch) never panic, and are refused unless they are a valid message.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spime::consent::{CategorySet, DataCategory, Purpose};
use spime::message::{FirmwareVersion, Register};
use spime::seal::VendorKeys;
use spime::vendor::link::Reassembly;
use spime::vendor::sim::{SimDevice, consent};
use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
use spime::wire::DeviceId;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], [2; 32])
}

/// A registration, so that messages for a known device reach the later steps.
fn registration() -> &'static [u8] {
    static REG: OnceLock<Vec<u8>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut d = SimDevice::new(DeviceId([7; 8]), [7; 32], &vendor_keys()).expect("device");
        let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
        let reg = Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: consent(1, &grants, 0),
        };
        d.seal(&reg).expect("seal")
    })
}

fuzz_target!(|data: &[u8]| {
    let v = Ingestor::new(MemoryStore::new(), vendor_keys(), IngestConfig { workers: 2, batch_verify: true });
    let _ = v.ingest(registration(), 10);
    let Some((&mode, rest)) = data.split_first() else { return };
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
