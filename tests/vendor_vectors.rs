//! The vendor pipeline against the published vectors: the life the valid
//! device-to-vendor vectors tell is accepted message by message, and every
//! invalid vector a vendor opens is refused with the §9 error that SPEC.md
//! §10 maps its core error to.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

use serde_json::Value;
use spime::seal::VendorKeys;
use spime::vendor::{IngestConfig, Ingestor, MemoryStore};

const T0: u64 = 1_795_000_000;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vendor(v: &Value) -> Ingestor<MemoryStore> {
    let k = &v["keys"];
    let seed: [u8; 32] = hex::decode(k["vendor_signing_seed"].as_str().unwrap()).unwrap().try_into().unwrap();
    let kx: [u8; 32] = hex::decode(k["vendor_key_agreement_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
    Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&seed, kx), IngestConfig::default())
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn the_vendor_accepts_the_lives_the_valid_vectors_tell() {
    let valid = load("valid.json");
    let messages = valid["messages"].as_array().unwrap();
    let now = T0 + 3_600;
    let mut accepted = 0;
    for life in 1..=3u64 {
        // A fresh vendor for each life; the device's messages in order.
        let ingestor = vendor(&valid);
        for m in messages.iter().filter(|m| m["life"] == life && m["direction"] == "device_to_vendor") {
            let name = m["name"].as_str().unwrap();
            ingestor.ingest(&bytes(&m["sealed_hex"]), now).unwrap_or_else(|e| panic!("life {life} {name}: {e:?}"));
            accepted += 1;
        }
    }
    assert_eq!(accepted, messages.iter().filter(|m| m["direction"] == "device_to_vendor").count());
}

/// Every invalid vector a vendor opens is refused with the error and code
/// `vendor_error`/`vendor_code` name (SPEC.md §10's correspondence).
#[test]
fn the_vendor_refuses_every_invalid_vector_with_the_mapped_error() {
    let valid = load("valid.json");
    let invalid = load("invalid.json");
    let mut checked = 0;
    for m in invalid["messages"].as_array().unwrap().iter().filter(|m| m["opened_by"] == "vendor") {
        let name = m["name"].as_str().unwrap();
        let ingestor = vendor(&valid);
        for before in m["accepted_before"].as_array().unwrap() {
            ingestor.ingest(&bytes(before), T0 + 3_600).unwrap_or_else(|e| panic!("{name}: setup refused: {e:?}"));
        }
        let err = ingestor.ingest(&bytes(&m["sealed_hex"]), T0 + 3_600).expect_err(name);
        assert_eq!(format!("{err:?}"), m["vendor_error"].as_str().unwrap(), "{name}");
        assert_eq!(u64::from(err.code()), m["vendor_code"].as_u64().unwrap(), "{name}");
        checked += 1;
    }
    assert!(checked >= 60, "{checked} vendor vectors");
}
